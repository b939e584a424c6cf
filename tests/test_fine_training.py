"""train_fine: checkpoint selection on val, resume, determinism."""
from __future__ import annotations

import pytest
import torch

from c2f_lib.models.registry import build_model
from c2f_lib.training.fine import FineTrainConfig, train_fine
from test_fine_models import SMALL, make_samples


def _cfg(**kw):
    return FineTrainConfig(**{"epochs": 2, "batch_size": 4, "lr": 1e-3, "loss_preset": "mesm_charades",
                              "device": "cpu", **kw})


def test_train_select_resume_and_determinism(tmp_path):
    train, val = make_samples(8, seed=1), make_samples(4, seed=2)
    torch.manual_seed(0)
    _, first = train_fine(build_model("mesm", SMALL), train, val, _cfg(), tmp_path / "a")
    assert (tmp_path / "a" / "best.pt").exists() and len(first["history"]) == 2
    assert first["best_val"]["MR-full-mAP"] == max(h["val"]["MR-full-mAP"] for h in first["history"])
    torch.manual_seed(0)
    _, same = train_fine(build_model("mesm", SMALL), train, val, _cfg(), tmp_path / "b")
    assert [h["loss"] for h in same["history"]] == [h["loss"] for h in first["history"]]
    # resume: a 3-epoch run over the 2-epoch checkpoint trains only epoch 2
    _, resumed = train_fine(build_model("mesm", SMALL), train, val, _cfg(epochs=3), tmp_path / "a")
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][:2] == first["history"]


def test_bad_select_metric():
    with pytest.raises(ValueError, match="select_metric"):
        FineTrainConfig(select_metric="test-mAP")


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train, val = make_samples(8, seed=1), make_samples(4, seed=2)
    torch.manual_seed(0)
    model = build_model("qd_detr", SMALL)
    train_fine(model, train, val, _cfg(epochs=1, loss_preset="qd_detr"), f"{out_dir}/ckpt")
    torch.save(model.state_dict(), f"{out_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_gloo_processes_stay_in_sync(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    init = build_model("qd_detr", SMALL).state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a)      # it trained
    assert (tmp_path / "ckpt" / "best.pt").exists()


def test_train_or_load_reuses_only_a_matching_checkpoint(tmp_path):
    from c2f_lib.training.fine import train_or_load

    train, val = make_samples(8, seed=1), make_samples(4, seed=2)
    path = tmp_path / "mesm.pt"
    _, first = train_or_load("mesm", SMALL, train, val, _cfg(epochs=1), path)
    stamp = path.stat().st_mtime_ns
    _, again = train_or_load("mesm", SMALL, train, val, _cfg(epochs=1), path)
    assert path.stat().st_mtime_ns == stamp and again["made_from"] == first["made_from"]   # reused
    _, changed = train_or_load("mesm", SMALL, train, val, _cfg(epochs=2), path)            # config changed
    assert changed["made_from"] != first["made_from"] and len(changed["summary"]["history"]) == 2
    # the same queries with other clip features (a re-extracted store): trained again, not reused
    import dataclasses
    moved = [dataclasses.replace(s, clip_feats=s.clip_feats + 1.0) for s in train]
    _, refit = train_or_load("mesm", SMALL, moved, val, _cfg(epochs=2), path)
    assert refit["made_from"] != changed["made_from"]
    _, same = train_or_load("mesm", SMALL, [dataclasses.replace(s) for s in moved], val, _cfg(epochs=2), path)
    assert same["made_from"] == refit["made_from"]                                          # content, not identity


def test_mesm_trains_its_vocabulary_head_when_samples_carry_token_ids(tmp_path):
    from test_fine_models import VOCAB

    train, val = make_samples(8, seed=1, ids=True), make_samples(4, seed=2, ids=True)
    torch.manual_seed(0)
    model = build_model("mesm", {**SMALL, "vocab_size": VOCAB})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_fine(model, train, val, _cfg(epochs=1), tmp_path / "ids")
    after = model.state_dict()
    assert not torch.equal(after["mlm_vocab_head.4.weight"], before["mlm_vocab_head.4.weight"])    # CE trained
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("mlm_head."))  # no regression


def test_train_or_load_gives_mesm_the_compact_classes_of_the_train_captions(tmp_path):
    from c2f_lib.models.mesm import build_word_vocab
    from c2f_lib.models.registry import load_model
    from c2f_lib.training.fine import train_or_load, with_word_vocab
    from test_fine_models import VOCAB

    train, val = make_samples(8, seed=1, ids=True), make_samples(4, seed=2, ids=True)
    config = {**SMALL, "vocab_size": VOCAB, "mlm_words": 5}
    vocab = build_word_vocab(train, 5)
    assert len(vocab) == 5 and vocab != build_word_vocab(val, 5)         # built from train, not val
    assert with_word_vocab("mesm", config, train)["word_vocab"] == vocab
    assert "word_vocab" not in with_word_vocab("mesm", {**config, "mlm_words": 0}, train)   # full vocabulary
    assert "word_vocab" not in with_word_vocab("mesm", config, make_samples(8))             # no ids: features
    assert "word_vocab" not in with_word_vocab("qd_detr", SMALL, train)
    model, compact = train_or_load("mesm", config, train, val, _cfg(epochs=1), tmp_path / "compact.pt")
    assert model.cfg.word_vocab == vocab and model.mlm_vocab_head[4].out_features == 6
    reloaded, _ = load_model(tmp_path / "compact.pt")
    assert reloaded.cfg.word_vocab == vocab and torch.equal(reloaded.word_class, model.word_class)
    _, full = train_or_load("mesm", {**config, "mlm_words": 0}, train, val, _cfg(epochs=1), tmp_path / "full.pt")
    assert full["made_from"] != compact["made_from"]
    assert load_model(tmp_path / "full.pt")[0].mlm_vocab_head[4].out_features == VOCAB


@pytest.mark.parametrize("name, preset", [("qd_detr", "qd_detr"), ("moment_detr", "moment_detr")])
def test_models_fit_a_small_batch(name, preset):
    """Spans, matcher and losses pull the best query onto each ground-truth window of 8 samples.

    A check of the whole training path, not of generalisation (that is tests/test_fine_learning.py).
    """
    from c2f_lib.evaluation.moments import evaluate_moments
    from c2f_lib.evaluation.window_prior import WindowPrior
    from c2f_lib.models.fine_batch import collate_moments
    from c2f_lib.models.fine_losses import fine_loss
    from c2f_lib.models.fine_presets import loss_preset
    from c2f_lib.training.fine import samples_to_ground_truth

    torch.manual_seed(0)
    samples = make_samples(8, seed=3)
    for i, s in enumerate(samples):  # windows at different places, so one fixed span cannot fit them
        start = 2.0 * (i % (len(s.clip_feats) - 3))
        s.windows = [[start, start + 4.0]]
    model = build_model(name, {**SMALL, "input_dropout": 0.0, "dropout": 0.0}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = collate_moments(samples)
    first = None
    for _ in range(200):
        loss = fine_loss(model(batch), batch, loss_preset(preset))["total"]
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first
    gts = samples_to_ground_truth(samples)
    fitted = evaluate_moments(model.eval().predict(samples, top_k=10), gts)["brief"]["MR-full-mAP"]
    prior = evaluate_moments(WindowPrior.fit(samples).predict(samples), gts)["brief"]["MR-full-mAP"]
    # measured: QD-DETR 93.8 (55.5 without denoising queries), Moment-DETR 100, prior 35.2
    assert fitted > prior + 10.0, (fitted, prior)


def test_train_or_load_all_in_two_processes_equals_one_process(tmp_path):
    """Side-by-side training (two spawned workers) gives the models a single process trains, and a second
    call reuses every checkpoint without starting a worker."""
    from c2f_lib.training.fine import FineJob, train_or_load_all

    train, val = make_samples(8, seed=1), make_samples(4, seed=2)
    jobs = lambda folder: [FineJob("qd_detr", SMALL, _cfg(epochs=1), folder / "qd.pt"),  # noqa: E731
                           FineJob("moment_detr", {k: v for k, v in SMALL.items() if k != "dn_groups"},
                                   _cfg(epochs=1, loss_preset="moment_detr"), folder / "md.pt")]
    torch.set_num_threads(1)
    alone = train_or_load_all(jobs(tmp_path / "one"), train, val, workers=1)
    parallel = train_or_load_all(jobs(tmp_path / "two"), train, val, workers=2)
    for (a, _), (b, _) in zip(alone, parallel):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)
    stamps = [p.stat().st_mtime_ns for p in sorted((tmp_path / "two").glob("*.pt"))]
    train_or_load_all(jobs(tmp_path / "two"), train, val, workers=2)
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "two").glob("*.pt"))] == stamps
