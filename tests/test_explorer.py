"""The explorer's callbacks without a browser: build the app, type a query, press Search, move the controls."""
from __future__ import annotations

import base64
import json

import numpy as np
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.text import Text

from c2f_lib.data.synth_render import encode_mp4
from c2f_lib.pipeline.explorer import IOU_HIT, Explorer, RunTextEncoder, outcome
from c2f_lib.pipeline.search import SearchConfig, StoreTextEncoder
from test_search import StandInCoarse, StandInFine, load_signal_split, make_split


class AntiCoarse(StandInCoarse):
    """Ranks videos in the opposite order: the ground-truth video comes last."""

    def score(self, text_emb, frames, chunk_size=16, generator=None):
        return -super().score(text_emb, frames, chunk_size, generator)


class StandInBackbone:
    """Encodes any text (the Backbone text interface): a hashed vector per word."""

    def _vec(self, word):
        return torch.from_numpy(np.random.default_rng(sum(map(ord, word))).standard_normal(16)).float()

    def encode_sentences(self, texts):
        return torch.stack([sum(self._vec(w) for w in t.split()) for t in texts])

    def encode_tokens(self, texts):
        length = max(len(t.split()) for t in texts)
        hidden = torch.zeros(len(texts), length, 16)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, t in enumerate(texts):
            for j, w in enumerate(t.split()):
                hidden[i, j], mask[i, j] = self._vec(w), True
        return hidden, mask


def _app(tmp_path, with_videos=True, encoder=None):
    store, moments_file, gts = make_split(tmp_path, num_videos=5)
    corpus, queries = load_signal_split(store, moments_file)
    video_dir = tmp_path / "videos"
    if with_videos:  # 20-s videos at 1 fps whose frame brightness is the second: frame times can be read back
        video_dir.mkdir()
        for vid in corpus.video_ids:
            frames = np.repeat(np.arange(20, dtype=np.uint8)[:, None, None, None] * 12, 32, 1).repeat(32, 2).repeat(3, 3)
            encode_mp4(frames, video_dir / f"{vid}.mp4", fps=1.0)
    gt = {q: (v, w) for q, v, w in zip(queries.texts, queries.gt_vids, queries.gt_windows)}
    app = Explorer({"max": StandInCoarse(), "mean": StandInCoarse("mean"), "anti": AntiCoarse()}, StandInFine(),
                   corpus, encoder or StoreTextEncoder(store), video_dir=video_dir, gt=gt,
                   cfg=SearchConfig(k_videos=2), examples=queries.texts, fine_name="stand-in")
    return app, queries


def _texts(fig):
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_search_callback_renders_result(tmp_path):
    app, queries = _app(tmp_path)
    app.query.value = queries.texts[0]
    app.k.value = 3
    app.method.value = "mean"
    app.button.click()                                   # what a user's click does
    assert app.error is None and app.record is not None
    assert len(app.record["saliency"]) == 3 and app.record["moments"]
    assert len(app.output.outputs) == 1                  # the figure was displayed
    assert not plt.fignum_exists(app.figure.number)     # closed: the inline backend will not draw it twice
    assert "<" not in app.status_text and "Top-1 moment" in app.status_text and "Ground truth" in app.status_text
    saliency_axes = [ax for ax in app.figure.axes if ax.get_lines()]
    assert len(saliency_axes) == 3 and len({ax.get_ylim() for ax in saliency_axes}) == 1   # one scale
    values = np.concatenate([line.get_ydata() for ax in saliency_axes for line in ax.get_lines()])
    assert values.min() == pytest.approx(0) and values.max() == pytest.approx(1)           # scaled to 0-1
    assert all("saliency" in ax.get_ylabel() for ax in saliency_axes)
    assert app.figure.legends and "top-1" in " ".join(t.get_text() for t in app.figure.legends[0].get_texts())
    assert any(t.startswith("TOP-1") for t in _texts(app.figure))                           # top-1 marked
    assert sum(t.startswith("coarse #") for t in _texts(app.figure)) == 3                  # rank + score per row


def test_verdict_hit_miss_iou_and_ground_truth_rank():
    record = {"ranked_videos": [["a", 0.9], ["b", 0.8], ["c", 0.7], ["d", 0.1]],
              "moments": [["a", 0.0, 10.0, 0.5]]}
    hit = outcome(record, ("a", [[2.0, 10.0]]), k=2)
    assert hit.hit and hit.iou == pytest.approx(0.8) and hit.gt_rank == 1 and hit.verdict.startswith("HIT")
    wrong_time = outcome(record, ("a", [[8.0, 20.0]]), k=2)
    assert not wrong_time.hit and wrong_time.iou < IOU_HIT and "right video, wrong time" in wrong_time.verdict
    outside = outcome(record, ("d", [[0.0, 10.0]]), k=2)
    assert not outside.hit and outside.iou == 0 and outside.gt_rank == 4
    assert "coarse rank 4" in outside.verdict and "outside the K = 2" in outside.verdict
    inside = outcome(record, ("b", [[0.0, 10.0]]), k=2)
    assert "was searched (coarse rank 2)" in inside.verdict
    unranked = outcome(record, ("zzz", [[0.0, 1.0]]), k=2)
    assert unranked.gt_rank is None and "below coarse rank 4" in unranked.verdict
    assert outcome(record, None, k=2).hit is None


def test_ground_truth_outside_k_is_shown_with_its_rank_and_frames_at_both_moments(tmp_path):
    app, queries = _app(tmp_path)
    app.method.value, app.k.value = "anti", 2           # the GT video comes last: never searched
    app.query.value = queries.texts[0]
    app.run_search()
    result = app.outcome
    assert result.gt_rank == 5 and not result.hit and "outside the K = 2" in app.status_text
    assert "MISS" in app.status_text and "coarse rank 5 of 5" in app.status_text
    texts = _texts(app.figure)
    assert any("NOT searched" in t and result.gt_vid in t for t in texts)     # its own row
    # frames at the predicted top-1 moment (its video) and inside the ground-truth window (the GT video)
    top_vid, start, end, _ = result.top
    assert [k for _, k in app.frames_shown[top_vid]] == ["pred", "pred"]
    assert all(start <= t <= end for t, _ in app.frames_shown[top_vid])
    (gt_start, gt_end), = result.gt_windows
    assert [k for _, k in app.frames_shown[result.gt_vid]] == ["gt", "gt"]
    assert all(gt_start <= t <= gt_end for t, _ in app.frames_shown[result.gt_vid])
    assert any(t == f"{app.frames_shown[top_vid][0][0]:.1f} s" for t in texts)   # timestamps are printed


def test_the_figure_follows_every_control(tmp_path):
    app, queries = _app(tmp_path)
    app.query.value = queries.texts[0]
    app.run_search()
    first, top_label = app.figure, [t for t in _texts(app.figure) if t.startswith("TOP-1")]
    app.fusion.value = "fine"                            # no Search click: the control reruns the search
    assert app.figure is not first and "fine fusion" in app.figure._suptitle.get_text()
    assert "<b>fine</b> fusion" in app.status.value
    # the top-1 bar carries the fused score: the fine score alone now, no longer coarse prob x fine score
    assert [t for t in _texts(app.figure) if t.startswith("TOP-1")] != top_label
    rows = len([ax for ax in app.figure.axes if ax.get_lines()])
    app.k.value = 4
    assert len([ax for ax in app.figure.axes if ax.get_lines()]) == 4 != rows
    app.method.value = "anti"
    assert "coarse anti" in app.figure._suptitle.get_text() and app.outcome.gt_rank == 5


def test_free_text_is_encoded_by_the_runs_backbone_or_explained_in_one_line(tmp_path):
    app, queries = _app(tmp_path, with_videos=False,
                        encoder=RunTextEncoder(tmp_path / "store.h5", lambda: StandInBackbone()))
    app.query.value = "a red circle jumps"               # no store has this text
    app.run_search()
    assert app.error is None and app.record["moments"] and app.outcome.hit is None
    assert "No ground truth" in app.status_text
    app.query.value = queries.texts[1]                    # stored texts still come from the store
    app.run_search()
    assert app.outcome.gt_vid == queries.gt_vids[1]

    for encoder, reason in ((RunTextEncoder(tmp_path / "store.h5", None, "this run kept no text encoder"),
                             "this run kept no text encoder"),
                            (RunTextEncoder(tmp_path / "store.h5", lambda: 1 / 0), "ZeroDivisionError"),
                            (StoreTextEncoder(tmp_path / "store.h5"), "no text encoder")):
        app.encode = encoder
        app.query.value = "a text the store never saw"
        app.run_search()
        assert app.record is None and reason in app.error and "Pick a suggested query" in app.error
        assert "\n" not in app.error and ".h5" not in app.error and app.output.outputs == ()


def test_empty_query_is_explained(tmp_path):
    app, _ = _app(tmp_path, with_videos=False)
    app.run_search()
    assert app.record is None and "Type a query" in app.status.value


def test_display_bundle_has_the_live_widget_and_a_static_picture(tmp_path):
    app, queries = _app(tmp_path, with_videos=False)
    app.query.value = queries.texts[0]
    app.run_search()
    bundle = app._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == app.widget.model_id
    assert base64.b64decode(bundle["image/png"]) == app.png and app.png.startswith(b"\x89PNG")
    text = bundle["text/plain"]
    assert not text.startswith("VBox") and "Explorer app" in text and ("MISS" in text or "HIT" in text)


def _tiny_run_dir(run_dir):
    """A run dir with what notebooks 06/07 read: random store, test moments, real (untrained) checkpoints."""
    from c2f_lib.data.schema import write_moments
    from c2f_lib.features.testing import make_random_store, random_records
    from c2f_lib.models.registry import build_model, save_model
    from c2f_lib.paths import RunPaths

    for module in ("xpool", "moment_detr"):
        pytest.importorskip(f"c2f_lib.models.{module}")
    paths = RunPaths(run_dir)
    moments, captions = random_records(6, 2)
    make_random_store(paths.feature_store("synthmoments", "tinyclip"), moments, captions, dim=16)
    write_moments(paths.moments_file("synthmoments", "test"), moments)
    save_model(paths.checkpoints("03_coarse") / "xpool_seed0.pt", build_model("xpool", {"dim": 16}))
    save_model(paths.checkpoints("05_fine") / "moment_detr_seed0.pt", build_model(
        "moment_detr", {"video_dim": 16, "text_dim": 16, "hidden_dim": 16, "n_heads": 2, "ffn_dim": 32,
                        "num_queries": 4}))
    return paths


@pytest.mark.slow
def test_notebooks_06_and_07_headless(tmp_path):
    import papermill

    from conftest import REPO_ROOT

    paths = _tiny_run_dir(tmp_path / "run")
    for name, extra in (("06_report", {}), ("07_explorer", {"query": "query 1 in video 2"})):
        papermill.execute_notebook(str(REPO_ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
                                   parameters={"run_dir": str(paths.run_dir), **extra}, kernel_name="python3",
                                   cwd=str(REPO_ROOT / "notebooks"), progress_bar=False)
    report = (paths.run_dir / "report.md").read_text()
    assert "| xpool |" in report and "**Missing stages** (not run):" in report and "`03_coarse`" in report
    executed = (tmp_path / "07_explorer.ipynb").read_text()
    assert "Top-1 moment" in executed and "Ground truth" in executed
    report_metrics = json.loads((paths.metrics_file("06_report")).read_text())
    fine = report_metrics["fine_model"]["name"]
    assert f"fine: {fine} (chosen by" in executed            # the report's fine model, not another
    fusion = report_metrics["provenance"]["config"]["fusion"]
    assert f"<b>{fusion}</b> fusion" in executed             # and the report's fusion, chosen on val
