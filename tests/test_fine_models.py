"""Fine-stage models: shapes, predict contract, matcher, losses, saliency pairs, post-processing, MESM modes."""
from __future__ import annotations

import pytest
import torch

import c2f_lib.models.mesm  # noqa: F401  (registers qd_detr + mesm)
import c2f_lib.models.moment_detr  # noqa: F401
from c2f_lib.features.types import MomentSample
from c2f_lib.models.fine_batch import collate_moments
from c2f_lib.models.fine_losses import fine_loss, hinge_saliency, masked_word_loss, rank_contrastive, saliency_pairs
from c2f_lib.models.fine_presets import loss_preset
from c2f_lib.models.matcher import hungarian_match
from c2f_lib.models.mesm import build_word_vocab, group_key
from c2f_lib.models.registry import build_model, load_model, save_model
from c2f_lib.models.span_utils import postprocess_windows, se_to_cw, temporal_nms

SMALL = dict(video_dim=16, text_dim=12, hidden_dim=32, n_heads=4, ffn_dim=64)
MODELS = [("moment_detr", "moment_detr"), ("qd_detr", "qd_detr"), ("mesm", "mesm_qvhighlights")]
VOCAB = 50  # token ids of `make_samples(ids=True)` lie in [0, VOCAB)


def make_samples(n=6, seed=0, length=None, ids=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        L = length or 8 + i
        tokens = torch.randn(4 + i % 3, 12, generator=g)
        out.append(MomentSample(qid=i, query=f"q{i}", vid=f"v{i // 2}", duration=2.0 * L, clip_len=2.0,
                                clip_feats=torch.randn(L, 16, generator=g), token_feats=tokens, windows=[[2.0, 8.0]],
                                token_ids=torch.randint(0, VOCAB, (len(tokens),), generator=g) if ids else None))
    return out


@pytest.mark.parametrize("name, preset", MODELS)
def test_forward_loss_backward_and_predict_contract(name, preset):
    torch.manual_seed(0)
    model = build_model(name, SMALL).train()
    samples = make_samples()
    batch = collate_moments(samples)
    out = model(batch)
    assert out["pred_logits"].shape == (6, 10, 2) and out["pred_spans"].shape == (6, 10, 2)
    assert out["saliency"].shape == batch.video_mask.shape and len(out["aux_outputs"]) == 1
    terms = fine_loss(out, batch, loss_preset(preset))
    terms["total"].backward()
    assert torch.isfinite(terms["total"])
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)
    preds = model.predict(samples, top_k=5)
    for p, s in zip(preds, samples):
        assert set(p) == {"qid", "query", "vid", "pred_relevant_windows", "pred_saliency_scores"}
        assert p["qid"] == s.qid and len(p["pred_saliency_scores"]) == s.clip_feats.shape[0]
        scores = [w[2] for w in p["pred_relevant_windows"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True)
        assert all(0 <= w[0] < w[1] <= s.duration for w in p["pred_relevant_windows"])


@pytest.mark.parametrize("name", ["moment_detr", "qd_detr", "mesm"])
def test_predict_is_batch_invariant_long_videos_and_roundtrip(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, SMALL).eval()
    samples = make_samples()
    together = model.predict(samples)
    alone = [model.predict([s])[0] for s in samples]
    for a, b in zip(together, alone):
        assert a["pred_relevant_windows"] == b["pred_relevant_windows"]
        assert a["pred_saliency_scores"] == pytest.approx(b["pred_saliency_scores"], abs=1e-3)
    long = make_samples(1, length=400)[0]                  # 800 s: no 150-s cap
    assert len(model.predict([long])[0]["pred_saliency_scores"]) == 400
    save_model(tmp_path / "m.pt", model)
    again, _ = load_model(tmp_path / "m.pt")
    assert again.predict(samples[:2]) == model.predict(samples[:2])


def test_mesm_flags_and_context_modes():
    torch.manual_seed(0)
    plain = build_model("mesm", {**SMALL, "use_fw": False, "use_ss": False})
    assert not any(k.startswith(("enhance_encoder", "ss_layers")) for k in plain.state_dict())
    with pytest.raises(ValueError, match="context"):
        build_model("mesm", {**SMALL, "context": "oracle"})
    assert group_key("NUsG9BgSes0_210.0_360.0") == "NUsG9BgSes0" and group_key("video_7") == "video_7"
    model = build_model("mesm", {**SMALL, "context": "transductive"}).eval()
    samples = make_samples(4)
    for i, s in enumerate(samples):                          # two windows of one YouTube video
        s.vid = f"yt{i % 2}_{150 * (i // 2)}.0_{150 * (i // 2 + 1)}.0"
    assert model.prediction_batches(samples + samples[:0]) == [[0, 2, 1, 3]]
    together = model.predict(samples)
    alone = model.predict([samples[0]])
    # transductive: the prediction of a query depends on the other windows of its YouTube video
    assert together[0]["pred_saliency_scores"] != alone[0]["pred_saliency_scores"]
    model.cfg.context = "self"
    assert model.predict(samples)[0] == model.predict([samples[0]])[0]


def test_hungarian_match_prefers_close_spans():
    spans = torch.tensor([[[0.2, 0.1], [0.7, 0.2], [0.5, 0.5]]])
    logits = torch.zeros(1, 3, 2)
    gt = [torch.tensor([[0.7, 0.2], [0.2, 0.1]])]
    (q, t), = hungarian_match(logits, spans, gt)
    assert dict(zip(t.tolist(), q.tolist())) == {0: 1, 1: 0}


def test_rank_contrastive_prefers_ranked_saliency():
    labels = torch.tensor([[0.0, 4.0, 8.0, 12.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    good = rank_contrastive(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), labels, mask, 0.5, 12.0)
    bad = rank_contrastive(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), labels, mask, 0.5, 12.0)
    assert good < bad


def _row(*values, dtype=torch.float32):
    return torch.tensor([values], dtype=dtype)


def test_saliency_pairs_hard_and_easy_from_graded_scores():
    # GT clips 1-4 (clip 4 scored 0 by every annotator), clips 0 and 5 outside, clip 6 padding
    labels = _row(0, 3, 12, 3, 0, 0, 0)
    inside = _row(0, 1, 1, 1, 1, 0, 0, dtype=torch.bool)
    mask = _row(1, 1, 1, 1, 1, 1, 0, dtype=torch.bool)
    easy_pos, easy_neg = set(), set()
    for seed in range(40):
        torch.manual_seed(seed)
        pos, neg, valid = saliency_pairs(labels, inside, mask)
        assert bool(valid[0]) and (pos[0, 0], neg[0, 0]) == (2, 4)      # hard: best vs worst GT clip
        easy_pos.add(int(pos[0, 1]))
        easy_neg.add(int(neg[0, 1]))
    assert easy_pos == {1, 2, 3, 4} and easy_neg == {0, 5}              # easy: any GT clip vs outside, no padding
    # ties: the latest of the best, the earliest of the worst; no clip outside -> the easy pair copies the hard one
    everywhere = _row(1, 1, 1, 1, dtype=torch.bool)
    pos, neg, _ = saliency_pairs(_row(5, 5, 2, 2), everywhere, everywhere)
    assert pos.tolist() == [[1, 1]] and neg.tolist() == [[2, 2]]
    # the loss on these pairs: hard pair has equal scores (margin 0.2), easy pair is separated by 0.5 (0)
    scores = _row(0.0, 0.5, 0.5, 0.5, 0.5, 0.0, 9.0)
    torch.manual_seed(0)
    assert hinge_saliency(scores, labels, inside, mask, margin=0.2).item() == pytest.approx(0.2)


def test_saliency_pairs_binary_labels_sample_inside_vs_outside():
    labels = torch.tensor([[0.0, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    mask = torch.ones(2, 6, dtype=torch.bool)
    for seed in range(20):
        torch.manual_seed(seed)
        pos, neg, valid = saliency_pairs(labels, labels > 0, mask)
        assert valid.tolist() == [True, False]                          # query 2 has no clip outside
        assert set(pos[0].tolist()) <= {1, 2, 3} and set(neg[0].tolist()) <= {0, 4, 5}
        assert pos[0, 0] != pos[0, 1] and neg[0, 0] != neg[0, 1]        # 2 distinct clips each


def test_postprocess_clamps_rounds_and_nms():
    spans = se_to_cw(torch.tensor([[-0.1, 0.31], [0.3, 0.6], [0.32, 0.61]]))
    rows = postprocess_windows(spans, torch.tensor([0.9, 0.5, 0.8]), extent=20.0, clip_len=2.0, duration=19.0)
    assert rows[0] == [0.0, 6.0, 0.9] and rows[1] == [6.0, 12.0, 0.8] and rows[2][1] == 12.0
    assert all(r[1] <= 19.0 for r in rows)
    assert len(temporal_nms(rows, 0.7)) == 2


def test_a_window_snapped_onto_the_videos_end_keeps_its_last_clip():
    """A span in the last half clip of a 24-s video rounds to [24, 24]; it was written as such, and the
    evaluator (rightly) refuses a window that does not start inside the video (seen in configs/full.yaml)."""
    spans = se_to_cw(torch.tensor([[0.985, 0.995], [0.0, 0.01], [0.40, 0.60]]))
    rows = postprocess_windows(spans, torch.tensor([0.9, 0.8, 0.7]), extent=24.0, clip_len=2.0)
    assert [r[:2] for r in rows] == [[22.0, 24.0], [0.0, 2.0], [10.0, 14.0]]
    assert all(0 <= s < 24.0 and s < e <= 24.0 for s, e, _ in rows)
    short = postprocess_windows(spans[:1], torch.tensor([0.9]), extent=1.5, clip_len=2.0)   # shorter than a clip
    assert short[0][:2] == [0.0, 1.5]


def test_moment_plots_return_figures():
    from matplotlib.figure import Figure

    from c2f_lib.plots import moments as plots
    from c2f_lib.training.fine import samples_to_ground_truth

    samples = make_samples(3)
    preds = build_model("qd_detr", SMALL).predict(samples)
    gts = samples_to_ground_truth(samples)
    assert plots.top1_ious(preds, gts).shape == (3,)
    for fig in (plots.timelines(preds, gts), plots.saliency_curves(preds, gts, 2.0),
                plots.iou_histograms({"qd": (preds, gts)}), plots.metric_bars({"qd": {"mIoU": 1.0}}, ["mIoU"])):
        assert isinstance(fig, Figure)


# ------------------------------------------------------------------ MESM masked-word targets
def _smoothed_ce_per_sentence(logits, ids, keep, eps=0.1):
    """Written from MESM's `cal_nll_loss`: (1-eps) nll + eps/K * sum(-log p), mean over kept tokens, then sentences."""
    log_p = logits.log_softmax(-1)
    per_token = (1 - eps) * -log_p.gather(1, ids[:, None])[:, 0] - eps / logits.shape[1] * log_p.sum(-1)
    return torch.stack([per_token[k].mean() for k in keep if k.any()]).mean()


@pytest.mark.parametrize("tokens", ["valid", "masked"])
def test_mesm_classifies_masked_words_over_the_vocabulary_when_ids_exist(tokens):
    torch.manual_seed(0)
    model = build_model("mesm", {**SMALL, "vocab_size": VOCAB}).train()
    batch = collate_moments(make_samples(ids=True))
    out = model(batch)
    assert "mlm_pred" not in out                                          # not the feature regression
    n_valid = int(batch.text_mask.sum())
    assert out["mlm_logits"].shape == (n_valid, VOCAB)
    w = loss_preset("mesm_qvhighlights", rec_fw_tokens=tokens)
    terms = fine_loss(out, batch, w)
    ids, valid = batch.token_ids[batch.text_mask], batch.text_mask
    rows = valid.nonzero()[:, 0]
    masked = out["mlm_mask"][valid]
    keep = [(rows == b) & (masked if tokens == "masked" else True) for b in range(len(valid))]
    want = _smoothed_ce_per_sentence(out["mlm_logits"].detach().float(), ids, keep)
    torch.testing.assert_close(terms["rec_fw"].detach(), w.rec_fw * want)
    model.zero_grad()
    terms["rec_fw"].backward()
    assert model.mlm_vocab_head[4].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.mlm_head.parameters())       # the fallback head is idle
    # the CE rewards the right ids: logits that put their mass on the targets give a lower loss
    right = torch.nn.functional.one_hot(ids, VOCAB).float() * 20
    assert masked_word_loss({**out, "mlm_logits": right}, batch, w) < masked_word_loss(out, batch, w)


def test_build_word_vocab_ranks_ids_by_frequency_ties_by_id():
    def sample(ids):
        return MomentSample(qid=0, query="q", vid="v", duration=4.0, clip_len=2.0, clip_feats=torch.zeros(2, 16),
                            token_feats=torch.zeros(len(ids), 12), windows=[[0.0, 2.0]], token_ids=torch.tensor(ids))
    samples = [sample([1, 9, 4, 9, 2]), sample([1, 4, 9, 7, 2]), sample([1, 5, 2])]
    samples.append(MomentSample(**{**vars(samples[0]), "token_ids": None}))     # a sample without ids is skipped
    # counts: 9 x3, 1 x3, 2 x3, 4 x2, 5 x1, 7 x1
    assert build_word_vocab(samples, 100) == [1, 2, 9, 4, 5, 7]
    assert build_word_vocab(samples, 4) == [1, 2, 9, 4]
    assert build_word_vocab(samples[3:], 4) == [] and build_word_vocab(samples, 0) == []


def test_mesm_compact_word_classes_map_ids_and_drive_the_loss(tmp_path):
    """word_vocab [7, 3, 12]: ids 7, 3, 12 are classes 0, 1, 2; every other id is the unknown class 3."""
    torch.manual_seed(0)
    vocab = [7, 3, 12]
    model = build_model("mesm", {**SMALL, "vocab_size": VOCAB, "word_vocab": vocab}).train()
    table = model.word_class
    assert table.shape == (VOCAB,) and table[[7, 3, 12]].tolist() == [0, 1, 2]
    assert (table[[i for i in range(VOCAB) if i not in vocab]] == 3).all()
    batch = collate_moments(make_samples(ids=True))
    batch.token_ids[0, :3] = torch.tensor([7, 3, 12])                    # frequent ids are present
    out = model(batch)
    assert out["mlm_logits"].shape == (int(batch.text_mask.sum()), len(vocab) + 1)
    ids, valid = batch.token_ids[batch.text_mask], batch.text_mask
    classes = torch.tensor([vocab.index(i) if i in vocab else len(vocab) for i in ids.tolist()])
    assert (classes < 3).sum() >= 3 and (classes == 3).any()
    w = loss_preset("mesm_qvhighlights")
    rows = valid.nonzero()[:, 0]
    sentences = [rows == b for b in range(len(valid))]
    want = _smoothed_ce_per_sentence(out["mlm_logits"].detach().float(), classes, sentences)
    torch.testing.assert_close(fine_loss(out, batch, w)["rec_fw"].detach(), w.rec_fw * want)
    def peaked(c):                                                       # logits with their mass on classes c
        return {**out, "mlm_logits": torch.nn.functional.one_hot(c, len(vocab) + 1).float() * 20}
    assert masked_word_loss(peaked(classes), batch, w) < masked_word_loss(peaked((classes + 1) % 4), batch, w) - 10
    # checkpoint round trip: the classes come back from the config; the table is not in the state dict
    assert "word_class" not in model.state_dict()
    save_model(tmp_path / "m.pt", model)
    again, _ = load_model(tmp_path / "m.pt")
    assert again.cfg.word_vocab == vocab and torch.equal(again.word_class, table)
    assert again.mlm_vocab_head[4].weight.shape == (len(vocab) + 1, SMALL["hidden_dim"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())
    for bad in ([3, 3], [VOCAB]):
        with pytest.raises(ValueError, match="word_vocab"):
            build_model("mesm", {**SMALL, "vocab_size": VOCAB, "word_vocab": bad})


def test_mesm_falls_back_to_feature_regression_without_ids():
    torch.manual_seed(0)
    model = build_model("mesm", {**SMALL, "vocab_size": VOCAB}).train()
    w = loss_preset("mesm_qvhighlights")
    plain = collate_moments(make_samples())
    mixed = collate_moments(make_samples(ids=True)[:3] + make_samples()[3:])
    assert plain.token_ids is None and mixed.token_ids is None            # one kind of target per batch
    for batch in (plain, mixed):
        out = model(batch)
        assert "mlm_logits" not in out and out["mlm_pred"].shape == (*batch.text_mask.shape, SMALL["text_dim"])
        m = out["mlm_mask"]
        want = (1 - torch.cosine_similarity(out["mlm_pred"][m], batch.text[m], dim=-1)).mean()
        torch.testing.assert_close(fine_loss(out, batch, w)["rec_fw"], w.rec_fw * want)
    switched_off = build_model("mesm", {**SMALL, "mlm_over_vocab": False}).train()
    assert not any(k.startswith("mlm_vocab_head") for k in switched_off.state_dict())
    assert "mlm_pred" in switched_off(collate_moments(make_samples(ids=True)))
    too_small = build_model("mesm", {**SMALL, "vocab_size": VOCAB // 2}).train()
    with pytest.raises(ValueError, match="vocab_size"):
        too_small(collate_moments(make_samples(ids=True)))
    with pytest.raises(ValueError, match="rec_fw_tokens"):
        loss_preset("mesm_qvhighlights", rec_fw_tokens="all")


def test_mesm_masks_a_third_of_the_words_never_sot_or_eot():
    model = build_model("mesm", SMALL)
    lengths = [2, 3, 5, 9, 12]
    text_mask = torch.arange(12)[None] < torch.tensor(lengths)[:, None]
    for seed in range(10):
        torch.manual_seed(seed)
        masked = model.mask_words(text_mask)
        assert masked.sum(1).tolist() == [0, 1, 1, 3, 4]                 # max(l // 3, 1), none for SOT+EOT alone
        assert not (masked & ~text_mask).any()
        for row, n in zip(masked, lengths):
            assert not row[0] and not row[n - 1]
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("mesm", {**SMALL, "vocab_size": 0})


def test_denoising_queries_are_invisible_to_the_matching_queries_and_trained():
    """DN (our addition): with dropout off, the matching queries' outputs are the same with and without
    denoising queries; the DN queries start near their GT and get span/GIoU/label losses."""
    from c2f_lib.models.denoising import denoising_attention_mask, noised_anchors

    samples = make_samples(4)
    samples[1].windows = [[2.0, 8.0], [10.0, 14.0]]                  # 2 GT spans -> one padded DN slot elsewhere
    batch = collate_moments(samples)
    config = {**SMALL, "dropout": 0.0, "input_dropout": 0.0, "negative_pairs": False, "dn_groups": 0}
    torch.manual_seed(0)
    plain = build_model("qd_detr", config).train()
    torch.manual_seed(0)
    dn = build_model("qd_detr", {**config, "dn_groups": 2, "dn_negatives": True}).train()
    a, b = plain(batch), dn(batch)
    assert "dn" not in a and b["dn"]["pred_spans"].shape == (2, 4, 8, 2)     # [n_dec, B, G * 2 * N, 2]
    assert torch.allclose(a["pred_spans"], b["pred_spans"], atol=1e-6)
    assert torch.allclose(a["pred_logits"], b["pred_logits"], atol=1e-6)
    terms = fine_loss(b, batch, loss_preset("qd_detr"))
    assert {"dn_span", "dn_giou", "dn_label", "dn_span_0"} <= set(terms)
    assert "dn_span" not in fine_loss(a, batch, loss_preset("qd_detr"))
    assert "dn" not in dn.eval()(batch)                                       # inference: matching queries only

    anchors, targets, valid, positive = noised_anchors([torch.tensor([[0.5, 0.2]])], groups=3, noise=0.4,
                                                       negatives=True)
    assert positive[0].tolist() == [True, False] * 3 and valid.all()
    assert ((anchors - targets)[positive].abs() <= torch.tensor([0.04, 0.08]) + 1e-6).all()   # small jitter
    assert ((anchors - targets)[~positive][:, 0].abs() >= 0.1 - 1e-6).all()                     # off the event
    mask = denoising_attention_mask(2, 2, 2, torch.tensor([[True, False, True, False]]))[0, 0]
    assert mask.tolist() == [[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0],          # matching: each other only
                             [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0],          # group 0 (slot 3 padded)
                             [1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 1, 1]]          # group 1 (slot 5 padded)
