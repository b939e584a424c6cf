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


def test_atomic_writes_honour_the_umask(tmp_path):
    """mkstemp's 0600 made every atomically written file private whatever the umask."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        os.umask(0o077)
        atomic_write_json(tmp_path / "b.json", {"b": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o600


def test_strict_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "m.json", {"x": float("nan")}, strict=True)
    assert not (tmp_path / "m.json").exists()


def test_provenance_is_the_same_wherever_a_stage_ran(monkeypatch, tmp_path):
    """In a kernel, argv was ipykernel's random connection file; paths were absolute."""
    from c2f_lib.utils import REPO_ROOT, RUN_DIR_ENV, STAGE_ENV

    monkeypatch.setattr("sys.argv", ["/x/ipykernel_launcher.py", "-f", "/tmp/tmpab12cd.json"])
    assert provenance()["argv"] == ["notebook kernel"]
    monkeypatch.setenv(STAGE_ENV, "notebooks/02_features.ipynb")
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))
    record = provenance({"store": str(tmp_path / "features" / "x.h5"), "paths": [REPO_ROOT / "data" / "cache"],
                         "elsewhere": "/opt/videos/a.mp4"})
    assert record["argv"] == ["c2f run: notebooks/02_features.ipynb"]
    assert record["config"] == {"store": "<run_dir>/features/x.h5", "paths": ["<repo>/data/cache"],
                                "elsewhere": "/opt/videos/a.mp4"}


def test_device_errors_are_user_errors():
    from c2f_lib.errors import UserError

    with pytest.raises(UserError, match="unknown device 'cuda0'"):
        resolve_device("cuda0")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device is visible"):
            resolve_device("cuda")
