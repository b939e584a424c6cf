"""Importing released QD-DETR / MESM checkpoints: every reference tensor lands, and the decoder computes
what the reference decoder computes with the same weights.

The reference key names and shapes are listed here from the reference code (QD-DETR `qd_detr/model.py` +
`transformer.py`, MESM `model/model.py` + `model/transformer.py`), independently of the converter's rules.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import c2f_lib.models.mesm  # noqa: F401  (registers qd_detr + mesm)
from c2f_lib.models.convert_fine import convert_state_dict, rename_key
from c2f_lib.models.detr_blocks import video_positions
from c2f_lib.models.fine_batch import collate_moments
from c2f_lib.models.registry import build_model
from c2f_lib.models.span_utils import inverse_sigmoid
from test_fine_models import SMALL, make_samples

D, FFN, HEADS, Q = SMALL["hidden_dim"], SMALL["ffn_dim"], SMALL["n_heads"], 10
DV, DT = SMALL["video_dim"], SMALL["text_dim"]
LINEAR = lambda out, inp: {"weight": (out, inp), "bias": (out,)}  # noqa: E731
NORM = {"weight": (D,), "bias": (D,)}


def _module(prefix: str, params: dict) -> dict[str, tuple]:
    return {f"{prefix}.{k}": v for k, v in params.items()}


def _mlp(prefix: str, dims: list[int]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for j, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out |= _module(f"{prefix}.layers.{j}", LINEAR(b, a))
    return out


def _ffn(prefix: str) -> dict[str, tuple]:
    return (_module(f"{prefix}.linear1", LINEAR(FFN, D)) | _module(f"{prefix}.linear2", LINEAR(D, FFN))
            | {f"{prefix}.activation.weight": (1,)})


def _encoder_layer(prefix: str) -> dict[str, tuple]:      # nn.MultiheadAttention + FFN, post-norm
    return (_ffn(prefix) | _module(f"{prefix}.norm1", NORM) | _module(f"{prefix}.norm2", NORM)
            | {f"{prefix}.self_attn.in_proj_weight": (3 * D, D), f"{prefix}.self_attn.in_proj_bias": (3 * D,)}
            | _module(f"{prefix}.self_attn.out_proj", LINEAR(D, D)))


def _decoder_layer(prefix: str, first: bool) -> dict[str, tuple]:
    names = ["sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj", "sa_v_proj", "self_attn.out_proj",
             "ca_qcontent_proj", "ca_kcontent_proj", "ca_kpos_proj", "ca_v_proj", "ca_qpos_sine_proj",
             "cross_attn.out_proj"] + (["ca_qpos_proj"] if first else [])   # keep_query_pos=False
    out = _ffn(prefix)
    for name in names:
        out |= _module(f"{prefix}.{name}", LINEAR(D, D))
    for k in (1, 2, 3):
        out |= _module(f"{prefix}.norm{k}", NORM)
    return out


def _projection(prefix: str, in_dim: int) -> dict[str, tuple]:   # 2 x LinearLayer(LayerNorm, Dropout, Linear)
    return (_module(f"{prefix}.0.LayerNorm", {"weight": (in_dim,), "bias": (in_dim,)})
            | _module(f"{prefix}.0.net.1", LINEAR(D, in_dim)) | _module(f"{prefix}.1.LayerNorm", NORM)
            | _module(f"{prefix}.1.net.1", LINEAR(D, D)))


def reference_shapes(kind: str) -> tuple[dict[str, tuple], set[str]]:
    """(reference key -> shape, the keys with no counterpart in our model) for `SMALL` settings."""
    t2v = "transformer.t2v_encoder" if kind == "qd_detr" else "t2v_encoder.t2v_encoder"
    shapes = (_projection("input_vid_proj", DV + 2) | _projection("input_txt_proj", DT)
              | _mlp("span_embed", [D, D, D, 2]) | _module("class_embed", LINEAR(2, D))
              | {"query_embed.weight": (Q, 2), "global_rep_token": (D,), "global_rep_pos": (D,)}
              | _module("saliency_proj1", LINEAR(D, D)) | _module("saliency_proj2", LINEAR(D, D))
              | _module("transformer.decoder.norm", NORM)
              | _mlp("transformer.decoder.ref_point_head", [D, D, D])
              | _mlp("transformer.decoder.query_scale", [D, D, D])
              | _mlp("transformer.decoder.ref_anchor_head", [D, D, 1])
              | _mlp("transformer.decoder.bbox_embed", [D, D, D, 2]))
    for i in range(2):
        shapes |= (_encoder_layer(f"{t2v}.layers.{i}") | _encoder_layer(f"transformer.encoder.layers.{i}")
                   | _decoder_layer(f"transformer.decoder.layers.{i}", first=i == 0))
    if kind == "qd_detr":
        return shapes, set()
    for i in range(2):
        shapes |= _encoder_layer(f"enhance_encoder.t2v_encoder.layers.{i}")
    for i in range(4):
        shapes |= _encoder_layer(f"ss_reconstructor.recon_trans.layers.{i}")
    # MESM's masked-word branch (rec_fw): [MASK] feature and the hidden LinearLayer of `output_txt_proj`
    mlm = {"masked_token": (DT,)} | _module("output_txt_proj.0.LayerNorm", NORM) \
        | _module("output_txt_proj.0.net.1", LINEAR(D, D))
    extra = ({"unknown_token": (DT,), "clip_text_encoder.weight": (3,)}
             | _module("output_txt_proj.1", LINEAR(1114, D))      # classes: top-1111 dataset tokens + 3
             | _projection("ss_reconstructor.output_sent_proj", D)
             | _module("enhance_encoder.t2v_encoder.layers.0.linear1_1", LINEAR(FFN, D)))
    return shapes | mlm | extra | {"ss_reconstructor.masked_sent_token": (D,)}, set(extra)


@pytest.mark.parametrize("kind", ["qd_detr", "mesm"])
def test_every_reference_tensor_lands_once(kind):
    torch.manual_seed(0)
    model = build_model(kind, SMALL)
    shapes, reference_only = reference_shapes(kind)
    reference = {k: torch.randn(s) for k, s in shapes.items()}
    converted, unmapped, uncovered = convert_state_dict(reference, model)
    assert set(unmapped) == reference_only
    ours_only = {k for k in model.state_dict() if k.startswith(("mlm_head.", "mlm_vocab_head.4."))}
    assert set(uncovered) == ours_only               # the decoder and MESM's MLM hidden layer are covered now
    assert len(converted) == len(reference) - len(reference_only)        # one reference key per tensor
    assert all(torch.equal(converted[rename_key(k)], v) for k, v in reference.items() if k not in reference_only)
    with pytest.raises(ValueError, match="shape"):
        convert_state_dict({"transformer.decoder.layers.1.ca_qpos_sine_proj.weight": torch.zeros(D, 2 * D)}, model)


@pytest.mark.parametrize("kind", ["qd_detr", "mesm"])
def test_converted_model_reproduces_the_original(kind):
    torch.manual_seed(0)
    original = build_model(kind, SMALL).eval()
    ours = original.state_dict()
    shapes, reference_only = reference_shapes(kind)
    reference = {k: ours[rename_key(k)].clone() for k in shapes if k not in reference_only}
    torch.manual_seed(1)
    fresh = build_model(kind, SMALL).eval()
    batch = collate_moments(make_samples())
    before = fresh(batch)
    converted, _, _ = convert_state_dict(reference, fresh)
    fresh.load_state_dict(converted, strict=False)
    want, got = original(batch), fresh(batch)
    assert not torch.allclose(before["pred_spans"], want["pred_spans"])
    for key in ("pred_logits", "pred_spans", "saliency"):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)


# ------------------------------------------------------------------ the reference decoder, written from its code
def _linear(state, name, x):
    return F.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


def _ref_mlp(state, prefix, x, n):
    for j in range(n):
        x = _linear(state, f"{prefix}.layers.{j}", x)
        x = F.relu(x) if j < n - 1 else x
    return x


def _ref_sine(points, d):                    # gen_sineembed_for_position: [B, Q, 2] -> [B, Q, d]
    each = d // 2
    dim_t = 10000 ** (2 * (torch.arange(each) // 2) / each)
    parts = []
    for c in range(2):
        x = points[..., c, None] * 2 * math.pi / dim_t
        parts.append(torch.stack([x[..., 0::2].sin(), x[..., 1::2].cos()], -1).flatten(-2))
    return torch.cat(parts, -1)


def _ref_attention(q, k, v, heads, key_padding=None):   # no in-projection (Conditional-DETR attention)
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_padding is not None:
        logits = logits.masked_fill(key_padding[:, None, None, :], -torch.inf)
    return (logits.softmax(-1) @ v).transpose(1, 2).flatten(-2)


def _ref_norm(state, name, x):
    return F.layer_norm(x, x.shape[-1:], state[f"{name}.weight"], state[f"{name}.bias"])


def _reference_decoder(state, memory, padding, pos, n_layers=2):
    """QD-DETR/MESM decoder + span head, batch-first: -> (hs [n, B, Q, d], spans [n, B, Q, 2])."""
    B, d = memory.shape[0], memory.shape[-1]
    ref = state["query_embed.weight"].sigmoid()[None].expand(B, -1, -1)
    tgt, refs, inter, dec = torch.zeros(B, ref.shape[1], d), [ref], [], "transformer.decoder"
    for i in range(n_layers):
        p = f"{dec}.layers.{i}"
        sine = _ref_sine(ref, d)
        query_pos = _ref_mlp(state, f"{dec}.ref_point_head", sine, 2)
        sine = sine * (1 if i == 0 else _ref_mlp(state, f"{dec}.query_scale", tgt, 2))
        sine = sine * (_ref_mlp(state, f"{dec}.ref_anchor_head", tgt, 2).sigmoid()[..., 0] / ref[..., 1])[..., None]
        q = _linear(state, f"{p}.sa_qcontent_proj", tgt) + _linear(state, f"{p}.sa_qpos_proj", query_pos)
        k = _linear(state, f"{p}.sa_kcontent_proj", tgt) + _linear(state, f"{p}.sa_kpos_proj", query_pos)
        attn = _ref_attention(q, k, _linear(state, f"{p}.sa_v_proj", tgt), HEADS)
        tgt = _ref_norm(state, f"{p}.norm1", tgt + _linear(state, f"{p}.self_attn.out_proj", attn))
        q, k = _linear(state, f"{p}.ca_qcontent_proj", tgt), _linear(state, f"{p}.ca_kcontent_proj", memory)
        k_pos = _linear(state, f"{p}.ca_kpos_proj", pos)
        if i == 0:
            q, k = q + _linear(state, f"{p}.ca_qpos_proj", query_pos), k + k_pos
        q_sine = _linear(state, f"{p}.ca_qpos_sine_proj", sine)
        q = torch.cat([q.unflatten(-1, (HEADS, -1)), q_sine.unflatten(-1, (HEADS, -1))], -1).flatten(-2)
        k = torch.cat([k.unflatten(-1, (HEADS, -1)), k_pos.unflatten(-1, (HEADS, -1))], -1).flatten(-2)
        attn = _ref_attention(q, k, _linear(state, f"{p}.ca_v_proj", memory), HEADS, padding)
        tgt = _ref_norm(state, f"{p}.norm2", tgt + _linear(state, f"{p}.cross_attn.out_proj", attn))
        hidden = _linear(state, f"{p}.linear1", tgt)
        hidden = F.prelu(hidden, state[f"{p}.activation.weight"])
        tgt = _ref_norm(state, f"{p}.norm3", tgt + _linear(state, f"{p}.linear2", hidden))
        new = (_ref_mlp(state, f"{dec}.bbox_embed", tgt, 3) + inverse_sigmoid(ref)).sigmoid()
        if i != n_layers - 1:
            refs.append(new)
        ref = new.detach()
        inter.append(_ref_norm(state, f"{dec}.norm", tgt))
    hs = torch.stack(inter)
    return hs, (_ref_mlp(state, "span_embed", hs, 3) + inverse_sigmoid(torch.stack(refs))).sigmoid()


def test_decoder_matches_the_reference_formulas():
    torch.manual_seed(0)
    model = build_model("qd_detr", SMALL).eval()
    shapes, _ = reference_shapes("qd_detr")
    # random weights everywhere, incl. the zero-initialised refinement layer, so every term matters
    reference = {k: torch.randn(s) * (0.3 if len(s) > 1 else 1.0) for k, s in shapes.items()}
    converted, _, _ = convert_state_dict(reference, model)
    model.load_state_dict(converted)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    memory, pos = torch.randn(2, 9, D), video_positions(mask, D)
    anchors = model.query_embed.weight.sigmoid()[None].expand(2, -1, -1)
    with torch.no_grad():
        hidden, starts = model.decoder(memory, mask, pos, anchors)
        spans = (model.span_embed(hidden) + inverse_sigmoid(starts)).sigmoid()
        want_hidden, want_spans = _reference_decoder(reference, memory, ~mask, pos)
    torch.testing.assert_close(hidden, want_hidden, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(spans, want_spans, rtol=1e-4, atol=1e-4)


def test_video_positions_match_the_reference_sine_embedding():
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    x = mask.float().cumsum(1)
    x = x / (x[:, -1:] + 1e-6) * 2 * math.pi                  # PositionEmbeddingSine(normalize=True)
    dim_t = 10000 ** (2 * (torch.arange(D) // 2) / D)
    want = torch.stack([(x[..., None] / dim_t)[..., 0::2].sin(), (x[..., None] / dim_t)[..., 1::2].cos()], -1)
    torch.testing.assert_close(video_positions(mask, D)[mask], want.flatten(-2)[mask])


def test_mesm_masked_word_branch_lands_and_classifier_stays_reference_only():
    """masked_token / output_txt_proj.0 land on our MLM branch; the K+3-class reference classifier never
    does (its classes are dataset-frequency ranks, not token ids), even when the shapes agree."""
    torch.manual_seed(0)
    shapes, _ = reference_shapes("mesm")
    reference = {k: torch.randn(s) for k, s in shapes.items()}
    compact = build_model("mesm", {**SMALL, "word_vocab": list(range(1113))})   # 1113 words + unknown
    model = build_model("mesm", {**SMALL, "vocab_size": 1114})               # same shape as output_txt_proj.1
    assert compact.mlm_vocab_head[4].out_features == model.mlm_vocab_head[4].out_features == 1114
    assert "output_txt_proj.1.weight" in convert_state_dict(reference, compact)[1]
    converted, unmapped, uncovered = convert_state_dict(reference, model)
    assert torch.equal(converted["masked_word_token"], reference["masked_token"])
    assert torch.equal(converted["mlm_vocab_head.0.weight"], reference["output_txt_proj.0.LayerNorm.weight"])
    assert torch.equal(converted["mlm_vocab_head.2.weight"], reference["output_txt_proj.0.net.1.weight"])
    assert {"output_txt_proj.1.weight", "unknown_token"} <= set(unmapped)
    assert "mlm_vocab_head.4.weight" in uncovered
    model.load_state_dict(converted, strict=False)
    assert torch.equal(model.mlm_vocab_head[2].bias, reference["output_txt_proj.0.net.1.bias"])
    # without a vocabulary head the branch's layers are reported, not forced in
    plain = build_model("mesm", {**SMALL, "mlm_over_vocab": False})
    _, unmapped, _ = convert_state_dict(reference, plain)
    assert "output_txt_proj.0.net.1.weight" in unmapped and "masked_token" not in unmapped
