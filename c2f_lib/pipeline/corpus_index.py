"""A FAISS index over query-independent video embeddings: the first stage of corpus-scale search.

A query-conditioned coarse model (X-Pool, T-MASS, TextDiff) pools every video *for each query*, so
its cost grows with the corpus. The index instead stores one unit vector per video (the mean of its
frame embeddings, L2-normalised) and returns, by inner product with the normalised sentence
embedding, a shortlist that the query-conditioned model then re-ranks (`search.rank_videos`).

Kinds: ``"flat"`` (IndexFlatIP, exact), ``"hnsw"`` (IndexHNSWFlat, graph search, no training),
``"ivf"`` (IndexIVFFlat, k-means cells, needs >= nlist training vectors).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
import torch

from c2f_lib.errors import MissingFileError
from c2f_lib.utils import atomic_path, atomic_write_json, read_json

INDEX_KINDS = ("flat", "hnsw", "ivf")


@dataclass
class IndexConfig:
    kind: str = "flat"
    hnsw_m: int = 32             # graph degree of HNSW
    ef_construction: int = 80    # HNSW build-time beam
    ef_search: int = 128         # HNSW query-time beam (>= the shortlist size)
    nlist: int = 256             # IVF cells
    nprobe: int = 16             # IVF cells visited per query

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind {self.kind!r} is not one of {INDEX_KINDS}")


def video_embeddings(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """frames [V, F, D] -> [V, D] float32 unit vectors (mean over frames)."""
    mean = torch.as_tensor(frames).float().mean(1)                            # [V, D]
    return torch.nn.functional.normalize(mean, dim=-1).numpy().astype(np.float32)


def _unit_rows(x: torch.Tensor | np.ndarray) -> np.ndarray:
    x = torch.as_tensor(x).float()
    x = x.reshape(-1, x.shape[-1])
    return np.ascontiguousarray(torch.nn.functional.normalize(x, dim=-1).numpy(), dtype=np.float32)


class CorpusIndex:
    """Maximum-inner-product search over video embeddings; `video_ids[i]` names row i."""

    def __init__(self, index: faiss.Index, video_ids: list[str], cfg: IndexConfig):
        if index.ntotal != len(video_ids):
            raise ValueError(f"index holds {index.ntotal} vectors for {len(video_ids)} video ids")
        self.index, self.video_ids, self.cfg = index, list(video_ids), cfg
        self._apply_search_params()

    @classmethod
    def build(cls, embeddings: np.ndarray, video_ids: list[str], cfg: IndexConfig | None = None,
              seed: int = 0) -> "CorpusIndex":
        """embeddings [V, D] (normalised here). IVF trains its cells on the embeddings themselves."""
        cfg = cfg or IndexConfig()
        x = _unit_rows(embeddings)                                               # [V, D]
        dim = x.shape[1]
        if cfg.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif cfg.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
        else:
            nlist = min(cfg.nlist, max(1, len(x) // 39))  # FAISS wants >= 39 points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.train(x)
        index.add(x)
        return cls(index, video_ids, cfg)

    def _apply_search_params(self) -> None:
        if self.cfg.kind == "hnsw":
            self.index.hnsw.efSearch = self.cfg.ef_search
        elif self.cfg.kind == "ivf":
            self.index.nprobe = self.cfg.nprobe

    def __len__(self) -> int:
        return self.index.ntotal

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [T, D] -> (cosines [T, k], row indices [T, k]); rows are -1 where fewer were found."""
        k = min(k, len(self))
        if self.cfg.kind == "hnsw" and self.index.hnsw.efSearch < k:
            self.index.hnsw.efSearch = k  # a beam narrower than k cannot return k results
        return self.index.search(_unit_rows(queries), k)

    def save(self, folder: str | Path) -> None:
        """`folder`/index.faiss + index.json (video ids and config), each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / "index.faiss") as tmp:
            faiss.write_index(self.index, str(tmp))
        atomic_write_json(folder / "index.json", {"video_ids": self.video_ids, "config": asdict(self.cfg)})

    @classmethod
    def load(cls, folder: str | Path) -> "CorpusIndex":
        folder = Path(folder)
        for name in ("index.faiss", "index.json"):
            if not (folder / name).exists():
                raise MissingFileError("not found (build the index with `c2f index`)", folder / name)
        meta = read_json(folder / "index.json")
        try:
            index = faiss.read_index(str(folder / "index.faiss"))
        except RuntimeError as err:
            raise ValueError(f"{folder / 'index.faiss'}: not a readable FAISS index ({err})") from None
        return cls(index, meta["video_ids"], IndexConfig(**meta["config"]))


def shortlist_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |approx_i ∩ exact_i| / |exact_i| (rows of video indices; -1 ignored)."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max(1, (e >= 0).sum()) for a, e in zip(approx, exact)]
    return float(np.mean(hits))

