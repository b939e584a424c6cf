"""Model registry and the one checkpoint format shared by every model.

A model class is registered under a name, is built from one dataclass config
(``cls(cfg)``) and keeps it as ``model.cfg``. A checkpoint is a dict
``{"model": name, "config": asdict(cfg), "state_dict": ..., "extra": {...}}``, so
``load_model(path)`` rebuilds any model without knowing its class in advance.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from c2f_lib.errors import MissingFileError
from c2f_lib.utils import atomic_path

_REGISTRY: dict[str, tuple[type[nn.Module], type]] = {}


def register(name: str, config_cls: type) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: ``@register("xpool", XPoolConfig)``."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"model name {name!r} is already registered to {_REGISTRY[name][0]}")
        _REGISTRY[name] = (cls, config_cls)
        cls.registry_name = name
        return cls

    return wrap


def registered() -> list[str]:
    return sorted(_REGISTRY)


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {registered()}")
    cls, config_cls = _REGISTRY[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(config or {}) - fields)
    if unknown:
        raise ValueError(f"model {name!r}: unknown config keys {unknown}")
    return cls(config_cls(**(config or {})))


def save_model(path: str | Path, model: nn.Module, extra: dict[str, Any] | None = None) -> None:
    """Atomically write a checkpoint any ``load_model`` can rebuild."""
    name = getattr(model, "registry_name", None)
    if name is None:
        raise TypeError(f"{type(model).__name__} is not a registered model")
    payload = {"model": name, "config": dataclasses.asdict(model.cfg),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path, map_location: str = "cpu", needs: tuple[str, ...] = ("model",)) -> dict:
    """`save_model`'s payload at `path`; ValueError (one line, naming the file) if it is unreadable or lacks `needs`."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from None
    missing = [key for key in needs if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ValueError(f"{path}: not a c2f checkpoint (no {missing[0]!r} entry)")
    return payload


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from ``save_model``'s checkpoint; returns (model in eval mode, extra)."""
    payload = read_checkpoint(path, map_location)
    _import_model_modules()
    model = build_model(payload["model"], payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval(), payload.get("extra", {})


# Config keys that say where training runs, not what it makes: left out of fingerprints, so a
# checkpoint trained with device="auto" is reused by a run that asks for "cpu".
RUNTIME_KEYS = frozenset({"device"})


def fingerprint(*parts: Any) -> str:
    """Short hash of what a checkpoint was made from (model, configs, training data ids)."""
    payload = json.dumps(_without_runtime_keys(parts), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def content_digest(*parts: Any) -> str:
    """Short hash of values by content: tensors by dtype, shape and bytes, lists and tuples item by item,
    anything else by its JSON. For fingerprints whose inputs are features: the same ids with other feature
    values (a re-extracted store) are other inputs, so a checkpoint trained on the old ones is not reused."""
    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {flat.dtype} {tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, (list, tuple)):
            digest.update(f"[{len(value)}".encode())
            for item in value:
                feed(item)
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())

    feed(list(parts))
    return digest.hexdigest()[:16]


def _without_runtime_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_runtime_keys(v) for k, v in value.items() if k not in RUNTIME_KEYS}
    if isinstance(value, (list, tuple)):
        return [_without_runtime_keys(v) for v in value]
    return value


def load_if_reusable(path: str | Path, made_from: str,
                     into: nn.Module | None = None) -> tuple[nn.Module, dict[str, Any]] | None:
    """The checkpoint at `path` if it exists, loads with this code and was made from `made_from`.

    Otherwise None, saying why: "load if it exists" must never hand back a model trained with
    other settings or on other data (a changed config reruns a stage in the same run directory),
    nor fail on a checkpoint whose layout an edit of the model code changed. `into`: a model built
    by the caller (one the registry cannot rebuild, e.g. an end-to-end retriever holding a CLIP)
    that receives the weights; it is filled only once `made_from` matched, so a stale checkpoint
    never warm-starts training.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        if into is None:
            model, extra = load_model(path)
        else:
            payload = read_checkpoint(path, needs=("state_dict",))
            model, extra = into, payload.get("extra", {})
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        print(f"{path}: cannot be reused ({str(err).splitlines()[0]}); training again")
        return None
    if extra.get("made_from") != made_from:
        print(f"{path}: made with other settings or data; training again")
        return None
    if into is not None:
        try:
            into.load_state_dict(payload["state_dict"])
        except (RuntimeError, KeyError) as err:   # a layout an edit of the code changed
            print(f"{path}: cannot be reused ({str(err).splitlines()[0]}); training again")
            return None
    return model, extra


def claim_work_dir(folder: str | Path, made_from: str, fresh: bool = False) -> Path:
    """Resume state in `folder` is kept only if it was made from `made_from` (and not `fresh`)."""
    folder = Path(folder)
    stamp = folder / "made_from.txt"
    if folder.exists() and (fresh or not stamp.exists() or stamp.read_text() != made_from):
        shutil.rmtree(folder, ignore_errors=True)  # ignore: DDP ranks may race to clear it
        print(f"{folder}: earlier resume state removed")
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(made_from)
    return folder


def _import_model_modules() -> None:
    """Importing the model modules registers their classes."""
    import importlib
    import pkgutil

    import c2f_lib.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "registry":
            importlib.import_module(f"c2f_lib.models.{info.name}")
