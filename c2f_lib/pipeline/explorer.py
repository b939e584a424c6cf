"""An ipywidgets app to search a corpus interactively (notebook 07); callbacks work without a browser.

    app = Explorer({"xpool": xpool, "tmass": tmass}, fine, corpus, encode, video_dir=..., gt=...)
    app.widget                      # display it in JupyterLab
    app.query.value = "the red circle jumps"; app.run_search()   # what the Search button does
    app.record                      # the last result (vcmr prediction record, with saliency)
"""
from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path
from typing import Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image

from c2f_lib.pipeline.search import FUSIONS, Corpus, Queries, SearchConfig, TextEncoder, search
from c2f_lib.plots.explorer import result_figure


def video_thumbnails(path: str | Path, count: int = 4, short_side: int = 64) -> np.ndarray:
    """[count, H, W, 3] uint8 uniform frames of a video file."""
    from c2f_lib.features.decode import open_video, uniform_indices

    reader = open_video(path, short_side=short_side)
    frames, _ = reader.get(uniform_indices(len(reader.timestamps), count))
    return frames


class Explorer:
    def __init__(self, methods: dict, fine, corpus: Corpus, encode: TextEncoder,
                 video_dir: str | Path | None = None, gt: dict[str, tuple[str, Sequence]] | None = None,
                 cfg: SearchConfig | None = None, examples: Sequence[str] = (), thumbnails: int = 4):
        if not methods:
            raise ValueError("Explorer needs at least one coarse method")
        self.methods, self.fine, self.corpus, self.encode = methods, fine, corpus, encode
        self.video_dir = Path(video_dir) if video_dir else None
        self.gt = gt or {}
        self.cfg = cfg or SearchConfig(k_videos=3)
        self.num_thumbnails = thumbnails
        self._thumb_cache: dict[str, np.ndarray | None] = {}
        self.record: dict | None = None
        self.error: str | None = None
        self.figure: plt.Figure | None = None

        self.query = widgets.Combobox(options=list(examples), placeholder="type a query", description="query",
                                      ensure_option=False, layout=widgets.Layout(width="60%"))
        self.method = widgets.Dropdown(options=list(methods), description="coarse")
        self.k = widgets.IntSlider(value=min(self.cfg.k_videos, len(corpus.video_ids)), min=1,
                                   max=min(20, len(corpus.video_ids)), description="K videos")
        self.fusion = widgets.Dropdown(options=FUSIONS, value=self.cfg.fusion, description="fusion")
        self.button = widgets.Button(description="Search", button_style="primary")
        self.status = widgets.HTML()
        self.output = widgets.Output()
        self.button.on_click(lambda _: self.run_search())
        self.widget = widgets.VBox([widgets.HBox([self.query, self.button]),
                                    widgets.HBox([self.method, self.k, self.fusion]), self.status, self.output])

    def _thumbnails(self, vid: str) -> np.ndarray | None:
        if self.video_dir is None:
            return None
        if vid not in self._thumb_cache:
            path = next(iter(sorted(self.video_dir.glob(f"{vid}.*"))), None)
            try:
                self._thumb_cache[vid] = video_thumbnails(path, self.num_thumbnails) if path else None
            except Exception:  # a broken file only loses its thumbnails
                self._thumb_cache[vid] = None
        return self._thumb_cache[vid]

    def run_search(self) -> dict | None:
        """The Search button: encode the query, search, render; errors go to `status`, not exceptions."""
        text = self.query.value.strip()
        self.record, self.error = None, None
        if not text:
            self.error = "type a query first"
        else:
            cfg = dataclasses.replace(self.cfg, k_videos=self.k.value, fusion=self.fusion.value,
                                      shortlist_size=None)
            try:
                sentence, tokens = self.encode([text])
                queries = Queries(qids=[0], texts=[text], sentence=sentence, tokens=tokens)
                self.record = search(self.methods[self.method.value], self.fine, queries, self.corpus, cfg,
                                     keep_saliency=True)[0]
            except (KeyError, ValueError) as err:
                self.error = str(err).strip('"')
        self._render()
        return self.record

    def _render(self) -> None:
        self.output.outputs = ()
        if self.figure is not None:
            plt.close(self.figure)
            self.figure = None
        if self.error:
            self.status.value = f"<b style='color:#b00'>{self.error}</b>"
            return
        searched = list(self.record["saliency"])
        durations = dict(zip(self.corpus.video_ids, self.corpus.durations))
        top = self.record["moments"][0] if self.record["moments"] else None
        gt = self.gt.get(self.record["query"])
        self.status.value = (f"searched {len(searched)} video(s); best moment: "
                             + (f"<b>{top[0]}</b> {top[1]:.1f}–{top[2]:.1f} s (score {top[3]:.3f})" if top else "none")
                             + (f"; ground truth: <b>{gt[0]}</b>" if gt else ""))
        self.figure = result_figure(self.record, durations, self.corpus.clip_len,
                                    {v: t for v in searched if (t := self._thumbnails(v)) is not None},
                                    gt=gt, max_videos=len(searched))
        # A PNG appended to the Output widget renders in JupyterLab and is inspectable without a kernel.
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=90)
        self.output.append_display_data(Image(data=buffer.getvalue(), format="png"))
        # Closed figures still save and display; an open one would also be drawn by the inline
        # backend under whichever cell runs next.
        plt.close(self.figure)

    @property
    def status_text(self) -> str:
        """The status line without its HTML markup (for print and logs)."""
        return re.sub(r"<[^>]+>", "", self.status.value)
