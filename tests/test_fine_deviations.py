"""The named options that restore the official behaviour where ours differs (docs/DEVIATIONS.md), the
official checkpoint importer's checks, and the injected draws that reproduce another implementation's step."""
from __future__ import annotations

import argparse

import pytest
import torch

import c2f_lib.models.mesm  # noqa: F401  (registers qd_detr + mesm)
import c2f_lib.models.moment_detr  # noqa: F401
from c2f_lib.models.convert_fine import import_reference_checkpoint, rename_key
from c2f_lib.models.detr_blocks import negative_partner, saliency_values
from c2f_lib.models.fine_batch import collate_moments
from c2f_lib.models.fine_losses import fine_loss, saliency_pairs, segment_sentence_loss
from c2f_lib.models.fine_presets import FineLossWeights, loss_preset
from c2f_lib.models.registry import build_model
from c2f_lib.models.span_utils import postprocess_windows, se_to_cw
from test_fine_models import SMALL, make_samples

NO_DROPOUT = {"dropout": 0.0, "input_dropout": 0.0}


# ------------------------------------------------------------------ post-processing
def test_windows_are_ranked_by_the_unrounded_score():
    spans = se_to_cw(torch.tensor([[0.0, 0.1], [0.5, 0.6], [0.2, 0.4]]))
    scores = torch.tensor([0.52821, 0.52824, 0.3])               # both round to 0.5282
    rows = postprocess_windows(spans, scores, extent=100.0, clip_len=2.0)
    assert [r[:2] for r in rows] == [[50.0, 60.0], [0.0, 10.0], [20.0, 40.0]]
    assert [r[2] for r in rows] == [0.5282, 0.5282, 0.3]


def test_reference_post_processing_scales_by_duration_clamps_at_150_and_keeps_empty_windows():
    # features cover 100 s of a 160-s video; one span collapses to an empty window once snapped
    spans = se_to_cw(torch.tensor([[0.5, 1.2], [0.301, 0.305]]))
    scores = torch.tensor([0.9, 0.8])
    ours = postprocess_windows(spans, scores, extent=100.0, clip_len=2.0, duration=160.0)
    theirs = postprocess_windows(spans, scores, extent=100.0, clip_len=2.0, duration=160.0, protocol="reference")
    assert ours == [[50.0, 120.0, 0.9], [30.0, 32.0, 0.8]]             # x extent, widened to one clip
    assert theirs == [[80.0, 150.0, 0.9], [48.0, 48.0, 0.8]]           # x duration, clamp 150, empty kept
    with pytest.raises(ValueError, match="protocol"):
        postprocess_windows(spans, scores, 100.0, 2.0, protocol="official")
    sal = torch.tensor([0.123456, 0.123457])
    assert saliency_values(sal, "correct") == [0.1235, 0.1235]
    assert saliency_values(sal, "reference") == sal.half().tolist()


def test_model_predict_uses_its_post_processing_protocol():
    torch.manual_seed(0)
    model = build_model("qd_detr", {**SMALL, "postprocess": "reference", "max_ts_val": 4.0})
    for p in model.predict(make_samples(2)):
        assert all(w[1] <= 4.0 for w in p["pred_relevant_windows"])
    with pytest.raises(ValueError, match="postprocess"):
        build_model("qd_detr", {**SMALL, "postprocess": "official"})


# ------------------------------------------------------------------ training-side options
def test_negative_partner_modes():
    vids = ["a_0_150", "a_0_150", "b_0_150", "a_150_300"]
    assert negative_partner(vids, "roll").tolist() == [1, 2, 3, 0]
    assert negative_partner(vids, "other_video").tolist() == [2, 2, 3, 0]
    assert negative_partner(vids, "other_group").tolist() == [2, 2, 3, 2]      # group 'a' holds 0, 1, 3
    assert negative_partner(["a_0_150", "a_150_300"], "other_group") is None
    assert negative_partner(["v"], "roll") is None
    with pytest.raises(ValueError, match="negative_partner"):
        build_model("qd_detr", {**SMALL, "negative_partner": "random"})


def test_training_outputs_in_eval_mode_equal_a_dropout_free_training_forward():
    torch.manual_seed(0)
    model = build_model("mesm", {**SMALL, **NO_DROPOUT, "vocab_size": 50})
    batch = collate_moments(make_samples(ids=True))
    batch.masked_words = model.mask_words(batch.text_mask)
    with torch.no_grad():
        plain = model.eval()(batch)
        evaluated = model(batch, training_outputs=True)
        trained = model.train()(batch)
    assert "saliency_neg" not in plain and "mlm_logits" not in plain
    for key in ("pred_spans", "saliency", "saliency_neg", "mlm_logits", "ss_segment"):
        torch.testing.assert_close(evaluated[key], trained[key])
    assert torch.equal(evaluated["mlm_mask"], batch.masked_words)        # the given draw is used


def test_given_partner_and_hinge_pairs_replace_the_draws():
    torch.manual_seed(0)
    model = build_model("qd_detr", {**SMALL, **NO_DROPOUT}).eval()
    batch = collate_moments(make_samples(4))
    batch.partner = torch.tensor([3, 2, 1, 0])
    batch.pos_clips = torch.tensor([[1, 2]] * 4)
    batch.neg_clips = torch.tensor([[5, 6]] * 4)
    out = model(batch, training_outputs=True)
    with torch.no_grad():
        neg_memory, neg_global = model.encode(model.project_video(batch), batch.video_mask,
                                              c2f_lib.models.detr_blocks.video_positions(batch.video_mask, 32),
                                              model.input_txt_proj(batch.text)[[3, 2, 1, 0]],
                                              batch.text_mask[[3, 2, 1, 0]])
    torch.testing.assert_close(out["saliency_neg"], model.saliency(neg_memory, neg_global))
    w = loss_preset("qd_detr")
    first = fine_loss(out, batch, w)["saliency"]
    torch.manual_seed(1)
    assert fine_loss(out, batch, w)["saliency"] == first                 # no random pair was drawn


def test_saliency_label_kind_graded_keeps_hard_pairs_on_all_zero_one_labels():
    labels = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])                 # graded scores that happen to be 0/1
    inside = labels > 0
    mask = torch.ones_like(inside)
    pos, neg, _ = saliency_pairs(labels, inside, mask, kind="graded")
    assert (pos[0, 0], neg[0, 0]) == (4, 1)                             # latest best, earliest worst GT clip
    for seed in range(5):
        torch.manual_seed(seed)
        pos, neg, _ = saliency_pairs(labels, inside, mask, kind="auto")   # -> binary: 2 random GT vs outside
        assert set(pos[0].tolist()) <= {1, 2, 4} and pos[0, 0] != pos[0, 1]
    with pytest.raises(ValueError, match="saliency_labels"):
        FineLossWeights(saliency_labels="scores")


def test_segment_sentence_positives_by_video_or_by_youtube_group():
    batch = collate_moments(make_samples(2, length=8))                   # equal GT: GIoU 1
    batch.vids = ["yt_0_150", "yt_150_300"]                              # two windows of one YouTube video
    out = {"ss_segment": torch.eye(2, 4), "ss_sentence": torch.eye(2, 4)}
    by_video = segment_sentence_loss(out, batch, FineLossWeights())
    by_group = segment_sentence_loss(out, batch, FineLossWeights(ss_positives="group"))
    assert by_group > by_video                                           # the other window became a positive


def test_collate_can_leave_spans_past_the_features_unclipped():
    sample = make_samples(1)[0]                                          # 8 clips = 16 s of features
    sample.windows = [[10.0, 20.0]]
    clipped, raw = collate_moments([sample]).spans[0], collate_moments([sample], clip_spans=False).spans[0]
    torch.testing.assert_close(clipped, se_to_cw(torch.tensor([[10 / 16, 1.0]])))
    torch.testing.assert_close(raw, se_to_cw(torch.tensor([[10 / 16, 20 / 16]])))


def test_mesm_gt_segment_from_windows_or_scores():
    model = build_model("mesm", SMALL)
    batch = collate_moments(make_samples(1))                             # window [2, 8] s = clips 1-3
    batch.saliency[0] = torch.tensor([0, 0.5, 0, 0.5, 0, 0, 0, 0.25])   # clip 2 scored 0, clip 7 outside
    assert model.gt_segment(batch)[0].nonzero()[:, 0].tolist() == [1, 2, 3]
    model.cfg.gt_clips = "scores"
    assert model.gt_segment(batch)[0].nonzero()[:, 0].tolist() == [1, 3, 7]


def test_mesm_context_once_per_video_or_once_per_query():
    batch = collate_moments(make_samples(3, length=5))
    batch.vids = ["yt_0_150", "yt_0_150", "yt_150_300"]                  # one group, two queries on one window
    video = torch.randn(3, 5, SMALL["hidden_dim"])
    once = build_model("mesm", {**SMALL, "context": "transductive"})
    repeated = build_model("mesm", {**SMALL, "context": "transductive", "context_repeats": True})
    assert once.context_keys(batch, video)[1].sum(1).tolist() == [10, 10, 10]
    assert repeated.context_keys(batch, video)[1].sum(1).tolist() == [15, 15, 15]
    batch.vids = ["charades_a", "charades_a", "charades_b"]              # not QVHighlights ids: own video
    assert repeated.context_keys(batch, video)[1].sum(1).tolist() == [5, 5, 5]


def test_mesm_unknown_words_keep_their_feature_or_take_the_learned_unknown_token():
    torch.manual_seed(0)
    config = {**SMALL, **NO_DROPOUT, "vocab_size": 50, "word_vocab": [1, 2, 3]}
    keep = build_model("mesm", config).eval()
    replace = build_model("mesm", {**config, "mlm_unknown": "replace"}).eval()
    replace.load_state_dict(keep.state_dict(), strict=False)
    with torch.no_grad():
        replace.unknown_word_token.normal_()
    batch = collate_moments(make_samples(ids=True))
    batch.masked_words = torch.zeros_like(batch.text_mask)
    a, b = keep(batch, training_outputs=True), replace(batch, training_outputs=True)
    assert not torch.allclose(a["mlm_logits"], b["mlm_logits"])
    batch.token_ids = torch.ones_like(batch.token_ids)                   # every word known: no difference
    torch.testing.assert_close(keep(batch, training_outputs=True)["mlm_logits"],
                               replace(batch, training_outputs=True)["mlm_logits"])
    assert rename_key("unknown_token", "mesm") == "unknown_word_token"


# ------------------------------------------------------------------ the official checkpoint importer
def _official_checkpoint(tmp_path, kind: str, **opt_changes):
    """A checkpoint in the official format written from one of our models (reference key names)."""
    torch.manual_seed(0)
    config = {"video_dim": 16, "text_dim": 12, "hidden_dim": 32, "n_heads": 4, "ffn_dim": 64}
    model = build_model(kind, config).eval()
    ours = model.state_dict()
    from test_convert_fine import reference_shapes
    if kind == "moment_detr":
        names = [f"transformer.encoder.layers.{i}.{p}" for i in range(2) for p in
                 ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                  "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                  "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")]
        names += [f"transformer.decoder.layers.{i}.{a}.{p}" for i in range(2) for a in ("self_attn", "multihead_attn")
                  for p in ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")]
        names += [f"transformer.decoder.layers.{i}.{p}" for i in range(2) for p in
                  ("linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias", "norm1.weight", "norm1.bias",
                   "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias")]
        names += ["transformer.decoder.norm.weight", "transformer.decoder.norm.bias", "query_embed.weight",
                  "saliency_proj.weight", "saliency_proj.bias", "class_embed.weight", "class_embed.bias"]
        names += [f"span_embed.layers.{j}.{p}" for j in range(3) for p in ("weight", "bias")]
        names += [f"input_{m}_proj.{j}.{p}.{q}" for m in ("vid", "txt") for j in range(2)
                  for p in ("LayerNorm", "net.1") for q in ("weight", "bias")]
    else:
        shapes, reference_only = reference_shapes(kind)
        names = [k for k in shapes if k not in reference_only]
    state = {k: ours[rename_key(k, kind)].clone() for k in names}
    if kind == "mesm":
        state["unknown_token"] = torch.randn(12)                         # official MESM always has it
    opt = dict(hidden_dim=32, nheads=4, dim_feedforward=64, enc_layers=2, dec_layers=2, num_queries=10,
               n_input_proj=2, v_feat_dim=18, t_feat_dim=12, dropout=0.1, input_dropout=0.5, aux_loss=True,
               pre_norm=False, span_loss_type="l1", position_embedding="sine", use_txt_pos=False,
               ctx_mode="video_tef", dset_name="hl", span_loss_coef=10, giou_loss_coef=1, label_loss_coef=4,
               lw_saliency=1.0, eos_coef=0.1, saliency_margin=0.2, set_cost_span=10, set_cost_giou=1,
               set_cost_class=4, device=torch.device("cpu"))
    if kind == "mesm":
        opt.update(use_tef=True, t2v_layers=2, rec_fw=True, rec_ss=True, num_recfw_layers=2, num_recss_layers=4,
                   share_MLP=True, max_ts_val=150.0, dataset_name="qvhighlights", loss_span_coef=10,
                   loss_giou_coef=1, loss_label_coef=4, loss_saliency_coef=1, use_triplet=True, rank_coef=12,
                   loss_recfw_coef=0.5, loss_recss_coef=0.1, recss_tau=0.5, iou_gamma=0.9)
    opt.update(opt_changes)
    path = tmp_path / f"{kind}.ckpt"
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 3, "opt": argparse.Namespace(**opt)},
               path)
    return path, model


@pytest.mark.parametrize("kind", ["moment_detr", "qd_detr", "mesm"])
def test_official_checkpoints_import_with_their_architecture_and_weights(tmp_path, kind):
    path, original = _official_checkpoint(tmp_path, kind)
    result = import_reference_checkpoint(path)
    assert result.kind == kind and result.epoch == 3 and not result.model.training
    batch = collate_moments(make_samples())
    with torch.no_grad():
        want, got = original(batch), result.model(batch)
    for key in ("pred_logits", "pred_spans", "saliency"):
        torch.testing.assert_close(got[key], want[key])
    assert result.loss_weights.label == 4 and result.loss_weights.saliency_kind == (
        "hinge" if kind == "moment_detr" else "qd")
    reference = import_reference_checkpoint(path, protocol="reference")
    assert reference.model.cfg.postprocess == "reference" and reference.loss_weights.saliency_labels == "graded"
    if kind == "qd_detr":
        assert reference.model.cfg.negative_partner == "roll"


def test_importer_refuses_what_it_cannot_reproduce(tmp_path):
    path, _ = _official_checkpoint(tmp_path, "qd_detr", pre_norm=True)
    with pytest.raises(ValueError, match="pre_norm"):
        import_reference_checkpoint(path)
    path, _ = _official_checkpoint(tmp_path, "qd_detr", set_cost_class=2)
    with pytest.raises(ValueError, match="set_cost_class"):
        import_reference_checkpoint(path)
    path, _ = _official_checkpoint(tmp_path, "qd_detr", hidden_dim=64)      # opt and weights disagree
    with pytest.raises(ValueError, match="shape"):
        import_reference_checkpoint(path)
    payload = torch.load(path, weights_only=False)
    del payload["opt"]
    torch.save(payload, tmp_path / "no_opt.ckpt")
    with pytest.raises(ValueError, match="opt"):
        import_reference_checkpoint(tmp_path / "no_opt.ckpt")
    with pytest.raises(FileNotFoundError):
        import_reference_checkpoint(tmp_path / "missing.ckpt")
