"""Per-step CPU cost of the fine models, split into forward / loss / backward / optimizer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fine_step.py [--steps 20] [--hidden 64]

One process, one thread; the batch mimics the default demo (32 queries, 10-20 clips, 1-3 GT windows,
8-16 tokens, 512-d features). QD-DETR and MESM run twice: as the papers train them and with the
denoising queries notebook 05 turns on (the last column: step time relative to the papers' setting).
Absolute times depend on the machine; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import c2f_lib.models.mesm  # noqa: F401  (registers qd_detr + mesm)
import c2f_lib.models.moment_detr  # noqa: F401
from c2f_lib.features.types import MomentSample
from c2f_lib.models.fine_batch import MomentBatch, collate_moments
from c2f_lib.models.fine_losses import fine_loss
from c2f_lib.models.fine_presets import loss_preset
from c2f_lib.models.registry import build_model

MODELS = [("moment_detr", "moment_detr", {}), ("qd_detr", "qd_detr", {}), ("qd_detr", "qd_detr", {"dn_groups": 3}),
          ("mesm", "mesm_charades", {}), ("mesm", "mesm_charades", {"dn_groups": 3})]
PHASES = ("forward", "loss", "backward", "optimizer")


def demo_batch(n: int = 32, dim: int = 512, seed: int = 0) -> MomentBatch:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = int(torch.randint(10, 21, (1,), generator=g))
        windows = [[2.0 * s, 2.0 * (s + 2)] for s in torch.randint(0, L - 2, (1 + i % 3,), generator=g).tolist()]
        out.append(MomentSample(qid=i, query="q", vid=f"v{i // 2}", duration=2.0 * L, clip_len=2.0,
                                clip_feats=torch.randn(L, dim, generator=g),
                                token_feats=torch.randn(8 + i % 9, dim, generator=g), windows=windows))
    return collate_moments(out)


def phase_times(model, batch: MomentBatch, preset: str, steps: int,
                loss_fn: Callable = fine_loss) -> dict[str, float]:
    """Mean seconds per phase over `steps` training steps (after one warm-up step)."""
    weights = loss_preset(preset)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    total = dict.fromkeys(PHASES, 0.0)
    for step in range(steps + 1):
        t0 = time.perf_counter()
        out = model(batch)
        t1 = time.perf_counter()
        loss = loss_fn(out, batch, weights)["total"]
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        if step > 0:                     # step 0 warms up allocator and kernels
            for phase, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                total[phase] += dt / steps
    return total


def parse_args(steps: int, hidden: int) -> argparse.Namespace:
    """--steps (timed training steps) and --hidden (model width), with this benchmark's defaults."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--hidden", type=int, default=hidden)
    return parser.parse_args()


def main() -> None:
    args = parse_args(steps=20, hidden=64)
    torch.set_num_threads(1)
    batch = demo_batch()
    print(f"{'model':>15} " + " ".join(f"{p:>10}" for p in PHASES) + f" {'step ms':>8} {'x papers':>8}")
    papers: dict[str, float] = {}
    for name, preset, extra in MODELS:
        torch.manual_seed(0)
        model = build_model(name, {"video_dim": 512, "text_dim": 512, "hidden_dim": args.hidden,
                                   "ffn_dim": 4 * args.hidden, "n_heads": 4, **extra})
        t = phase_times(model, batch, preset, args.steps)
        step = sum(t.values())
        papers.setdefault(name, step)
        label = name + ("+dn" if extra else "")
        print(f"{label:>15} " + " ".join(f"{1000 * t[p]:>10.1f}" for p in PHASES)
              + f" {1000 * step:>8.1f} {step / papers[name]:>8.2f}")


if __name__ == "__main__":
    main()
