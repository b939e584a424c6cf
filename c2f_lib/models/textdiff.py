"""TextDiff: diffusion-refined text embeddings on top of X-Pool (spec coarse §3, self-contained).

For every (text i, video j) pair the query embedding is moved toward the video's visual direction
by a small conditional diffusion model, then scored against the video pooled by that query:

    vbar_ij = X-Pool pool(video j | text i)                             [D]
    c_ij    = distance features: cos(t_i, frames of j), sorted, cos(t_i, vbar_ij), cos(t_i, mean frame)
    x0_ij   = P^T (vbar_ij/|vbar_ij| - t_i/|t_i|)   (the visual direction; P = I or a fixed PCA basis)
    x0_hat  = K-step DDPM sampler ('sqrt' schedule, x0-prediction) conditioned on (c_ij, t_i)
    t'_ij   = t_i + |t_i| * shift(x0_hat, c_ij)
    S_ij    = cos(t'_ij, vbar_ij)

Readouts: "gated" (default) shift = gamma(c_ij) P x0_hat with gamma = max_step * sigmoid(MLP(c_ij)),
a learned pair-dependent step toward the video (max_step = 0 gives X-Pool exactly); "exp" is the
paper's form shift = exp(Linear(x0_hat)), kept as an ablation. The shift is scaled by |t_i| so that
it acts on the direction of t_i whatever the backbone's feature norm.

Dual supervision (spec §3.7): phase "teacher" trains the teacher denoiser by plain denoising on
all in-batch pairs; phase "student" trains the student (+ readout) with the retrieval loss (InfoNCE
over the B x B sampled scores) plus `distill_weight` x the teacher-student loss, where both
networks see identical inputs (same x_k, same k). The original draws separate noise, timesteps and
inputs for the two networks, which makes that loss a regression between unrelated outputs.

Inference noise: one seeded draw of K noise vectors [K, d_x] is shared by every (text, video)
pair, so a pair's refinement does not depend on the chunking, and all candidate videos of a query
are compared under common random numbers (rankings differ only through the conditioning).

Shapes: T texts, V videos, F frames, D feature dim, d_x diffused dim, h condition width.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from c2f_lib.models.diffusion import DiffusionSchedule, TimestepEmbedding
from c2f_lib.models.registry import register
from c2f_lib.models.xpool import (LOGIT_SCALE_MAX, XPool, XPoolConfig, cosine, eval_mode,
                                  global_batch, infonce, text_chunks)

PHASES = ("teacher", "student")
READOUTS = ("gated", "exp")


@dataclass
class TextDiffConfig:
    pool: XPoolConfig = field(default_factory=XPoolConfig)
    num_frames: int = 12          # F, fixes the size of the distance features (2F + 2)
    num_steps: int = 10           # K diffusion steps ('sqrt' schedule)
    diffused_dim: int = 0         # d_x: 0 diffuses the full D; r > 0 a fixed rank-r PCA basis
    width: int = 256              # denoiser residual stream
    ffn: int = 512                # denoiser MLP hidden size
    num_blocks: int = 2
    cond_dim: int = 128           # h, condition embedding (time + distance features + text)
    readout: str = "gated"        # "gated" (gamma(c) * P x0_hat) or "exp" (paper: exp(W x0_hat))
    max_step: float = 1.0         # gated: gamma in (0, max_step); 0 reproduces X-Pool
    gate_bias_init: float = -4.0  # gated: gamma ~ 0.018 max_step at init, so t' ~ t
    exp_bias_init: float = -6.0   # exp: shift ~ 0.0025 per dim at init (the paper's is exp(0) = 1)
    distill_weight: float = 0.1   # student loss = retrieval + distill_weight * teacher-student
    grad_steps: int = 2           # student: backpropagate through the last sampler steps only
    train_pool: bool = False      # student phase also fine-tunes the X-Pool block
    sample_seed: int = 0          # inference noise when score() gets no generator
    logit_scale_init: float = LOGIT_SCALE_MAX

    def __post_init__(self) -> None:
        if isinstance(self.pool, dict):          # rebuilt from a checkpoint's asdict()
            self.pool = XPoolConfig(**self.pool)
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        if not 0 <= self.diffused_dim <= self.pool.dim:
            raise ValueError(f"diffused_dim must be in 0..{self.pool.dim}, got {self.diffused_dim}")

    @property
    def latent_dim(self) -> int:
        return self.diffused_dim or self.pool.dim

    @property
    def num_features(self) -> int:
        return 2 * self.num_frames + 2


# ------------------------------------------------------------------------------------------------
# Denoiser


class AdaLNBlock(nn.Module):
    """Residual MLP block whose LayerNorm scale/shift come from the condition (DiT's adaLN-zero)."""

    def __init__(self, width: int, ffn: int, cond_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(cond_dim, 3 * width)
        self.mlp = nn.Sequential(nn.Linear(width, ffn), nn.SiLU(), nn.Linear(ffn, width))
        nn.init.zeros_(self.modulation.weight)   # the block starts as the identity
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift, gate = self.modulation(F.silu(cond)).chunk(3, -1)
        return h + gate * self.mlp(self.norm(h) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """g(x_k, k, c, t) -> x0_hat: a conditional residual MLP over one d_x vector per pair."""

    def __init__(self, cfg: TextDiffConfig):
        super().__init__()
        h = cfg.cond_dim
        self.features = nn.Sequential(nn.Linear(cfg.num_features, h), nn.SiLU(), nn.Linear(h, h))
        self.text = nn.Linear(cfg.pool.dim, h)
        self.time = TimestepEmbedding(h, cfg.num_steps)
        self.inp = nn.Linear(cfg.latent_dim, cfg.width)
        self.blocks = nn.ModuleList(AdaLNBlock(cfg.width, cfg.ffn, h) for _ in range(cfg.num_blocks))
        self.out = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.latent_dim))

    def condition(self, feats: torch.Tensor, t_hat: torch.Tensor) -> torch.Tensor:
        """Step-independent part of the condition: feats [..., nf], t_hat [..., D] (broadcast) -> [..., h]."""
        return self.features(feats) + self.text(t_hat)

    def forward(self, x: torch.Tensor, k: torch.Tensor | int, cond: torch.Tensor) -> torch.Tensor:
        """x [..., d_x] (broadcastable to the pairs), k int or [...] long, cond [..., h] -> x0_hat [..., d_x]."""
        c = cond + self.time(torch.as_tensor(k, device=cond.device))            # [..., h]
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


# ------------------------------------------------------------------------------------------------
# Pair inputs


class Pairs(NamedTuple):
    """Per-(text, video) inputs of the diffusion for a block of pairs; leading dims [...] = [T, V] or [N]."""

    text: torch.Tensor      # [T, 1, D] or [N, D] raw text embeddings (broadcast over videos)
    t_hat: torch.Tensor     # same shape, L2-normalised
    pooled: torch.Tensor    # [..., D] X-Pool output, video pooled by the query (raw)
    feats: torch.Tensor     # [..., 2F+2] visual-text distance features


@register("textdiff", TextDiffConfig)
class TextDiff(nn.Module):
    """X-Pool + a teacher and a student denoiser + a readout that shifts the text toward the video."""

    def __init__(self, cfg: TextDiffConfig):
        super().__init__()
        self.cfg = cfg
        self.phase = "student"
        self.xpool = XPool(cfg.pool)
        self.schedule = DiffusionSchedule(cfg.num_steps)
        self.teacher = Denoiser(cfg)
        self.student = Denoiser(cfg)
        # Fixed basis of the diffused space ([D, d_x]); identity rows until fit_basis().
        self.register_buffer("basis", torch.eye(cfg.pool.dim)[:, :cfg.latent_dim].clone())
        h = cfg.cond_dim
        if cfg.readout == "gated":
            self.gate = nn.Sequential(nn.Linear(cfg.num_features, h), nn.SiLU(), nn.Linear(h, 1))
            nn.init.zeros_(self.gate[-1].weight)
            nn.init.constant_(self.gate[-1].bias, cfg.gate_bias_init)
        else:
            self.exp_readout = nn.Linear(cfg.latent_dim, cfg.pool.dim)
            nn.init.zeros_(self.exp_readout.weight)
            nn.init.constant_(self.exp_readout.bias, cfg.exp_bias_init)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    # -- phases ----------------------------------------------------------------------------------

    def set_phase(self, phase: str) -> "TextDiff":
        """Select what training_loss trains and freeze everything else."""
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        self.phase = phase
        trainable = {"teacher": [self.teacher],
                     "student": [self.student, self._readout(), self.logit_scale]}[phase]
        if phase == "student" and self.cfg.train_pool:
            trainable.append(self.xpool)
        self.requires_grad_(False)
        for part in trainable:
            part.requires_grad_(True)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "TextDiff":
        super().train(mode)
        if not (self.phase == "student" and self.cfg.train_pool):
            self.xpool.eval()                     # a frozen pool has no dropout
        if self.phase == "student":
            self.teacher.eval()                   # a frozen teacher has no dropout either
        return self

    def init_student_from_teacher(self) -> None:
        self.student.load_state_dict(self.teacher.state_dict())

    def _readout(self) -> nn.Module:
        return self.gate if self.cfg.readout == "gated" else self.exp_readout

    # -- the diffused space ----------------------------------------------------------------------

    @torch.no_grad()
    def fit_basis(self, text_emb: torch.Tensor, frames: torch.Tensor) -> None:
        """Fit the fixed rank-d_x basis on positive-pair residuals (text i, video i); no-op for full D."""
        if not self.cfg.diffused_dim:
            return
        with eval_mode(self.xpool):
            pooled = self.xpool.pool.pool(text_emb, self.xpool.pool.prepare(frames), paired=True)
        residual = F.normalize(pooled, dim=-1) - F.normalize(text_emb, dim=-1)     # [N, D]
        _, _, vh = torch.linalg.svd(residual.double(), full_matrices=False)
        basis = vh[:self.cfg.diffused_dim].T                                     # [D, d_x]
        sign = basis.gather(0, basis.abs().argmax(0, keepdim=True)).sign()     # deterministic sign
        self.basis.copy_((basis * sign).float())

    def target(self, pairs: Pairs) -> torch.Tensor:
        """x0 = P^T (vbar/|vbar| - t/|t|) [..., d_x]: the visual direction (no gradient)."""
        return ((F.normalize(pairs.pooled, dim=-1) - pairs.t_hat) @ self.basis).detach()

    # -- pairs -----------------------------------------------------------------------------------

    def pairs(self, text_emb: torch.Tensor, frames: torch.Tensor,
              pooled: torch.Tensor | None = None, paired: bool = False) -> Pairs:
        """Inputs for all pairs (text_emb [T, D] x frames [V, F, D] -> [T, V, ...]) or, `paired`, pair i only.

        `pooled` ([T, V, D] or [N, D]) skips the pooling when the caller already has it.
        """
        if frames.shape[1] != self.cfg.num_frames:
            raise ValueError(f"frames have F = {frames.shape[1]} per video; this TextDiff was built "
                             f"for num_frames = {self.cfg.num_frames}")
        if pooled is None:
            pooled = self.xpool.pool.pool(text_emb, self.xpool.pool.prepare(frames), paired=paired)
        t_hat = F.normalize(text_emb, dim=-1)                                   # [T, D]
        f_hat = F.normalize(frames, dim=-1)                                     # [V, F, D]
        mean_hat = F.normalize(frames.mean(1), dim=-1)                          # [V, D]
        if paired:
            sims = torch.einsum("nd,nfd->nf", t_hat, f_hat)                     # [N, F]
            to_mean = (t_hat * mean_hat).sum(-1)                                # [N]
        else:
            V, Fn, D = frames.shape
            sims = (t_hat @ f_hat.reshape(V * Fn, D).T).view(-1, V, Fn)         # [T, V, F]
            to_mean = t_hat @ mean_hat.T                                        # [T, V]
            text_emb, t_hat = text_emb[:, None], t_hat[:, None]                 # [T, 1, D]
        to_pool = cosine(t_hat, pooled)
        feats = torch.cat([sims, sims.sort(-1).values, to_pool[..., None], to_mean[..., None]], -1)
        return Pairs(text_emb, t_hat, pooled, feats)

    # -- diffusion and readout -------------------------------------------------------------------

    def sample_x0(self, pairs: Pairs, noise: torch.Tensor,
                  on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Student's K-step sampler for a block of pairs; noise [K, ..., d_x] broadcastable -> x0_hat [..., d_x]."""
        net = self.student
        cond = net.condition(pairs.feats, pairs.t_hat)                         # [..., h]
        grad_steps = self.cfg.grad_steps if torch.is_grad_enabled() else None
        return self.schedule.sample(lambda x, k: net(x, k, cond), noise, grad_steps, on_step)

    def refine(self, pairs: Pairs, x0_hat: torch.Tensor) -> torch.Tensor:
        """t' = t + |t| shift(x0_hat, c) [..., D] (raw scale, so a zero shift leaves t bit-exact)."""
        if self.cfg.readout == "gated":
            gamma = self.cfg.max_step * torch.sigmoid(self.gate(pairs.feats))   # [..., 1]
            shift = gamma * (x0_hat @ self.basis.T)
        else:
            shift = torch.exp(self.exp_readout(x0_hat))
        return pairs.text + pairs.text.norm(dim=-1, keepdim=True) * shift

    def inference_noise(self, generator: torch.Generator | None = None,
                        device: torch.device | str = "cpu") -> torch.Tensor:
        """[K, d_x]: the K draws shared by every pair (seeded by cfg.sample_seed without a generator)."""
        if generator is None:
            generator = torch.Generator().manual_seed(self.cfg.sample_seed)
        noise = torch.randn(self.cfg.num_steps, self.cfg.latent_dim, generator=generator,
                            device=generator.device)
        return noise.to(device)

    # -- losses ----------------------------------------------------------------------------------

    def _randn(self, shape: tuple[int, ...], generator: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
        gen_device = generator.device if generator is not None else device
        return torch.randn(shape, generator=generator, device=gen_device).to(device)

    def _draw(self, shape: tuple[int, ...], generator: torch.Generator | None,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """One (step, noise) draw per pair: k [*shape] in 1..K, eps [*shape, d_x]."""
        gen_device = generator.device if generator is not None else device
        k = torch.randint(1, self.cfg.num_steps + 1, shape, generator=generator, device=gen_device)
        return k.to(device), self._randn((*shape, self.cfg.latent_dim), generator, device)

    def denoising_loss(self, pairs: Pairs, generator: torch.Generator | None = None) -> torch.Tensor:
        """Teacher's plain diffusion loss: mean ||g(x_k, k, c, t) - x0||^2 over the pairs."""
        net = self.teacher
        x0 = self.target(pairs)
        k, eps = self._draw(x0.shape[:-1], generator, x0.device)
        x_k = self.schedule.q_sample(x0, k, eps)
        return (net(x_k, k, net.condition(pairs.feats, pairs.t_hat)) - x0).pow(2).sum(-1).mean()

    def distillation_loss(self, pairs: Pairs, generator: torch.Generator | None = None) -> torch.Tensor:
        """Teacher-student loss on identical inputs: one (k, eps) per pair for both networks."""
        x0 = self.target(pairs)
        k, eps = self._draw(x0.shape[:-1], generator, x0.device)
        x_k = self.schedule.q_sample(x0, k, eps)
        with torch.no_grad():
            teacher = self.teacher(x_k, k, self.teacher.condition(pairs.feats, pairs.t_hat))
        student = self.student(x_k, k, self.student.condition(pairs.feats, pairs.t_hat))
        return (student - teacher).pow(2).sum(-1).mean()

    def _train_sims(self, text: torch.Tensor, frames: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sampled scores [b, B] of texts vs videos and the distillation loss on the same pairs."""
        pairs = self.pairs(text, frames)
        noise = self._randn((self.cfg.num_steps, *pairs.feats.shape[:-1], self.cfg.latent_dim),
                            generator, text.device)                           # [K, b, B, d_x]
        refined = self.refine(pairs, self.sample_x0(pairs, noise))
        return cosine(refined, pairs.pooled), self.distillation_loss(pairs, generator)

    def training_loss(self, text_emb: torch.Tensor, frames: torch.Tensor,
                      generator: torch.Generator | None = None,
                      video_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of the current phase on a batch of pairs (caption i <-> video i).

        teacher: denoising MSE over all B x B in-batch pairs. student: InfoNCE over the sampled
        scores + distill_weight x teacher-student loss. text_emb [B, D], frames [B, F, D].
        """
        if self.phase == "teacher":
            with torch.no_grad():
                pairs = self.pairs(text_emb, frames)
            loss = self.denoising_loss(pairs, generator)
            return loss, {"loss": loss.item(), "denoise": loss.item()}
        batch = global_batch(text_emb, frames, video_ids)
        sims_rows, distill = self._train_sims(batch.local_text, batch.frames, generator)
        sims_cols = sims_rows if batch.single else self._train_sims(batch.text, batch.local_frames,
                                                                    generator)[0]
        retrieval = infonce(sims_rows, sims_cols, batch, self.logit_scale,
                            self.cfg.pool.mask_duplicate_videos)
        loss = retrieval + self.cfg.distill_weight * distill
        return loss, {"loss": loss.item(), "retrieval": retrieval.item(), "distill": distill.item()}

    forward = training_loss

    # -- inference -------------------------------------------------------------------------------

    def score(self, text_emb: torch.Tensor, frames: torch.Tensor, chunk_size: int = 64,
              generator: torch.Generator | None = None,
              gallery_text: torch.Tensor | None = None) -> torch.Tensor:
        """Evaluation similarities [T, V]: cos(t'(i | j), pool(j | i)), `chunk_size` texts at a time.

        Memory ~ chunk_size x V x (D + a few d_x / width) floats. The noise is one [K, d_x] draw
        shared by all pairs, so the result does not depend on `chunk_size`. `gallery_text` [V, D]
        switches to the reference protocol (spec §2.4): video v is pooled by gallery_text[v], and
        that pooled vector is used everywhere (distance features, readout, score).
        """
        out = torch.empty(text_emb.shape[0], frames.shape[0], device=text_emb.device)
        with eval_mode(self):
            noise = self.inference_noise(generator, text_emb.device)[:, None, None]  # [K, 1, 1, d_x]
            videos = self.xpool.pool.prepare(frames)
            fixed = None if gallery_text is None else self.xpool.pool.pool(gallery_text, videos,
                                                                           paired=True)
            for rows in text_chunks(text_emb.shape[0], chunk_size):
                text = text_emb[rows]
                pooled = (self.xpool.pool.pool(text, videos) if fixed is None         # [c, V, D]
                          else fixed.expand(len(text), *fixed.shape))
                pairs = self.pairs(text, frames, pooled)
                refined = self.refine(pairs, self.sample_x0(pairs, noise))           # [c, V, D]
                out[rows] = cosine(refined, pooled)
        return out

    def trajectory(self, text_emb: torch.Tensor, frames: torch.Tensor,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """How each positive pair's text (text i, video i) moves across the sampler steps.

        text_emb [N, D], frames [N, F, D] -> (texts [K + 1, N, D], pooled [N, D]): texts[0] is the
        input, texts[s] the text refined with the x0 predicted at step K + 1 - s (texts[K] is what
        score() uses); pooled[i] is video i pooled by text i, the target of the move.
        """
        steps = [text_emb]
        with eval_mode(self):
            pairs = self.pairs(text_emb, frames, paired=True)
            noise = self.inference_noise(generator, text_emb.device)[:, None]       # [K, 1, d_x]
            self.sample_x0(pairs, noise, on_step=lambda k, x0: steps.append(self.refine(pairs, x0)))
        return torch.stack(steps), pairs.pooled
