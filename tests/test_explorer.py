"""The explorer's callbacks without a browser: build the app, type a query, press Search."""
from __future__ import annotations

import numpy as np
import matplotlib.pyplot as plt
import pytest

from c2f_lib.data.synth_render import encode_mp4
from c2f_lib.pipeline.explorer import Explorer
from c2f_lib.pipeline.search import SearchConfig, StoreTextEncoder
from test_search import StandInCoarse, StandInFine, load_signal_split, make_split


def _app(tmp_path, with_videos=True):
    store, moments_file, gts = make_split(tmp_path, num_videos=5)
    corpus, queries = load_signal_split(store, moments_file)
    video_dir = tmp_path / "videos"
    if with_videos:
        video_dir.mkdir()
        frames = np.zeros((6, 32, 32, 3), dtype=np.uint8)
        encode_mp4(frames, video_dir / f"{corpus.video_ids[0]}.mp4", fps=2.0)
    gt = {q: (v, w) for q, v, w in zip(queries.texts, queries.gt_vids, queries.gt_windows)}
    app = Explorer({"max": StandInCoarse(), "mean": StandInCoarse("mean")}, StandInFine(), corpus,
                   StoreTextEncoder(store), video_dir=video_dir, gt=gt, cfg=SearchConfig(k_videos=2),
                   examples=queries.texts)
    return app, queries


def test_search_callback_renders_result(tmp_path):
    app, queries = _app(tmp_path)
    app.query.value = queries.texts[0]
    app.k.value = 3
    app.method.value = "mean"
    app.button.click()                                   # what a user's click does
    assert app.error is None and app.record is not None
    assert len(app.record["saliency"]) == 3 and app.record["moments"]
    assert "best moment" in app.status.value and "ground truth" in app.status.value
    assert len(app.output.outputs) == 1                  # the figure was displayed
    assert len(app.figure.axes) >= 6                     # 3 videos x (thumbnails, timeline) (+ saliency)
    assert not plt.fignum_exists(app.figure.number)     # closed: the inline backend will not draw it twice
    assert "<" not in app.status_text and "best moment" in app.status_text
    saliency_axes = [ax for ax in app.figure.axes if ax.get_lines()]
    assert len({ax.get_ylim() for ax in saliency_axes}) == 1   # one saliency scale for every row
    assert app._thumb_cache[app.corpus.video_ids[0]] is not None or app.corpus.video_ids[0] not in app.record["saliency"]


def test_unknown_query_and_empty_query_report_errors(tmp_path):
    app, _ = _app(tmp_path, with_videos=False)
    app.run_search()
    assert app.record is None and "type a query" in app.status.value
    app.query.value = "a text the store never saw"
    app.run_search()
    assert app.record is None and "no features for text" in app.status.value
    assert app.output.outputs == ()


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
    assert "best moment" in (tmp_path / "07_explorer.ipynb").read_text()
