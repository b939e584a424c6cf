"""Import released QD-DETR / MESM checkpoints (`ckpt["model"]` state dicts) into our modules.

Key renaming is rule based (reference name -> ours). Covered: input projections, T2V / encoder /
FW-enhancer / SS-reconstructor layers, heads, global token and anchors. Not covered: the reference
DAB decoder layers (separate content/position projections in self-attention), which have no
one-to-one counterpart here; they are returned as `unmapped` and the decoder keeps its init.
Nothing is silently dropped: the caller gets both lists.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

_LAYER_PARTS = [(r"\.self_attn\.", ".attn."), (r"\.linear1\.", ".ffn.0."), (r"\.activation\.", ".ffn.1."),
                (r"\.linear2\.", ".ffn.3.")]
_PREFIXES = [(r"^transformer\.t2v_encoder\.layers\.(\d+)\.", r"t2v_encoder.\1."),
             (r"^transformer\.encoder\.layers\.(\d+)\.", r"encoder.\1."),
             (r"^(?:transformer\.)?enhance_encoder\.layers\.(\d+)\.", r"enhance_encoder.\1."),
             (r"^(?:transformer\.)?sent_rec_encoder\.recon_trans\.layers\.(\d+)\.", r"ss_layers.\1."),
             (r"^(?:transformer\.)?sent_rec_encoder\.masked_sent_token$", "masked_sent_token")]
# Reference input projection: n x LinearLayer(LayerNorm, net=[Dropout, Linear]); ours is one flat
# Sequential [LN, Dropout, Linear, ReLU, LN, Dropout, Linear] (4 entries per layer).
_PROJ = re.compile(r"^(input_vid_proj|input_txt_proj)\.(\d+)\.(LayerNorm|net\.1)\.(weight|bias)$")
_MLP = re.compile(r"^(?:transformer\.decoder\.)?(bbox_embed|span_embed)\.layers\.(\d+)\.(weight|bias)$")


def rename_key(key: str) -> str | None:
    """Our name for a reference key, or None when it has no counterpart."""
    if m := _PROJ.match(key):
        index = 4 * int(m[2]) + (0 if m[3] == "LayerNorm" else 2)
        return f"{m[1]}.{index}.{m[4]}"
    if m := _MLP.match(key):    # QD/MESM share span_embed with the decoder's bbox_embed
        return f"decoder.bbox_embed.{2 * int(m[2])}.{m[3]}"
    for pattern, repl in _PREFIXES:
        if re.match(pattern, key):
            key = re.sub(pattern, repl, key)
            for part, ours in _LAYER_PARTS:
                key = re.sub(part, ours, key)
            return key
    if key.split(".")[0] in {"class_embed", "saliency_proj1", "saliency_proj2", "global_rep_token",
                             "global_rep_pos", "query_embed", "masked_sent_token"}:
        return key
    return None


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
