"""The fine models learn: on easy synthetic grounding tasks, QD-DETR must beat the window prior and
follow the sentence.

Every clip inside a GT window carries its query's key vector (plus noise and a distractor key that fills
the whole video), and windows sit at random places. With one event per video a model can win by finding
the one eventful stretch; with two events per video only a model that reads the sentence can tell which
of them is meant, and the query-swap test (asking one event's video with the other event's sentence)
shows whether it does. Fails if a change to the models, losses, matcher or training loop stops them
from learning.
"""
from __future__ import annotations

import torch

import c2f_lib.models.qd_detr  # noqa: F401  (registers qd_detr)
from c2f_lib.evaluation.moments import evaluate_moments
from c2f_lib.evaluation.query_swap import query_swap
from c2f_lib.evaluation.window_prior import WindowPrior
from c2f_lib.features.types import MomentSample
from c2f_lib.models.registry import build_model
from c2f_lib.training.fine import FineTrainConfig, samples_to_ground_truth, train_fine

DIM, KEYS = 16, 8
TINY = dict(video_dim=DIM, text_dim=DIM, hidden_dim=32, n_heads=4, ffn_dim=64, num_queries=10, input_dropout=0.1)


KEY_VECTORS = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(123)))[0][:KEYS]


def _drawer(seed: int):
    g = torch.Generator().manual_seed(seed)
    return g, lambda low, high: int(torch.randint(low, high, (1,), generator=g))


def _query(g: torch.Generator, key: int, qid: str, vid: str, clips: torch.Tensor, start: int, width: int):
    tokens = 0.3 * torch.randn(5, DIM, generator=g)
    tokens[2] += 2 * KEY_VECTORS[key]                                               # the query names the key
    return MomentSample(qid=qid, query=f"q{key}", vid=vid, duration=2.0 * len(clips), clip_len=2.0,
                        clip_feats=clips, token_feats=tokens, windows=[[2.0 * start, 2.0 * (start + width)]])


def signal_samples(n: int, seed: int) -> list[MomentSample]:
    """n queries over 10-19 clips of 2 s; the GT window (2-4 clips) holds the query's key vector."""
    g, draw = _drawer(seed)
    out = []
    for i in range(n):
        L, width = draw(10, 20), draw(2, 5)
        start, key = draw(0, L - width + 1), draw(0, KEYS)
        clips = 0.5 * torch.randn(L, DIM, generator=g) + KEY_VECTORS[draw(0, KEYS)]   # distractor everywhere
        clips[start:start + width] += 2 * KEY_VECTORS[key]                             # the event
        out.append(_query(g, key, f"{seed}_{i}", f"v{seed}_{i}", clips, start, width))
    return out


def two_event_samples(n_videos: int, seed: int) -> list[MomentSample]:
    """2 queries per video of 12-19 clips holding two disjoint events (2-4 clips) with different keys."""
    g, draw = _drawer(seed)
    out = []
    for v in range(n_videos):
        L, first_width, second_width = draw(12, 20), draw(2, 5), draw(2, 5)
        first = draw(0, L - first_width - second_width + 1)
        second = draw(first + first_width, L - second_width + 1)
        first_key = draw(0, KEYS)
        second_key = (first_key + draw(1, KEYS)) % KEYS
        clips = 0.5 * torch.randn(L, DIM, generator=g) + KEY_VECTORS[draw(0, KEYS)]
        clips[first:first + first_width] += 2 * KEY_VECTORS[first_key]
        clips[second:second + second_width] += 2 * KEY_VECTORS[second_key]
        out.append(_query(g, first_key, f"{seed}_{v}_a", f"v{seed}_{v}", clips, first, first_width))
        out.append(_query(g, second_key, f"{seed}_{v}_b", f"v{seed}_{v}", clips, second, second_width))
    return out


def r1_at_05(predictions: list[dict], samples: list[MomentSample]) -> float:
    return evaluate_moments(predictions, samples_to_ground_truth(samples))["brief"]["MR-full-R1@0.5"]


def test_qd_detr_beats_the_window_prior_on_a_signal_task(tmp_path):
    """Denoising queries on (notebook 05's `denoising_groups`). Measured at these 320 steps: 65.6 vs the prior's 20.3
    (training seed 1: 60.9); without denoising (dn_groups=0, the papers' training) 18.8, so the test also fails
    if the denoising path breaks. Not fewer steps: DETR-style models sit on the prior's plateau before they
    take off, and at 200 steps (this test until the PReLU backward changed its summation order) the same
    model scored 40.6 or 21.9 depending on that order alone."""
    torch.set_num_threads(1)
    train, val = signal_samples(256, seed=1), signal_samples(64, seed=2)
    prior = r1_at_05(WindowPrior.fit(train).predict(val), val)
    torch.manual_seed(0)
    epochs = 40                                                      # 8 steps each
    cfg = FineTrainConfig(epochs=epochs, batch_size=32, lr=2e-3, loss_preset="qd_detr", seed=0, device="cpu",
                          eval_every=epochs)
    model, summary = train_fine(build_model("qd_detr", {**TINY, "dn_groups": 3}), train, val, cfg, tmp_path)
    learned = r1_at_05(model.predict(val), val)
    assert learned == summary["best_val"]["MR-full-R1@0.5"]          # deterministic re-evaluation
    assert learned > prior + 10.0, (learned, prior)


def test_qd_detr_reads_the_sentence_on_a_two_event_task(tmp_path):
    """Two events per video: finding "an event" gives at most about half the hits, and asking one event's
    video with the other event's sentence must move the answer. Measured at these 400 steps: R1@0.5
    65.6, query dependence 54.7 (window prior 12.5 / 0; 57.8 / 42.2 before the PReLU backward's summation
    order changed). At 800 steps QD-DETR reaches 85.9 with query dependence
    81.3 (MESM 82.8 / 79.7; QD-DETR without denoising 45.3 / 37.5), while Moment-DETR stays text-blind
    (29.7 / 1.6), as the QD-DETR paper argues."""
    torch.set_num_threads(1)
    train, val = two_event_samples(128, seed=1), two_event_samples(32, seed=2)
    torch.manual_seed(0)
    epochs = 50                                                      # 8 steps each
    cfg = FineTrainConfig(epochs=epochs, batch_size=32, lr=2e-3, loss_preset="qd_detr", seed=0, device="cpu",
                          eval_every=epochs)
    model, _ = train_fine(build_model("qd_detr", {**TINY, "dn_groups": 3}), train, val, cfg, tmp_path)
    scores = query_swap(model.predict, val)
    assert scores["own"] > 40.0 and scores["query_dependence"] > 25.0, scores
