"""The measured effect of each deviation in docs/DEVIATIONS.md (fine and coarse models), one line each.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_fine_deviations.py

Measured on the official golden bundles (../shared/golden: official checkpoints, inputs and outputs; loaded
with the golden tests' readers) and on the real QVHighlights train annotations (../shared/datasets), by
switching each named option between our behaviour and the official one. Deterministic; ~1 minute.
"""
from __future__ import annotations

import json
import math
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))                              # the golden bundles' readers

import test_golden_coarse as coarse_golden  # noqa: E402
import test_golden_fine as golden  # noqa: E402
from c2f_lib.evaluation.retrieval import retrieval_metrics  # noqa: E402
from c2f_lib.models.fine_batch import group_key  # noqa: E402
from c2f_lib.models.fine_losses import fine_loss  # noqa: E402
from c2f_lib.models.registry import build_model  # noqa: E402
from c2f_lib.models.span_utils import postprocess_windows  # noqa: E402
from c2f_lib.models.tmass import _trial_cosines  # noqa: E402

SHARED = REPO.parent / "shared"
QVH_TRAIN = SHARED / "datasets" / "qvhighlights" / "highlight_train_release.jsonl"


def report(name: str, effect: str) -> None:
    print(f"{name:<44} {effect}")


def max_change(a: dict, b: dict, mask: torch.Tensor) -> float:
    return max((a["pred_logits"] - b["pred_logits"]).abs().max().item(),
               (a["pred_spans"] - b["pred_spans"]).abs().max().item(),
               (a["saliency"] - b["saliency"])[mask].abs().max().item())


# ------------------------------------------------------------------------------------------------ fine
def fixed_differences(bundles: dict) -> None:
    """What the three fixes changed on the official checkpoints (old behaviour vs the official one)."""
    md = bundles["moment_detr"]
    result, batch = golden.imported(md), golden.golden_batch(md, "full")
    prelu = build_model("moment_detr", {**result.config, "ffn_activation": "prelu"}).eval()   # slopes 0.25
    prelu.load_state_dict(result.model.state_dict(), strict=False)
    with torch.no_grad():
        change = max_change(result.model(batch), prelu(batch), batch.video_mask)
    report("Moment-DETR FFN PReLU (old c2f) vs ReLU", f"max |d output| {change:.3f}")
    mesm = bundles["mesm"]
    model, batch = golden.imported(mesm).model, golden.golden_batch(mesm, "full")
    with torch.no_grad():
        hidden = model(batch)
        type(model).global_token_is_key = True
        visible = model(batch)
        type(model).global_token_is_key = False
    report("MESM global token visible (old c2f) vs hidden",
           f"max |d output| {max_change(hidden, visible, batch.video_mask):.3f}")
    for kind in ("moment_detr", "qd_detr", "mesm"):
        post, out = bundles[kind]["postprocess"], bundles[kind]["outputs"]["full"]
        probs = out["pred_logits"].softmax(-1)[..., 0]
        changed = 0
        for i, result in enumerate(post["results"]):
            rows = postprocess_windows(out["pred_spans"][i], probs[i], 150.0, 2.0, duration=150.0)
            by_slot = dict(zip(torch.sort(probs[i], descending=True, stable=True).indices.tolist(), rows))
            rounded = torch.sort(torch.round(probs[i] * 1e4), descending=True, stable=True).indices.tolist()
            changed += sum(by_slot[s] != r for s, r in zip(rounded, result["pred_relevant_windows"]))
        report(f"{kind}: rank by rounded score (old c2f)", f"{changed} of 40 ranked windows in another place")


def post_processing(bundles: dict) -> None:
    rows = {"clamp at 150 s": 0, "x duration": 0, "empty windows kept": 0, "total": 0}
    for kind in ("moment_detr", "qd_detr", "mesm"):
        out = bundles[kind]["outputs"]["full"]
        probs = out["pred_logits"].softmax(-1)[..., 0]
        for i in range(len(probs)):
            spans, p = out["pred_spans"][i], probs[i]
            # a 120-s video (60 clips): windows past its end; features 2 s short of a 150-s video (74 clips)
            a = postprocess_windows(spans, p, 120.0, 2.0, duration=120.0)
            b = postprocess_windows(spans, p, 120.0, 2.0, duration=120.0, protocol="reference")
            rows["clamp at 150 s"] += sum(x != y for x, y in zip(a, b))
            a = postprocess_windows(spans, p, 148.0, 2.0, duration=150.0)
            b = postprocess_windows(spans, p, 148.0, 2.0, duration=150.0, protocol="reference", max_ts_val=150.0)
            rows["x duration"] += sum(x[:2] != y[:2] for x, y in zip(a, b))
            ref = postprocess_windows(spans, p, 150.0, 2.0, duration=150.0, protocol="reference")
            rows["empty windows kept"] += sum(r[1] <= r[0] for r in ref)
            rows["total"] += len(ref)
    n = rows["total"]
    report("windows clamped to the video, not 150 s", f"120-s videos: {rows['clamp at 150 s']} of {n} windows differ")
    report("spans x feature extent, not x duration", f"74 clips of a 150-s video: {rows['x duration']} of {n} differ")
    report("empty windows widened to one clip", f"{rows['empty windows kept']} of {n} official windows are empty")
    ties_4dp = ties_fp16 = 0
    for kind in ("moment_detr", "qd_detr", "mesm"):
        sal = bundles[kind]["outputs"]["full"]["saliency_scores"]
        for row in sal:
            ties_4dp += int((row.round(decimals=4) == row.round(decimals=4).max()).sum()) > 1
            ties_fp16 += int((row.half() == row.half().max()).sum()) > 1
    report("saliency to 4 decimals, not float16",
           f"queries with a tied top clip: {ties_4dp} (4 dp) vs {ties_fp16} (fp16) of 12")


def training_options(bundles: dict) -> None:
    for kind, option, values in (("qd_detr", "negative_partner", ("other_video", "roll")),
                                 ("mesm", "gt_clips", ("window", "scores"))):
        b = bundles[kind]
        totals = []
        for value in values:
            result = golden.imported(b, **{option: value}, **({"mlm_unknown": "keep"} if kind == "mesm" else {}))
            batch = golden.golden_batch(b, "full")
            batch.partner = None if kind == "qd_detr" else batch.partner
            with torch.no_grad():
                out = result.model(batch, training_outputs=True)
                totals.append(fine_loss(out, batch, result.loss_weights)["total"])
        report(f"{kind} {option} {values[0]} vs {values[1]}",
               f"golden loss |d| {abs(totals[0] - totals[1]).item():.1e}")
    b = bundles["mesm"]
    batch = golden.golden_batch(b, "full")
    losses = []
    for value in ("keep", "replace"):
        result = golden.imported(b, mlm_unknown=value)
        with torch.no_grad():
            losses.append(fine_loss(result.model(batch, training_outputs=True), batch, result.loss_weights)["rec_fw"])
    unknown = int((batch.token_ids >= 100)[batch.text_mask].sum())
    report("MESM unknown words keep feature vs [UNK]",
           f"golden rec_fw {losses[0]:.4f} vs {losses[1]:.4f} ({unknown} of 80 words unknown)")
    model, batch = golden.imported(bundles["qd_detr"]).model, golden.golden_batch(bundles["qd_detr"], "full")
    widths = []
    hook = model.decoder.register_forward_hook(lambda m, i, o: widths.append(o[1][..., 1].min().item()))
    with torch.no_grad():
        model(batch)
    hook.remove()
    report("anchor width clamped at 1e-3 in the modulation",
           f"smallest golden anchor width {min(widths):.3f}: no effect")


def qvhighlights_counts() -> None:
    rows = [json.loads(line) for line in QVH_TRAIN.read_text().splitlines()]
    n = len(rows)
    past = sum(w[1] > r["duration"] for r in rows for w in r["relevant_windows"])
    report("GT spans clipped to the feature extent", f"QVH train: {past} windows end past the video")
    many = sum(len(r["relevant_windows"]) > 5 for r in rows)
    report("all GT windows, not a random 5", f"QVH train: {many} of {n} queries have more than 5")
    zero_one = sum(all(sum(s) in (0, 12) for s in r["saliency_scores"]) for r in rows)
    p = zero_one / n
    report("saliency label kind inferred per batch",
           f"QVH train: {zero_one} of {n} queries all-0/1; a batch of 32: p={p ** 32:.1e}")
    by_vid = Counter(r["vid"] for r in rows)
    random.seed(0)
    same = total = 0
    for _ in range(200):
        batch = random.sample(rows, 32)
        same += sum(batch[i]["vid"] == batch[(i + 1) % 32]["vid"] for i in range(32))
        total += 32
    report("negative partner from another video, not rolled",
           f"QVH train, random batches of 32: {same} of {total} rolled partners share the video")
    groups = defaultdict(list)
    for r in rows:
        groups[group_key(r["vid"])].append(r)
    repeated = sum(len(g) for g in groups.values() if len({r["vid"] for r in g}) < len(g))
    report("MESM transductive: each video once",
           f"QVH train: {repeated} of {n} queries in a group with a repeated video")
    zero = sum(sum(s) == 0 for r in rows for s in r["saliency_scores"])
    clips = sum(len(r["saliency_scores"]) for r in rows)
    queries = sum(any(sum(s) == 0 for s in r["saliency_scores"]) for r in rows)
    report("MESM GT clips from windows, not scores",
           f"QVH train: {zero} of {clips} GT clips scored 0 ({queries} queries)")
    extra = 0
    for g in groups.values():
        hull = [(min(w[0] for w in r["relevant_windows"]) / r["duration"],
                 max(w[1] for w in r["relevant_windows"]) / r["duration"]) for r in g]
        for i, ri in enumerate(g):
            extra += any(rj["vid"] != ri["vid"] and _giou(hull[i], hull[j]) >= 0.9 for j, rj in enumerate(g))
    report("MESM segment-sentence positives per video", f"QVH train: {extra} of {n} queries gain a positive by group")
    several = sum(len(g) for g in groups.values() if len(g) > 1)
    report("MESM context from the own video (default)", f"QVH train: {several} of {n} queries share their group")


def _giou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    hull = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union - (hull - union) / hull if union > 0 and hull > 0 else -1.0


# ------------------------------------------------------------------------------------------------ coarse
def coarse(root: Path) -> None:
    tmass = coarse_golden.read_bundle(root, "tmass")
    model, x, want = tmass["model"], tmass["inputs"], tmass["outputs"]
    text, frames = x["text_embeds"], x["frame_embeds"]
    truth = torch.arange(len(text))
    metrics = tmass["metrics"]
    report("T-MASS correct pairing, not own-caption", f"golden t2v R@1 {metrics['correct_pairing']['t2v_R1']:.2f} "
                                                     f"vs official {metrics['official_pairing']['t2v_R1']:.2f}")
    shared, independent = [], []
    with torch.no_grad():
        pooled, radius = model.pool_frames(text, frames), model.radius(text, frames)
        for seed in range(10):
            g = torch.Generator().manual_seed(seed)
            eps = torch.rand(len(text), 20, text.shape[1], generator=g)
            sims = _trial_cosines(text, pooled, radius.clone(), eps).amax(-1)
            shared.append(retrieval_metrics(sims, truth)["t2v_R@1"])
            per_video = torch.rand(frames.shape[0], len(text), 20, text.shape[1], generator=g)   # fresh per video
            sims = torch.stack([_trial_cosines(text, pooled[:, v:v + 1], radius[:, v:v + 1].clone(), per_video[v])
                                [:, 0].amax(-1) for v in range(frames.shape[0])], 1)
            independent.append(retrieval_metrics(sims, truth)["t2v_R@1"])
    def spread(values: list[float]) -> str:
        mean = sum(values) / len(values)
        return f"{mean:.1f} +- {math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)):.1f}"
    report("T-MASS noise per (text, trial), all videos", f"golden t2v R@1 over 10 seeds {spread(shared)} "
                                                          f"(official per video: {spread(independent)})")
    xpool = coarse_golden.read_bundle(root, "xpool")["model"]
    ids = torch.arange(32) // 2                                       # pairs of captions of one video
    frames2 = frames[ids * 2]
    with torch.no_grad():
        masked, _ = xpool.training_loss(text, frames2, video_ids=ids)
        xpool.cfg.mask_duplicate_videos = False
        plain, _ = xpool.training_loss(text, frames2, video_ids=ids)
    report("same-video captions not negatives (X-Pool)",
           f"golden, 2 captions per video: loss {masked:.3f} vs official {plain:.3f}")


def main() -> None:
    torch.set_num_threads(1)
    root = SHARED / "golden"
    bundles = {kind: golden.read_bundle(root, kind) for kind in golden.KINDS}
    fixed_differences(bundles)
    post_processing(bundles)
    training_options(bundles)
    qvhighlights_counts()
    coarse(root)


if __name__ == "__main__":
    main()
