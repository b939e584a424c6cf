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
