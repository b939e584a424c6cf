"""The query-swap test: text-blind predictors score 0 query dependence, a reader of the text scores `own`."""
from __future__ import annotations

import pytest
import torch

from c2f_lib.evaluation.query_swap import query_swap, swap_partners, with_text_of
from c2f_lib.evaluation.window_prior import WindowPrior
from c2f_lib.features.types import MomentSample


def _sample(qid: str, vid: str, window: list[float], word: float) -> MomentSample:
    return MomentSample(qid=qid, query=f"event at {window[0]}", vid=vid, duration=20.0, clip_len=2.0,
                        clip_feats=torch.zeros(10, 4), token_feats=torch.full((3, 4), word),
                        windows=[window], token_ids=torch.tensor([1, int(word), 2]))


def _corpus() -> list[MomentSample]:
    # v0 and v1 have two distinct moments each; v2's two moments overlap (IoU 0.6), v3 has one.
    return [_sample("a", "v0", [0.0, 4.0], 1), _sample("b", "v0", [10.0, 16.0], 2),
            _sample("c", "v1", [2.0, 6.0], 3), _sample("d", "v1", [12.0, 20.0], 4),
            _sample("e", "v2", [0.0, 10.0], 5), _sample("f", "v2", [0.0, 6.0], 6),
            _sample("g", "v3", [4.0, 8.0], 7)]


def _text_reader(corpus: list[MomentSample]):
    """Predicts the window of whichever corpus query has this sentence's token features (reads the text)."""
    by_word = {float(s.token_feats[0, 0]): s.windows[0] for s in corpus}

    def predict(samples):
        return [{"qid": s.qid, "pred_relevant_windows": [[*by_word[float(s.token_feats[0, 0])], 1.0]]}
                for s in samples]
    return predict


def test_partners_are_other_moments_of_the_same_video_and_deterministic():
    corpus = _corpus()
    partners = swap_partners(corpus)
    assert partners == {0: 1, 1: 0, 2: 3, 3: 2}            # v2 overlaps too much, v3 has no second moment
    assert swap_partners(corpus, seed=3) == partners
    assert 4 in swap_partners(corpus, max_iou=0.7)           # a looser threshold admits v2's pair


def test_swapped_sample_keeps_its_video_and_windows_but_asks_the_partner_sentence():
    a, b = _corpus()[:2]
    swapped = with_text_of(a, b)
    assert (swapped.qid, swapped.vid, swapped.windows) == (a.qid, a.vid, a.windows)
    assert swapped.query == b.query and torch.equal(swapped.token_feats, b.token_feats)
    assert torch.equal(swapped.token_ids, b.token_ids)


def test_a_text_reader_follows_the_swapped_sentence():
    corpus = _corpus()
    scores = query_swap(_text_reader(corpus), corpus)
    assert scores == {"own": 100.0, "swapped_vs_own": 0.0, "swapped_vs_partner": 100.0,
                      "query_dependence": 100.0, "n_queries": 4.0}


def test_a_text_blind_predictor_has_no_query_dependence():
    corpus = _corpus()
    prior = WindowPrior.fit(corpus)
    scores = query_swap(prior.predict, corpus)
    assert scores["query_dependence"] == 0.0
    assert scores["own"] == scores["swapped_vs_own"]


def test_needs_a_video_with_two_moments():
    with pytest.raises(ValueError, match="two distinct moments"):
        query_swap(lambda s: [], [_sample("g", "v3", [4.0, 8.0], 7)])
