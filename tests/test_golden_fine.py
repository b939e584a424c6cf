"""Golden tests: ours against the official Moment-DETR / QD-DETR / MESM code.

`../shared/golden/<model>/` (documented in its README) holds an official-format checkpoint (small dims,
perturbed random weights), two input batches (`full`: no padding; `padded`: mixed lengths), the official
eval-mode outputs, the official criterion's loss terms and Hungarian matches on given targets, and the
official post-processing. Each bundle is loaded through the public import path
(`import_reference_checkpoint`), the inputs through `collate_moments`; the official draws (easy saliency
pairs, MESM's masked words and negative sentences) are passed in the batch. float32 throughout,
tolerances as the golden README states. These tests are the parity contract.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from c2f_lib.features.types import MomentSample
from c2f_lib.models.convert_fine import import_reference_checkpoint
from c2f_lib.models.detr_blocks import saliency_values, video_positions
from c2f_lib.models.fine_batch import MomentBatch, collate_moments
from c2f_lib.models.fine_losses import fine_loss, saliency_pairs
from c2f_lib.models.matcher import hungarian_match
from c2f_lib.models.span_utils import postprocess_windows

KINDS = ["moment_detr", "qd_detr", "mesm"]
ATOL = 1e-5
MESM_WORDS = list(range(100))   # the bundle's MLM classes: token id k < 100 is class k, any other id class 100
NEG_KEY = {"qd_detr": "saliency_scores_neg", "mesm": "neg_saliency_scores"}


def _load(path: Path):
    return json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=True)


def read_bundle(root: Path, kind: str) -> dict:
    folder = root / kind
    names = ["inputs.pt", "outputs.pt", "targets.pt", "losses.json", "postprocess.json"]
    return {"kind": kind, "folder": folder, **{n.split(".")[0]: _load(folder / n) for n in names}}


@pytest.fixture(scope="module", params=KINDS)
def bundle(request, shared_golden) -> dict:
    return read_bundle(shared_golden, request.param)


@pytest.fixture(scope="module")
def mesm_bundle(shared_golden) -> dict:
    return read_bundle(shared_golden, "mesm")


def imported(bundle: dict, protocol: str = "correct", **overrides):
    extra = {"word_vocab": MESM_WORDS} if bundle["kind"] == "mesm" else {}
    return import_reference_checkpoint(bundle["folder"] / "checkpoint.ckpt", protocol=protocol, **extra, **overrides)


def golden_batch(bundle: dict, split: str) -> MomentBatch:
    """The bundle's inputs as our samples (first 64 video dims: we append TEF ourselves), collated, with
    the official random draws of the training step put in the batch."""
    inputs, kind = bundle["inputs"], bundle["kind"]
    x = inputs[split]
    video, text = (x["video_feat"], x["words_id"]) if kind == "mesm" else (x["src_vid"], x["src_txt"])
    samples = []
    for i, m in enumerate(inputs["meta"][split]):
        saliency = torch.zeros(m["num_clips"])                      # the official target: the annotators' sum
        for clip, scores in zip(m["relevant_clip_ids"], m["saliency_scores"]):
            saliency[clip] = float(sum(scores))
        ids = torch.tensor(m["token_ids"]) if "token_ids" in m else None
        samples.append(MomentSample(qid=m["qid"], query=m["query"], vid=m["vid"], duration=m["duration"],
                                    clip_len=inputs["clip_len"], clip_feats=video[i, :m["num_clips"], :64],
                                    token_feats=text[i, :m["num_tokens"]], windows=m["relevant_windows"],
                                    saliency=saliency, token_ids=ids))
    batch = collate_moments(samples)
    if split == "full":
        targets = bundle["targets"]["full"]
        pos, neg = ((targets["pos_idx"], targets["neg_idx"]) if kind == "mesm"
                    else (targets["saliency_pos_labels"], targets["saliency_neg_labels"]))
        batch.pos_clips, batch.neg_clips = pos, neg
    if kind == "mesm":
        batch.partner = inputs["neg_index"]
        batch.masked_words = torch.zeros(batch.text_mask.shape, dtype=torch.bool)
        for i, words in enumerate(inputs["mlm_masked_words"][split]):
            batch.masked_words[i, words] = True
    return batch


def assert_close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = ATOL) -> float:
    err = (got.float() - want.float()).abs().max().item()
    assert err <= atol, f"{what}: max |ours - official| = {err:.3g} > {atol}"
    return err


@pytest.mark.parametrize("split", ["full", "padded"])
def test_forward_matches_the_official_outputs(bundle, split):
    kind = bundle["kind"]
    model = imported(bundle).model
    batch = golden_batch(bundle, split)
    want = bundle["outputs"][split]
    with torch.no_grad():
        out = model(batch, training_outputs=kind != "moment_detr")   # the references compute negatives in eval
    valid = batch.video_mask
    assert_close(out["pred_logits"], want["pred_logits"], "pred_logits")
    assert_close(out["pred_spans"], want["pred_spans"], "pred_spans")
    assert_close(out["saliency"][valid], want["saliency_scores"][valid], "saliency on valid clips")
    for ours, theirs in zip(out["aux_outputs"], want["aux_outputs"], strict=True):
        assert_close(ours["pred_logits"], theirs["pred_logits"], "aux pred_logits")
        assert_close(ours["pred_spans"], theirs["pred_spans"], "aux pred_spans")
    if kind in NEG_KEY:
        assert_close(out["saliency_neg"][valid], want[NEG_KEY[kind]][valid], "negative-pair saliency")


@pytest.mark.parametrize("split", ["full", "padded"])
def test_mesm_intermediate_features_match(mesm_bundle, split):
    """FW-MESM (frames attended to the words) and SS-MESM (the reconstructed sentence token) outputs."""
    bundle = mesm_bundle
    model, batch, want = imported(bundle).model, golden_batch(bundle, split), bundle["outputs"][split]
    with torch.no_grad():
        video = model.project_video(batch)                                              # [B, L, d]
        words = model.input_txt_proj(batch.text)                                        # [B, Lq, d]
        text, text_mask = model.text_tokens(batch, video, words, {}, extras=False)      # [B, 1 + Lq, d]
        enhanced = model.enhance_video(video, video_positions(batch.video_mask, model.cfg.hidden_dim),
                                       words, batch.text_mask)
    valid, words_mask = batch.video_mask, want["expanded_words_mask"]
    assert torch.equal(text_mask, words_mask)
    assert_close(video[valid], want["projed_video_feat"][valid], "projected video")
    assert_close(words[batch.text_mask], want["projed_words_feat"][batch.text_mask], "projected words")
    assert_close(text[:, 0], want["recon_feat"], "reconstructed sentence token")
    assert_close(text[words_mask], want["expanded_words_feat"][words_mask], "expanded words")
    assert_close(enhanced[valid], want["enhanced_video_feat"][valid], "FW-enhanced video")


def test_mesm_masked_word_logits_match(mesm_bundle):
    model, batch = imported(mesm_bundle).model, golden_batch(mesm_bundle, "full")
    want = mesm_bundle["outputs"]["full_mlm"]
    with torch.no_grad():
        out = model(batch, training_outputs=True)
    assert torch.equal(batch.text_mask, want["words_mask"])
    assert_close(out["mlm_logits"], want["recfw_words_logit"][want["words_mask"]], "masked-word logits")


def test_hard_saliency_pairs_are_the_official_ones(bundle):
    """The deterministic half of the hinge pairs (column 0: best vs worst GT clip) is drawn as officially;
    the easy half (python `random`) is what the batch carries."""
    batch = golden_batch(bundle, "full")
    inside = (batch.saliency > 0) | batch.window_clip_mask()
    pos, neg, valid = saliency_pairs(batch.saliency, inside, batch.video_mask, "graded")
    assert valid.all()
    assert torch.equal(pos[:, 0], batch.pos_clips[:, 0]) and torch.equal(neg[:, 0], batch.neg_clips[:, 0])


def test_matcher_picks_the_official_matches(bundle):
    out, losses, kind = bundle["outputs"]["full"], bundle["losses"], bundle["kind"]
    targets = bundle["targets"]["full"]
    gt = [t["spans"] for t in (targets["norm_span"] if kind == "mesm" else targets["span_labels"])]
    w = imported(bundle).loss_weights
    for layer, name in [(out, "last")] + [(a, f"aux_{i}") for i, a in enumerate(out["aux_outputs"])]:
        matches = hungarian_match(layer["pred_logits"], layer["pred_spans"], gt, w.span, w.giou, w.label)
        assert [[q.tolist(), t.tolist()] for q, t in matches] == losses["matcher_indices"][name], name


@pytest.mark.parametrize("protocol", ["correct", "reference"])
def test_loss_terms_match_the_official_criterion(bundle, protocol):
    """Our forward + our loss with the checkpoint's own weights, against the official criterion's weighted
    terms (on this bundle no deviation of ours triggers, so both protocols must agree with it)."""
    kind = bundle["kind"]
    # MESM's [UNK] replacement is off in the bundle (unknown_mask all False), so it is off here too.
    overrides = {"mlm_unknown": "keep"} if kind == "mesm" else {}
    result = imported(bundle, protocol, **overrides)
    batch = golden_batch(bundle, "full")
    with torch.no_grad():
        terms = fine_loss(result.model(batch, training_outputs=True), batch, result.loss_weights)
    official = bundle["losses"]["weighted"]
    assert {f"loss_{k}" for k in terms if k != "total"} == set(official)
    for name, value in official.items():
        ours = terms[name.removeprefix("loss_")]
        assert_close(ours, torch.tensor(value), name, ATOL * max(1.0, abs(value)))
    total = bundle["losses"]["total"]
    assert_close(terms["total"], torch.tensor(total), "total", ATOL * max(1.0, abs(total)))


@pytest.mark.parametrize("protocol", ["correct", "reference"])
def test_post_processing_gives_the_official_windows(bundle, protocol):
    """Ranked by the unrounded score, then rounded, clamped, snapped: every query's windows are equal,
    including the queries whose 4-decimal scores tie. No window here is clamped differently or widened,
    so our protocol must agree too."""
    post, out = bundle["postprocess"], bundle["outputs"]["full"]
    probs = out["pred_logits"].softmax(-1)[..., 0]                                      # [B, Q]
    for i, result in enumerate(post["results"]):
        extent = post["num_clips"][i] * post["clip_len"]
        windows = postprocess_windows(out["pred_spans"][i], probs[i], extent, post["clip_len"],
                                      duration=post["durations"][i], protocol=protocol)
        assert windows == result["pred_relevant_windows"], f"query {result['qid']}"
        assert [w[2] for w in sorted(windows, key=lambda r: -r[2])] == [w[2] for w in windows]
    saliency = out["saliency_scores"][0, : post["num_clips"][0]]
    assert saliency_values(saliency, "reference") == post["results"][0]["pred_saliency_scores"]
    assert post["queries_with_equal_rounded_scores"]                 # the bundle exercises the tie order


def test_imported_architecture_comes_from_opt(bundle):
    result = imported(bundle)
    opt = json.loads((bundle["folder"] / "opt.json").read_text())
    cfg = result.model.cfg
    assert result.kind == bundle["kind"] and result.epoch == 0
    assert (cfg.hidden_dim, cfg.n_heads, cfg.ffn_dim) == (opt["hidden_dim"], opt["nheads"], opt["dim_feedforward"])
    assert cfg.video_dim + 2 == opt["v_feat_dim"] and cfg.text_dim == opt["t_feat_dim"]
    assert cfg.ffn_activation == ("relu" if bundle["kind"] == "moment_detr" else "prelu")
    assert all(k.startswith(("txt_position_embed.", "unknown_token", "ss_reconstructor.output_sent_proj."))
               for k in result.unmapped)
