"""T-MASS (Wang et al., CVPR'24): a text is a mass, not a point (spec coarse §2).

On top of X-Pool, each text embedding t gets a stochastic neighbour t_s = t + eps * R, where the
radius R in R^D depends on the (text, video) pair through the cosines of t with the video's F
frames: R = exp(W s + b), s_k = cos(t, f_k), W in R^{D x F} initialised to the identity (so R ~ 1
at init). eps is drawn from U[0,1)^D ("uniform01", reference default) or N(0, std^2) ("normal").

Training (§2.2): t_s uses the radius from the PAIRED video; cos(t_s_i, pool(v_j | t_i)) feeds the
CLIP loss; optional support-text loss with t_sup_i = t_i + R_i * dir_i, dir_i the unit direction
from t_i to video i pooled by (the mean over) all texts of the batch.

Inference (§2.3, with the correct pairing of §2.4): for each (query q, video v), draw K samples
of t_s with the radius of (q, v) and keep the best cos(t_s, pool(v | q)). The noise eps is drawn per
(text, trial) from a generator seeded per text and shared by all videos (common random numbers),
so scores do not depend on the chunking. Cosines of all K samples are computed without
materialising them: with p = pool(v | q),
    t_s . p     = t . p + eps . (R * p)
    |t_s|^2     = |t|^2 + 2 eps . (R * t) + eps^2 . R^2
three batched products of [c, V, D] with [c, D, K].

Checking a sample against another implementation: every draw can be passed in instead of taken from a
generator. `sample_texts(text, frames, noise)` returns t + eps * R for given eps (paired: text i with
video i's radius); `training_loss(..., noise=eps [B, D])` and `score(..., noise=eps [T, K, D])` use the
given noise (trial k of text t, shared by every video, as our own draws are). `trial_noise` gives the
draws `score` makes itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from c2f_lib.models.registry import register
from c2f_lib.models.xpool import (LOGIT_SCALE_MAX, XPool, XPoolConfig, cosine, eval_mode,
                                  global_batch, infonce, text_chunks)
from c2f_lib.distributed import gather_rows

PRIORS = ("uniform01", "normal")


@dataclass
class TMASSConfig:
    dim: int = 512
    num_frames: int = 12
    num_heads: int = 1
    dropout: float = 0.3
    prior: str = "uniform01"           # "uniform01" (eps ~ U[0,1)) or "normal" (eps ~ N(0, std^2))
    prior_std: float = 1.0             # "normal" only; the LSMDC preset uses 3e-3
    support_weight: float = 0.0        # weight of the support-text loss (MSR-VTT preset: 0.8)
    num_trials: int = 20               # stochastic samples per (query, video) at inference
    logit_scale_init: float = LOGIT_SCALE_MAX
    mask_duplicate_videos: bool = True

    def __post_init__(self) -> None:
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; use one of {PRIORS}")


@register("tmass", TMASSConfig)
class TMASS(nn.Module):
    def __init__(self, cfg: TMASSConfig):
        super().__init__()
        self.cfg = cfg
        self.xpool = XPool(XPoolConfig(cfg.dim, cfg.num_heads, cfg.dropout, cfg.logit_scale_init,
                                       cfg.mask_duplicate_videos))
        self.radius_proj = nn.Linear(cfg.num_frames, cfg.dim)    # log R = W s + b
        nn.init.eye_(self.radius_proj.weight)
        nn.init.zeros_(self.radius_proj.bias)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.xpool.logit_scale

    def pool_frames(self, text_emb: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """[T, V, D] X-Pool pooling by the deterministic text (raw LN3 outputs)."""
        return self.xpool.pool_frames(text_emb, frames)

    # -- the stochastic text ---------------------------------------------------------------------

    def radius(self, text_emb: torch.Tensor, frames: torch.Tensor, paired: bool = False) -> torch.Tensor:
        """R for every (text, video) [T, V, D], or for pairs (text i, video i) [N, D] if `paired`."""
        self._check_frames(frames)
        t, f = F.normalize(text_emb, dim=-1), F.normalize(frames, dim=-1)
        sims = torch.einsum("nd,nfd->nf" if paired else "td,vfd->tvf", t, f)   # [T, V, F] or [N, F]
        return self.radius_proj(sims).exp()

    def sample_texts(self, text_emb: torch.Tensor, frames: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Stochastic texts t_i + eps * R(t_i, video i) for pairs (text i, video i): text_emb [N, D],
        frames [N, F, D], noise [N, D] -> [N, D], or noise [N, K, D] (K draws) -> [N, K, D]. Not normalised."""
        radius = self.radius(text_emb, frames, paired=True)                   # [N, D]
        if noise.dim() == 3:
            return text_emb[:, None] + noise.to(radius) * radius[:, None]
        return text_emb + noise.to(radius) * radius

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
        """Draws from the prior (on the CPU generator's device, i.e. CPU)."""
        if self.cfg.prior == "uniform01":
            return torch.rand(shape, generator=generator)
        return torch.randn(shape, generator=generator) * self.cfg.prior_std

    def _check_frames(self, frames: torch.Tensor) -> None:
        if frames.shape[-2] != self.cfg.num_frames:
            raise ValueError(f"T-MASS was built for {self.cfg.num_frames} frames per video, "
                             f"got {frames.shape[-2]}")

    # -- training --------------------------------------------------------------------------------

    def training_loss(self, text_emb: torch.Tensor, frames: torch.Tensor,
                      generator: torch.Generator | None = None,
                      video_ids: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """CLIP loss on stochastic texts (+ support-text loss); pairs (caption i <-> video i).

        The noise of the whole global batch is drawn from `generator` on every rank and sliced, so
        a multi-process run matches a single-process one; `noise` [B, D] (the global batch) replaces
        that draw.
        """
        batch = global_batch(text_emb, frames, video_ids)
        t = batch.local_text                                                     # [b, D]
        radius = self.radius(t, batch.local_frames, paired=True)                 # [b, D]
        if noise is None:
            noise = self.noise(tuple(batch.text.shape), generator)
        eps = noise[batch.rows].to(t.device)
        pooled_rows = self.pool_frames(t, batch.frames)                          # [b, B, D]
        pooled_cols = pooled_rows if batch.single else self.pool_frames(batch.text, batch.local_frames)

        def loss_of(text_local: torch.Tensor) -> torch.Tensor:
            text_all = text_local if batch.single else gather_rows(text_local)[0]
            sims_rows = cosine(text_local[:, None], pooled_rows)                # [b, B]
            sims_cols = cosine(text_all[:, None], pooled_cols)                  # [B, b]
            return infonce(sims_rows, sims_cols, batch, self.logit_scale,
                           self.cfg.mask_duplicate_videos)

        loss_main = loss_of(t + eps * radius)
        logs = {"loss_main": loss_main.item(), "radius_mean": radius.mean().item()}
        loss = loss_main
        if self.cfg.support_weight > 0:
            loss_support = loss_of(support_texts(t, radius, pooled_cols))
            loss = loss + self.cfg.support_weight * loss_support
            logs["loss_support"] = loss_support.item()
        logs["loss"] = loss.item()
        return loss, logs

    forward = training_loss

    # -- inference -------------------------------------------------------------------------------

    def trial_noise(self, num_texts: int, seed: int, rows: slice) -> torch.Tensor:
        """eps [c, K, D] for texts `rows`: text i's K draws come from a generator seeded seed + i."""
        draws = [self.noise((self.cfg.num_trials, self.cfg.dim),
                            torch.Generator().manual_seed(seed + i))
                 for i in range(rows.start, rows.stop)]
        return torch.stack(draws)

    def score(self, text_emb: torch.Tensor, frames: torch.Tensor, chunk_size: int = 16,
              generator: torch.Generator | None = None,
              gallery_text: torch.Tensor | None = None,
              noise: torch.Tensor | None = None) -> torch.Tensor:
        """[T, V]: best of K samples of cos(t_s(q, v), pool(v | q)), `chunk_size` queries at a time.

        Memory ~ 6 x chunk_size x V x D floats. The same `generator` state gives the same scores for
        any chunk_size; `noise` [T, K, D] replaces the draws (trial k of text t, for every video).
        `gallery_text` [V, D] selects the reference protocol (spec §2.4): the sample is still chosen
        against pool(v | q), but scored against pool(v | gallery_text[v]).
        """
        self._check_frames(frames)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        out = torch.empty(text_emb.shape[0], frames.shape[0], device=text_emb.device)
        with eval_mode(self):
            pool = self.xpool.pool
            videos = pool.prepare(frames)
            fixed = None if gallery_text is None else pool.pool(gallery_text, videos, paired=True)
            for rows in text_chunks(text_emb.shape[0], chunk_size):
                t = text_emb[rows]                                               # [c, D]
                eps = (self.trial_noise(text_emb.shape[0], seed, rows) if noise is None
                       else noise[rows]).to(t)                                   # [c, K, D]
                pooled = pool.pool(t, videos)                                    # [c, V, D]
                radius = self.radius(t, frames)                                  # [c, V, D]
                if fixed is None:
                    out[rows] = _trial_cosines(t, pooled, radius, eps).amax(-1)
                else:
                    sims = _trial_cosines(t, pooled, radius.clone(), eps)         # [c, V, K]
                    best = eps[torch.arange(len(t))[:, None], sims.argmax(-1)]   # [c, V, D]
                    out[rows] = cosine(t[:, None] + best * radius, fixed[None])
        return out


def support_texts(text_emb: torch.Tensor, radius: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """T-MASS's support texts t_i + R_i * unit(vbar_i - t_i): text_emb, radius [b, D], pooled [B, b, D]
    (video i pooled by every text of the batch) -> [b, D]; vbar_i = the mean of video i over the texts."""
    return text_emb + radius * F.normalize(pooled.mean(0) - text_emb, dim=-1)


def _trial_cosines(t: torch.Tensor, pooled: torch.Tensor, radius: torch.Tensor,
                   eps: torch.Tensor) -> torch.Tensor:
    """cos(t + eps_k * R, p) for all K trials without materialising the samples -> [c, V, K].

    t [c, D], pooled p [c, V, D], radius R [c, V, D] (overwritten), eps [c, K, D]. Inference only.
    """
    eps_t = eps.transpose(1, 2)                                                  # [c, D, K]
    work = torch.mul(radius, pooled)                                             # one reused buffer
    dot = torch.bmm(work, eps_t).add_(torch.einsum("cd,cvd->cv", t, pooled)[..., None])
    torch.mul(radius, t[:, None], out=work)
    norm2 = torch.bmm(work, eps_t).mul_(2).add_((t * t).sum(-1)[:, None, None])
    norm2 += torch.bmm(radius.square_(), eps_t * eps_t)
    p_norm2 = torch.linalg.vector_norm(pooled, dim=-1, keepdim=True).square_()  # [c, V, 1]
    return dot.mul_(torch.rsqrt(norm2.clamp_min_(1e-12).mul_(p_norm2)))
