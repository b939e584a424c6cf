"""Golden tests: ours against the official X-Pool and T-MASS heads.

`../shared/golden/{xpool,tmass}/` (documented in its README) holds an official head checkpoint, 32 caption and
video embeddings, and what the official code computes from them: every video pooled by every caption,
similarities under the official and the correct pairing, T-MASS's radii and samples for fixed noise, the
training-step similarities and losses, and the official metrics. Loaded through the public import path
(`convert_reference_checkpoint`); the official noise is passed in. Tolerances as the golden README states.
"""
from __future__ import annotations

import json

import pytest
import torch

from c2f_lib.evaluation.retrieval import retrieval_metrics
from c2f_lib.models.convert_coarse import convert_reference_checkpoint
from c2f_lib.models.tmass import _trial_cosines, support_texts
from c2f_lib.models.xpool import cosine

ATOL = 1e-5
METRICS = {"R1": "R@1", "R5": "R@5", "R10": "R@10", "R50": "R@50", "R100": "R@100", "MedR": "MdR", "MeanR": "MnR"}
KS = (1, 5, 10, 50, 100)             # the official R@K


def read_bundle(root, kind: str) -> dict:
    folder = root / kind
    model, clip = convert_reference_checkpoint(folder / "checkpoint.pth", kind)
    read = lambda name: torch.load(folder / name, weights_only=True)  # noqa: E731
    return {"kind": kind, "model": model.eval(), "clip": clip, "inputs": read("inputs.pt"),
            "outputs": read("outputs.pt"),
            **{n: json.loads((folder / f"{n}.json").read_text()) for n in ("losses", "metrics", "config")}}


@pytest.fixture(scope="module", params=["xpool", "tmass"])
def bundle(request, shared_golden) -> dict:
    return read_bundle(shared_golden, request.param)


@pytest.fixture(scope="module")
def xpool(shared_golden) -> dict:
    return read_bundle(shared_golden, "xpool")


@pytest.fixture(scope="module")
def tmass(shared_golden) -> dict:
    return read_bundle(shared_golden, "tmass")


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = ATOL) -> None:
    err = (got.float() - want.float()).abs().max().item()
    assert err <= atol, f"{what}: max |ours - official| = {err:.3g} > {atol}"


def official_metrics(ours: dict[str, float]) -> dict[str, float]:
    """Our metric dict in the official names (t2v_R1, ..., v2t_MeanR)."""
    return {f"{d}_{k}": ours[f"{d}_{v}"] for d in ("t2v", "v2t") for k, v in METRICS.items()}


def test_head_imports_with_the_checkpoint_values(bundle):
    model = bundle["model"]
    assert model.logit_scale.item() == pytest.approx(bundle["losses"]["logit_scale"], abs=1e-7)
    assert set(bundle["clip"]) == {"text_projection.weight"}               # the CLIP part is handed back
    assert model.cfg.dim == bundle["config"]["embed_dim"]


def test_every_video_pooled_by_every_caption(bundle):
    x = bundle["inputs"]
    with torch.no_grad():
        pooled = bundle["model"].pool_frames(x["text_embeds"], x["frame_embeds"])   # [T, V, D]
    assert_close(pooled.transpose(0, 1), bundle["outputs"]["pooled"], "pooled videos [V, T, D]")


def test_xpool_similarities_loss_and_metrics(xpool):
    model, x, want = xpool["model"], xpool["inputs"], xpool["outputs"]
    text, frames = x["text_embeds"], x["frame_embeds"]
    with torch.no_grad():
        sims = model.score(text, frames, chunk_size=7)
        assert_close(sims, want["sims_correct"], "similarities (correct pairing)")
        # X-Pool's official evaluation pools every video by every query: its pairing is the correct one
        assert_close(sims, want["sims_official"], "official pairing")
        assert_close(model.similarity(text, frames), want["sims_train"], "training similarities")
        loss, _ = model.training_loss(text, frames)
    assert loss.item() == pytest.approx(xpool["losses"]["loss"], abs=ATOL * xpool["losses"]["loss"])
    truth = torch.arange(len(sims))
    assert official_metrics(retrieval_metrics(sims, truth, KS)) == xpool["metrics"]["correct_pairing"]
    assert official_metrics(retrieval_metrics(want["sims_official"], truth, KS)) == xpool["metrics"]["official_pairing"]


def test_tmass_radius_and_fixed_noise_samples(tmass):
    model, x, want = tmass["model"], tmass["inputs"], tmass["outputs"]
    text, frames, eps = x["text_embeds"], x["frame_embeds"], want["eps_eval"]
    with torch.no_grad():
        radius = model.radius(text, frames)                                 # [T, V, D]
        assert_close(radius.log().transpose(0, 1), want["log_var"], "log R for every (video, text)")
        assert_close(model.radius(text, frames, paired=True).log(), want["log_var_paired"], "log R paired")
        assert_close(model.sample_texts(text, frames, eps), want["samples_paired"], "samples t + eps R")
        pooled = model.pool_frames(text, frames)
        trial = _trial_cosines(text, pooled, radius.clone(), eps)           # [T, V, K]
        assert_close(trial.permute(1, 2, 0), want["trial_cos"], "selection cosines [V, K, T]")
        best = eps[torch.arange(len(text))[:, None], trial.argmax(-1)]      # [T, V, D] the kept draw
        selected = torch.nn.functional.normalize(text[:, None] + best * radius, dim=-1)
        assert_close(selected.transpose(0, 1), want["selected"], "selected samples")


def test_tmass_scores_under_both_pairings_and_metrics(tmass):
    model, x, want = tmass["model"], tmass["inputs"], tmass["outputs"]
    text, frames, eps = x["text_embeds"], x["frame_embeds"], want["eps_eval"]
    with torch.no_grad():
        correct = model.score(text, frames, noise=eps, chunk_size=7)
        official = model.score(text, frames, noise=eps, gallery_text=text, chunk_size=5)
    assert_close(correct, want["sims_correct"], "correct pairing")
    assert_close(official, want["sims_official"], "official pairing (videos pooled by their own caption)")
    truth = torch.arange(len(text))
    assert official_metrics(retrieval_metrics(correct, truth, KS)) == tmass["metrics"]["correct_pairing"]
    assert official_metrics(retrieval_metrics(official, truth, KS)) == tmass["metrics"]["official_pairing"]


def test_tmass_training_step_with_the_official_noise(tmass):
    model, x, want, losses = tmass["model"], tmass["inputs"], tmass["outputs"], tmass["losses"]
    text, frames, eps = x["text_embeds"], x["frame_embeds"], want["eps_train"]
    with torch.no_grad():
        radius = model.radius(text, frames, paired=True)
        assert_close(radius.log(), want["log_var_train"], "training log R")
        samples = model.sample_texts(text, frames, eps)
        assert_close(samples, want["samples_train"], "training samples")
        pooled = model.pool_frames(text, frames)                            # [T, V, D]
        assert_close(cosine(samples[:, None], pooled), want["sims_train"], "training similarities")
        support = support_texts(text, radius, pooled)
        assert_close(support, want["text_support_train"], "support texts")
        assert_close(cosine(support[:, None], pooled), want["sims_support_train"], "support similarities")
        for weight, key in ((0.0, "loss_all_default"), (0.8, "loss_all_weight_0_8")):
            model.cfg.support_weight = weight
            loss, logs = model.training_loss(text, frames, noise=eps)
            assert loss.item() == pytest.approx(losses[key], abs=ATOL * losses[key]), key
        assert logs["loss_main"] == pytest.approx(losses["loss"], abs=ATOL * losses["loss"])
        assert logs["loss_support"] == pytest.approx(losses["loss_support"], abs=ATOL * losses["loss_support"])
        model.cfg.support_weight = 0.0
