"""Mixed precision: the `amp` switch resolves per device, and one epoch of QD-DETR, MESM, T-MASS and the
TextDiff teacher trains under bf16 autocast on CPU with a finite loss close to the fp32 one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from c2f_lib.models.registry import build_model
from c2f_lib.models.textdiff import TextDiff
from c2f_lib.models.tmass import TMASS, TMASSConfig
from c2f_lib.amp import Precision
from c2f_lib.training.coarse import CoarseTrainConfig, train_coarse
from c2f_lib.training.fine import FineTrainConfig, train_fine
from c2f_lib.training.textdiff import TeacherTrainConfig, train_teacher
from test_coarse_training import D, NF, toy_split
from test_fine_models import SMALL, make_samples
from test_textdiff import tiny_config

REL_TOL = 0.02   # bf16 keeps ~3 significant digits; one epoch of a few steps stays well inside 2 %


def test_precision_per_device():
    assert Precision.of(False, "cpu") == Precision("cpu", None, False)
    assert Precision.of(True, "cpu") == Precision("cpu", None, False)        # True: CUDA only, as before
    assert Precision.of("auto", "cpu") == Precision("cpu", torch.bfloat16, False)
    assert Precision.of("bf16", "cuda") == Precision("cuda", torch.bfloat16, False)
    assert Precision.of(True, "cuda") == Precision("cuda", torch.float16, True)
    assert Precision.of("auto", "cuda:1") == Precision("cuda", torch.float16, True)
    with pytest.raises(ValueError, match="CUDA"):
        Precision.of("fp16", "cpu")
    for bad in ("half", 1, None):
        with pytest.raises(ValueError, match="amp must be"):
            Precision.of(bad, "cpu")
    with pytest.raises(ValueError, match="amp must be"):
        FineTrainConfig(amp="yes")
    with pytest.raises(ValueError, match="amp must be"):
        CoarseTrainConfig(amp="yes")


def _watch_dtypes(model: nn.Module) -> set:
    """Output dtypes of the model's Linear layers in training mode (evaluation runs in fp32)."""
    seen: set = set()

    def hook(module, _inputs, output):
        if module.training:
            seen.add(output.dtype)

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(hook)
    return seen


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= REL_TOL * abs(b)


@pytest.mark.parametrize("name, preset", [("qd_detr", "qd_detr"), ("mesm", "mesm_qvhighlights")])
def test_fine_epoch_under_bf16_autocast_on_cpu(name, preset, tmp_path):
    train, val = make_samples(8, seed=1, ids=True), make_samples(4, seed=2, ids=True)
    losses, dtypes = {}, {}
    for amp in (False, "auto"):
        torch.manual_seed(0)
        model = build_model(name, SMALL)
        dtypes[amp] = _watch_dtypes(model)
        cfg = FineTrainConfig(epochs=1, batch_size=4, lr=1e-3, loss_preset=preset, device="cpu", amp=amp)
        _, summary = train_fine(model, train, val, cfg, tmp_path / str(amp))
        losses[amp] = summary["history"][0]["loss"]
    assert dtypes == {False: {torch.float32}, "auto": {torch.bfloat16}}
    assert torch.isfinite(torch.tensor(losses["auto"])) and _close(losses["auto"], losses[False]), losses


def test_tmass_epoch_under_bf16_autocast_on_cpu(tmp_path):
    train, val = toy_split(12, 2, seed=0), toy_split(6, 2, seed=1)
    losses, dtypes = {}, {}
    for amp in (False, "bf16"):
        torch.manual_seed(0)
        model = TMASS(TMASSConfig(dim=D, num_frames=NF, dropout=0.0, support_weight=0.8, num_trials=4))
        dtypes[amp] = _watch_dtypes(model)
        cfg = CoarseTrainConfig(epochs=1, batch_size=8, lr=3e-3, seed=0, show_progress=False,
                                eval_chunk_size=4, amp=amp)
        losses[amp] = train_coarse(model, train, val, cfg, tmp_path / str(amp)).history[0]["train_loss"]
    assert dtypes == {False: {torch.float32}, "bf16": {torch.bfloat16}}
    assert torch.isfinite(torch.tensor(losses["bf16"])) and _close(losses["bf16"], losses[False]), losses


def test_textdiff_teacher_epoch_under_bf16_autocast_on_cpu():
    train, val = toy_split(10, 2, seed=0), toy_split(5, 2, seed=1)
    losses = {}
    for amp in (False, "auto"):
        torch.manual_seed(0)
        model = TextDiff(tiny_config())
        model.fit_basis(train.text_emb, train.frames[train.text_to_video])
        seen = _watch_dtypes(model)
        history = train_teacher(model, train, val, TeacherTrainConfig(epochs=1, batch_size=8, seed=0), amp=amp)
        losses[amp] = history[0]["train_denoise"]
        assert seen == ({torch.bfloat16} if amp else {torch.float32})
    assert torch.isfinite(torch.tensor(losses["auto"])) and _close(losses["auto"], losses[False]), losses


@pytest.mark.parametrize("name, preset", [("moment_detr", "moment_detr"), ("qd_detr", "qd_detr"),
                                          ("mesm", "mesm_qvhighlights"), ("tmass", None)])
def test_fp16_autocast_forward_as_on_cuda(name, preset):
    """CUDA's fp16 path, run through CPU fp16 autocast (not offered by Precision on CPU, but the same op
    casts): no overflowing constants or mixed-dtype out= ops, and a loss close to fp32's."""
    from c2f_lib.models.fine_batch import collate_moments
    from c2f_lib.models.fine_losses import fine_loss
    from c2f_lib.models.fine_presets import loss_preset

    torch.manual_seed(0)
    if name == "tmass":
        model = TMASS(TMASSConfig(dim=D, num_frames=NF, support_weight=0.8)).train()
        text, frames = torch.randn(6, D), torch.randn(6, NF, D)

        def loss():
            torch.manual_seed(1)                                                  # the same dropout masks
            return model.training_loss(text, frames, generator=torch.Generator().manual_seed(0),
                                       video_ids=torch.arange(6))[0]
    else:
        model = build_model(name, {**SMALL, **({} if name == "moment_detr" else {"dn_groups": 2})}).train()
        batch = collate_moments(make_samples(6, ids=True))

        def loss():
            torch.manual_seed(1)
            return fine_loss(model(batch), batch, loss_preset(preset))["total"]
    fp32 = loss().item()
    seen = _watch_dtypes(model)
    with torch.autocast("cpu", dtype=torch.float16):
        half = loss()
    half.backward()
    assert seen == {torch.float16}
    assert torch.isfinite(half) and _close(half.item(), fp32), (half.item(), fp32)
