"""Whole-video ("coarse") captions from a video's moment sentences, with no model (TACoS-CG recipe,
offline).

TACoS-CG asked an LLM to summarise each video's step sentences into 5 whole-video captions. The
offline generator here does the same job deterministically:

1. Sentences sharing a window are one event (paraphrases); events are ordered by start time.
2. Each sentence is scored by TF-IDF centrality: the cosine between its content-word vector and the
   video's (IDF over the videos given, so words every video shares, like "person", weigh little).
3. The events are cut into `segments` contiguous parts; caption j merges, in temporal order, the
   j-th most representative sentence of every part ("A, then b, then c."), so every caption spans
   the whole video and the K captions differ. A one-event video gets its paraphrases.

`compare_captions` measures generated captions against reference ones (e.g. the shipped LLM
TACoS-CG captions): lengths and content-word overlap.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from c2f_lib.data.schema import MomentQuery, VideoCaptions

STOPWORDS = frozenset("""
a an the and or but of to in on at by for with from into onto out up down over under off then
is are was were be been being am it its this that these those there here he she they them his her
their him i you we us our your some any all each both one two as so very just also again while
has have had do does did not no than too can will would could should s t
""".split())
_WORD = re.compile(r"[a-z]+")


@dataclass
class OfflineCaptionConfig:
    k: int = 5              # captions per video (fewer when a video has too few distinct sentences)
    segments: int = 3       # temporal parts merged into one caption
    max_words: int = 40     # a merged caption stops growing past this many words


def content_words(text: str) -> list[str]:
    """Lower-cased words minus stopwords, with a crude plural strip (cups -> cup)."""
    words = []
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or len(word) < 2:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]
        words.append(word)
    return words


def video_events(moments: list[MomentQuery]) -> dict[str, list[list[str]]]:
    """vid -> events in temporal order, each the distinct sentences annotated with one window
    (several annotators describing the same moment are paraphrases, not successive steps)."""
    events: dict[str, dict[tuple[float, float], list[str]]] = defaultdict(dict)
    for m in moments:
        text = " ".join(m.query.split()).rstrip(" .")
        window = tuple(round(t, 1) for t in m.relevant_windows[0])
        same = events[m.vid].setdefault(window, [])
        if text and text.lower() not in {t.lower() for t in same}:
            same.append(text)
    return {vid: [sorted(texts) for _, texts in sorted(by_window.items()) if texts]
            for vid, by_window in events.items()}


def _idf(documents: list[set[str]]) -> dict[str, float]:
    df = Counter(word for doc in documents for word in doc)
    n = len(documents)
    return {word: math.log((1 + n) / (1 + count)) + 1.0 for word, count in df.items()}


def _centrality(sentences: list[str], idf: dict[str, float]) -> list[float]:
    """Cosine between each sentence's TF-IDF vector and the whole video's."""
    vectors = [Counter(content_words(s)) for s in sentences]
    video = sum(vectors, Counter())
    video_norm = math.sqrt(sum((c * idf[w]) ** 2 for w, c in video.items())) or 1.0
    scores = []
    for vec in vectors:
        dot = sum(c * idf[w] * video[w] * idf[w] for w, c in vec.items())
        norm = math.sqrt(sum((c * idf[w]) ** 2 for w, c in vec.items())) or 1.0
        scores.append(dot / (norm * video_norm))
    return scores


def merge_clauses(clauses: list[str]) -> str:
    """["A person takes a knife", "He cuts the bread"] -> "A person takes a knife, then he cuts the bread."""
    parts = [clauses[0][0].upper() + clauses[0][1:]]
    for clause in clauses[1:]:
        first, _, rest = clause.partition(" ")
        keep_case = first == "I" or (first[1:] != first[1:].lower())  # acronyms, names like "McDonald"
        parts.append((first if keep_case else first.lower()) + (" " + rest if rest else ""))
    return ", then ".join(parts) + "."


def _video_captions(events: list[list[str]], idf: dict[str, float], cfg: OfflineCaptionConfig) -> list[str]:
    sentences = [text for texts in events for text in texts]
    event_of = [e for e, texts in enumerate(events) for _ in texts]
    scores = _centrality(sentences, idf)
    n_parts = min(cfg.segments, len(events))
    # Contiguous temporal parts of (nearly) equal event count; each part's sentences ranked by centrality.
    bounds = [round(p * len(events) / n_parts) for p in range(n_parts + 1)]
    ranked = [sorted((i for i in range(len(sentences)) if bounds[p] <= event_of[i] < bounds[p + 1]),
                     key=lambda i: (-scores[i], sentences[i])) for p in range(n_parts)]
    captions: list[str] = []
    for j in range(min(cfg.k, max(len(part) for part in ranked))):
        chosen = sorted(part[min(j, len(part) - 1)] for part in ranked)
        clauses, words = [], 0
        for i in chosen:
            if clauses and words + len(sentences[i].split()) > cfg.max_words:
                break
            clauses.append(sentences[i])
            words += len(sentences[i].split())
        caption = merge_clauses(clauses)
        if caption not in captions:
            captions.append(caption)
    return captions


def offline_coarse_captions(moments: list[MomentQuery], cfg: OfflineCaptionConfig | None = None) -> list[VideoCaptions]:
    """Up to `cfg.k` whole-video captions per video of `moments`, deterministic, no model."""
    cfg = cfg or OfflineCaptionConfig()
    if cfg.k < 1 or cfg.segments < 1:
        raise ValueError(f"k and segments must be >= 1, got {cfg}")
    by_video = video_events(moments)
    idf = _idf([{w for texts in events for t in texts for w in content_words(t)} for events in by_video.values()])
    durations = {m.vid: m.duration for m in moments}
    return [VideoCaptions(vid=vid, captions=_video_captions(events, idf, cfg), duration=durations[vid],
                          meta={"coarse_captions": "offline", "events": len(events)})
            for vid, events in by_video.items()]


def compare_captions(sets: dict[str, list[VideoCaptions]], reference: str) -> "pandas.DataFrame":
    """One row per caption set: captions/video, words (mean, min, max), and overlap with the
    reference set on shared videos: content-word recall (share of the reference's content words
    a video's captions contain), precision, and exact copies of reference captions."""
    import pandas as pd

    ref = {v.vid: v for v in sets[reference]}
    rows = []
    for name, videos in sets.items():
        words = [len(c.split()) for v in videos for c in v.captions]
        recall, precision, copies = [], [], 0
        for v in videos:
            if v.vid not in ref:
                continue
            ours = {w for c in v.captions for w in content_words(c)}
            theirs = {w for c in ref[v.vid].captions for w in content_words(c)}
            recall.append(len(ours & theirs) / max(len(theirs), 1))
            precision.append(len(ours & theirs) / max(len(ours), 1))
            copies += len({c.lower() for c in v.captions} & {c.lower() for c in ref[v.vid].captions})
        rows.append({"captions": name, "videos": len(videos),
                     "captions_per_video": len(words) / max(len(videos), 1),
                     "mean_words": sum(words) / max(len(words), 1), "min_words": min(words, default=0),
                     "max_words": max(words, default=0),
                     f"word_recall_vs_{reference}": sum(recall) / max(len(recall), 1),
                     f"word_precision_vs_{reference}": sum(precision) / max(len(precision), 1),
                     "shared_videos": len(recall), "identical_captions": copies})
    return pd.DataFrame(rows).set_index("captions")
