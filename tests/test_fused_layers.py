"""The fused primitives compute what the PyTorch modules they replace compute, and draw the same dropout masks
(so a seeded training step is the same step): nn.MultiheadAttention, x + nn.Dropout(y), nn.Sequential."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from c2f_lib.models.fused import Attention, FusedSequential, dropout_add, dropout_linear, single_slope_prelu

D, HEADS = 32, 4


def _pair(dropout=0.1):
    torch.manual_seed(0)
    ours = Attention(D, HEADS, dropout)
    with torch.no_grad():                                            # biases start at 0: make them count
        ours.in_proj_bias.normal_()
        ours.out_proj.bias.normal_()
    theirs = nn.MultiheadAttention(D, HEADS, dropout=dropout, batch_first=True)
    theirs.load_state_dict(ours.state_dict())                        # the same parameter names
    return ours, theirs


def _inputs():
    g = torch.Generator().manual_seed(1)
    x, pos = torch.randn(3, 9, D, generator=g), torch.randn(3, 9, D, generator=g)
    other = torch.randn(3, 5, D, generator=g)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 6:] = False
    other_mask = torch.ones(3, 5, dtype=torch.bool)
    other_mask[2, 2:] = False
    return x, pos, mask, other, other_mask


@pytest.mark.parametrize("training", [False, True])
def test_attention_equals_multihead_attention_with_the_same_random_draws(training):
    ours, theirs = _pair()
    ours.train(training), theirs.train(training)
    x, pos, mask, other, other_mask = _inputs()
    drop = nn.Dropout(0.1).train(training)
    for run_ours, run_theirs in [
        (lambda: ours.self_attend(x, pos, mask), lambda: theirs(x + pos, x + pos, x, key_padding_mask=~mask)),
        (lambda: ours.cross_attend(x + pos, other, other_mask), lambda: theirs(x + pos, other, other,
                                                                              key_padding_mask=~other_mask)),
        (lambda: ours.cross_attend(x, other, other_mask, key_pos=other * 2),
         lambda: theirs(x, other * 3, other, key_padding_mask=~other_mask))]:
        torch.manual_seed(7)
        a = x + drop(run_ours())                      # a dropout after the attention draws the same mask too
        torch.manual_seed(7)
        b = x + drop(run_theirs()[0])
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_precomputed_projections_and_the_single_query_path():
    ours, _ = _pair()
    x, pos, mask, other, other_mask = _inputs()
    for training in (False, True):
        ours.train(training)
        torch.manual_seed(3)
        plain = ours.cross_attend(x + pos, other, other_mask)
        torch.manual_seed(3)
        given = ours.cross_attend(None, None, other_mask, q=ours.project_queries(x + pos),
                                  kv=ours.project_keys(other))
        torch.testing.assert_close(plain, given, rtol=0, atol=1e-6)
        one = x[:, :1] + pos[:, :1]                                   # one query per sample: key-side path
        torch.manual_seed(3)
        fast = ours.cross_attend(one, other, other_mask)
        torch.manual_seed(3)
        k, v = ours.project_keys(other).chunk(2, -1)
        slow = ours._attend(ours.project_queries(one), k, v, other_mask)
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-5)


def test_dropout_add_and_dropout_linear_equal_dropout():
    x, y = torch.randn(4, 6, 8), torch.randn(4, 6, 8)
    linear = nn.Linear(8, 5)
    torch.manual_seed(2)
    a = dropout_add(x, y, 0.25, True)
    torch.manual_seed(2)
    assert torch.equal(a, x + F.dropout(y, 0.25, True))              # bit for bit
    torch.manual_seed(2)
    a = dropout_linear(y, linear, 0.25, True)
    torch.manual_seed(2)
    torch.testing.assert_close(a, linear(F.dropout(y, 0.25, True)))
    assert torch.equal(dropout_add(x, y, 0.25, False), x + y)
    assert torch.equal(dropout_linear(y, linear, 0.25, False), linear(y))


def test_fused_sequential_equals_sequential():
    torch.manual_seed(0)
    modules = [nn.LayerNorm(8), nn.Dropout(0.3), nn.Linear(8, 16), nn.PReLU(), nn.Dropout(0.1), nn.Linear(16, 4)]
    fused, plain = FusedSequential(*modules), nn.Sequential(*modules)
    assert fused.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 5, 8, requires_grad=True)
    for training in (False, True):
        fused.train(training), plain.train(training)
        torch.manual_seed(4)
        a = fused(x)
        torch.manual_seed(4)
        b = plain(x)
        torch.testing.assert_close(a, b)
        ga = torch.autograd.grad(a.sum(), [x, modules[3].weight])
        gb = torch.autograd.grad(b.sum(), [x, modules[3].weight])
        for u, v in zip(ga, gb):
            torch.testing.assert_close(u, v)


def test_single_slope_prelu_equals_prelu_with_its_gradients():
    """The input's gradient bit for bit, the slope's up to summation order; no gradient asked, none computed."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 7, 33, generator=g).requires_grad_()
    weight = torch.tensor([0.3], requires_grad=True)
    upstream = torch.randn(4, 7, 33, generator=g)
    ours = single_slope_prelu(x, weight)
    theirs = F.prelu(x, weight)
    assert torch.equal(ours, theirs)
    ours_grads = torch.autograd.grad(ours, [x, weight], upstream)
    theirs_grads = torch.autograd.grad(theirs, [x, weight], upstream)
    assert torch.equal(ours_grads[0], theirs_grads[0])
    torch.testing.assert_close(ours_grads[1], theirs_grads[1], rtol=1e-5, atol=1e-6)
    frozen = torch.randn(3, 5)                                        # input without grad: slope's only
    (grad_w,) = torch.autograd.grad(single_slope_prelu(frozen, weight).sum(), [weight])
    torch.testing.assert_close(grad_w, frozen.clamp(max=0).sum().reshape(1))
