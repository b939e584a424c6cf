"""An ipywidgets app to search a corpus interactively (notebook 07); callbacks work without a browser.

    encode = run_text_encoder(run_dir, "synthmoments", "tinyclip")   # stored texts, any text via the run's backbone
    app = Explorer({"xpool": xpool, "tmass": tmass}, fine, corpus, encode, video_dir=..., gt=..., fine_name="mesm")
    app                             # display it in JupyterLab (a picture of the last result where widgets cannot run)
    app.query.value = "the red circle jumps"; app.run_search()   # what the Search button does
    app.record, app.outcome         # the last result (vcmr prediction record, with saliency) and its verdict

Every control (coarse method, K, fusion) reruns the last search, so the status line and the figure always
describe the settings shown.
"""
from __future__ import annotations

import base64
import dataclasses
import html
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image

from c2f_lib.evaluation.moments import temporal_iou
from c2f_lib.pipeline.search import FUSIONS, Corpus, Queries, SearchConfig, TextEncoder, search
from c2f_lib.plots.explorer import Row, result_figure

IOU_HIT = 0.5   # a top-1 moment is a hit when it is in the ground-truth video with IoU >= this (VCMR R@1 IoU 0.5)


# ----------------------------------------------------------------------------- text
class QueryNotEncodable(ValueError):
    """A text the explorer cannot turn into features; its message is one plain line for the status."""


class RunTextEncoder:
    """The texts of the feature store from the store; any other text through the backbone the store was
    built with (`load_backbone`, called once, on the first new text). Without one (`load_backbone` None, or
    it fails), a new text raises QueryNotEncodable saying why in one line."""

    def __init__(self, store_path: str | Path, load_backbone: Callable[[], object] | None = None,
                 unavailable: str = "this run has no text encoder for its backbone"):
        self.store_path = Path(store_path)
        self._load, self.unavailable = load_backbone, unavailable
        self._backbone = None

    @property
    def encodes_new_text(self) -> bool:
        return self._load is not None

    def backbone_encoder(self):
        """The backbone text encoder (loaded on first use); QueryNotEncodable when there is none."""
        from c2f_lib.pipeline.search import BackboneTextEncoder

        if self._backbone is None:
            if self._load is None:
                raise QueryNotEncodable(self.unavailable)
            try:
                self._backbone = BackboneTextEncoder(self._load())
            except Exception as err:  # weights missing, offline...: say so and keep the stored texts working
                self._load, self.unavailable = None, f"its text encoder could not be loaded ({type(err).__name__}: " \
                                                     f"{str(err).splitlines()[0] if str(err) else ''})"
                raise QueryNotEncodable(self.unavailable) from None
        return self._backbone

    def __call__(self, texts: list[str]):
        from c2f_lib.features.store import FeatureStore
        from c2f_lib.pipeline.search import StoreTextEncoder

        with FeatureStore(self.store_path) as store:
            stored = all(store.has_text(t) for t in texts)
        return StoreTextEncoder(self.store_path)(texts) if stored else self.backbone_encoder()(texts)


def run_text_encoder(run_dir: str | Path, dataset: str, backbone: str, device: str = "cpu") -> RunTextEncoder:
    """The text encoder of a run's feature store: tinyclip from the checkpoint stage 02 keeps beside the store
    (features/tinyclip.pt), any other backbone from its spec (which may need weights this machine lacks)."""
    from c2f_lib.features.backbone_specs import load_backbone
    from c2f_lib.features.store import FeatureStore
    from c2f_lib.paths import RunPaths

    store_path = RunPaths(run_dir).feature_store(dataset, backbone)
    if backbone == "tinyclip":
        checkpoint = store_path.with_name("tinyclip.pt")
        if not checkpoint.is_file():
            return RunTextEncoder(store_path, None, "this run kept no tiny CLIP text encoder (features/tinyclip.pt)")
        return RunTextEncoder(store_path, lambda: load_backbone(f"tinyclip:{checkpoint}", device=device))
    with FeatureStore(store_path) as store:
        spec = store.meta.backbone
    return RunTextEncoder(store_path, lambda: load_backbone(spec, device=device))


# ----------------------------------------------------------------------------- verdict
@dataclass
class Outcome:
    """What one search got right or wrong, against the query's annotation (when it has one)."""

    top: list | None                 # the corpus top-1 moment [vid, start, end, fused score]
    k: int                           # videos searched
    ranked: int                      # videos in the recorded coarse ranking
    gt_vid: str | None = None
    gt_windows: list = dataclasses.field(default_factory=list)
    gt_rank: int | None = None       # 1-based coarse rank of the GT video; None: not in the recorded ranking
    iou: float | None = None         # top-1 vs the GT windows (0 in another video); None without GT
    hit: bool | None = None          # None without GT

    @property
    def verdict(self) -> str:
        if self.top is None:
            return "No moment found."
        if self.gt_vid is None:
            return "No ground truth: this text is not an annotated query of the split, so nothing to score."
        if self.hit:
            return f"HIT: the top-1 moment is in the ground-truth video and overlaps it with IoU {self.iou:.2f} ≥ {IOU_HIT}."
        if self.top[0] == self.gt_vid:
            return f"MISS: right video, wrong time: IoU {self.iou:.2f} < {IOU_HIT}."
        if self.gt_rank is None or self.gt_rank > self.k:
            where = f"coarse rank {self.gt_rank}" if self.gt_rank else f"below coarse rank {self.ranked}"
            return (f"MISS: wrong video (IoU 0). The ground-truth video has {where}, outside the K = {self.k} "
                    f"searched videos: the coarse stage lost it.")
        return (f"MISS: wrong video (IoU 0). The ground-truth video was searched (coarse rank {self.gt_rank}), "
                f"but a moment of another video scored higher.")


def outcome(record: dict, gt: tuple[str, Sequence[Sequence[float]]] | None, k: int) -> Outcome:
    top = record["moments"][0] if record["moments"] else None
    ranked = [vid for vid, _ in record["ranked_videos"]]
    result = Outcome(top=top, k=k, ranked=len(ranked))
    if gt is None:
        return result
    gt_vid, windows = gt
    result.gt_vid, result.gt_windows = gt_vid, [list(map(float, w)) for w in windows]
    result.gt_rank = ranked.index(gt_vid) + 1 if gt_vid in ranked else None
    if top is not None:
        result.iou = float(temporal_iou(np.asarray([top[1:3]], dtype=float),
                                        np.asarray(windows, dtype=float)).max()) if top[0] == gt_vid else 0.0
        result.hit = top[0] == gt_vid and result.iou >= IOU_HIT
    return result


# ----------------------------------------------------------------------------- frames
class FrameSource:
    """Frames of a folder's videos at given times (small, cached; a missing or broken file gives none)."""

    def __init__(self, video_dir: str | Path | None, short_side: int = 64):
        self.video_dir = Path(video_dir) if video_dir else None
        self.short_side = short_side
        self._readers: dict[str, object | None] = {}
        self._frames: dict[tuple[str, int], np.ndarray] = {}

    def _reader(self, vid: str):
        if vid not in self._readers:
            from c2f_lib.features.decode import open_video

            path = next(iter(sorted(self.video_dir.glob(f"{vid}.*"))), None) if self.video_dir else None
            try:
                self._readers[vid] = open_video(path, short_side=self.short_side) if path else None
            except Exception:  # a broken file only loses its frames
                self._readers[vid] = None
        return self._readers[vid]

    def at(self, vid: str, seconds: Sequence[float]) -> list[np.ndarray | None]:
        reader = self._reader(vid)
        if reader is None:
            return [None] * len(seconds)
        out = []
        for t in seconds:
            index = int(np.abs(np.asarray(reader.timestamps) - t).argmin())
            if (vid, index) not in self._frames:
                try:
                    self._frames[vid, index] = reader.get(np.asarray([index]))[0][0]
                except Exception:
                    self._frames[vid, index] = None
            out.append(self._frames[vid, index])
        return out


def _inside(start: float, end: float) -> list[float]:
    """Two times inside a window (at 1/4 and 3/4 of it), where its frames show what happens there."""
    return [start + 0.25 * (end - start), start + 0.75 * (end - start)]


# ----------------------------------------------------------------------------- app
class Explorer:
    def __init__(self, methods: dict, fine, corpus: Corpus, encode: TextEncoder,
                 video_dir: str | Path | None = None, gt: dict[str, tuple[str, Sequence]] | None = None,
                 cfg: SearchConfig | None = None, examples: Sequence[str] = (), fine_name: str = "fine model"):
        if not methods:
            raise ValueError("Explorer needs at least one coarse method")
        self.methods, self.fine, self.corpus, self.encode = methods, fine, corpus, encode
        self.fine_name = fine_name
        self.frames = FrameSource(video_dir)
        self.gt = gt or {}
        self.cfg = cfg or SearchConfig(k_videos=3)
        self.record: dict | None = None
        self.outcome: Outcome | None = None
        self.error: str | None = None
        self.figure: plt.Figure | None = None
        self.png: bytes | None = None
        self.frames_shown: dict[str, list[tuple[float, str]]] = {}
        self._searched: str | None = None       # the text of the last search; controls rerun it

        self.query = widgets.Combobox(options=list(examples), placeholder="type a query or pick a suggested one",
                                      description="query", ensure_option=False, layout=widgets.Layout(width="60%"))
        self.method = widgets.Dropdown(options=list(methods), description="coarse")
        self.k = widgets.IntSlider(value=min(self.cfg.k_videos, len(corpus.video_ids)), min=1,
                                   max=min(20, len(corpus.video_ids)), description="K videos")
        self.fusion = widgets.Dropdown(options=FUSIONS, value=self.cfg.fusion, description="fusion")
        self.button = widgets.Button(description="Search", button_style="primary")
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.button.on_click(lambda _: self.run_search())
        for control in (self.method, self.k, self.fusion):
            control.observe(self._control_changed, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.query, self.button]),
                                    widgets.HBox([self.method, self.k, self.fusion]), self.status, self.output])

    def _control_changed(self, _change) -> None:
        if self._searched is not None:
            self.run_search(self._searched)

    def _encode(self, text: str):
        try:
            return self.encode([text])
        except QueryNotEncodable as err:
            raise QueryNotEncodable(f"“{text}” is not one of this split's queries and new text cannot be "
                                    f"encoded here: {err}. Pick a suggested query.") from None
        except KeyError:  # a store-only encoder: no backbone at all
            raise QueryNotEncodable(f"“{text}” is not one of this split's queries and this explorer has no text "
                                    f"encoder for new text. Pick a suggested query.") from None

    def run_search(self, text: str | None = None) -> dict | None:
        """The Search button: encode the query, search, render; errors go to `status`, not exceptions."""
        text = (self.query.value if text is None else text).strip()
        self.record, self.outcome, self.error = None, None, None
        if not text:
            self.error = "Type a query first (or pick one of the suggested ones)."
        else:
            cfg = dataclasses.replace(self.cfg, k_videos=self.k.value, fusion=self.fusion.value,
                                      shortlist_size=None)
            gt = self.gt.get(text)
            self._searched = text
            try:
                sentence, tokens = self._encode(text)
                queries = Queries(qids=[0], texts=[text], sentence=sentence, tokens=tokens,
                                  gt_vids=[gt[0]] if gt else [], gt_windows=[list(gt[1])] if gt else [])
                self.record = search(self.methods[self.method.value], self.fine, queries, self.corpus, cfg,
                                     keep_saliency=True)[0]
                self.outcome = outcome(self.record, gt, min(cfg.k_videos, len(self.corpus.video_ids)))
            except (QueryNotEncodable, KeyError, ValueError) as err:
                self.error = str(err).strip('"').splitlines()[0]
        self._render()
        return self.record

    # -------------------------------------------------------------- rendering
    def _rows(self) -> list[Row]:
        record, result = self.record, self.outcome
        durations = dict(zip(self.corpus.video_ids, self.corpus.durations))
        ranked = record["ranked_videos"]
        searched = list(record["saliency"])
        shown = searched + ([result.gt_vid] if result.gt_vid and result.gt_vid not in searched else [])
        rows = []
        self.frames_shown = {}
        for vid in shown:
            position = next((i for i, (v, _) in enumerate(ranked) if v == vid), None)
            moments = [(i + 1, m[1], m[2], m[3]) for i, m in enumerate(record["moments"]) if m[0] == vid]
            row = Row(vid=vid, coarse_rank=None if position is None else position + 1,
                      coarse_score=None if position is None else float(ranked[position][1]),
                      duration=durations[vid], searched=vid in searched,
                      moments=moments[:self.cfg.moments_per_video],
                      gt_windows=result.gt_windows if vid == result.gt_vid else [],
                      saliency=record["saliency"].get(vid))
            if not row.searched and record.get("gt_moments"):
                row.unsearched_pick = record["gt_moments"][0]
            times = [(t, "pred") for t in _inside(*moments[0][1:3])] if moments else []
            times += [(t, "gt") for t in _inside(*row.gt_windows[0])] if row.gt_windows else []
            images = self.frames.at(vid, [t for t, _ in times])
            row.frames = [(t, kind, image) for (t, kind), image in zip(times, images) if image is not None]
            self.frames_shown[vid] = [(t, kind) for t, kind, _ in row.frames]
            rows.append(row)
        return rows

    def _status_html(self) -> str:
        result, cfg = self.outcome, f"coarse <b>{self.method.value}</b> · K = {self.k.value} · " \
                                    f"<b>{self.fusion.value}</b> fusion · fine <b>{html.escape(self.fine_name)}</b>"
        colour = "#555" if result.hit is None else ("#080" if result.hit else "#b00")
        lines = [f"<b style='color:{colour}'>{html.escape(result.verdict)}</b>"]
        if result.top:
            vid, start, end, score = result.top
            lines.append(f"Top-1 moment: <b>{vid}</b> {start:.1f}–{end:.1f} s (fused score {score:.3f})")
        if result.gt_vid:
            windows = ", ".join(f"{s:.1f}–{e:.1f} s" for s, e in result.gt_windows)
            rank = f"coarse rank {result.gt_rank} of {result.ranked}" if result.gt_rank else \
                f"below coarse rank {result.ranked}"
            lines.append(f"Ground truth: <b>{result.gt_vid}</b> {windows} ({rank}; IoU with the top-1 "
                         f"{result.iou:.2f})" if result.iou is not None else f"Ground truth: {result.gt_vid}")
        lines.append(f"<span style='color:#555'>{cfg}</span>")
        return "<br>".join(lines)

    def _render(self) -> None:
        self.output.outputs = ()
        if self.figure is not None:
            plt.close(self.figure)
            self.figure, self.png = None, None
        if self.error:
            self.status.value = f"<b style='color:#b00'>{html.escape(self.error)}</b>"
            return
        self.status.value = self._status_html()
        title = (f"“{self.record['query']}”  —  coarse {self.method.value}, K = {self.k.value}, "
                 f"{self.fusion.value} fusion, fine {self.fine_name}")
        self.figure = result_figure(self._rows(), self.corpus.clip_len, title, self.outcome.verdict, self.outcome.hit)
        # A PNG appended to the Output widget renders in JupyterLab and is inspectable without a kernel.
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        self.png = buffer.getvalue()
        self.output.append_display_data(Image(data=self.png, format="png"))
        # Closed figures still save and display; an open one would also be drawn by the inline
        # backend under whichever cell runs next.
        plt.close(self.figure)

    @property
    def status_text(self) -> str:
        """The status line without its HTML markup (for print and logs)."""
        return html.unescape(re.sub(r"<[^>]+>", "", self.status.value.replace("<br>", "\n")))

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """The live widget, plus what shows where widgets cannot run (an untrusted or kernel-less notebook,
        GitHub): a picture of the last result and one line saying so, instead of the widget's repr."""
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = ("Explorer app (interactive when this notebook runs in JupyterLab with a kernel). "
                                + (f"Last search: {self.status_text}" if self.record or self.error else ""))
        if self.png is not None:
            bundle["image/png"] = base64.b64encode(self.png).decode("ascii")
        return bundle
