"""The script oracle: the ceiling of coarse-to-fine search on SynthMoments.

It knows every video's script (SynthMoments' meta.json: each event's actor colour, shape and action)
and each query's (colour, shape, action), and nothing else. A video matches a query when its script has
an event of that actor doing that action; matching videos come first, in random order (ties are real:
twins and recurring casts make several videos hold the same event), each with the exact window of its
matching event. Its VR and VCMR recall are therefore what a perfect matcher reaches when it must guess
among indistinguishable videos: no system reading the same sentences can do better on average.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from c2f_lib.data.schema import MomentQuery

KEY = ("colour", "shape", "action")


def _event_key(event: dict) -> tuple[str, str, str]:
    return event["actor"]["colour"], event["actor"]["shape"], event["action"]


def script_oracle_records(videos: Sequence[dict], queries: Sequence[MomentQuery], seed: int = 0) -> list[dict]:
    """VCMR prediction records (format of `c2f_lib.evaluation.vcmr`) for `queries` over the corpus `videos`
    (meta.json video entries). Queries without colour/shape/action meta raise."""
    rng = np.random.default_rng(seed)
    events: dict[tuple[str, str, str], list[tuple[str, float, float]]] = {}
    for video in videos:
        for event in video["events"]:
            events.setdefault(_event_key(event), []).append((video["vid"], event["start"], event["end"]))
    vids = [v["vid"] for v in videos]
    records = []
    for query in queries:
        meta = query.meta or {}
        if any(k not in meta for k in KEY):
            raise ValueError(f"qid {query.qid!r}: the script oracle needs the query's {KEY} in its meta")
        found = events.get(tuple(meta[k] for k in KEY), [])
        matching = list(dict.fromkeys(vid for vid, _, _ in found))
        order = [matching[i] for i in rng.permutation(len(matching))]
        rest = [v for v in vids if v not in set(order)]
        ranked = [[v, 1.0] for v in order] + [[v, 0.0] for v in rest]
        rank = {v: i for i, v in enumerate(order)}
        moments = sorted(([vid, start, end, 1.0] for vid, start, end in found), key=lambda m: rank[m[0]])
        records.append({"qid": query.qid, "query": query.query, "gt_vid": query.vid, "ranked_videos": ranked,
                        "moments": moments,
                        "gt_moments": [[s, e, 1.0] for vid, s, e in found if vid == query.vid]})
    return records
