"""Writing text features to the store: format 1's one HDF5 group per text against `put_texts`.

The baseline reproduces format 1's writes (a group, two datasets and two attributes per text, as
`put_text` did before the text table); the new path is `FeatureStoreWriter.put_texts` in
extraction's batches. Both write the same texts (sentence [D] + tokens [Lq, Dt]) in one process,
each `--repeats` times (median), and the printed ratio is old / new time.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_store.py --texts 2000
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from c2f_lib.features.store import StoreMeta, text_key
from c2f_lib.features.store_writer import FeatureStoreWriter


def format1_writes(path: Path, texts: list[str], sentences: np.ndarray, tokens: list[np.ndarray]) -> None:
    with h5py.File(path, "w") as handle:
        parent = handle.create_group("texts")
        for text, sentence, token in zip(texts, sentences, tokens):
            group = parent.create_group(text_key(text))
            group.attrs["text"] = text
            group.create_dataset("sentence", data=sentence.astype(np.float16))
            group.create_dataset("tokens", data=token.astype(np.float16))
            group.attrs["complete"] = True


def table_writes(path: Path, texts: list[str], sentences: np.ndarray, tokens: list[np.ndarray],
                 batch: int) -> None:
    with FeatureStoreWriter(path, StoreMeta(backbone="bench")) as writer:
        for start in range(0, len(texts), batch):
            writer.put_texts(texts[start:start + batch], sentences=sentences[start:start + batch],
                             tokens=tokens[start:start + batch])


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            fn(Path(tmp) / "store.h5")
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--token-dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256, help="texts per put_texts (ExtractConfig.text_batch)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    texts = [f"caption {i} of a video" for i in range(args.texts)]
    sentences = rng.standard_normal((args.texts, args.dim)).astype(np.float32)
    tokens = [rng.standard_normal((int(n), args.token_dim)).astype(np.float32)
              for n in rng.integers(5, 25, args.texts)]
    old = timed(lambda p: format1_writes(p, texts, sentences, tokens), args.repeats)
    new = timed(lambda p: table_writes(p, texts, sentences, tokens, args.batch), args.repeats)
    print(f"{args.texts} texts: format 1 per-text groups {old * 1e3 / args.texts:.3f} ms/text, "
          f"put_texts (batch {args.batch}) {new * 1e3 / args.texts:.3f} ms/text, old/new = {old / new:.1f}x")


if __name__ == "__main__":
    main()
