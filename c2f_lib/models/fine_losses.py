"""Training objective of the DETR-family grounding models (spec fine.md §2.2).

`fine_loss(out, batch, weights)` returns a dict of weighted terms plus "total":
span L1 + GIoU + foreground CE on Hungarian-matched queries (and on every auxiliary decoder layer),
the saliency loss (QD-DETR: negative pair + rank-contrastive [+ hinge]; Moment-DETR: hinge), and
MESM's masked-word reconstruction and segment-sentence contrastive terms when present.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from c2f_lib.models.fine_batch import MomentBatch, group_key
from c2f_lib.models.fine_presets import FineLossWeights
from c2f_lib.models.matcher import hungarian_match
from c2f_lib.models.span_utils import cw_to_se, paired_giou, pairwise_iou_giou


def set_losses(logits, spans, gt_spans, matches, w: FineLossWeights) -> dict[str, torch.Tensor]:
    """Matched-span L1, 1 - GIoU and 2-way CE (index 0 = foreground) for one decoder layer."""
    batch_idx = torch.cat([torch.full_like(q, b) for b, (q, _) in enumerate(matches)]).to(logits.device)   # [M]
    query_idx = torch.cat([q for q, _ in matches]).to(logits.device)                                         # [M]
    pred = spans[batch_idx, query_idx]                                                                       # [M, 2]
    gt = torch.cat([g[t] for g, (_, t) in zip(gt_spans, matches)]).to(pred.dtype)                           # [M, 2]
    giou = paired_giou(cw_to_se(pred), cw_to_se(gt))                                                        # [M]
    target = torch.ones(logits.shape[:2], dtype=torch.long, device=logits.device)   # 1 = background
    target[batch_idx, query_idx] = 0
    class_weight = torch.tensor([1.0, w.eos_coef], device=logits.device)
    # reduction='none' then mean over all elements, as in the references (not PyTorch's weighted mean).
    ce = F.cross_entropy(logits.float().transpose(1, 2), target, weight=class_weight, reduction="none").mean()
    return {"span": w.span * F.l1_loss(pred.float(), gt.float()),
            "giou": w.giou * (1 - giou.float()).mean(),
            "label": w.label * ce}


def decoder_set_losses(out: dict, gt_spans, w: FineLossWeights) -> dict[str, torch.Tensor]:
    """`set_losses` of the last decoder layer (plain keys) and, with `w.aux`, of each earlier layer
    (keys suffixed _i). Every layer is matched independently, but in one `hungarian_match` call."""
    layers = [out] + (out.get("aux_outputs", []) if w.aux else [])
    B = len(gt_spans)
    logits = torch.cat([o["pred_logits"] for o in layers])                        # [n_layers * B, Q, 2]
    spans = torch.cat([o["pred_spans"] for o in layers])
    matches = hungarian_match(logits, spans, list(gt_spans) * len(layers), w.span, w.giou, w.label)
    terms = {}
    for i, o in enumerate(layers):
        layer = set_losses(o["pred_logits"], o["pred_spans"], gt_spans, matches[i * B:(i + 1) * B], w)
        terms.update(layer if i == 0 else {f"{k}_{i - 1}": v for k, v in layer.items()})
    return terms


def denoising_losses(dn: dict, w: FineLossWeights) -> dict[str, torch.Tensor]:
    """Losses of the denoising queries (our addition, c2f_lib.models.denoising), per decoder layer:
    L1 + GIoU of each positive to its own GT span, and CE to foreground (positives) or background
    (negatives), with the matching losses' weights."""
    valid, positive = dn["valid"], dn["positive"] & dn["valid"]                    # [B, G*K]
    gt = dn["targets"][positive]                                                    # [M, 2]
    labels = (~positive[valid]).long()                                              # 0 = foreground
    n = len(dn["pred_logits"])
    order = [n - 1] + (list(range(n - 1)) if w.aux else [])                        # last layer, then aux
    terms = {}
    for i, j in enumerate(order):
        pred = dn["pred_spans"][j][positive].float()                                # [M, 2]
        giou = paired_giou(cw_to_se(pred), cw_to_se(gt))
        layer = {"dn_span": w.span * F.l1_loss(pred, gt), "dn_giou": w.giou * (1 - giou).mean(),
                 "dn_label": w.label * F.cross_entropy(dn["pred_logits"][j][valid].float(), labels)}
        terms.update(layer if i == 0 else {f"{k}_{i - 1}": v for k, v in layer.items()})
    return terms


def is_binary(labels: torch.Tensor, kind: str = "auto") -> bool:
    """True for GT-membership targets (Charades/TACoS), False for graded QVHighlights scores; "auto":
    binary when every label is 0 or 1 (FineLossWeights.saliency_labels)."""
    if kind != "auto":
        return kind == "binary"
    return bool(((labels == 0) | (labels == 1)).all())


def _random_member(allowed: torch.Tensor, k: int) -> torch.Tensor:
    """[B, L] bool -> [B, k] uniformly drawn distinct allowed indices (repeats only when fewer than k)."""
    draw = torch.where(allowed, torch.rand(allowed.shape, device=allowed.device), -1.0)
    value, index = draw.topk(k, dim=1)
    return torch.where(value >= 0, index, index[:, :1])


def saliency_pairs(labels, inside, mask, kind: str = "auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positive, negative) clip indices [B, 2] each and a [B] flag of queries that have pairs.

    Graded labels (QD-DETR / Moment-DETR on QVHighlights): pair 1 is the hard pair, the highest- vs
    the lowest-scored GT clip (ties: latest vs earliest clip, as the reference's ascending argsort);
    pair 2 is the easy pair, a random GT clip vs a random clip outside the GT (a copy of the hard
    pair when no clip lies outside). Binary labels (Charades/TACoS, no graded scores): 2 random GT
    clips vs 2 random clips outside, as MESM/lighthouse sample them. `inside` marks the GT clips;
    `kind` is FineLossWeights.saliency_labels.
    """
    inside, outside = inside & mask, ~inside & mask
    if is_binary(labels, kind):
        return _random_member(inside, 2), _random_member(outside, 2), inside.any(1) & outside.any(1)
    L = labels.shape[1]
    hard_pos = L - 1 - torch.where(inside, labels, -torch.inf).flip(1).argmax(1)   # last maximum
    hard_neg = torch.where(inside, labels, torch.inf).argmin(1)                      # first minimum
    has_outside = outside.any(1)
    easy_pos = torch.where(has_outside, _random_member(inside, 1)[:, 0], hard_pos)
    easy_neg = torch.where(has_outside, _random_member(outside, 1)[:, 0], hard_neg)
    return (torch.stack([hard_pos, easy_pos], 1), torch.stack([hard_neg, easy_neg], 1), inside.any(1))


def hinge_saliency(scores, labels, inside, mask, margin: float, kind: str = "auto",
                   pairs: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over the `saliency_pairs` (or the given (positive, negative) clips [B, P] each) of
    max(0, margin + s_neg - s_pos), times 2 (the references' scale)."""
    if pairs is None:
        pos, neg, valid = saliency_pairs(labels, inside, mask, kind)
    else:
        (pos, neg), valid = pairs, torch.ones(len(scores), dtype=torch.bool, device=scores.device)
    if not valid.any():
        return scores.sum() * 0
    s = scores[valid]
    gap = margin + s.gather(1, neg[valid]) - s.gather(1, pos[valid])                # [B', 2]
    return gap.clamp(min=0).mean() * 2


def rank_contrastive(scores, labels, mask, tau: float, coef: float, kind: str = "auto") -> torch.Tensor:
    """QD-DETR rank-contrastive loss over saliency levels 1..11.

    Labels are QVHighlights 0-12 sums, a binary GT mask (Charades/TACoS: only level 1 has positives),
    or the store's [0, 1] annotator mean, which is mapped back to the 0-12 scale.
    """
    if labels.max() <= 1 and not is_binary(labels, kind):
        labels = (labels * 12).round()
    logits = torch.where(mask, scores / tau, torch.full_like(scores, -1e3))
    log_prob = logits.log_softmax(1)
    total = scores.new_zeros(())
    for level in range(1, 12):
        pos = (labels >= level) & mask
        if not pos.any():
            continue
        has_pos = pos.any(1).float()
        mean_pos = (log_prob * pos).sum(1) / pos.sum(1).clamp(min=1)
        total = total + (-mean_pos * has_pos).mean()
    return total / coef


def saliency_loss(out: dict, batch: MomentBatch, w: FineLossWeights) -> torch.Tensor:
    scores, labels, mask = out["saliency"].float(), batch.saliency, batch.video_mask
    total = scores.new_zeros(())
    if w.use_hinge or w.saliency_kind == "hinge":
        inside = (labels > 0) | batch.window_clip_mask()      # GT clips, even those all annotators scored 0
        given = None if batch.pos_clips is None else (batch.pos_clips, batch.neg_clips)
        total = hinge_saliency(scores, labels, inside, mask, w.margin, w.saliency_labels, given)
    if w.saliency_kind == "hinge":
        return w.saliency * total
    if "saliency_neg" in out:
        neg = out["saliency_neg"].float()
        total = total + (-F.logsigmoid(-neg) * mask).sum(1).mean()          # -log(1 - σ(s_neg))
        scores = torch.cat([scores, neg], 1)
        labels = torch.cat([labels, torch.zeros_like(labels)], 1)
        mask = torch.cat([mask, mask], 1)
    return w.saliency * (total + rank_contrastive(scores, labels, mask, w.rank_tau, w.rank_coef, w.saliency_labels))


def masked_word_loss(out: dict, batch: MomentBatch, w: FineLossWeights) -> torch.Tensor:
    """MESM's CE over its word classes when the model classified the words, else the feature fallback."""
    if "mlm_logits" in out:
        targets = out["mlm_word_class"][batch.token_ids[batch.text_mask]]            # [N] ids -> classes
        return masked_word_ce(out["mlm_logits"], targets, out["mlm_mask"], batch, w)
    masked = out["mlm_mask"]
    if not masked.any():
        return out["mlm_pred"].sum() * 0
    # No token ids: 1 - cosine between reconstructed and original features of the masked words.
    return (1 - F.cosine_similarity(out["mlm_pred"][masked].float(), batch.text[masked].float(), dim=-1)).mean()


def masked_word_ce(logits, targets, masked, batch: MomentBatch, w: FineLossWeights) -> torch.Tensor:
    """Label-smoothed CE of logits [N, C] (one row per valid token) against class indices [N]; averaged
    per sentence over its valid tokens (MESM's `cal_nll_loss`) or its masked ones (`rec_fw_tokens`),
    then over sentences."""
    valid = batch.text_mask                                                          # [B, Lq]
    loss = F.cross_entropy(logits.float(), targets, reduction="none",
                           label_smoothing=w.rec_fw_smoothing)                       # [N]
    counted = (masked[valid] if w.rec_fw_tokens == "masked" else torch.ones_like(loss, dtype=torch.bool)).float()
    sentence = valid.nonzero()[:, 0]                                                 # row -> sentence
    total = loss.new_zeros(len(valid)).index_add(0, sentence, loss * counted)
    count = loss.new_zeros(len(valid)).index_add(0, sentence, counted)
    has = count > 0
    return (total[has] / count[has]).mean() if has.any() else logits.sum() * 0


def segment_sentence_loss(out: dict, batch: MomentBatch, w: FineLossWeights) -> torch.Tensor:
    """Supervised InfoNCE: a GT segment is positive with sentences of the same video (or YouTube-id group,
    `w.ss_positives`) whose GT overlaps (GIoU >= gamma, itself included); multi-window GT is collapsed
    to [min start, max end]."""
    seg = F.normalize(out["ss_segment"].float(), dim=-1)
    sen = F.normalize(out["ss_sentence"].float(), dim=-1)
    log_prob = (seg @ sen.T / w.ss_tau).log_softmax(1)                              # [N, N]
    hull = torch.stack([torch.stack([cw_to_se(s)[:, 0].min(), cw_to_se(s)[:, 1].max()]) for s in batch.spans])
    keys = batch.vids if w.ss_positives == "video" else [group_key(v) for v in batch.vids]
    same_video = torch.tensor([[a == b for b in keys] for a in keys], device=seg.device)
    pos = same_video & (pairwise_iou_giou(hull, hull)[1].to(seg.device) >= w.ss_iou_gamma)
    pos |= torch.eye(len(pos), dtype=torch.bool, device=seg.device)
    return (-(log_prob * pos).sum(1) / pos.sum(1)).mean()


def fine_loss(out: dict, batch: MomentBatch, w: FineLossWeights) -> dict[str, torch.Tensor]:
    terms = decoder_set_losses(out, batch.spans, w)
    if "dn" in out:
        terms.update(denoising_losses(out["dn"], w))
    if w.saliency > 0:
        terms["saliency"] = saliency_loss(out, batch, w)
    if w.rec_fw > 0 and "mlm_mask" in out:
        terms["rec_fw"] = w.rec_fw * masked_word_loss(out, batch, w)
    if w.rec_ss > 0 and "ss_segment" in out:
        terms["rec_ss"] = w.rec_ss * segment_sentence_loss(out, batch, w)
    terms["total"] = sum(terms.values())
    return terms
