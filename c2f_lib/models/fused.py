"""The DETR-family layers' primitives with fewer passes over memory: attention, dropout, layer stacks.

`Attention` computes what `nn.MultiheadAttention(batch_first=True)` computes and keeps its parameter names
(`in_proj_weight`, `in_proj_bias`, `out_proj`), so checkpoints load either way. It differs in how:
projections that read the same tokens run as one matrix product (queries and keys of self-attention both
read x + pos; keys and values of a cross-attention without key positions both read the other modality),
heads stay batch-first views, and `F.scaled_dot_product_attention` gets a boolean key mask (the fused CPU
kernel in eval mode, the math kernel when attention dropout is on).

`dropout_add(x, y)` is x + dropout(y) in one pass over the data and `dropout_linear(x, linear)` is
linear(dropout(x)) with dropout's 1/(1 - p) folded into the weight; `FusedSequential` runs an nn.Sequential
with them (and `single_slope_prelu` for a one-slope PReLU).
All of them consume the random stream exactly as `nn.MultiheadAttention` and `nn.Dropout` do (one
Bernoulli draw of the same shape, in the same order), so a training step draws the masks the modules they
replace would draw.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _keep_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """The 0/1 keep mask nn.Dropout draws for x (the same Bernoulli call, so the same mask)."""
    return torch.empty_like(x).bernoulli_(1 - p)


class _SingleSlopePReLU(torch.autograd.Function):
    """F.prelu with one slope, whose backward is two fast passes instead of PyTorch's CPU kernel (which
    writes a full-size buffer for the slope's gradient and then reduces it: ~3.5x slower). The input's
    gradient is bit-identical; the slope's is the same sum taken in another order (~1e-6 relative)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.prelu(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:                                                      # g if x > 0 else a g
            grad_x = torch.ops.aten.leaky_relu_backward(grad, x, float(weight), False)
        if ctx.needs_input_grad[1]:                                                      # sum of g x over x <= 0
            grad_w = torch.dot(grad.reshape(-1), x.reshape(-1).clamp(max=0)).reshape(1).to(weight.dtype)
        return grad_x, grad_w


def single_slope_prelu(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """PReLU with one learned slope `weight` [1] on x of any shape (a flat view: PyTorch's CPU kernel is
    ~30x slower on [B, L, F])."""
    return _SingleSlopePReLU.apply(x.reshape(-1), weight).view_as(x)


def dropout_add(x: torch.Tensor, y: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """x + dropout(y): equal to `x + F.dropout(y, p, training)`, bit for bit, in one pass."""
    if not training or p == 0:
        return x + y
    return torch.addcmul(x, y, _keep_mask(y, p), value=1 / (1 - p))


def dropout_linear(x: torch.Tensor, linear: nn.Linear, p: float, training: bool) -> torch.Tensor:
    """linear(dropout(x)) with the 1/(1 - p) scale applied to the weight, not to every element of x."""
    if not training or p == 0:
        return linear(x)
    return F.linear(x * _keep_mask(x, p), linear.weight * (1 / (1 - p)), linear.bias)


class Attention(nn.Module):
    """Batch-first multi-head attention with nn.MultiheadAttention's parameters and initialisation."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        if d % heads:
            raise ValueError(f"hidden size {d} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))      # [q; k; v] rows
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d))
        self.out_proj = nn.Linear(d, d)
        nn.init.xavier_uniform_(self.in_proj_weight)                   # as nn.MultiheadAttention, in its order
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def _project(self, x: torch.Tensor, rows: slice) -> torch.Tensor:
        return F.linear(x, self.in_proj_weight[rows], self.in_proj_bias[rows])

    def self_attend(self, x: torch.Tensor, pos: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        """Queries and keys x + pos, values x: x, pos [B, L, d], key_mask [B, L] (True = valid) -> [B, L, d]."""
        d = x.shape[-1]
        q, k = self._project(x if pos is None else x + pos, slice(0, 2 * d)).chunk(2, -1)
        return self._attend(q, k, self._project(x, slice(2 * d, 3 * d)), key_mask)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Key and value projections of keys without positions [B, Lk, d] -> [B, Lk, 2d], for `cross_attend`'s
        `kv` (computed once, gathered by every pass that attends to the same tokens)."""
        d = keys.shape[-1]
        return self._project(keys, slice(d, 3 * d))

    def project_queries(self, queries: torch.Tensor) -> torch.Tensor:
        """Query projections [B, Lq, d] -> [B, Lq, d], for `cross_attend`'s `q`."""
        return self._project(queries, slice(0, queries.shape[-1]))

    def cross_attend(self, queries: torch.Tensor | None, keys: torch.Tensor | None, key_mask: torch.Tensor | None,
                     key_pos: torch.Tensor | None = None, q: torch.Tensor | None = None,
                     kv: torch.Tensor | None = None) -> torch.Tensor:
        """queries [B, Lq, d] (positions included) attend to keys + key_pos, values keys [B, Lk, d] -> [B, Lq, d].

        `q` / `kv` are their projections when computed before (`project_queries` / `project_keys`). One query
        per sample attends on the key side (`_attend_one_query`): no projection of the keys at all.
        """
        d = self.in_proj_weight.shape[1]
        q = self._project(queries, slice(0, d)) if q is None else q
        if kv is None and key_pos is None and q.shape[1] == 1:
            return self._attend_one_query(q, keys, key_mask)
        if kv is not None:
            k, v = kv.chunk(2, -1)
        elif key_pos is None:
            k, v = self._project(keys, slice(d, 3 * d)).chunk(2, -1)
        else:
            k, v = self._project(keys + key_pos, slice(d, 2 * d)), self._project(keys, slice(2 * d, 3 * d))
        return self._attend(q, k, v, key_mask)

    def _attend_one_query(self, q: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """One query per sample, q [B, 1, d] projected, raw keys [B, Lk, d] -> [B, 1, d].

        With q_h the query of head h: q_h . (W_kh x + b_kh) = (W_kh^T q_h) . x + q_h . b_kh, and the weighted
        values sum_j a_j (W_vh x_j + b_vh) = W_vh (sum_j a_j x_j) + b_vh sum_j a_j. So the keys are never
        projected (B Lk d^2 multiply-adds each for keys and values, against B h Lk d here). Attention dropout
        draws the mask SDPA would draw, [B, h, 1, Lk].
        """
        B, Lk, d = keys.shape
        h = self.heads
        w_k, w_v = (self.in_proj_weight[r].view(h, d // h, d) for r in (slice(d, 2 * d), slice(2 * d, 3 * d)))
        b_k, b_v = (self.in_proj_bias[r].view(h, d // h) for r in (slice(d, 2 * d), slice(2 * d, 3 * d)))
        q_h = q.view(B, h, d // h) * (d // h) ** -0.5                                 # scaled, [B, h, d/h]
        logits = torch.einsum("bhd,bld->bhl", torch.einsum("bhe,hed->bhd", q_h, w_k), keys) \
            + (q_h * b_k).sum(-1, keepdim=True)                                        # [B, h, Lk]
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None], float("-inf"))
        weights = logits.softmax(-1)
        if self.training and self.dropout > 0:
            weights = weights * _keep_mask(weights[:, :, None], self.dropout)[:, :, 0] / (1 - self.dropout)
        mixed = torch.einsum("bhl,bld->bhd", weights, keys)                           # [B, h, d]
        out = torch.einsum("bhd,hed->bhe", mixed, w_v) + b_v * weights.sum(-1, keepdim=True)   # [B, h, d/h]
        return self.out_proj(out.reshape(B, 1, d))

    def _attend(self, q, k, v, key_mask):                                 # [B, L, d] each
        split = lambda t: t.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731  [B, h, L, d/h]
        mask = None if key_mask is None or bool(key_mask.all()) else key_mask[:, None, None, :]   # [B, 1, 1, Lk]
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)   # [B, h, Lq, d/h]
        # Laid out [Lq, B, d] in memory, as nn.MultiheadAttention(batch_first=True) returns it: a dropout
        # of the result then draws its mask in the same element order.
        return self.out_proj(out.permute(2, 0, 1, 3).flatten(-2)).transpose(0, 1)


class FusedSequential(nn.Sequential):
    """nn.Sequential (same modules, same state-dict names) whose Dropout -> Linear pairs run as
    `dropout_linear` and whose single-slope PReLU runs on a flat view."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        modules = list(self)
        i = 0
        while i < len(modules):
            m = modules[i]
            if isinstance(m, nn.Dropout) and i + 1 < len(modules) and isinstance(modules[i + 1], nn.Linear):
                x = dropout_linear(x, modules[i + 1], m.p, self.training)
                i += 2
                continue
            if isinstance(m, nn.PReLU) and m.num_parameters == 1:
                x = single_slope_prelu(x, m.weight)
            else:
                x = m(x)
            i += 1
        return x
