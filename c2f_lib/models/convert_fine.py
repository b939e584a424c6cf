"""Import released QD-DETR / MESM checkpoints (`ckpt["model"]` state dicts) into our modules.

Key renaming is rule based (reference name -> ours), from the reference code (QD `qd_detr/model.py`,
`transformer.py`; MESM `model/model.py`, `model/transformer.py`):
* layer stacks: QD `transformer.t2v_encoder.layers.i`, MESM `t2v_encoder.t2v_encoder.layers.i`,
  `transformer.encoder.layers.i`, MESM `enhance_encoder.t2v_encoder.layers.i` (FW) and
  `ss_reconstructor.recon_trans.layers.i` (SS); inside a layer `self_attn` (nn.MultiheadAttention),
  `linear1`/`activation` (PReLU)/`linear2` and `norm1`/`norm2`;
* the DAB decoder `transformer.decoder.layers.i`: self-attention `sa_{q,k}{content,pos}_proj`, `sa_v_proj`,
  `self_attn.out_proj`; cross-attention `ca_{q,k}{content,pos}_proj` (`ca_qpos_proj` in layer 0 only),
  `ca_v_proj`, `ca_qpos_sine_proj`, `cross_attn.out_proj`; `norm1..3`, FFN; plus the decoder's
  `ref_point_head`, `query_scale`, `ref_anchor_head`, `bbox_embed` MLPs and final `norm`;
* heads and embeddings: `input_{vid,txt}_proj`, `span_embed`, `class_embed`, `saliency_proj{1,2}`,
  `global_rep_{token,pos}`, `query_embed`, `ss_reconstructor.masked_sent_token`;
* MESM's masked-word branch: the [MASK] feature `masked_token` and the hidden layer of `output_txt_proj`
  (`.0` = LinearLayer: LayerNorm, Linear, ReLU) -> `masked_word_token`, `mlm_vocab_head.{0,2}`.
Reference-only parts stay `unmapped`: the frozen text encoder; MESM's word classifier `output_txt_proj.1`,
whose K+3 rows follow MESM's own class order (its train+test frequency table of words, plus unknown/start/
end) while ours follow `word_vocab` (token ids ranked on our training captions, + unknown; or the whole
vocabulary), so even an equal shape would mean other words; `unknown_token` (we keep an unknown word's feature);
TACoS' second FFN `*_1`; the unused `ss_reconstructor.output_sent_proj` and QD's optional
contrastive-alignment projections. Our word classifier (`mlm_vocab_head.4`) and feature-regression head
(`mlm_head`) stay `uncovered`. Nothing is silently dropped: the caller gets both lists.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

_FFN = {"linear1": "ffn.0", "activation": "ffn.1", "linear2": "ffn.3"}
_ENCODER_PARTS = {**_FFN, "self_attn": "attn", "norm1": "norm1", "norm2": "norm2"}
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
_STACK_KEY = [(re.compile(rf"^{prefix}\.(\d+)\.(.+)\.(\w+)$"), ours, parts) for prefix, ours, parts in _STACKS]
# Reference input projection: n x LinearLayer(LayerNorm, net=[Dropout, Linear]); ours is one flat
# Sequential [LN, Dropout, Linear, ReLU, LN, Dropout, Linear] (4 entries per layer).
_PROJ = re.compile(r"^(input_vid_proj|input_txt_proj)\.(\d+)\.(LayerNorm|net\.1)\.(weight|bias)$")
# Reference MLP: `.layers.j` Linear list; ours nn.Sequential with ReLUs in between (Linear j at 2j).
_MLP = re.compile(r"^(transformer\.decoder\.)?(ref_point_head|query_scale|ref_anchor_head|bbox_embed|span_embed)"
                  r"\.layers\.(\d+)\.(weight|bias)$")
_SAME = {"class_embed", "saliency_proj1", "saliency_proj2", "global_rep_token", "global_rep_pos", "query_embed"}
_RENAMED = {"transformer.decoder.norm.weight": "decoder.norm.weight",
            "transformer.decoder.norm.bias": "decoder.norm.bias",
            "ss_reconstructor.masked_sent_token": "masked_sent_token",
            "masked_token": "masked_word_token",
            "output_txt_proj.0.LayerNorm.weight": "mlm_vocab_head.0.weight",
            "output_txt_proj.0.LayerNorm.bias": "mlm_vocab_head.0.bias",
            "output_txt_proj.0.net.1.weight": "mlm_vocab_head.2.weight",
            "output_txt_proj.0.net.1.bias": "mlm_vocab_head.2.bias"}


def _layer_part(module: str, parts: dict[str, str]) -> str | None:
    """Our name for a sub-module path inside one layer (longest reference prefix wins)."""
    for ref in sorted(parts, key=len, reverse=True):
        if module == ref or module.startswith(ref + "."):
            return parts[ref] + module[len(ref):]
    return None


def rename_key(key: str) -> str | None:
    """Our name for a reference key, or None when it has no counterpart."""
    key = key.removeprefix("module.")
    if m := _PROJ.match(key):
        index = 4 * int(m[2]) + (0 if m[3] == "LayerNorm" else 2)
        return f"{m[1]}.{index}.{m[4]}"
    if m := _MLP.match(key):
        owner = "decoder." if m[1] or m[2] != "span_embed" else ""
        return f"{owner}{m[2]}.{2 * int(m[3])}.{m[4]}"
    for pattern, ours, parts in _STACK_KEY:
        if m := pattern.match(key):
            part = _layer_part(m[2], parts)
            return None if part is None else f"{ours}.{m[1]}.{part}.{m[3]}"
    if key in _RENAMED:
        return _RENAMED[key]
    return key if key.split(".")[0] in _SAME else None


def convert_state_dict(reference: dict[str, torch.Tensor], model: nn.Module
                       ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """-> (state dict in our names, unmapped reference keys, model keys left uncovered)."""
    ours = model.state_dict()
    converted, unmapped = {}, []
    for key, value in reference.items():
        name = rename_key(key)
        if name is None or name not in ours:
            unmapped.append(key)
        elif ours[name].shape != value.shape:
            raise ValueError(f"{key} -> {name}: shape {tuple(value.shape)} != ours {tuple(ours[name].shape)}")
        elif name in converted:
            raise ValueError(f"{key} -> {name}: two reference keys map to the same tensor")
        else:
            converted[name] = value
    return converted, unmapped, sorted(set(ours) - set(converted))


def load_reference_checkpoint(path: str | Path, model: nn.Module) -> dict[str, list[str]]:
    """Load a released QD-DETR/MESM `.ckpt` into `model`; returns what could not be mapped."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no state dict (expected a dict with a 'model' entry)")
    converted, unmapped, uncovered = convert_state_dict(state, model)
    model.load_state_dict(converted, strict=False)
    return {"unmapped": unmapped, "uncovered": uncovered}
