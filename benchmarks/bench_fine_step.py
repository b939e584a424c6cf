"""Per-step CPU cost of the fine models, and the speed-up of this checkout's code over an earlier commit's.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fine_step.py [--steps 6] [--base f64cee1]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fine_step.py --denoising [--steps 20] [--hidden 64]

Default: training steps at the QVHighlights size (batch 32, 75 clips, 32 tokens, 2816-d clips + 2 TEF,
512-d tokens, hidden 256, 8 heads, FFN 1024, MESM with 5000 word classes), one thread, for the models of
this checkout and of the commit `--base` (default f64cee1: the fine models before the fused attention /
dropout / PReLU changes), both in this process. The base commit's `c2f_lib` is extracted with
`git archive` into a temporary folder and imported beside the current one (the two copies live under
separate module objects). Both models get the same weights; steps alternate (old, new, old, ...) so
machine load hits both alike; the table gives median step times and their ratio, the share of our step
spent in matrix products (the same products in both codes) and the ceiling that share puts on the ratio
(base time / our matmul time: the speed-up if every other operation cost nothing). Before timing, one
training step of each (same seed, dropout on: both draw the same dropout masks) is compared: forward
outputs, every loss term and every gradient must agree (max |difference| printed).

`--denoising`: the demo-size table (32 queries, 10-20 clips, 8-16 tokens, 512-d) of QD-DETR and MESM as
the papers train them and with the denoising queries notebook 05 turns on (step time relative).
Absolute times depend on the machine; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch

import c2f_lib.models.mesm  # noqa: F401  (registers qd_detr + mesm)
import c2f_lib.models.moment_detr  # noqa: F401
from c2f_lib.features.types import MomentSample
from c2f_lib.models.fine_batch import MomentBatch, collate_moments
from c2f_lib.models.fine_losses import fine_loss
from c2f_lib.models.fine_presets import loss_preset
from c2f_lib.models.registry import build_model

REPO = Path(__file__).resolve().parents[1]
PHASES = ("forward", "loss", "backward", "optimizer")
PRESETS = {"moment_detr": "moment_detr", "qd_detr": "qd_detr", "mesm": "mesm_qvhighlights"}
DENOISING_MODELS = [("moment_detr", "moment_detr", {}), ("qd_detr", "qd_detr", {}),
                    ("qd_detr", "qd_detr", {"dn_groups": 3}), ("mesm", "mesm_charades", {}),
                    ("mesm", "mesm_charades", {"dn_groups": 3})]
QVH = {"video_dim": 2816, "text_dim": 512, "hidden_dim": 256, "ffn_dim": 1024, "n_heads": 8}


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


def qvh_samples(n: int = 32, seed: int = 0) -> list[MomentSample]:
    """QVHighlights-sized queries: 75 clips of 2816-d, 32 tokens of 512-d (with token ids), 1-3 windows."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        starts = sorted(torch.randperm(70, generator=g)[:1 + i % 3].tolist())
        out.append(MomentSample(qid=i, query="q", vid=f"yt{i}_0.0_150.0", duration=150.0, clip_len=2.0,
                                clip_feats=torch.randn(75, 2816, generator=g),
                                token_feats=torch.randn(32, 512, generator=g),
                                windows=[[2.0 * s, 2.0 * s + 8.0] for s in starts],
                                saliency=torch.rand(75, generator=g).round(decimals=1),
                                token_ids=torch.randint(0, 49408, (32,), generator=g)))
    return out


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
    parser.add_argument("--base", default="f64cee1", help="the commit whose code is the baseline")
    parser.add_argument("--denoising", action="store_true", help="the demo-size table with denoising queries")
    return parser.parse_args()


# ------------------------------------------------------------------------------------------------
# The base commit's code, imported beside this checkout's


def _c2f_modules() -> dict[str, object]:
    return {k: v for k, v in sys.modules.items() if k == "c2f_lib" or k.startswith("c2f_lib.")}


def load_base(rev: str) -> SimpleNamespace:
    """build_model / collate_moments / fine_loss / loss_preset of commit `rev` (git archive), leaving
    this checkout's modules in place."""
    folder = Path(tempfile.mkdtemp(prefix="c2f_base_"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "c2f_lib"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    current = _c2f_modules()
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        import c2f_lib.models.mesm  # noqa: F401
        import c2f_lib.models.moment_detr  # noqa: F401
        from c2f_lib.models import fine_batch, fine_losses, fine_presets, registry
        base = SimpleNamespace(build_model=registry.build_model, collate=fine_batch.collate_moments,
                               loss=fine_losses.fine_loss, preset=fine_presets.loss_preset)
    finally:
        for name in _c2f_modules():
            del sys.modules[name]
        sys.path.remove(str(folder))
        sys.modules.update(current)
    return base


def training_step(model, batch, loss_fn, weights, seed: int):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(batch)
    terms = loss_fn(out, batch, weights)
    terms["total"].backward()
    return out, terms


def max_difference(old, new, old_terms, new_terms) -> dict[str, float]:
    """Largest |old - new| over the forward outputs, the loss terms and the gradients (relative to each
    gradient tensor's largest entry)."""
    outputs = max((old[0][k] - new[0][k]).abs().max().item() for k in ("pred_logits", "pred_spans", "saliency"))
    losses = max(abs(old_terms[k].item() - new_terms[k].item()) for k in old_terms)
    grads = {k: p.grad for k, p in new[1].named_parameters() if p.grad is not None}
    base_grads = {k: p.grad for k, p in old[1].named_parameters() if p.grad is not None}
    if set(grads) != set(base_grads):
        raise RuntimeError(f"gradients of different parameters: {sorted(set(grads) ^ set(base_grads))[:4]}")
    scale = max(g.abs().max().item() for g in grads.values())
    return {"outputs": outputs, "losses": losses,
            "grads": max((grads[k] - base_grads[k]).abs().max().item() for k in grads) / scale}


MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm")


def matmul_share(model, batch, loss_fn, weights) -> float:
    """Fraction of one training step's CPU time spent inside matrix products (torch.profiler, self time).
    Those products are the same in both codes (same shapes, same order of operands: the outputs agree),
    so base time / (share x our time) is the speed-up this step could reach if everything else were free."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        training_step(model, batch, loss_fn, weights, seed=99)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    return sum(e.self_cpu_time_total for e in events if e.key in MATMULS) / total


def speedup(args: argparse.Namespace) -> None:
    base = load_base(args.base)
    samples = qvh_samples()
    print(f"QVHighlights-size training step, 1 thread, this checkout vs {args.base} (same process)")
    print(f"{'model':>12} {'base ms':>8} {'ours ms':>8} {'speed-up':>8} {'matmul %':>8} {'ceiling':>8}   "
          "max |difference| outputs / losses / grads")
    for name, preset in PRESETS.items():
        config = {**QVH, **({"word_vocab": list(range(5000))} if name == "mesm" else {})}
        torch.manual_seed(0)
        ours = build_model(name, config).train()
        theirs = base.build_model(name, config).train()
        theirs.load_state_dict(ours.state_dict())
        batch, base_batch = collate_moments(samples), base.collate(samples)
        weights, base_weights = loss_preset(preset), base.preset(preset)
        new_out, new_terms = training_step(ours, batch, fine_loss, weights, seed=1)
        old_out, old_terms = training_step(theirs, base_batch, base.loss, base_weights, seed=1)
        diff = max_difference((old_out, theirs), (new_out, ours), old_terms, new_terms)
        times: dict[str, list[float]] = {"base": [], "ours": []}
        for step in range(args.steps + 1):
            for tag, model, b, loss_fn, w in (("base", theirs, base_batch, base.loss, base_weights),
                                              ("ours", ours, batch, fine_loss, weights)):
                t0 = time.perf_counter()
                training_step(model, b, loss_fn, w, seed=10 + step)
                if step > 0:
                    times[tag].append(time.perf_counter() - t0)
        old_ms, new_ms = (1000 * statistics.median(times[k]) for k in ("base", "ours"))
        share = matmul_share(ours, batch, fine_loss, weights)
        print(f"{name:>12} {old_ms:8.0f} {new_ms:8.0f} {old_ms / new_ms:8.2f} {100 * share:8.0f} "
              f"{old_ms / (share * new_ms):8.2f}   "
              f"{diff['outputs']:.1e} / {diff['losses']:.1e} / {diff['grads']:.1e}")


def denoising_table(args: argparse.Namespace) -> None:
    batch = demo_batch()
    print(f"{'model':>15} " + " ".join(f"{p:>10}" for p in PHASES) + f" {'step ms':>8} {'x papers':>8}")
    papers: dict[str, float] = {}
    for name, preset, extra in DENOISING_MODELS:
        torch.manual_seed(0)
        model = build_model(name, {"video_dim": 512, "text_dim": 512, "hidden_dim": args.hidden,
                                   "ffn_dim": 4 * args.hidden, "n_heads": 4, **extra})
        t = phase_times(model, batch, preset, args.steps)
        step = sum(t.values())
        papers.setdefault(name, step)
        label = name + ("+dn" if extra else "")
        print(f"{label:>15} " + " ".join(f"{1000 * t[p]:>10.1f}" for p in PHASES)
              + f" {1000 * step:>8.1f} {step / papers[name]:>8.2f}")


def main() -> None:
    args = parse_args(steps=6, hidden=64)
    torch.set_num_threads(1)
    if args.denoising:
        denoising_table(args)
    else:
        speedup(args)


if __name__ == "__main__":
    main()
