"""The `c2f` command's error boundary and options: one-line user errors (status 2), bugs as one line
with the traceback behind --debug (status 1), one-line usage errors, --version, help on every option."""
from __future__ import annotations

import argparse
import json

import pytest

from c2f_lib.cli import build_parser, main


def _only_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_user_error_is_one_line_with_status_2(tmp_path, capsys):
    gt = tmp_path / "gt.jsonl"
    gt.write_text('{"qid": 1, "query": "q", "vid": "v", "duration": 10, "relevant_windows": [[0, 5]]}\n5\n')
    assert main(["eval-moments", str(gt), str(gt)]) == 2
    assert _only_line(capsys.readouterr().err) == (f"c2f eval-moments: expected a JSON object, got int, "
                                                   f"{gt}:2:<record>")


def test_a_bug_is_one_line_with_status_1_and_its_traceback_behind_debug(tmp_path, capsys, monkeypatch):
    import c2f_lib.evaluation.moments_cli as moments_cli

    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(moments_cli, "main", broken)
    assert main(["eval-moments", "a", "b"]) == 1
    line = _only_line(capsys.readouterr().err)
    assert line.startswith("c2f eval-moments: internal error (TypeError: unsupported operand)") and "--debug" in line
    for argv in (["--debug", "eval-moments", "a", "b"], ["eval-moments", "a", "b", "--debug"]):
        with pytest.raises(TypeError, match="unsupported operand"):
            main(argv)


def test_usage_errors_are_one_line(capsys):
    for argv, expected in ((["eval-moments", "p", "g", "--clip-len", "0"], "argument --clip-len: must be a positive"),
                           (["index", "d", "--num-frames", "two"], "argument --num-frames: expected an integer"),
                           (["nope"], "invalid choice")):
        with pytest.raises(SystemExit) as code:
            main(argv)
        assert code.value.code == 2
        assert expected in _only_line(capsys.readouterr().err)


def test_version(capsys):
    with pytest.raises(SystemExit) as code:
        main(["--version"])
    assert code.value.code == 0 and capsys.readouterr().out.startswith("c2f 0.")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_option_has_help_text():
    missing = [f"{p.prog} {a.option_strings or a.dest}" for p in _parsers(build_parser()) for a in p._actions
               if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and not a.help]
    assert not missing, missing


def test_data_root_before_or_after_the_subcommand(tmp_path, capsys):
    for argv in (["data", "--root", str(tmp_path), "list"], ["data", "list", "--root", str(tmp_path)]):
        assert main(argv) == 0
        assert "[absent]" in capsys.readouterr().out      # the empty root was used, not ../shared/datasets
    assert main(["data", "stats", "nope", "--root", str(tmp_path)]) == 2
    assert _only_line(capsys.readouterr().err).startswith("c2f data stats: unknown dataset 'nope'")


def test_data_download_offline_is_one_line(tmp_path, capsys, monkeypatch):
    """`c2f data download` without internet printed a 68-line URLError traceback."""
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["data", "download", "qvhighlights", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("c2f data download: cannot download https://") and "offline?" in err[-1]
    assert len(err) == 1


@pytest.mark.datasets
def test_duplicated_qid_in_a_real_file_is_refused(shared_datasets, tmp_path, capsys):
    """`c2f data stats/export` accepted a QVHighlights file with a qid given twice."""
    lines = (shared_datasets / "qvhighlights" / "highlight_val_release.jsonl").read_text().splitlines()
    root = tmp_path / "root"
    (root / "qvhighlights").mkdir(parents=True)
    for split in ("train", "test"):
        (root / "qvhighlights" / f"highlight_{split}_release.jsonl").write_text(lines[0] + "\n")
    (root / "qvhighlights" / "highlight_val_release.jsonl").write_text("\n".join(lines[:5] + lines[2:3]) + "\n")
    qid = json.loads(lines[2])["qid"]
    for argv in (["data", "stats", "qvhighlights", "--root", str(root)],
                 ["data", "export", "qvhighlights", "--run-dir", str(tmp_path / "run"), "--root", str(root)]):
        assert main(argv) == 2
        assert _only_line(capsys.readouterr().err).endswith(
            f"qid {qid!r} given twice (first on line 3), {root}/qvhighlights/highlight_val_release.jsonl:6:qid")
    assert not (tmp_path / "run").exists()


def test_bad_input_in_any_layer_is_a_user_error_and_debug_works_after_nested_commands(tmp_path, capsys):
    """Issue 18 (audit): malformed released features were an "internal error" (status 1) and `--debug` after
    a nested command (`c2f data list --debug`) was an unrecognised argument."""
    from c2f_lib.data.llm_captions import LLMCaptionError
    from c2f_lib.evaluation.vcmr import VCMRPredictionError
    from c2f_lib.errors import UserError
    from c2f_lib.features.testing import write_qvhighlights_release
    from conftest import REPO_ROOT

    assert all(issubclass(cls, UserError) for cls in (LLMCaptionError, VCMRPredictionError))
    datasets, features = tmp_path / "datasets", tmp_path / "features"
    write_qvhighlights_release(datasets / "qvhighlights", {"train": 2, "val": 1})
    features.mkdir()
    (features / "slowfast_features").write_text("not features")
    recipe = REPO_ROOT / "configs" / "repro" / "qvhighlights_qd_detr.yaml"
    assert main(["repro", "--recipe", str(recipe), "--features-root", str(features), "--datasets-root",
                 str(datasets), "--run-dir", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert _only_line(capsys.readouterr().err) == ("c2f repro: expected a folder of .npz files or an HDF5 file "
                                                   f"(.h5, .hdf5), {features / 'slowfast_features'}")
    assert main(["data", "list", "--debug"]) == 0
    capsys.readouterr()
    with pytest.raises(KeyError):
        main(["data", "stats", "no_such_dataset", "--debug"])
