"""Retrieval metrics against a brute-force definition, tie handling, order invariance, protocols."""
from __future__ import annotations

import pytest
import torch

from c2f_lib.data.schema import VideoCaptions, write_captions
from c2f_lib.evaluation.retrieval import (caption_event_counts, caption_index_in_video, dual_softmax,
                                          recall_by_group, retrieval_metrics, score_split, t2v_ranks, v2t_ranks)
from c2f_lib.features.types import CoarseSplit


def brute_t2v(sims, t2v):
    ranks = []
    for q in range(sims.shape[0]):
        own = int(t2v[q])
        # sort the gallery by score, ties put the other items first (pessimistic)
        order = sorted(range(sims.shape[1]), key=lambda v: (-float(sims[q, v]), v == own))
        ranks.append(order.index(own) + 1)
    return ranks


def brute_v2t(sims, t2v):
    ranks = []
    for v in range(sims.shape[1]):
        own = [t for t in range(sims.shape[0]) if int(t2v[t]) == v]
        if not own:
            continue
        order = sorted(range(sims.shape[0]), key=lambda t: (-float(sims[t, v]), int(t2v[t]) == v))
        ranks.append(min(order.index(t) for t in own) + 1)
    return ranks


def random_case(seed, T=23, V=9, quantised=True):
    g = torch.Generator().manual_seed(seed)
    t2v = torch.randint(0, V, (T,), generator=g)
    sims = torch.randn(T, V, generator=g)
    if quantised:  # many exact ties
        sims = (sims * 2).round() / 2
    return sims, t2v


@pytest.mark.parametrize("seed", range(6))
def test_ranks_match_brute_force(seed):
    sims, t2v = random_case(seed)
    assert t2v_ranks(sims, t2v).tolist() == brute_t2v(sims, t2v)
    assert v2t_ranks(sims, t2v).tolist() == brute_v2t(sims, t2v)


def test_metric_values_from_ranks():
    # 4 captions, 3 videos (video 2 captioned twice); t2v ranks 1, 3, 1, 2
    sims = torch.tensor([[.9, .1, .2], [.5, .4, .3], [.0, .0, .7], [.8, .1, .6]])
    t2v = torch.tensor([0, 2, 2, 2])
    m = retrieval_metrics(sims, t2v, ks=(1, 2))
    assert t2v_ranks(sims, t2v).tolist() == [1, 3, 1, 2]
    assert m["t2v_R@1"] == 50.0 and m["t2v_R@2"] == 75.0
    assert m["t2v_MdR"] == 1.5 and m["t2v_MnR"] == pytest.approx(7 / 4)
    # v2t: video 0 -> caption 0 best (rank 1); video 1 has no caption (skipped);
    # video 2: own best .7 (caption 2) -> rank 1
    assert v2t_ranks(sims, t2v).tolist() == [1, 1]


def test_constant_scores_are_worst_case():
    t2v = torch.arange(5)
    m = retrieval_metrics(torch.zeros(5, 5), t2v)
    assert m["t2v_R@1"] == 0.0 and m["t2v_MnR"] == 5.0 and m["v2t_MnR"] == 5.0


def test_shuffling_queries_and_gallery_changes_nothing():
    sims, t2v = random_case(7, quantised=True)
    ref = retrieval_metrics(sims, t2v)
    q = torch.randperm(len(t2v), generator=torch.Generator().manual_seed(1))
    v = torch.randperm(sims.shape[1], generator=torch.Generator().manual_seed(2))
    inverse = torch.argsort(v)
    assert retrieval_metrics(sims[q][:, v], inverse[t2v[q]]) == ref


def test_dsl_and_nan():
    sims, t2v = random_case(3, quantised=False)
    assert torch.allclose(dual_softmax(sims, 0).sum(0), (sims * torch.softmax(100 * sims, 0)).sum(0))
    assert set(retrieval_metrics(sims, t2v, dsl=True)) == set(retrieval_metrics(sims, t2v))
    sims[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(sims, t2v)


class _OwnCaptionProbe:
    """score = index of the text each video was pooled by: exposes which text the protocol uses."""

    def score(self, text, frames, chunk_size=1, generator=None, gallery_text=None):
        pool_by = text[:, None, 0].expand(-1, frames.shape[0]) if gallery_text is None \
            else gallery_text[None, :, 0].expand(text.shape[0], -1)
        return pool_by.clone()


def test_reference_protocol_pools_gallery_with_own_caption():
    t2v = torch.tensor([0, 1, 1, 2])
    text = torch.arange(4.0)[:, None].repeat(1, 3)             # feature 0 = caption index
    split = CoarseSplit(["a", "b", "c"], torch.zeros(3, 2, 3), list("wxyz"), text, t2v)
    assert caption_index_in_video(t2v).tolist() == [0, 0, 1, 0]
    correct = score_split(_OwnCaptionProbe(), split, "correct")
    assert (correct == torch.arange(4.0)[:, None]).all()       # pooled by the query
    ref = score_split(_OwnCaptionProbe(), split, "reference")
    # caption m of its video meets videos pooled by their caption m (mod count)
    assert ref[0].tolist() == [0, 1, 3] and ref[2].tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="protocol"):
        score_split(_OwnCaptionProbe(), split, "buggy")


def test_score_split_scores_on_the_models_device_and_returns_cpu(monkeypatch):
    """A split loaded on the CPU is scored where the model is (a GPU model gets GPU inputs), and the
    similarities come back on the CPU, where text_to_video is. The 'meta' device stands in for a GPU."""
    import c2f_lib.evaluation.retrieval as retrieval

    class OnMeta:
        def score(self, text, frames, chunk_size=16, generator=None, gallery_text=None):
            assert text.device.type == frames.device.type == "meta"
            assert gallery_text is None or gallery_text.device.type == "meta"
            return torch.eye(text.shape[0], frames.shape[0], device="meta")

    monkeypatch.setattr(retrieval, "model_device", lambda model: torch.device("meta"))
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t: torch.eye(*t.shape) if t.device.type == "meta" else t)
    split = CoarseSplit([f"v{i}" for i in range(3)], torch.randn(3, 4, 8), ["a", "b", "c"], torch.randn(3, 8),
                        torch.arange(3))
    for protocol in ("correct", "reference"):
        sims = retrieval.score_split(OnMeta(), split, protocol)
        assert sims.device.type == "cpu"
    assert retrieval.evaluate_retrieval(OnMeta(), split)["t2v_R@1"] == 100.0


def test_recall_by_group_is_the_share_of_hits_within_each_group():
    hits = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.bool)
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    assert recall_by_group(hits, groups) == pytest.approx({0: 50.0, 1: 100 * 2 / 3, 2: 0.0})


def test_caption_event_counts_follow_the_split_order_and_mark_unrecorded(tmp_path):
    path = tmp_path / "captions.jsonl"
    write_captions(path, [VideoCaptions("a", ["scene a", "a1", "a12"], meta={"caption_events": [[], [1], [1, 2]]}),
                          VideoCaptions("b", ["b?", "b??"])])                       # a real dataset: not recorded
    split = CoarseSplit(video_ids=["a", "b"], frames=torch.zeros(2, 3, 4),
                        texts=["scene a", "a1", "a12", "b?", "b??"], text_emb=torch.zeros(5, 4),
                        text_to_video=torch.tensor([0, 0, 0, 1, 1]))
    assert caption_event_counts(split, path).tolist() == [0, 1, 2, -1, -1]
