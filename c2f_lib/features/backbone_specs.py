"""Backbones by name: the one place that knows every spec (and so imports both backbone modules).

    load_backbone("tinyclip:/run/features/tinyclip.pt")   # the embedded default, from its checkpoint
    load_backbone("ViT-B-32:openai")                       # open_clip name:tag (downloads once)
    load_backbone("hf:/w/clip-vit-base-patch32")           # transformers hub id or local dir
"""
from __future__ import annotations

from pathlib import Path

from c2f_lib.features.backbones import Backbone, BackboneError, HFClipBackbone, OpenClipBackbone
from c2f_lib.features.tiny_clip import load_tiny_clip


def _cached_tiny_clips() -> str:
    """Where the pipeline's tiny CLIPs are (a run trains one into the cache; its store names it)."""
    from c2f_lib.paths import DEFAULT_CACHE_DIR

    found = sorted(DEFAULT_CACHE_DIR.glob("tinyclip-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    run_copy = "a pipeline run keeps its own as <run-dir>/features/tinyclip.pt (e.g. outputs/default/features/tinyclip.pt)"
    if not found:
        return f"{run_copy} and caches it as {DEFAULT_CACHE_DIR}/tinyclip-<hash>.pt"
    return f"{run_copy}; the newest cached one is {DEFAULT_CACHE_DIR / found[0].name}"


def load_backbone(spec: str, device: str = "cpu", precision: str = "fp32",
                  dataset_dir: str | Path | None = None, tiny_cfg=None) -> Backbone:
    """Backbone from a spec: 'tinyclip' (trained on `dataset_dir`, cached), 'tinyclip:<checkpoint>',
    'hf:<hub id or dir>', 'local-dir:<open_clip dir>', '<open_clip model>:<tag or weights file>'."""
    if spec == "tinyclip" or spec.startswith("tinyclip:"):
        checkpoint = spec.partition(":")[2] or None
        if checkpoint is None and dataset_dir is None:
            raise BackboneError("backbone 'tinyclip' is trained on a dataset, so it needs its checkpoint here: "
                                f"tinyclip:PATH ({_cached_tiny_clips()})")
        if checkpoint is not None and not Path(checkpoint).is_file():
            raise BackboneError("tiny CLIP checkpoint not found", checkpoint)
        return load_tiny_clip(dataset_dir, tiny_cfg, device=device, checkpoint=checkpoint)
    if spec.startswith("local-dir:"):
        return OpenClipBackbone(spec, None, device=device, precision=precision, name=spec)
    if spec.startswith("hf:"):
        return HFClipBackbone(spec[3:], device=device, precision=precision, name=spec)
    model_name, sep, pretrained = spec.partition(":")
    if not sep or not pretrained:
        raise BackboneError(f"backbone {spec!r}: use 'tinyclip', 'hf:<hub id or dir>' or "
                            f"'<open_clip model>:<pretrained tag or weights file>' (e.g. ViT-B-32:openai)")
    return OpenClipBackbone(model_name, pretrained, device=device, precision=precision, name=spec)
