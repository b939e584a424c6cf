"""Hungarian matching of predicted spans to GT windows (DETR; spec fine.md §2.1).

cost(i, j) = w_span * |s_i - g_j|_1 (on c, w) - w_giou * GIoU(s_i, g_j) - w_class * p_i(foreground)
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch.nn.utils.rnn import pad_sequence

from c2f_lib.models.span_utils import cw_to_se, pairwise_iou_giou


@torch.no_grad()
def hungarian_match(pred_logits: torch.Tensor, pred_spans: torch.Tensor, gt_spans: list[torch.Tensor],
                    cost_span: float = 10.0, cost_giou: float = 1.0, cost_class: float = 4.0
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """pred_logits [B, Q, 2], pred_spans [B, Q, 2] (c, w), gt_spans B x [n_b, 2] ->
    per sample (query indices, GT indices), each [min(Q, n_b)] long.

    All cost matrices are built in one batched op over zero-padded GT (the padded columns are cut
    off before the assignment) and moved to the CPU once; only scipy's solver runs per sample.
    """
    prob_fg = pred_logits.float().softmax(-1)[..., 0]                             # [B, Q]
    spans = pred_spans.float()
    gt = pad_sequence([g.float() for g in gt_spans], batch_first=True).to(spans.device)   # [B, N, 2]
    cost = (cost_span * (spans[:, :, None] - gt[:, None]).abs().sum(-1)           # L1 on (c, w)
            - cost_giou * pairwise_iou_giou(cw_to_se(spans), cw_to_se(gt))[1]
            - cost_class * prob_fg[..., None])                                     # [B, Q, N]
    cost = cost.cpu().numpy()
    matches = []
    for b, g in enumerate(gt_spans):
        rows, cols = linear_sum_assignment(cost[b, :, :len(g)])
        matches.append((torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)))
    return matches
