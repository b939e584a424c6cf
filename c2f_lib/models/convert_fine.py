"""Import official Moment-DETR / QD-DETR / MESM checkpoints into our modules.

    imported = import_reference_checkpoint("model_best.ckpt")        # kind and architecture from ckpt["opt"]
    imported.model.predict(samples)                                  # eval mode
    fine_loss(imported.model(batch), batch, imported.loss_weights)   # the checkpoint's own loss weights

An official checkpoint is `{'model', 'optimizer', 'lr_scheduler', 'epoch', 'opt'}` as train.py saves it; `opt`
(the training `argparse.Namespace`) gives the architecture, the loss weights and the kind. With
`protocol="reference"` every option that restores the official behaviour is set (docs/DEVIATIONS.md).

Key renaming is rule based (reference name -> ours), from the reference code (MD `moment_detr/model.py`,
`transformer.py`; QD `qd_detr/model.py`, `transformer.py`; MESM `model/model.py`, `model/transformer.py`):
* layer stacks: QD `transformer.t2v_encoder.layers.i`, MESM `t2v_encoder.t2v_encoder.layers.i`,
  `transformer.encoder.layers.i`, MESM `enhance_encoder.t2v_encoder.layers.i` (FW) and
  `ss_reconstructor.recon_trans.layers.i` (SS); inside a layer `self_attn` (nn.MultiheadAttention),
  `linear1`/`activation` (PReLU; Moment-DETR: ReLU, no weight)/`linear2` and `norm1`/`norm2`;
* Moment-DETR's vanilla decoder `transformer.decoder.layers.i`: `self_attn`, `multihead_attn` (cross),
  `norm1..3`, FFN, and the final `transformer.decoder.norm`;
* the DAB decoder of QD-DETR / MESM `transformer.decoder.layers.i`: self-attention `sa_{q,k}{content,pos}_proj`,
  `sa_v_proj`, `self_attn.out_proj`; cross-attention `ca_{q,k}{content,pos}_proj` (`ca_qpos_proj` in layer 0
  only), `ca_v_proj`, `ca_qpos_sine_proj`, `cross_attn.out_proj`; `norm1..3`, FFN; plus the decoder's
  `ref_point_head`, `query_scale`, `ref_anchor_head`, `bbox_embed` MLPs and final `norm`;
* heads and embeddings: `input_{vid,txt}_proj`, `span_embed`, `class_embed`, `saliency_proj` (MD),
  `saliency_proj{1,2}`, `global_rep_{token,pos}`, `query_embed`, `ss_reconstructor.masked_sent_token`;
* MESM's masked-word branch: the [MASK] and [UNK] features `masked_token`, `unknown_token` (the latter with
  `mlm_unknown="replace"`) and the hidden layer of `output_txt_proj` (`.0` = LinearLayer: LayerNorm, Linear,
  ReLU) -> `masked_word_token`, `unknown_word_token`, `mlm_vocab_head.{0,2}`.
Reference-only parts stay `unmapped`: the frozen text encoder; the unused text position embedding
`txt_position_embed`; MESM's word classifier `output_txt_proj.1`, whose K+1 (GloVe) or K+3 (CLIP) rows follow
MESM's own class order (its frequency table of words), unless the caller passes that order as `word_vocab`
(then the K+1 layout lands on ours); TACoS' second FFN `*_1` (refused: share_MLP=False is not implemented);
the unused `ss_reconstructor.output_sent_proj` and the optional contrastive-alignment projections. Our
feature-regression head (`mlm_head`) and an unmatched word classifier stay `uncovered`. Nothing is silently
dropped: the caller gets both lists, and any other uncovered tensor is an error.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2f_lib.errors import MissingFileError
from c2f_lib.models.fine_presets import FineLossWeights
from c2f_lib.models.registry import build_model

KINDS = ("moment_detr", "qd_detr", "mesm")
_FFN = {"linear1": "ffn.0", "activation": "ffn.1", "linear2": "ffn.3"}
_ENCODER_PARTS = {**_FFN, "self_attn": "attn", "norm1": "norm1", "norm2": "norm2"}
_DETR_DECODER_PARTS = {**_FFN, "self_attn": "self_attn", "multihead_attn": "cross_attn",
                       "norm1": "norms.0", "norm2": "norms.1", "norm3": "norms.2"}
_DECODER_PARTS = {
    **_FFN, "norm1": "norms.0", "norm2": "norms.1", "norm3": "norms.2",
    "sa_qcontent_proj": "self_attn.q_content", "sa_qpos_proj": "self_attn.q_pos",
    "sa_kcontent_proj": "self_attn.k_content", "sa_kpos_proj": "self_attn.k_pos", "sa_v_proj": "self_attn.v",
    "self_attn.out_proj": "self_attn.out",
    "ca_qcontent_proj": "cross_attn.q_content", "ca_qpos_proj": "cross_attn.q_pos",
    "ca_kcontent_proj": "cross_attn.k_content", "ca_kpos_proj": "cross_attn.k_pos", "ca_v_proj": "cross_attn.v",
    "ca_qpos_sine_proj": "cross_attn.q_sine", "cross_attn.out_proj": "cross_attn.out",
}
# (reference layer-stack prefix, our module list, part names inside one layer)
_STACKS = [
    (r"transformer\.t2v_encoder\.layers", "t2v_encoder", _ENCODER_PARTS),
    (r"t2v_encoder\.t2v_encoder\.layers", "t2v_encoder", _ENCODER_PARTS),
    (r"transformer\.encoder\.layers", "encoder", _ENCODER_PARTS),
    (r"enhance_encoder\.t2v_encoder\.layers", "enhance_encoder", _ENCODER_PARTS),
    (r"ss_reconstructor\.recon_trans\.layers", "ss_layers", _ENCODER_PARTS),
    (r"transformer\.decoder\.layers", "decoder.layers", _DECODER_PARTS),
]
_MD_STACKS = [(r"transformer\.encoder\.layers", "encoder", _ENCODER_PARTS),
              (r"transformer\.decoder\.layers", "decoder", _DETR_DECODER_PARTS)]


def _compile(stacks):
    return [(re.compile(rf"^{prefix}\.(\d+)\.(.+)\.(\w+)$"), ours, parts) for prefix, ours, parts in stacks]


_STACK_KEY = {"moment_detr": _compile(_MD_STACKS), "qd_detr": _compile(_STACKS), "mesm": _compile(_STACKS)}
# Reference input projection: n x LinearLayer(LayerNorm, net=[Dropout, Linear]); ours is one flat
# Sequential [LN, Dropout, Linear, ReLU, LN, Dropout, Linear] (4 entries per layer).
_PROJ = re.compile(r"^(input_vid_proj|input_txt_proj)\.(\d+)\.(LayerNorm|net\.1)\.(weight|bias)$")
# Reference MLP: `.layers.j` Linear list; ours nn.Sequential with ReLUs in between (Linear j at 2j).
_MLP = re.compile(r"^(transformer\.decoder\.)?(ref_point_head|query_scale|ref_anchor_head|bbox_embed|span_embed)"
                  r"\.layers\.(\d+)\.(weight|bias)$")
_SAME = {"class_embed", "saliency_proj", "saliency_proj1", "saliency_proj2", "global_rep_token", "global_rep_pos",
         "query_embed"}
_RENAMED = {"transformer.decoder.norm.weight": "decoder.norm.weight",
            "transformer.decoder.norm.bias": "decoder.norm.bias",
            "ss_reconstructor.masked_sent_token": "masked_sent_token",
            "masked_token": "masked_word_token",
            "unknown_token": "unknown_word_token",
            "output_txt_proj.0.LayerNorm.weight": "mlm_vocab_head.0.weight",
            "output_txt_proj.0.LayerNorm.bias": "mlm_vocab_head.0.bias",
            "output_txt_proj.0.net.1.weight": "mlm_vocab_head.2.weight",
            "output_txt_proj.0.net.1.bias": "mlm_vocab_head.2.bias"}
_MD_RENAMED = {"transformer.decoder.norm.weight": "decoder_norm.weight",
               "transformer.decoder.norm.bias": "decoder_norm.bias"}
_CLASSIFIER = {"output_txt_proj.1.weight": "mlm_vocab_head.4.weight", "output_txt_proj.1.bias": "mlm_vocab_head.4.bias"}
# Ours only: MESM's feature-regression head for stores without token ids; the word classifier when
# MESM's class order is not given.
_OURS_ONLY = ("mlm_head.", "mlm_vocab_head.4.")


def _layer_part(module: str, parts: dict[str, str]) -> str | None:
    """Our name for a sub-module path inside one layer (longest reference prefix wins)."""
    for ref in sorted(parts, key=len, reverse=True):
        if module == ref or module.startswith(ref + "."):
            return parts[ref] + module[len(ref):]
    return None


def rename_key(key: str, kind: str = "qd_detr") -> str | None:
    """Our name for a reference key of a `kind` checkpoint, or None when it has no counterpart."""
    key = key.removeprefix("module.")
    if m := _PROJ.match(key):
        index = 4 * int(m[2]) + (0 if m[3] == "LayerNorm" else 2)
        return f"{m[1]}.{index}.{m[4]}"
    if m := _MLP.match(key):
        owner = "decoder." if m[1] or m[2] != "span_embed" else ""
        return f"{owner}{m[2]}.{2 * int(m[3])}.{m[4]}"
    for pattern, ours, parts in _STACK_KEY[kind]:
        if m := pattern.match(key):
            part = _layer_part(m[2], parts)
            return None if part is None else f"{ours}.{m[1]}.{part}.{m[3]}"
    renamed = _MD_RENAMED if kind == "moment_detr" else _RENAMED
    if key in renamed:
        return renamed[key]
    return key if key.split(".")[0] in _SAME else None


def convert_state_dict(reference: dict[str, torch.Tensor], model: nn.Module, kind: str = "qd_detr",
                       word_classifier: bool = False) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """-> (state dict in our names, unmapped reference keys, model keys left uncovered).

    `word_classifier`: MESM's `output_txt_proj.1` lands on our word classifier (the caller vouches that the
    model's `word_vocab` is MESM's class order); otherwise it stays unmapped.
    """
    ours = model.state_dict()
    converted, unmapped = {}, []
    for key, value in reference.items():
        name = (_CLASSIFIER.get(key) if word_classifier else None) or rename_key(key, kind)
        if name is None or name not in ours:
            unmapped.append(key)
        elif ours[name].shape != value.shape:
            raise ValueError(f"{key} -> {name}: shape {tuple(value.shape)} != ours {tuple(ours[name].shape)}")
        elif name in converted:
            raise ValueError(f"{key} -> {name}: two reference keys map to the same tensor")
        else:
            converted[name] = value
    return converted, unmapped, sorted(set(ours) - set(converted))


# ------------------------------------------------------------------------------------------------
# Architecture and loss weights from the checkpoint's `opt`


def detect_kind(state: dict[str, torch.Tensor]) -> str:
    """moment_detr / qd_detr / mesm from the reference state-dict keys."""
    keys = {k.removeprefix("module.") for k in state}
    if any(k.startswith(("t2v_encoder.t2v_encoder.", "ss_reconstructor.", "enhance_encoder.")) for k in keys):
        return "mesm"
    if any(k.startswith("transformer.t2v_encoder.") for k in keys):
        return "qd_detr"
    if any(".multihead_attn." in k for k in keys):
        return "moment_detr"
    raise ValueError("not a Moment-DETR, QD-DETR or MESM state dict (no known layer names)")


def _opt(opt: Any, name: str, where: str) -> Any:
    if name not in opt:
        raise ValueError(f"{where}: opt has no field {name!r}")
    return opt[name]


def config_from_opt(opt: dict[str, Any], kind: str, where: str = "checkpoint") -> dict[str, Any]:
    """Our model config from an official training `opt` (vars of its argparse.Namespace)."""
    get = lambda name: _opt(opt, name, where)  # noqa: E731
    unsupported = {"pre_norm": (get("pre_norm"), False), "span_loss_type": (get("span_loss_type"), "l1"),
                   "position_embedding": (get("position_embedding"), "sine"),
                   "use_txt_pos": (get("use_txt_pos"), False)}
    if kind == "mesm":
        unsupported["share_MLP"] = (get("share_MLP"), True)    # TACoS' second FFN is not implemented
    for name, (value, needed) in unsupported.items():
        if value != needed:
            raise ValueError(f"{where}: opt.{name}={value!r} is not supported (only {needed!r})")
    use_tef = bool(get("use_tef")) if "use_tef" in opt else "tef" in str(get("ctx_mode"))
    config = {"video_dim": int(get("v_feat_dim")) - 2 * use_tef, "text_dim": int(get("t_feat_dim")),
              "use_tef": use_tef, "hidden_dim": int(get("hidden_dim")), "n_heads": int(get("nheads")),
              "ffn_dim": int(get("dim_feedforward")), "dropout": float(get("dropout")),
              "input_dropout": float(get("input_dropout")), "n_input_proj": int(get("n_input_proj")),
              "enc_layers": int(get("enc_layers")), "dec_layers": int(get("dec_layers")),
              "num_queries": int(get("num_queries"))}
    if kind == "qd_detr":
        config["t2v_layers"] = int(get("enc_layers"))            # QD-DETR builds its T2V stack with enc_layers
    if kind == "mesm":
        config.update(t2v_layers=int(get("t2v_layers")), use_fw=bool(get("rec_fw")), use_ss=bool(get("rec_ss")),
                      fw_layers=int(get("num_recfw_layers")), ss_layers=int(get("num_recss_layers")),
                      max_ts_val=float(get("max_ts_val")))
    return config


def loss_weights_from_opt(opt: dict[str, Any], kind: str, protocol: str = "correct",
                          where: str = "checkpoint") -> FineLossWeights:
    """The checkpoint's own loss weights as FineLossWeights (the matching costs must equal them)."""
    get = lambda name: _opt(opt, name, where)  # noqa: E731
    if kind == "mesm":
        w = dict(span=get("loss_span_coef"), giou=get("loss_giou_coef"), label=get("loss_label_coef"),
                 saliency=get("loss_saliency_coef"), use_hinge=bool(get("use_triplet")), rank_coef=get("rank_coef"),
                 rec_fw=get("loss_recfw_coef") if get("rec_fw") else 0.0,
                 rec_ss=get("loss_recss_coef") if get("rec_ss") else 0.0,
                 ss_tau=get("recss_tau"), ss_iou_gamma=get("iou_gamma"))
        graded = get("dataset_name") == "qvhighlights"
    else:
        w = dict(span=get("span_loss_coef"), giou=get("giou_loss_coef"), label=get("label_loss_coef"),
                 saliency=get("lw_saliency"), saliency_kind="hinge" if kind == "moment_detr" else "qd")
        graded = get("dset_name") in ("hl", "qvhighlights")
    for loss, cost in (("span", "set_cost_span"), ("giou", "set_cost_giou"), ("label", "set_cost_class")):
        if float(get(cost)) != float(w[loss]):
            raise ValueError(f"{where}: opt.{cost}={get(cost)} differs from the {loss} loss weight {w[loss]}; "
                             f"c2f matches with the loss weights")
    if protocol == "reference":
        w.update(saliency_labels="graded" if graded else "binary", ss_positives="group")
    return FineLossWeights(eos_coef=get("eos_coef"), aux=bool(get("aux_loss")), margin=get("saliency_margin"), **w)


# The options that restore the official behaviour of each model (docs/DEVIATIONS.md).
REFERENCE_OPTIONS = {
    "moment_detr": {"postprocess": "reference"},
    "qd_detr": {"postprocess": "reference", "negative_partner": "roll"},
    "mesm": {"postprocess": "reference", "context": "transductive", "context_repeats": True, "gt_clips": "scores",
             "mlm_unknown": "replace"},
}


@dataclass
class ReferenceImport:
    model: nn.Module                    # eval mode
    loss_weights: FineLossWeights       # from the checkpoint's opt
    kind: str
    config: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)    # reference keys with no counterpart here
    uncovered: list[str] = field(default_factory=list)   # our keys the checkpoint does not hold (ours only)
    epoch: int | None = None


def read_reference_payload(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int | None]:
    """(state dict, opt as a dict, epoch) of an official checkpoint file."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError("checkpoint not found", path)
    try:  # `opt` is an argparse.Namespace holding a torch.device: not loadable with weights_only
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("model"), dict):
        raise ValueError(f"{path}: no state dict (expected a dict with a 'model' entry)")
    opt = payload.get("opt")
    if opt is None:
        raise ValueError(f"{path}: no 'opt' entry (the official train.py saves the training options there)")
    opt = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt)
    return payload["model"], opt, payload.get("epoch")


def import_reference_checkpoint(path: str | Path, protocol: str = "correct", word_vocab: list[int] | None = None,
                                **overrides: Any) -> ReferenceImport:
    """Build the model an official Moment-DETR / QD-DETR / MESM checkpoint describes and load its weights.

    `protocol="reference"` sets REFERENCE_OPTIONS (the official post-processing, negative pairs, MESM context
    and GT segment) and the official saliency-label kind and contrastive positives in the loss weights.
    `word_vocab` (MESM): the token ids of MESM's word classes in MESM's order, K + 1 classes (GloVe), so that
    its classifier lands too. Other keyword arguments override our config fields (e.g. vocab_size).
    """
    if protocol not in ("correct", "reference"):
        raise ValueError(f"unknown protocol {protocol!r}; use 'correct' or 'reference'")
    state, opt, epoch = read_reference_payload(path)
    kind = detect_kind(state)
    config = config_from_opt(opt, kind, where=str(path))
    if protocol == "reference":
        config.update(REFERENCE_OPTIONS[kind])
    if word_vocab is not None:
        config["word_vocab"] = list(word_vocab)
    config.update(overrides)
    import c2f_lib.models.mesm  # noqa: F401  (registers qd_detr + mesm)
    import c2f_lib.models.moment_detr  # noqa: F401

    model = build_model(kind, config)
    converted, unmapped, uncovered = convert_state_dict(state, model, kind, word_classifier=word_vocab is not None)
    missing = [k for k in uncovered if not k.startswith(_OURS_ONLY)]
    if missing:
        raise ValueError(f"{path}: the checkpoint holds no weights for {missing[:8]} (opt and weights disagree?)")
    model.load_state_dict(converted, strict=False)
    return ReferenceImport(model.eval(), loss_weights_from_opt(opt, kind, protocol, str(path)), kind, config,
                           unmapped, uncovered, epoch)
