"""X-Pool (Gorti et al., CVPR'22): text-conditioned attention pooling of frame embeddings.

Every video is pooled once *per query*: the text attends over the video's frames, so the
similarity of (text t, video v) is cos(t, pool(v | t)) (spec coarse §1.3-1.5). The pooling block
is the reference one: a shared LayerNorm on both modalities, single-layer cross-attention, LN,
a linear branch with dropout, LN; linear weights initialised to the identity.

All-pairs pooling is the expensive part of evaluation (T x V pairs). `FramePooler` computes it
exactly but without a D x D matrix product per pair: the output projection and the linear branch
are linear, and LayerNorm-2 is affine once its per-pair mean and scale are known, so both can be
pushed inside the attention-weighted sum over frames and applied once per (video, frame).
`literal_pool` is the textbook form; a test checks that both agree.

Shapes: T texts, V videos, F frames, D dim, H heads. Embeddings are raw (not normalised) backbone
features; similarities normalise.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from c2f_lib.models.registry import register
from c2f_lib.distributed import gather_rows, rank_and_world

LOGIT_SCALE_MAX = math.log(100.0)  # CLIP's init and the clamp applied after every step


@dataclass
class XPoolConfig:
    dim: int = 512
    num_heads: int = 1
    dropout: float = 0.3                    # on the linear branch only (reference)
    logit_scale_init: float = LOGIT_SCALE_MAX
    mask_duplicate_videos: bool = True      # same-video captions in a batch are not negatives


# ------------------------------------------------------------------------------------------------
# The pooling block


class PreparedVideos(NamedTuple):
    """Per-(video, head, frame) terms of the pooling block, computed once for a gallery.

    K = H * F attention slots per video. `branches` holds, for every slot, what it contributes to the
    input of LN3 once scaled by LN2's per-pair 1/std: gamma2 * u and linear_proj(gamma2 * u), where u is
    the slot's share of out_proj (centred over D). They are kept separate ([V, K, 2D]) only when
    dropout is active, because dropout acts on the linear branch alone; otherwise summed ([V, K, D]).
    """

    keys: torch.Tensor      # [V, H, F, D/H]
    branches: torch.Tensor  # [V, K, 2D] (dropout active) or [V, K, D]
    gram: torch.Tensor      # [V, K, K] u_k . u_l     (LN2 variance as a quadratic form in the weights)
    cross: torch.Tensor     # [V, K]    u_k . centred out_proj bias


class FramePooler(nn.Module):
    """pool(video | text): text-conditioned cross-attention over frames (spec §1.3)."""

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.3):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.cross_attn = nn.ModuleDict({name: nn.Linear(dim, dim)
                                         for name in ("q_proj", "k_proj", "v_proj", "out_proj")})
        self.linear_proj = nn.Linear(dim, dim)
        self.layer_norm1 = nn.LayerNorm(dim)   # shared by text and frames
        self.layer_norm2 = nn.LayerNorm(dim)
        self.layer_norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        for module in [*self.cross_attn.values(), self.linear_proj]:
            nn.init.eye_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """text [T, D], frames [V, F, D] -> pooled [T, V, D] (LN3 output, not normalised)."""
        return self.pool(text, self.prepare(frames))

    def _dropout_active(self) -> bool:
        return self.training and self.dropout.p > 0

    def _out_bias(self) -> torch.Tensor:
        bias = self.cross_attn["out_proj"].bias
        return bias - bias.mean()                                              # [D], centred

    def prepare(self, frames: torch.Tensor) -> PreparedVideos:
        V, Fn, D = frames.shape
        H = self.num_heads
        attn = self.cross_attn
        f = self.layer_norm1(frames)
        keys = attn["k_proj"](f).view(V, Fn, H, D // H).transpose(1, 2)      # [V, H, F, dh]
        values = attn["v_proj"](f).view(V, Fn, H, D // H).transpose(1, 2)    # [V, H, F, dh]
        out_w = attn["out_proj"].weight.view(D, H, D // H)
        u = torch.einsum("vhfe,dhe->vhfd", values, out_w).reshape(V, H * Fn, D)
        u = u - u.mean(-1, keepdim=True)                                      # [V, K, D]
        normed = u * self.layer_norm2.weight
        linear = normed @ self.linear_proj.weight.T
        branches = torch.cat([normed, linear], -1) if self._dropout_active() else normed + linear
        return PreparedVideos(keys, branches, u @ u.transpose(1, 2), u @ self._out_bias())

    def pool(self, text: torch.Tensor, videos: PreparedVideos, paired: bool = False) -> torch.Tensor:
        """Pool every video by every text -> [T, V, D]; `paired`: video i by text i only -> [N, D].

        With o = out_proj(attention output) and oc = o - mean(o) = sum_k w_k u_k + centred bias:
        LN2(o) = s * gamma2 * oc + beta2 with s = 1/sqrt(|oc|^2/D + eps) and |oc|^2 a quadratic form in
        the weights w (`gram`, `cross`); linear_proj(LN2(o)) = s * W gamma2 oc + linear_proj(beta2).
        So LN3's input is s * (sum_k w_k branch_k + const) + const': one weighted sum per pair.
        """
        H, dh = videos.keys.shape[1], videos.keys.shape[-1]
        D = H * dh
        q = self.cross_attn["q_proj"](self.layer_norm1(text)).view(-1, H, dh)  # [T, H, dh]
        if paired:
            logits = torch.einsum("nhe,nhfe->nhf", q, videos.keys)
            weights = (logits / math.sqrt(dh)).softmax(-1).flatten(-2)         # [N, K]
            quad = torch.einsum("nk,nkl,nl->n", weights, videos.gram, weights)
            mixed = torch.einsum("nk,nkd->nd", weights, videos.branches)
            cross = (weights * videos.cross).sum(-1)
        else:  # attention video-major [V, T, K] so that the weighted sums are matmuls batched over videos
            logits = torch.einsum("the,vhfe->vthf", q, videos.keys)
            weights = (logits / math.sqrt(dh)).softmax(-1).flatten(-2)         # [V, T, K]
            quad = ((torch.bmm(weights, videos.gram) * weights).sum(-1)).T      # [T, V]
            cross = torch.bmm(weights, videos.cross[..., None])[..., 0].T       # [T, V]
            mixed = _bmm_text_major(weights, videos.branches)                  # [T, V, D or 2D]
        out_bias = self._out_bias()
        ln2, lin = self.layer_norm2, self.linear_proj
        bias_normed = out_bias * ln2.weight
        bias_linear = bias_normed @ lin.weight.T
        oc_sq = quad + 2 * cross + out_bias.pow(2).sum()                      # |oc|^2 per pair
        scale = torch.rsqrt(oc_sq / D + ln2.eps)[..., None]                    # LN2's 1/std
        if mixed.shape[-1] == 2 * D:                                           # dropout on the linear branch
            normed = scale * (mixed[..., :D] + bias_normed) + ln2.bias
            linear = scale * (mixed[..., D:] + bias_linear) + lin(ln2.bias)
            pre_ln3 = normed + self.dropout(linear)
        else:
            pre_ln3 = torch.addcmul(ln2.bias + lin(ln2.bias), scale, mixed + (bias_normed + bias_linear))
        return self.layer_norm3(pre_ln3)


def _bmm_text_major(weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """weights [V, T, K] @ values [V, K, E] -> [T, V, E], written text-major without a transpose copy
    when no gradient is needed (bmm into a strided output). Under autocast (mixed dtypes; out= ops are
    not autocast) the plain bmm is used."""
    if (torch.is_grad_enabled() and (weights.requires_grad or values.requires_grad)) \
            or weights.dtype != values.dtype or torch.is_autocast_enabled(weights.device.type):
        return torch.bmm(weights, values).transpose(0, 1)
    out = weights.new_empty(weights.shape[1], weights.shape[0], values.shape[-1])
    torch.bmm(weights, values, out=out.transpose(0, 1))
    return out


def literal_pool(pooler: FramePooler, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """The pooling block written exactly as in spec §1.3 (a D x D product per pair) -> [T, V, D].

    Used to audit `FramePooler` and as the naive baseline of the benchmark.
    """
    T, (V, Fn, D), H = text.shape[0], frames.shape, pooler.num_heads
    attn = pooler.cross_attn
    t, f = pooler.layer_norm1(text), pooler.layer_norm1(frames)
    q = attn["q_proj"](t).view(T, H, D // H)
    k = attn["k_proj"](f).view(V, Fn, H, D // H)
    v = attn["v_proj"](f).view(V, Fn, H, D // H)
    a = (torch.einsum("the,vfhe->tvhf", q, k) / math.sqrt(D // H)).softmax(-1)
    o = attn["out_proj"](torch.einsum("tvhf,vfhe->tvhe", a, v).reshape(T, V, D))
    o = pooler.layer_norm2(o)
    return pooler.layer_norm3(o + pooler.dropout(pooler.linear_proj(o)))


# ------------------------------------------------------------------------------------------------
# The contrastive loss over a (possibly multi-process) global batch, shared by the coarse models


@dataclass
class GlobalBatch:
    """The global batch a contrastive loss sees; `rows` are the pairs this process owns."""

    text: torch.Tensor              # [B, ...] every rank's texts (B = global batch)
    frames: torch.Tensor            # [B, F, D] every rank's videos, paired with `text`
    video_ids: torch.Tensor | None  # [B] video index of each pair, to mask duplicate videos
    rows: slice

    @property
    def single(self) -> bool:
        return self.rows == slice(0, self.text.shape[0])

    @property
    def local_text(self) -> torch.Tensor:
        return self.text[self.rows]

    @property
    def local_frames(self) -> torch.Tensor:
        return self.frames[self.rows]


def global_batch(text_emb: torch.Tensor, frames: torch.Tensor,
                 video_ids: torch.Tensor | None = None) -> GlobalBatch:
    text, rows = gather_rows(text_emb)
    frames, _ = gather_rows(frames)
    ids = gather_rows(video_ids.to(text.device))[0] if video_ids is not None else None
    return GlobalBatch(text, frames, ids, rows)


def infonce(sims_rows: torch.Tensor, sims_cols: torch.Tensor, batch: GlobalBatch,
            logit_scale: torch.Tensor, mask_duplicates: bool = True) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP loss) on the global batch, this process's share.

    sims_rows [b, B]: this rank's texts vs all videos; sims_cols [B, b]: all texts vs this rank's
    videos (the same matrix when there is one process). Pair i is (text i, video i). With
    `mask_duplicates`, other pairs showing the same video are removed from the negatives (the
    reference treats them as negatives). Returned value x world size: DDP averages gradients over
    ranks, so the gradient equals that of the global-batch loss, as does the mean over ranks.
    """
    B = batch.text.shape[0]
    targets = torch.arange(batch.rows.start, batch.rows.stop, device=sims_rows.device)
    scale = logit_scale.exp()
    logits_t2v, logits_v2t = sims_rows * scale, sims_cols.T * scale           # [b, B] each
    if mask_duplicates and batch.video_ids is not None:
        ids = batch.video_ids
        same = ids[batch.rows, None] == ids[None, :]
        same[torch.arange(len(targets)), targets] = False
        logits_t2v = logits_t2v.masked_fill(same, float("-inf"))
        logits_v2t = logits_v2t.masked_fill(same, float("-inf"))
    loss = (F.cross_entropy(logits_t2v, targets, reduction="sum")
            + F.cross_entropy(logits_v2t, targets, reduction="sum")) / (2 * B)
    return loss * rank_and_world()[1]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Inference without dropout or autograd; restores the previous mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def text_chunks(n: int, chunk_size: int) -> Iterator[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield slice(start, min(n, start + chunk_size))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last dim, broadcasting."""
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


# ------------------------------------------------------------------------------------------------
# The model


@register("xpool", XPoolConfig)
class XPool(nn.Module):
    """X-Pool retrieval head on frozen (or jointly trained) text and frame embeddings."""

    def __init__(self, cfg: XPoolConfig):
        super().__init__()
        self.cfg = cfg
        self.pool = FramePooler(cfg.dim, cfg.num_heads, cfg.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    def pool_frames(self, text_emb: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """text_emb [T, D], frames [V, F, D] -> every video pooled by every text [T, V, D].

        Raw LN3 outputs (not normalised), as the reference; similarities normalise.
        """
        return self.pool(text_emb, frames)

    def similarity(self, text_emb: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """[T, V] cos(t, pool(v | t)); differentiable (training)."""
        return cosine(text_emb[:, None], self.pool_frames(text_emb, frames))

    def training_loss(self, text_emb: torch.Tensor, frames: torch.Tensor,
                      generator: torch.Generator | None = None,
                      video_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Symmetric InfoNCE on a batch of pairs (caption i <-> video i): text_emb [B, D], frames [B, F, D].

        `video_ids` [B] (optional) identifies the video of each pair so that several captions of one
        video in a batch are not used as each other's negatives. `generator` is unused (no noise).
        """
        batch = global_batch(text_emb, frames, video_ids)
        sims_rows = self.similarity(batch.local_text, batch.frames)
        sims_cols = sims_rows if batch.single else self.similarity(batch.text, batch.local_frames)
        loss = infonce(sims_rows, sims_cols, batch, self.logit_scale, self.cfg.mask_duplicate_videos)
        return loss, {"loss": loss.item()}

    forward = training_loss  # so DistributedDataParallel(model)(...) runs the loss

    def score(self, text_emb: torch.Tensor, frames: torch.Tensor, chunk_size: int = 64,
              generator: torch.Generator | None = None,
              gallery_text: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation similarities [T, V]: cos(t, pool(v | t)), `chunk_size` texts at a time.

        Memory ~ chunk_size x V x D floats (a few such buffers). `gallery_text` [V, D] switches to
        the reference protocol (spec §2.4): video v is pooled by gallery_text[v] instead of the query.
        """
        out = torch.empty(text_emb.shape[0], frames.shape[0], device=text_emb.device)
        with eval_mode(self):
            videos = self.pool.prepare(frames)
            fixed = None if gallery_text is None else self.pool.pool(gallery_text, videos, paired=True)
            for rows in text_chunks(text_emb.shape[0], chunk_size):
                pooled = fixed if fixed is not None else self.pool.pool(text_emb[rows], videos)
                out[rows] = cosine(text_emb[rows, None], pooled)
        return out
