"""A small Gaussian diffusion over vectors: Diffusion-LM's 'sqrt' schedule, x0-prediction, DDPM sampler.

Steps are numbered k = 1..K (K = 10 in TextDiffs); x_0 is clean data, x_K is (nearly) pure noise.
The 'sqrt' schedule (Li et al., Diffusion-LM) defines abar(s) = 1 - sqrt(s + 1e-4) on s in [0, 1];
betas are ratios of consecutive values, beta_k = 1 - abar(k/K) / abar((k-1)/K), clipped at 0.999, so
the cumulative product is abar(k/K) / abar(0) for k < K and the last step keeps ~0.01% of the signal
(spec coarse §3.3). The denoiser predicts x0 directly; the sampler is the DDPM ancestral one that
feeds the predicted x0 into the Gaussian posterior q(x_{k-1} | x_k, x0).

The sampler takes its noise as an argument instead of drawing it, so callers decide how noise is
shared (one draw per pair in training, one draw per seed broadcast to every pair at inference).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

SQRT_SCHEDULE_OFFSET = 1e-4
MAX_BETA = 0.999


def sqrt_alpha_bar(s: torch.Tensor | float) -> torch.Tensor:
    """Diffusion-LM's continuous 'sqrt' schedule: abar(s) = 1 - sqrt(s + 1e-4), s in [0, 1]."""
    return 1.0 - torch.sqrt(torch.as_tensor(s, dtype=torch.float64) + SQRT_SCHEDULE_OFFSET)


def sqrt_betas(num_steps: int) -> torch.Tensor:
    """[K] float64 betas of the 'sqrt' schedule, beta_k for k = 1..K."""
    s = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    abar = sqrt_alpha_bar(s)
    return (1.0 - abar[1:] / abar[:-1]).clamp(max=MAX_BETA)


class DiffusionSchedule(nn.Module):
    """Per-step constants of the forward process and of the posterior, as buffers (move with the model)."""

    def __init__(self, num_steps: int = 10):
        super().__init__()
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.num_steps = num_steps
        betas = sqrt_betas(num_steps)                                     # [K], index k-1 = step k
        abar = torch.cumprod(1.0 - betas, 0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        # q(x_{k-1} | x_k, x0) = N(c0 * x0 + ck * x_k, var), Ho et al. eq. 7.
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        buffers = {
            "betas": betas, "alphas_cumprod": abar,
            "sqrt_abar": abar.sqrt(), "sqrt_one_minus_abar": (1.0 - abar).sqrt(),
            "post_coef_x0": betas * abar_prev.sqrt() / (1.0 - abar),
            "post_coef_xk": (1.0 - abar_prev) * (1.0 - betas).sqrt() / (1.0 - abar),
            "post_std": post_var.sqrt(),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)

    def _at(self, name: str, k: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Constant `name` at steps k (any shape, values 1..K), broadcastable against `like` [..., d]."""
        return getattr(self, name)[k - 1].unsqueeze(-1).to(like.dtype)

    def q_sample(self, x0: torch.Tensor, k: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps.  x0, noise [..., d]; k [...] long in 1..K."""
        return self._at("sqrt_abar", k, x0) * x0 + self._at("sqrt_one_minus_abar", k, x0) * noise

    def posterior_step(self, x0_hat: torch.Tensor, x_k: torch.Tensor, k: int,
                       noise: torch.Tensor) -> torch.Tensor:
        """One ancestral step x_k -> x_{k-1} given the predicted x0 (k >= 2)."""
        i = k - 1
        mean = self.post_coef_x0[i] * x0_hat + self.post_coef_xk[i] * x_k
        return mean + self.post_std[i] * noise

    def sample(self, denoise: Callable[[torch.Tensor, int], torch.Tensor], noise: torch.Tensor,
               grad_steps: int | None = None,
               on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
        """Run the K-step x0-predicting sampler; returns the last predicted x0 [..., d].

        denoise(x_k, k) -> x0_hat. `noise` [K, ..., d] (leading dims broadcastable to the pairs):
        noise[0] is x_K, noise[j] the draw added on the j-th transition. `grad_steps`: keep autograd
        only through the last `grad_steps` denoiser calls (None: all). `on_step(k, x0_hat)` sees
        every intermediate prediction (for plots).
        """
        K = self.num_steps
        if noise.shape[0] != K:
            raise ValueError(f"noise holds {noise.shape[0]} draws, the {K}-step sampler needs {K}")
        x = noise[0]
        for j, k in enumerate(range(K, 0, -1)):
            track = grad_steps is None or k <= grad_steps
            with torch.set_grad_enabled(track and torch.is_grad_enabled()):
                x0_hat = denoise(x, k)
            if on_step is not None:
                on_step(k, x0_hat)
            if k == 1:
                break
            x = self.posterior_step(x0_hat, x, k, noise[j + 1])
        return x0_hat


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the step index followed by a 2-layer MLP (as in DDPM)."""

    def __init__(self, dim: int, num_steps: int, freq_dim: int = 64, max_period: float = 10_000.0):
        super().__init__()
        self.step_scale = 1000.0 / num_steps   # steps rescaled to 0..1000, as in improved-diffusion
        half = freq_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, k: torch.Tensor) -> torch.Tensor:
        """k [...] step indices -> [..., dim]."""
        angles = (k.float() * self.step_scale).unsqueeze(-1) * self.freqs
        return self.mlp(torch.cat([angles.cos(), angles.sin()], -1))
