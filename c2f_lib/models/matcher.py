"""Hungarian matching of predicted spans to GT windows (DETR; spec fine.md §2.1).

cost(i, j) = w_span * |s_i - g_j|_1 (on c, w) - w_giou * GIoU(s_i, g_j) - w_class * p_i(foreground)
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from c2f_lib.models.span_utils import cw_to_se, pairwise_iou_giou


@torch.no_grad()
def hungarian_match(pred_logits: torch.Tensor, pred_spans: torch.Tensor, gt_spans: list[torch.Tensor],
                    cost_span: float = 10.0, cost_giou: float = 1.0, cost_class: float = 4.0
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """pred_logits [B, Q, 2], pred_spans [B, Q, 2] (c, w), gt_spans B x [n_b, 2] ->
    per sample (query indices, GT indices), each [min(Q, n_b)] long."""
    prob_fg = pred_logits.float().softmax(-1)[..., 0]                             # [B, Q]
    matches = []
    for b, gt in enumerate(gt_spans):
        spans = pred_spans[b].float()
        cost = (cost_span * torch.cdist(spans, gt.float(), p=1)
                - cost_giou * pairwise_iou_giou(cw_to_se(spans), cw_to_se(gt.float()))[1]
                - cost_class * prob_fg[b][:, None])                                # [Q, n_b]
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return matches
