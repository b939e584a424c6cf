"""The model registry and checkpoint format shared by every model."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from c2f_lib.models.registry import build_model, load_model, register, save_model


@dataclass
class ToyConfig:
    dim: int = 4


@register("toy_for_tests", ToyConfig)
class Toy(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.proj = nn.Linear(cfg.dim, cfg.dim)


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model("toy_for_tests", {"dim": 3})
    save_model(tmp_path / "toy.pt", model, extra={"epoch": 2})
    loaded, extra = load_model(tmp_path / "toy.pt")
    assert extra == {"epoch": 2} and loaded.cfg == ToyConfig(dim=3) and not loaded.training
    x = torch.randn(2, 3)
    assert torch.equal(loaded.proj(x), model.proj(x))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(KeyError, match="unknown model"):
        build_model("no_such_model")
    with pytest.raises(ValueError, match="unknown config keys"):
        build_model("toy_for_tests", {"width": 3})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_model(tmp_path / "junk.pt")


def test_only_a_checkpoint_made_from_the_same_inputs_is_reused(tmp_path, capsys):
    from c2f_lib.models.registry import fingerprint, load_if_reusable

    made_from = fingerprint("toy_for_tests", {"dim": 3}, ["v1", "v2"])
    assert made_from != fingerprint("toy_for_tests", {"dim": 3}, ["v1", "v3"])
    assert fingerprint({"lr": 1, "device": "cpu"}) == fingerprint({"lr": 1, "device": "auto"})  # where, not what
    assert fingerprint({"lr": 1, "device": "cpu"}) != fingerprint({"lr": 2, "device": "cpu"})
    path = tmp_path / "toy.pt"
    assert load_if_reusable(path, made_from) is None                       # nothing there yet
    save_model(path, build_model("toy_for_tests", {"dim": 3}), extra={"made_from": made_from})
    model, extra = load_if_reusable(path, made_from)
    assert model.cfg.dim == 3 and extra["made_from"] == made_from
    assert load_if_reusable(path, fingerprint("other settings")) is None
    assert "other settings or data" in capsys.readouterr().out
    # a checkpoint whose layout the model code no longer matches: retrain, do not crash
    payload = torch.load(path, weights_only=False)
    payload["state_dict"] = {"old_name.weight": torch.zeros(3, 3)}
    torch.save(payload, path)
    assert load_if_reusable(path, made_from) is None
    assert "cannot be reused" in capsys.readouterr().out


def test_a_caller_built_model_is_filled_only_from_a_matching_checkpoint(tmp_path, capsys):
    """`into=`: the end-to-end retriever's path. A stale checkpoint must not warm-start the model."""
    from c2f_lib.models.registry import fingerprint, load_if_reusable

    made_from = fingerprint("toy", 1)
    path = tmp_path / "toy.pt"
    trained = build_model("toy_for_tests", {"dim": 3})
    with torch.no_grad():
        for p in trained.parameters():
            p.fill_(7.0)
    save_model(path, trained, extra={"made_from": made_from})
    fresh = build_model("toy_for_tests", {"dim": 3})
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    assert load_if_reusable(path, fingerprint("toy", 2), into=fresh) is None
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())     # untouched
    model, extra = load_if_reusable(path, made_from, into=fresh)
    assert model is fresh and extra["made_from"] == made_from
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in fresh.state_dict().items())
    path.write_bytes(path.read_bytes()[:40])                                            # truncated
    assert load_if_reusable(path, made_from, into=fresh) is None
    assert "cannot be reused" in capsys.readouterr().out


def test_work_dir_is_cleared_unless_made_from_the_same_inputs(tmp_path):
    from c2f_lib.models.registry import claim_work_dir

    work = claim_work_dir(tmp_path / "run", "a")
    (work / "last.pt").write_text("state")
    assert (claim_work_dir(tmp_path / "run", "a") / "last.pt").exists()          # same inputs: resume
    assert not (claim_work_dir(tmp_path / "run", "b") / "last.pt").exists()      # other inputs: cleared
    (work / "last.pt").write_text("state")
    assert not (claim_work_dir(tmp_path / "run", "b", fresh=True) / "last.pt").exists()


def test_content_digest_hashes_tensors_by_content():
    from c2f_lib.models.registry import content_digest

    x = torch.arange(6.0).reshape(2, 3)
    assert content_digest(x, ["a", 1]) == content_digest(x.clone(), ["a", 1])            # content, not identity
    assert content_digest(x) != content_digest(x + 1e-6)                                  # any change of a value
    assert content_digest(x) != content_digest(x.reshape(3, 2))                           # shape
    assert content_digest(x) != content_digest(x.double())                                # dtype
    assert content_digest(x.t()) == content_digest(x.t().contiguous())                    # layout does not matter
    assert content_digest([x, None]) != content_digest([x])
