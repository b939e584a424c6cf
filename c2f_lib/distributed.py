"""Minimal helpers for data-parallel training (torchrun + DistributedDataParallel), model-agnostic.

Contrastive losses see the whole *global* batch: every rank gathers the other ranks' embeddings
with `gather_rows`, whose backward sums the gradient over ranks and hands each rank the rows it
owns, so a run on W processes computes the same loss and gradients as one process on the
concatenated batch. Without an initialised process group every helper is a no-op.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def init_from_env(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment; False when not under torchrun."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    return True


def local_slice(n: int) -> slice:
    """The rows of a global batch of `n` items that this rank processes (contiguous, rank order)."""
    rank, world = rank_and_world()
    bounds = [n * r // world for r in range(world + 1)]
    return slice(bounds[rank], bounds[rank + 1])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int], rows: slice) -> torch.Tensor:
        padded = x.new_zeros((max(sizes),) + x.shape[1:])
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.rows = rows
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss may depend on these rows
        return grad[ctx.rows], None, None


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """Concatenate `x` [b, ...] of all ranks (rank order) -> ([B, ...], slice of this rank's rows).

    Differentiable: the gradient reaching the gathered tensor is summed over ranks and returned to
    the rank that owns each row. Ranks may hold different numbers of rows.
    """
    if not is_distributed():
        return x, slice(0, x.shape[0])
    counts = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([x.shape[0]], device=x.device))
    sizes = [int(c) for c in counts]
    start = sum(sizes[: dist.get_rank()])
    rows = slice(start, start + x.shape[0])
    return _GatherRows.apply(x, sizes, rows), rows


def mean_over_ranks(value: float) -> float:
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()
