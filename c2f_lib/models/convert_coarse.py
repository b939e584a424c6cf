"""Import released X-Pool / T-MASS checkpoints into our models.

The reference trainers save `{"epoch", "state_dict", "optimizer", ...}` (or a bare state dict)
of a module holding (spec coarse §1.1, §1.3, §2.1):
    clip.*                                    HuggingFace transformers CLIPModel (incl. clip.logit_scale)
    pool_frames.cross_attn.{q,k,v,out}_proj.* the pooling block
    pool_frames.linear_proj.*, pool_frames.layer_norm{1,2,3}.*
    stochastic.std_branch.linear_proj.*       T-MASS radius, Linear(F -> D)
    stochastic.std_branch.learnable_scalar    declared but unused by the reference: dropped
optionally prefixed by "module." (DataParallel). The head goes into `XPool` / `TMASS` (the CLIP
logit scale becomes the head's); the CLIP weights are returned separately as a state dict for
`transformers.CLIPModel` (end-to-end use). Every key must be accounted for: unknown or missing
keys raise an error naming them (the reference loads with strict=False and ignores them silently).

    model, clip_state = convert_reference_checkpoint("model_best.pth", "tmass", prior="uniform01")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from c2f_lib.errors import MissingFileError
from c2f_lib.models.tmass import TMASS, TMASSConfig
from c2f_lib.models.xpool import XPool, XPoolConfig

POOL_PREFIX, RADIUS_PREFIX, CLIP_PREFIX = "pool_frames.", "stochastic.std_branch.", "clip."
UNUSED_KEYS = {"stochastic.std_branch.learnable_scalar"}


def read_reference_state(source: str | Path | dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model state dict of a reference checkpoint file (or dict), "module." prefixes removed."""
    if isinstance(source, dict):
        payload = source
    else:
        path = Path(source)
        if not path.exists():
            raise MissingFileError("checkpoint not found", path)
        payload = torch.load(path, map_location="cpu", weights_only=False)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not any(k.split(".")[-1] in ("weight", "bias") for k in state):
        raise ValueError(f"{source if not isinstance(source, dict) else 'checkpoint'}: no model state dict found")
    return {k.removeprefix("module."): v for k, v in state.items()}


def convert_reference_checkpoint(source: str | Path | dict[str, Any], method: str, num_heads: int = 1,
                                 **config: Any) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Build an `XPool` ("xpool") or `TMASS` ("tmass") from a reference checkpoint.

    dim and (T-MASS) num_frames are read from the weights; num_heads cannot be (reference default 1);
    other config fields (dropout, prior, prior_std, num_trials, ...) pass through `config`.
    Returns (model in eval mode, CLIP state dict with the "clip." prefix removed).
    """
    state = read_reference_state(source)
    where = source if not isinstance(source, dict) else "checkpoint"
    pool = {k.removeprefix(POOL_PREFIX): v for k, v in state.items() if k.startswith(POOL_PREFIX)}
    radius = {k.removeprefix(RADIUS_PREFIX): v for k, v in state.items()
              if k.startswith(RADIUS_PREFIX) and k not in UNUSED_KEYS}
    clip = {k.removeprefix(CLIP_PREFIX): v for k, v in state.items() if k.startswith(CLIP_PREFIX)}
    unknown = sorted(k for k in state if not k.startswith((POOL_PREFIX, RADIUS_PREFIX, CLIP_PREFIX)))
    if unknown:
        raise ValueError(f"{where}: unexpected keys {unknown[:8]}")
    if "cross_attn.q_proj.weight" not in pool:
        raise ValueError(f"{where}: no pooling block (pool_frames.*) in the checkpoint")
    dim = pool["cross_attn.q_proj.weight"].shape[0]
    head: dict[str, torch.Tensor] = {f"pool.{k}": v for k, v in pool.items()}
    if "logit_scale" in clip:
        head["logit_scale"] = clip.pop("logit_scale").reshape(())
    if method == "xpool":
        if radius:
            raise ValueError(f"{where}: has a T-MASS stochastic module; convert it with method='tmass'")
        model: nn.Module = XPool(XPoolConfig(dim=dim, num_heads=num_heads, **config))
    elif method == "tmass":
        if "linear_proj.weight" not in radius:
            raise ValueError(f"{where}: no stochastic.std_branch.linear_proj in the checkpoint")
        num_frames = radius["linear_proj.weight"].shape[1]
        model = TMASS(TMASSConfig(dim=dim, num_frames=num_frames, num_heads=num_heads, **config))
        head = {f"xpool.{k}": v for k, v in head.items()}
        head.update({f"radius_proj.{k.removeprefix('linear_proj.')}": v for k, v in radius.items()})
    else:
        raise ValueError(f"unknown method {method!r}; use 'xpool' or 'tmass'")
    defaults = model.state_dict()
    missing = sorted(set(defaults) - set(head) - {"logit_scale", "xpool.logit_scale"})
    extra = sorted(set(head) - set(defaults))
    if missing or extra:
        raise ValueError(f"{where}: missing keys {missing[:8]}, unexpected keys {extra[:8]}")
    model.load_state_dict({**defaults, **head})
    return model.eval(), clip
