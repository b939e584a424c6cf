"""Mean-pool, X-Pool and T-MASS: pooling exactness, scoring semantics, chunking, losses, checkpoints."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from c2f_lib.models.meanpool import MeanPool, MeanPoolConfig
from c2f_lib.models.registry import load_model, save_model
from c2f_lib.models.tmass import TMASS, TMASSConfig
from c2f_lib.models.xpool import XPool, XPoolConfig, literal_pool

D, NF = 16, 4


def perturb(model, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_scale" not in name:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def data(T=7, V=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, D, generator=g), torch.randn(V, NF, D, generator=g)


@pytest.mark.parametrize("heads", [1, 2])
def test_fast_pooling_equals_literal_block(heads):
    model = perturb(XPool(XPoolConfig(dim=D, num_heads=heads)))
    text, frames = data()
    assert torch.allclose(model.pool_frames(text, frames), literal_pool(model.pool, text, frames), atol=1e-5)
    paired = model.pool.pool(text[:5], model.pool.prepare(frames), paired=True)
    assert torch.allclose(paired, literal_pool(model.pool, text[:5], frames)[range(5), range(5)], atol=1e-5)


def test_dropout_only_in_training():
    model = XPool(XPoolConfig(dim=D, dropout=0.5))
    text, frames = data()
    model.train()
    a, b = model.pool_frames(text, frames), model.pool_frames(text, frames)
    assert not torch.equal(a, b)
    model.eval()
    assert torch.equal(model.pool_frames(text, frames), model.pool_frames(text, frames))


def test_xpool_score_semantics_and_chunking():
    model = perturb(XPool(XPoolConfig(dim=D, num_heads=2)))
    text, frames = data()
    dense = F.cosine_similarity(text[:, None], literal_pool(model.pool, text, frames), dim=-1)
    for chunk in (1, 3, 100):
        assert torch.allclose(model.score(text, frames, chunk_size=chunk), dense, atol=1e-5)
    own = text[:5]  # reference protocol: video v pooled by text v
    ref = model.score(text, frames, gallery_text=own)
    by_own = literal_pool(model.pool, own, frames)[range(5), range(5)]       # [V, D]
    assert torch.allclose(ref, F.cosine_similarity(text[:, None], by_own[None], dim=-1), atol=1e-5)


def naive_tmass(model, text, frames, eps, gallery_text=None):
    """Reference semantics, one pair at a time: best of K samples against pool(v | q)."""
    pooled = literal_pool(model.xpool.pool, text, frames)                     # [T, V, D]
    own = None if gallery_text is None else literal_pool(model.xpool.pool, gallery_text, frames)
    out = torch.empty(text.shape[0], frames.shape[0])
    for q in range(text.shape[0]):
        for v in range(frames.shape[0]):
            s = F.normalize(frames[v], dim=-1) @ F.normalize(text[q], dim=0)   # [F]
            radius = model.radius_proj(s).exp()
            samples = text[q] + eps[q] * radius                                  # [K, D]
            cos = F.cosine_similarity(samples, pooled[q, v][None], dim=-1)
            out[q, v] = cos.max() if own is None else \
                F.cosine_similarity(samples[cos.argmax()], own[v, v], dim=0)
    return out


@pytest.mark.parametrize("prior", ["uniform01", "normal"])
def test_tmass_score_matches_naive_pairwise_loop(prior):
    model = perturb(TMASS(TMASSConfig(dim=D, num_frames=NF, num_heads=2, num_trials=6, prior=prior,
                                      prior_std=0.5)), scale=0.1)
    text, frames = data()
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(3)))
    eps = model.trial_noise(len(text), seed, slice(0, len(text)))
    with torch.no_grad():
        ours = model.score(text, frames, chunk_size=3, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(ours, naive_tmass(model, text, frames, eps), atol=1e-5)
        ref = model.score(text, frames, generator=torch.Generator().manual_seed(3), gallery_text=text[:5])
        assert torch.allclose(ref, naive_tmass(model, text, frames, eps, text[:5]), atol=1e-5)


def test_tmass_scores_seeded_and_chunk_invariant():
    model = perturb(TMASS(TMASSConfig(dim=D, num_frames=NF, num_trials=5)), scale=0.1)
    text, frames = data(T=11)
    runs = [model.score(text, frames, chunk_size=c, generator=torch.Generator().manual_seed(0))
            for c in (1, 4, 11, 64)]
    for r in runs[1:]:
        assert torch.allclose(r, runs[0], atol=1e-6, rtol=0)
    other = model.score(text, frames, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(other, runs[0])


def test_tmass_radius_at_init_and_config_errors():
    model = TMASS(TMASSConfig(dim=D, num_frames=NF))
    text, frames = data()
    radius = model.radius(text, frames)                                           # [T, V, D]
    sims = torch.einsum("td,vfd->tvf", F.normalize(text, dim=-1), F.normalize(frames, dim=-1))
    assert torch.allclose(radius[..., :NF], sims.exp(), atol=1e-6)
    assert torch.equal(radius[..., NF:], torch.ones_like(radius[..., NF:]))
    with pytest.raises(ValueError, match="frames"):
        model.radius(text, frames[:, :2])
    with pytest.raises(ValueError, match="prior"):
        TMASSConfig(prior="laplace")


def clip_loss(sims, scale, same=None):
    logits = sims * scale
    if same is not None:
        logits = logits.masked_fill(same & ~torch.eye(len(sims), dtype=torch.bool), float("-inf"))
    target = torch.arange(len(sims))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@pytest.mark.parametrize("mask", [True, False])
def test_xpool_loss_is_clip_loss_with_duplicate_masking(mask):
    model = perturb(XPool(XPoolConfig(dim=D, dropout=0.0, mask_duplicate_videos=mask)))
    text, frames = data(T=4, V=3)
    ids = torch.tensor([0, 1, 1, 2])
    loss, logs = model.training_loss(text, frames[ids], video_ids=ids)
    sims = F.cosine_similarity(text[:, None], literal_pool(model.pool, text, frames[ids]), dim=-1)
    same = (ids[:, None] == ids[None]) if mask else None
    assert torch.allclose(loss, clip_loss(sims, 100.0, same), atol=1e-4)
    assert logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    assert model.pool.cross_attn["q_proj"].weight.grad.abs().sum() > 0


def test_tmass_loss_uses_paired_radius_and_support_text():
    model = perturb(TMASS(TMASSConfig(dim=D, num_frames=NF, dropout=0.0, support_weight=0.8)), scale=0.1)
    text, frames = data(T=4, V=4)
    loss, logs = model.training_loss(text, frames, generator=torch.Generator().manual_seed(5))
    eps = torch.rand((4, D), generator=torch.Generator().manual_seed(5))
    radius = model.radius(text, frames, paired=True)
    pooled = literal_pool(model.xpool.pool, text, frames)                        # [T, V, D]
    main = clip_loss(F.cosine_similarity((text + eps * radius)[:, None], pooled, dim=-1), 100.0)
    direction = F.normalize(pooled.mean(0) - text, dim=-1)
    support = clip_loss(F.cosine_similarity((text + radius * direction)[:, None], pooled, dim=-1), 100.0)
    assert torch.allclose(loss, main + 0.8 * support, atol=1e-4)
    assert logs["loss_support"] == pytest.approx(support.item(), rel=1e-4)


def test_meanpool_scores_mean_of_frames_at_init():
    model = MeanPool(MeanPoolConfig(dim=D))
    text, frames = data()
    expected = F.cosine_similarity(text[:, None], frames.mean(1)[None], dim=-1)
    assert torch.allclose(model.score(text, frames, chunk_size=2), expected, atol=1e-6)
    assert model.pool_frames(text, frames).shape == (7, 5, D)


@pytest.mark.parametrize("name,model", [
    ("meanpool", MeanPool(MeanPoolConfig(dim=D))),
    ("xpool", XPool(XPoolConfig(dim=D))),
    ("tmass", TMASS(TMASSConfig(dim=D, num_frames=NF, num_trials=3))),
])
def test_checkpoint_round_trip(tmp_path, name, model):
    perturb(model)
    save_model(tmp_path / f"{name}.pt", model)
    loaded, _ = load_model(tmp_path / f"{name}.pt")
    text, frames = data()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert type(loaded) is type(model)
    assert torch.equal(loaded.score(text, frames, generator=g()), model.score(text, frames, generator=g()))
