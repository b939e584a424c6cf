from __future__ import annotations

import json

import pytest

from c2f_lib.utils import atomic_path, atomic_write_json, provenance, read_json, resolve_device


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_provenance_records_versions_and_commit():
    record = provenance({"lr": 1}, seed=3)
    assert record["seed"] == 3 and record["config"] == {"lr": 1}
    assert record["versions"]["torch"] != "not installed" and record["git_commit"]
    json.dumps(record, default=str)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError):
        resolve_device("tpu")
