"""Converter from reference X-Pool / T-MASS checkpoints, on checkpoints built locally with their key layout."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from c2f_lib.models.convert_coarse import convert_reference_checkpoint

D, NF = 16, 4


def reference_state(seed=0, tmass=True):
    """Random weights under the reference key names (spec coarse §1.3, §2.1) + a tiny CLIP part."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    state = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        state[f"pool_frames.cross_attn.{name}.weight"] = torch.eye(D) + rnd(D, D)
        state[f"pool_frames.cross_attn.{name}.bias"] = rnd(D)
    state["pool_frames.linear_proj.weight"] = torch.eye(D) + rnd(D, D)
    state["pool_frames.linear_proj.bias"] = rnd(D)
    for i in (1, 2, 3):
        state[f"pool_frames.layer_norm{i}.weight"] = 1 + rnd(D)
        state[f"pool_frames.layer_norm{i}.bias"] = rnd(D)
    if tmass:
        state["stochastic.std_branch.linear_proj.weight"] = torch.eye(D, NF) + rnd(D, NF)
        state["stochastic.std_branch.linear_proj.bias"] = rnd(D)
        state["stochastic.std_branch.learnable_scalar"] = torch.empty(1)
    state["clip.logit_scale"] = torch.tensor(math.log(50.0))
    state["clip.text_projection.weight"] = rnd(D, 8)
    return {f"module.{k}": v for k, v in state.items()}


def reference_forward(state, text, frames):
    """The reference pooling + radius computed straight from the raw tensors (single head)."""
    s = {k.removeprefix("module."): v for k, v in state.items()}
    lin = lambda x, n: F.linear(x, s[f"pool_frames.{n}.weight"], s[f"pool_frames.{n}.bias"])  # noqa: E731
    ln = lambda x, i: F.layer_norm(x, (D,), s[f"pool_frames.layer_norm{i}.weight"],  # noqa: E731
                                   s[f"pool_frames.layer_norm{i}.bias"])
    t, f = ln(text, 1), ln(frames, 1)
    q, k, v = lin(t, "cross_attn.q_proj"), lin(f, "cross_attn.k_proj"), lin(f, "cross_attn.v_proj")
    a = (torch.einsum("td,vfd->tvf", q, k) / math.sqrt(D)).softmax(-1)
    o = ln(lin(torch.einsum("tvf,vfd->tvd", a, v), "cross_attn.out_proj"), 2)
    pooled = ln(o + lin(o, "linear_proj"), 3)
    cos = torch.einsum("td,vfd->tvf", F.normalize(text, dim=-1), F.normalize(frames, dim=-1))
    radius = F.linear(cos, s["stochastic.std_branch.linear_proj.weight"],
                      s["stochastic.std_branch.linear_proj.bias"]).exp() if "stochastic.std_branch.linear_proj.weight" in s else None
    return pooled, radius


def test_tmass_checkpoint_converts_and_matches_reference_outputs(tmp_path):
    state = reference_state()
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {}}, tmp_path / "model_best.pth")
    model, clip = convert_reference_checkpoint(tmp_path / "model_best.pth", "tmass", dropout=0.3)
    assert model.cfg.dim == D and model.cfg.num_frames == NF
    assert set(clip) == {"text_projection.weight"}
    assert model.logit_scale.item() == pytest.approx(math.log(50.0))
    g = torch.Generator().manual_seed(1)
    text, frames = torch.randn(5, D, generator=g), torch.randn(3, NF, D, generator=g)
    pooled, radius = reference_forward(state, text, frames)
    with torch.no_grad():
        assert torch.allclose(model.pool_frames(text, frames), pooled, atol=1e-5)
        assert torch.allclose(model.radius(text, frames), radius, atol=1e-5)


def test_xpool_checkpoint_and_errors():
    state = reference_state(tmass=False)
    model, _ = convert_reference_checkpoint({"state_dict": state}, "xpool")
    text, frames = torch.randn(4, D), torch.randn(3, NF, D)
    with torch.no_grad():
        assert torch.allclose(model.pool_frames(text, frames), reference_forward(state, text, frames)[0], atol=1e-5)
    with pytest.raises(ValueError, match="tmass"):
        convert_reference_checkpoint(reference_state(), "xpool")
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_reference_checkpoint({**state, "module.extra_head.weight": torch.zeros(1)}, "xpool")
    broken = {k: v for k, v in state.items() if "layer_norm3.bias" not in k}
    with pytest.raises(ValueError, match="layer_norm3"):
        convert_reference_checkpoint(broken, "xpool")


def test_clip_part_loads_into_transformers_clip():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "vocab_size": 50, "max_position_embeddings": 10},
        vision_config={"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 8, "patch_size": 4},
        projection_dim=D)
    clip_model = transformers.CLIPModel(config)
    state = {k: v for k, v in reference_state().items() if "clip." not in k}
    state.update({f"clip.{k}": v for k, v in clip_model.state_dict().items()})
    model, clip_state = convert_reference_checkpoint(state, "tmass")
    fresh = transformers.CLIPModel(config)
    fresh.load_state_dict(clip_state, strict=False)
    missing = set(fresh.state_dict()) - set(clip_state)
    assert missing <= {"logit_scale"} and all(
        torch.equal(fresh.state_dict()[k], v) for k, v in clip_state.items())
    assert model.logit_scale.item() == pytest.approx(clip_model.logit_scale.item())
