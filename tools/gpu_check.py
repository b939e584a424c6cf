"""GPU checks for the AMP paths, extraction throughput and the recipes (issue 20). Runs offline.

    python tools/gpu_check.py --device cuda --out gpu_check.json          # ~3-5 min on one GPU (estimate)
    python tools/gpu_check.py --device cpu --quick                         # smoke run of the script itself

1. extraction: ViT-B/32 (open_clip, random init unless --pretrained is given) fp16 weights and fp32 + autocast:
   model-only images/s on a resident batch vs `extract_dataset` frames/s on synthetic mp4s (decode + preprocess
   + encode + write); the ratio says how much the pipeline around the model costs.
2. AMP training step: QD-DETR (QVHighlights sizes: 2816-d clips, 75 clips, 512-d tokens, hidden 256, batch 32)
   and T-MASS (512-d, 12 frames, batch 32): ms/step and peak memory, fp32 vs amp ("auto": fp16 + GradScaler on
   CUDA, bf16 on CPU), and the relative difference of the first step's loss.
3. recipes: the first epoch of qvhighlights_qd_detr and msrvtt_tmass at their full model sizes on the
   miniature feature trees of c2f_lib.features.testing (timing, and that the CUDA path runs end to end).

Writes one JSON (--out) and prints it. Nothing is downloaded unless --pretrained names open_clip weights.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from c2f_lib.amp import Precision  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def check_extraction(device: str, quick: bool, pretrained: str | None, work: Path) -> dict:
    from c2f_lib.data.schema import VideoCaptions, write_captions
    from c2f_lib.features.backbones import OpenClipBackbone
    from c2f_lib.features.extract import ExtractConfig, extract_dataset
    from c2f_lib.features.testing import write_numbered_video

    n_videos, n_frames, batch = (2, 40, 8) if quick else (16, 300, 256)
    data = work / "videos_ds"
    (data / "videos").mkdir(parents=True, exist_ok=True)
    for v in range(n_videos):
        write_numbered_video(data / "videos" / f"v{v}.mp4", num_frames=n_frames, fps=10, size=256)
    write_captions(data / "captions_test.jsonl", [VideoCaptions(vid=f"v{v}", captions=[f"video {v}"])
                                                  for v in range(n_videos)])
    out = {}
    modes = {"fp16_weights": ("fp16", False), "fp32_autocast": ("fp32", "auto")} if device.startswith("cuda") \
        else {"fp32": ("fp32", False), "fp32_autocast_bf16": ("fp32", "auto")}
    for label, (weights, amp) in modes.items():
        backbone = OpenClipBackbone("ViT-B-32", pretrained, device=device, precision=weights)
        pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=backbone.dtype)
        precision = Precision.of(amp, device)
        with torch.no_grad(), precision.autocast():
            backbone._image_features(pixels)                                   # warm-up
            _sync(device)
            start, reps = time.perf_counter(), 2 if quick else 10
            for _ in range(reps):
                backbone._image_features(pixels)
            _sync(device)
        model_fps = reps * batch / (time.perf_counter() - start)
        _reset_peak(device)
        start = time.perf_counter()
        extract_dataset(data, backbone, work / f"store_{label}.h5",
                        ExtractConfig(num_frames=12, clip_len=2.0, frames_per_clip=1, amp=amp, num_workers=0 if quick else 4))
        _sync(device)
        seconds = time.perf_counter() - start
        frames = n_videos * (12 + n_frames // 20)                                  # coarse frames + one per 2-s clip
        out[label] = {"model_images_per_s": round(model_fps, 1), "pipeline_frames_per_s": round(frames / seconds, 1),
                      "pipeline_share_of_model_speed": round(frames / seconds / model_fps, 3),
                      "extract_s": round(seconds, 2), "peak_mb": _peak_mb(device)}
    return out


def _step_stats(make, batch_fn, loss_fn, device: str, amp, steps: int) -> dict:
    torch.manual_seed(0)
    model = make().to(device).train()
    precision = Precision.of(amp, device)
    scaler = precision.scaler()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = batch_fn()
    losses, times = [], []
    _reset_peak(device)
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        with precision.autocast():
            loss = loss_fn(model, inputs)
        optimizer.zero_grad(set_to_none=True)
        precision.step(loss, optimizer, scaler, model.parameters(), 0.1)
        _sync(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach().float()))
    return {"ms_per_step": round(1000 * sorted(times[1:] or times)[len(times[1:] or times) // 2], 2),
            "first_loss": losses[0], "last_loss": losses[-1], "finite": all(map(lambda x: x == x, losses)),
            "peak_mb": _peak_mb(device)}


def check_amp_steps(device: str, quick: bool) -> dict:
    import c2f_lib.models.mesm  # noqa: F401
    from c2f_lib.features.types import MomentSample
    from c2f_lib.models.fine_batch import collate_moments
    from c2f_lib.models.fine_losses import fine_loss
    from c2f_lib.models.fine_presets import loss_preset
    from c2f_lib.models.registry import build_model
    from c2f_lib.models.tmass import TMASS, TMASSConfig

    steps = 3 if quick else 20
    B, L, Dv, Dt = (4, 16, 64, 32) if quick else (32, 75, 2816, 512)
    hidden = 32 if quick else 256

    def samples():
        g = torch.Generator().manual_seed(0)
        return collate_moments([MomentSample(qid=i, query=f"q{i}", vid=f"v{i}", duration=2.0 * L, clip_len=2.0,
                                             clip_feats=torch.randn(L, Dv, generator=g),
                                             token_feats=torch.randn(20, Dt, generator=g),
                                             windows=[[10.0, 30.0]]) for i in range(B)]).to(device)

    weights = loss_preset("qd_detr")
    fine_cfg = dict(video_dim=Dv, text_dim=Dt, hidden_dim=hidden, n_heads=8 if not quick else 4,
                    ffn_dim=4 * hidden)
    out = {"qd_detr": {}, "tmass": {}}
    D, F = (32, 4) if quick else (512, 12)
    for amp in (False, "auto"):
        key = "fp32" if amp is False else "amp"
        out["qd_detr"][key] = _step_stats(lambda: build_model("qd_detr", fine_cfg), samples,
                                          lambda m, b: fine_loss(m(b), b, weights)["total"], device, amp, steps)
        out["tmass"][key] = _step_stats(
            lambda: TMASS(TMASSConfig(dim=D, num_frames=F, support_weight=0.8)),
            lambda: (torch.randn(B, D, device=device), torch.randn(B, F, D, device=device)),
            lambda m, x: m.training_loss(x[0], x[1], generator=torch.Generator().manual_seed(0),
                                         video_ids=torch.arange(B, device=device))[0], device, amp, steps)
    for name in out:
        fp32, amp = out[name]["fp32"]["first_loss"], out[name]["amp"]["first_loss"]
        out[name]["first_loss_rel_diff"] = abs(amp - fp32) / max(abs(fp32), 1e-8)
        out[name]["speedup"] = round(out[name]["fp32"]["ms_per_step"] / max(out[name]["amp"]["ms_per_step"], 1e-9), 2)
    return out


def check_recipes(device: str, quick: bool, work: Path) -> dict:
    from c2f_lib.features.testing import (make_random_store, write_msrvtt_release, write_qvhighlights_release,
                                          write_released_tree)
    from c2f_lib.pipeline.recipes import run_recipe

    repo = Path(__file__).resolve().parents[1]
    out = {}
    datasets = work / "datasets"
    rows = write_qvhighlights_release(datasets / "qvhighlights", {"train": 16 if quick else 64, "val": 8})
    sizes = {"slowfast_features": 24, "clip_features": 16} if quick else {"slowfast_features": 2304, "clip_features": 512}
    feats = write_released_tree(work / "qvh_features", rows["train"] + rows["val"], video_dims=sizes,
                                text_dim=16 if quick else 512)
    fine = ["train.epochs=1"] + (["models.qd_detr.config.hidden_dim=32", "models.qd_detr.config.n_heads=4",
                                  "models.qd_detr.config.ffn_dim=64"] if quick else [])
    start = time.perf_counter()
    summary = run_recipe(repo / "configs/repro/qvhighlights_qd_detr.yaml", work / "run_qvh", device, feats, datasets, fine)
    out["qvhighlights_qd_detr_epoch1"] = {"s": round(time.perf_counter() - start, 2),
                                          "val": summary["metrics"]["qd_detr"]["val"]["MR-full-R1@0.5"]}
    captions = write_msrvtt_release(datasets / "msrvtt", n_train=40 if quick else 400, n_test=20 if quick else 200)
    (work / "msr").mkdir(exist_ok=True)
    make_random_store(work / "msr" / "msrvtt__ViT-B-32.h5", captions_records=captions, dim=16 if quick else 512,
                      num_frames=12)
    start = time.perf_counter()
    summary = run_recipe(repo / "configs/repro/msrvtt_tmass.yaml", work / "run_msr", device, work / "msr", datasets,
                         ["train.epochs=1", "splits.val.holdout_videos=10"] + (["models.tmass.config.num_trials=2"]
                                                                                 if quick else []))
    out["msrvtt_tmass_epoch1"] = {"s": round(time.perf_counter() - start, 2),
                                  "test_t2v_R@1": summary["metrics"]["tmass"]["test"]["t2v_R@1"]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script, not the GPU")
    parser.add_argument("--pretrained", default=None, help="open_clip weights tag or file (default: random init)")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--only", nargs="*", default=["extraction", "amp", "recipes"])
    args = parser.parse_args()
    report: dict = {"device": args.device, "torch": torch.__version__,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checks = {"extraction": lambda: check_extraction(args.device, args.quick, args.pretrained, work),
                  "amp": lambda: check_amp_steps(args.device, args.quick),
                  "recipes": lambda: check_recipes(args.device, args.quick, work)}
        for name in args.only:
            start = time.perf_counter()
            try:
                report[name] = checks[name]()
            except Exception as err:  # report and go on: one failing check must not hide the others
                report[name] = {"error": f"{type(err).__name__}: {err}"}
            report[name]["check_s"] = round(time.perf_counter() - start, 1)
            Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 1 if any("error" in v for v in report.values() if isinstance(v, dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
