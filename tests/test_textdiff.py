"""TextDiff: schedule, sampler, teacher/student losses, scoring contract (tiny tensors, CPU)."""
from __future__ import annotations

import math

import pytest
import torch

from c2f_lib.models.diffusion import DiffusionSchedule, sqrt_betas
from c2f_lib.models.registry import build_model, load_model, save_model
from c2f_lib.models.textdiff import TextDiff, TextDiffConfig
from c2f_lib.models.xpool import XPoolConfig

D, F_, V = 16, 4, 5


def tiny_config(**overrides) -> TextDiffConfig:
    base = dict(pool=XPoolConfig(dim=D, dropout=0.0), num_frames=F_, width=24, ffn=32,
                num_blocks=2, cond_dim=12, gate_bias_init=0.0)
    return TextDiffConfig(**{**base, **overrides})


def perturbed(model: TextDiff, seed: int = 0, scale: float = 0.3) -> TextDiff:
    """Move every weight off its (identity / zero) init so that no term is trivially 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=gen))
    return model


def data(T: int = 7, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(V, F_, D, generator=gen)
    text_to_video = torch.arange(T) % V           # several captions for some videos
    text = frames[text_to_video].mean(1) + 0.5 * torch.randn(T, D, generator=gen)
    return text, frames, text_to_video


# -- schedule and sampler ----------------------------------------------------------------------


def test_sqrt_schedule_matches_closed_form():
    sched = DiffusionSchedule(10)
    abar0 = 1 - math.sqrt(1e-4)
    for k in (1, 3, 7, 9):   # before the last step: abar_k = abar(k/K) / abar(0)
        expected = (1 - math.sqrt(k / 10 + 1e-4)) / abar0
        assert sched.alphas_cumprod[k - 1].item() == pytest.approx(expected, rel=1e-6)
    assert sqrt_betas(10)[-1].item() == pytest.approx(0.999)        # clipped last beta
    # the table of spec coarse §3.3
    table = [.690, .558, .457, .371, .296, .228, .165, .107, .052]
    assert sched.alphas_cumprod[:9].tolist() == pytest.approx(table, abs=1e-3)
    assert sched.alphas_cumprod[-1].item() < 1e-4


def test_sampler_with_an_oracle_denoiser_returns_x0():
    sched = DiffusionSchedule(10)
    gen = torch.Generator().manual_seed(0)          # not the global RNG: its state depends on test order
    x0 = torch.randn(3, 8, generator=gen)
    noise = torch.randn(10, 3, 8, generator=gen)
    calls = []
    out = sched.sample(lambda x, k: calls.append(k) or x0, noise)
    assert calls == list(range(10, 0, -1))
    torch.testing.assert_close(out, x0)
    # q_sample at the last step is nearly pure noise; at step 1 mostly signal
    k = torch.tensor([1, 10, 10])
    xk = sched.q_sample(x0, k, noise[0])
    assert float(sched.sqrt_abar[-1]) < 0.01 < float(sched.sqrt_abar[0])
    assert torch.allclose(xk[1:], noise[0, 1:], atol=0.01 * float(x0.abs().max()) + 1e-4)
    assert not torch.allclose(xk[0], noise[0, 0], atol=0.1)


# -- scoring contract --------------------------------------------------------------------------


def test_zero_step_reproduces_xpool_scores_exactly():
    text, frames, _ = data()
    model = perturbed(TextDiff(tiny_config(max_step=0.0)))
    xpool_scores = model.xpool.score(text, frames, chunk_size=3)
    assert torch.equal(model.score(text, frames, chunk_size=3), xpool_scores)
    # ... and a non-zero step does change them (the test above can fail)
    moving = TextDiff(tiny_config(max_step=1.0))
    moving.load_state_dict(model.state_dict())
    assert not torch.allclose(moving.score(text, frames, chunk_size=3), xpool_scores, atol=1e-4)


@pytest.mark.parametrize("readout,rank", [("gated", 0), ("exp", 0), ("gated", 3)])
def test_chunked_equals_dense_and_sampler_is_seeded(readout, rank):
    text, frames, _ = data(T=9)
    model = perturbed(TextDiff(tiny_config(readout=readout, diffused_dim=rank)))
    model.fit_basis(text[:V], frames)
    dense = model.score(text, frames, chunk_size=len(text))
    assert dense.shape == (9, V)
    for chunk in (1, 4):
        torch.testing.assert_close(model.score(text, frames, chunk_size=chunk), dense,
                                   rtol=0, atol=1e-6)
    same = model.score(text, frames, generator=torch.Generator().manual_seed(model.cfg.sample_seed))
    torch.testing.assert_close(same, dense, rtol=0, atol=1e-6)
    other = model.score(text, frames, generator=torch.Generator().manual_seed(123))
    assert not torch.allclose(other, dense, atol=1e-5)


def test_fixed_low_rank_basis_is_orthonormal_and_deterministic():
    text, frames, t2v = data()
    model = perturbed(TextDiff(tiny_config(diffused_dim=3)))
    model.fit_basis(text, frames[t2v])
    basis = model.basis.clone()
    assert basis.shape == (D, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
    model.fit_basis(text, frames[t2v])
    assert torch.equal(model.basis, basis)
    assert model.target(model.pairs(text, frames)).shape == (len(text), V, 3)


# -- teacher / student -------------------------------------------------------------------------


def test_teacher_equal_student_gives_zero_distillation_loss():
    text, frames, _ = data()
    model = perturbed(TextDiff(tiny_config()))
    pairs = model.pairs(text, frames)
    assert model.distillation_loss(pairs, torch.Generator().manual_seed(0)).item() > 0
    model.init_student_from_teacher()
    assert model.distillation_loss(pairs, torch.Generator().manual_seed(0)).item() == 0.0


@pytest.mark.parametrize("phase", ["teacher", "student"])
def test_training_loss_trains_only_its_phase(phase):
    text, frames, t2v = data(T=8)
    model = perturbed(TextDiff(tiny_config())).set_phase(phase).train()
    loss, logs = model.training_loss(text, frames[t2v], torch.Generator().manual_seed(0),
                                     video_ids=t2v)
    assert math.isfinite(loss.item()) and logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    trained = {n.split(".")[0] for n, p in model.named_parameters() if p.grad is not None}
    expected = {"teacher"} if phase == "teacher" else {"student", "gate", "logit_scale"}
    assert trained == expected
    if phase == "student":
        assert set(logs) == {"loss", "retrieval", "distill"}


def test_teacher_denoising_loss_decreases():
    text, frames, t2v = data(T=10)
    model = perturbed(TextDiff(tiny_config()), scale=0.1).set_phase("teacher").train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        loss, _ = model.training_loss(text, frames[t2v], gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


# -- registry ----------------------------------------------------------------------------------


def test_checkpoint_roundtrip(tmp_path):
    text, frames, _ = data()
    model = perturbed(TextDiff(tiny_config(diffused_dim=2)))
    model.fit_basis(text[:V], frames)
    save_model(tmp_path / "td.pt", model, {"note": 1})
    loaded, extra = load_model(tmp_path / "td.pt")
    assert extra == {"note": 1} and isinstance(loaded.cfg.pool, XPoolConfig)
    torch.testing.assert_close(loaded.score(text, frames), model.score(text, frames))
    assert isinstance(build_model("textdiff", {"num_steps": 5}), TextDiff)


def test_bad_frame_count_is_a_clear_error():
    text, frames, _ = data()
    with pytest.raises(ValueError, match="num_frames"):
        TextDiff(tiny_config()).score(text, frames[:, :2])


def test_reference_protocol_pools_by_gallery_text():
    text, frames, _ = data()
    model = perturbed(TextDiff(tiny_config(max_step=0.0)))
    gallery = text[:V]
    ref = model.score(text, frames, chunk_size=3, gallery_text=gallery)
    torch.testing.assert_close(ref, model.xpool.score(text, frames, 3, gallery_text=gallery),
                               rtol=0, atol=1e-6)
    assert not torch.allclose(ref, model.score(text, frames, chunk_size=3), atol=1e-4)


# -- training orchestration --------------------------------------------------------------------


def coarse_split(num_videos: int, captions_per_video: int, seed: int):
    from c2f_lib.features.types import CoarseSplit

    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(num_videos, 1, D, generator=gen) + 0.5 * torch.randn(num_videos, F_, D,
                                                                              generator=gen)
    t2v = torch.arange(num_videos).repeat_interleave(captions_per_video)
    text = frames[t2v].mean(1) + 0.7 * torch.randn(len(t2v), D, generator=gen)
    return CoarseSplit([f"v{i}" for i in range(num_videos)], frames,
                       [f"caption {i}" for i in range(len(t2v))], text, t2v)


def test_train_textdiff_phases_and_resume(tmp_path):
    from c2f_lib.training.coarse import CoarseTrainConfig
    from c2f_lib.training.textdiff import TeacherTrainConfig, TextDiffTrainConfig, train_textdiff

    train, val = coarse_split(12, 2, seed=0), coarse_split(6, 1, seed=1)
    fast = dict(batch_size=8, lr=1e-3, weight_decay=0.0, show_progress=False, seed=0)
    cfg = TextDiffTrainConfig(model=tiny_config(gate_bias_init=-2.0),
                              teacher=TeacherTrainConfig(epochs=3, batch_size=8, lr=3e-3),
                              student=CoarseTrainConfig(epochs=2, **fast),
                              base=CoarseTrainConfig(epochs=2, **fast))
    model, history = train_textdiff(train, val, cfg, tmp_path)
    for name in ("base/best.pt", "teacher.pt", "student/best.pt", "textdiff.pt"):
        assert (tmp_path / name).exists(), name
    teacher = history["teacher"]
    assert len(teacher) == 3 and teacher[-1]["train_denoise"] < teacher[0]["train_denoise"]
    assert len(history["student"]["epochs"]) == 2
    # the student moved away from the teacher it was initialised from, the pool stayed frozen
    assert any(not torch.equal(a, b) for a, b in zip(model.student.parameters(),
                                                     model.teacher.parameters()))
    base, _ = load_model(tmp_path / "base" / "best.pt")
    for a, b in zip(base.parameters(), model.xpool.parameters()):
        assert torch.equal(a, b)
    # a second call loads the finished run instead of retraining
    again, _ = train_textdiff(train, val, cfg, tmp_path)
    torch.testing.assert_close(again.score(val.text_emb, val.frames), model.score(val.text_emb, val.frames))


# -- notebook ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_notebook_runs_on_tiny_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    from conftest import REPO_ROOT

    from c2f_lib.data.schema import VideoCaptions, write_captions
    from c2f_lib.features.testing import make_random_store
    from c2f_lib.paths import RunPaths
    from c2f_lib.utils import read_json

    paths = RunPaths(tmp_path / "run")
    records = []
    for split, n in {"train": 8, "val": 3, "test": 3, "test_cg": 3}.items():
        split_records = [VideoCaptions(vid=f"{split}{v}", captions=[f"{split} {v} a", f"{split} {v} b"],
                                       duration=20.0) for v in range(n)]
        write_captions(paths.captions_file("synthmoments", split), split_records)
        records += split_records
    make_random_store(paths.feature_store("synthmoments", "tinyclip"), captions_records=records,
                      dim=16, num_frames=4)
    params = {"run_dir": str(paths.run_dir), "n_seeds": 1, "base_epochs": 1, "teacher_epochs": 1,
              "student_epochs": 1, "batch_size": 8, "step_ablation": [1, 10], "width": 16,
              "chunk_size": 4}
    papermill.execute_notebook(str(REPO_ROOT / "notebooks" / "04_textdiff.ipynb"), str(tmp_path / "out.ipynb"),
                               parameters=params, kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"),
                               progress_bar=False)
    metrics = read_json(paths.metrics_file("04_textdiff"))
    assert {"textdiff/test", "textdiff/test_cg", "xpool/test", "xpool/test_cg"} <= set(metrics["t2v_v2t"])
    assert set(metrics["step_ablation_t2v_R@1"]) == {"1", "10"}
    assert (paths.checkpoints("04_textdiff") / "textdiff_seed0" / "textdiff.pt").exists()
    for figure in ("04_steps.png", "04_trajectories.png"):
        assert (paths.figures / figure).exists()
