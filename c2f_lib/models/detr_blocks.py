"""What Moment-DETR, QD-DETR and MESM share (one place; the model files stay thin): the config, positions
and TEF, the input projections, and the `FineGroundingModel` base class with its heads and `predict`.

The transformer layers are in `detr_layers` (encoder, text->video cross-attention, vanilla DETR decoder)
and `anchor_decoder` (the DAB-style decoder of QD-DETR / MESM). Positions are normalised sine
embeddings, so any video length works (no 150-s cap).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from c2f_lib.features.types import MomentSample
from c2f_lib.models.fine_batch import MomentBatch, collate_moments, group_key
from c2f_lib.models.fused import FusedSequential
from c2f_lib.models.span_utils import POSTPROCESS_PROTOCOLS, postprocess_windows


FFN_ACTIVATIONS = ("prelu", "relu")


@dataclass
class FineConfig:
    """Fields every fine model shares (defaults = the papers' QVHighlights setting)."""

    video_dim: int = 512          # clip feature size (TEF [t/L, (t+1)/L] is appended inside the model)
    text_dim: int = 512           # token feature size
    hidden_dim: int = 256
    n_heads: int = 8
    ffn_dim: int = 1024
    dropout: float = 0.1
    input_dropout: float = 0.5
    n_input_proj: int = 2
    ffn_activation: str = "prelu"  # transformer FFN: "prelu" (QD-DETR, MESM) or "relu" (Moment-DETR)
    enc_layers: int = 2
    dec_layers: int = 2
    num_queries: int = 10
    use_tef: bool = True
    round_to_clip: bool = True    # post-processing: snap windows to the clip grid
    nms_threshold: float | None = None
    predict_batch_size: int = 32
    # Post-processing of `predict` (span_utils.postprocess_windows): "correct" (ours) or "reference"
    # (the official code: spans x duration, clamp to [0, max_ts_val], fp16 saliency); docs/DEVIATIONS.md.
    postprocess: str = "correct"
    max_ts_val: float = 150.0

    def __post_init__(self) -> None:
        if self.ffn_activation not in FFN_ACTIVATIONS:
            raise ValueError(f"ffn_activation must be one of {FFN_ACTIVATIONS}, got {self.ffn_activation!r}")
        if self.postprocess not in POSTPROCESS_PROTOCOLS:
            raise ValueError(f"postprocess must be one of {POSTPROCESS_PROTOCOLS}, got {self.postprocess!r}")


# ----------------------------------------------------------------------------- small pieces
def sine_embed(x: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine/cosine embedding of scalars in [0, 1]: [...] -> [..., dim] (2π scaled, as DETR/DAB)."""
    freqs = temperature ** (2 * torch.arange(dim // 2, device=x.device) / dim)              # [dim/2]
    angles = x[..., None] * 2 * math.pi / freqs                                          # [..., dim/2]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def video_positions(mask: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, L] validity mask -> [B, L, dim] normalised sine positions (length-agnostic).

    Clip t of L sits at (t+1)/L, exactly the references' normalised `PositionEmbeddingSine`, so
    converted checkpoints see the positions they were trained with.
    """
    cum = mask.float().cumsum(1)
    return sine_embed(cum / (cum[:, -1:] + 1e-6), dim)


def temporal_endpoint_features(mask: torch.Tensor) -> torch.Tensor:
    """TEF: [B, L] -> [B, L, 2] = [t/L, (t+1)/L] for the real clips, 0 on padding."""
    t = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32)[None]
    length = mask.sum(1, keepdim=True).clamp(min=1)
    return torch.stack([t / length, (t + 1) / length], -1) * mask[..., None]


class MLP(nn.Sequential):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, n_layers: int):
        dims = [in_dim] + [hidden] * (n_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < n_layers - 1:
                layers.append(nn.ReLU())
        super().__init__(*layers)


def input_projection(in_dim: int, d: int, n_layers: int, dropout: float) -> FusedSequential:
    """n x [LayerNorm -> Dropout -> Linear], ReLU after all but the last (the reference's LinearLayer stack)."""
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers += [nn.LayerNorm(in_dim if i == 0 else d), nn.Dropout(dropout), nn.Linear(in_dim if i == 0 else d, d)]
        if i < n_layers - 1:
            layers.append(nn.ReLU())
    return FusedSequential(*layers)


# ----------------------------------------------------------------------------- base model
class FineGroundingModel(nn.Module):
    """Shared input projections, heads and `predict` of the three DETR-family models.

    Subclasses implement `forward(batch: MomentBatch) -> dict` with at least
    pred_logits [B, Q, 2] (index 0 = foreground), pred_spans [B, Q, 2] (normalised c, w),
    saliency [B, L], aux_outputs (earlier decoder layers).
    """

    cfg: FineConfig

    def __init__(self, cfg: FineConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_dim
        self.input_vid_proj = input_projection(cfg.video_dim + 2 * cfg.use_tef, d, cfg.n_input_proj,
                                               cfg.input_dropout)
        self.input_txt_proj = input_projection(cfg.text_dim, d, cfg.n_input_proj, cfg.input_dropout)
        self.class_embed = nn.Linear(d, 2)

    def project_video(self, batch: MomentBatch) -> torch.Tensor:     # -> [B, L, d]
        video = batch.video
        if self.cfg.use_tef:
            video = torch.cat([video, temporal_endpoint_features(batch.video_mask)], -1)
        return self.input_vid_proj(video)

    def heads(self, hidden: torch.Tensor, spans: torch.Tensor, saliency: torch.Tensor) -> dict:
        """hidden [n_layers, B, Q, d], spans [n_layers, B, Q, 2] -> the output dict (last layer + aux)."""
        logits = self.class_embed(hidden)
        aux = [{"pred_logits": lg, "pred_spans": sp} for lg, sp in zip(logits[:-1], spans[:-1])]
        return {"pred_logits": logits[-1], "pred_spans": spans[-1], "saliency": saliency, "aux_outputs": aux}

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """Xavier-uniform on every matrix (the references' transformer init); zero-init heads are kept."""
        for name, p in module.named_parameters():
            if p.dim() > 1 and "bbox_embed.4" not in name:
                nn.init.xavier_uniform_(p)

    def prediction_batches(self, samples: list[MomentSample]) -> list[list[int]]:
        """Indices of the samples for each inference batch (MESM overrides this to group videos)."""
        size = self.cfg.predict_batch_size
        return [list(range(i, min(i + size, len(samples)))) for i in range(0, len(samples), size)]

    @torch.no_grad()
    def predict(self, samples: list[MomentSample], top_k: int = 10) -> list[dict]:
        """QVHighlights submission dicts (ranked windows in seconds, one saliency score per clip)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        results: list[dict | None] = [None] * len(samples)
        for index in self.prediction_batches(samples):
            chunk = [samples[i] for i in index]
            out = self(collate_moments(chunk).to(device))
            probs = out["pred_logits"].float().softmax(-1)[..., 0]          # [B, Q] foreground
            for j, s in zip(range(len(chunk)), chunk):
                extent = s.clip_feats.shape[0] * s.clip_len
                windows = postprocess_windows(out["pred_spans"][j].cpu(), probs[j].cpu(), extent, s.clip_len,
                                              top_k=top_k, nms_threshold=self.cfg.nms_threshold,
                                              round_to_clip=self.cfg.round_to_clip, duration=s.duration,
                                              protocol=self.cfg.postprocess, max_ts_val=self.cfg.max_ts_val)
                saliency = out["saliency"][j, : s.clip_feats.shape[0]].float().cpu()
                results[index[j]] = {"qid": s.qid, "query": s.query, "vid": s.vid,
                                     "pred_relevant_windows": windows,
                                     "pred_saliency_scores": saliency_values(saliency, self.cfg.postprocess)}
        self.train(was_training)
        return results  # type: ignore[return-value]


def saliency_values(saliency: torch.Tensor, protocol: str) -> list[float]:
    """[L] -> the submitted per-clip scores: 4 decimals (ours) or float16 values (the references' `.half()`,
    whose ties can change HIT@1)."""
    if protocol == "reference":
        return saliency.half().tolist()
    return [round(v, 4) for v in saliency.tolist()]


NEGATIVE_PARTNERS = ("other_video", "other_group", "roll")


def negative_partner(vids: list[str], mode: str = "other_video") -> torch.Tensor | None:
    """[B] long: each query's negative-pair partner, or None when there is none.

    "roll": the next query, (i + 1) % B (QD-DETR, even when it shows the same video); "other_video":
    the next query of a *different* video; "other_group": of a different YouTube-id group (MESM's rule;
    MESM draws it at random, we take the next one, the batch being shuffled).
    """
    B = len(vids)
    if mode == "roll":
        return torch.arange(1, B + 1) % B if B > 1 else None
    keys = [group_key(v) for v in vids] if mode == "other_group" else vids
    partner = []
    for i in range(B):
        j = next((j % B for j in range(i + 1, i + B) if keys[j % B] != keys[i]), None)
        if j is None:
            return None
        partner.append(j)
    return torch.tensor(partner)
