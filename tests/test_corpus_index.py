"""FAISS corpus index: exact search equals brute force; approximate kinds keep recall; save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from c2f_lib.pipeline.corpus_index import CorpusIndex, IndexConfig, shortlist_recall, video_embeddings


def _clustered(n=600, dim=16, clusters=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim))
    return x.astype(np.float32), (centres[:5] + 0.4 * rng.standard_normal((5, dim))).astype(np.float32)


def test_video_embeddings_are_unit_means():
    frames = torch.randn(3, 4, 8)
    emb = video_embeddings(frames)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(emb[0], (frames[0].mean(0) / frames[0].mean(0).norm()).numpy(), rtol=1e-5)


def test_flat_equals_brute_force():
    x, q = _clustered()
    index = CorpusIndex.build(x, [f"v{i}" for i in range(len(x))])
    scores, rows = index.search(q, 10)
    xn, qn = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(qn @ xn.T), axis=1)[:, :10]
    np.testing.assert_array_equal(rows, exact)
    np.testing.assert_allclose(scores, np.take_along_axis(qn @ xn.T, exact, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_keep_recall(kind):
    x, q = _clustered()
    ids = [f"v{i}" for i in range(len(x))]
    _, exact = CorpusIndex.build(x, ids).search(q, 20)
    _, approx = CorpusIndex.build(x, ids, IndexConfig(kind=kind, nlist=8, nprobe=4)).search(q, 20)
    assert shortlist_recall(approx, exact) >= 0.9


def test_save_load_roundtrip_and_errors(tmp_path):
    x, q = _clustered(n=100)
    index = CorpusIndex.build(x, [f"v{i}" for i in range(100)], IndexConfig(kind="hnsw"))
    index.save(tmp_path / "idx")
    loaded = CorpusIndex.load(tmp_path / "idx")
    assert loaded.video_ids == index.video_ids and loaded.cfg == index.cfg
    np.testing.assert_array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    with pytest.raises(FileNotFoundError, match="c2f index"):
        CorpusIndex.load(tmp_path / "nothing")
    (tmp_path / "idx" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable FAISS index"):
        CorpusIndex.load(tmp_path / "idx")
    with pytest.raises(ValueError, match="index kind"):
        IndexConfig(kind="lsh")
