"""grader.checks.history (01_history): every catalogued mistake is named, valid alternatives pass, the
shortcuts are caught, and partial credit follows the groups.

The alternatives are written the way a student might (einsum, loops, other formulas); none of them is
the reference's code.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grader.checks import history
from transformer_ref import attention as ref_attention
from transformer_ref.rnn import rnn_forward as ref_rnn

import checks_contract as contract

ITEMS = history.ITEMS
CHECKS = {history.RNN_FORWARD: history.check_rnn_forward, history.ADDITIVE_ATTENTION: history.check_additive_attention,
          history.ADDITIVE_ATTENTION_MODULE: history.check_AdditiveAttention}


def _softmax_masked(scores, mask):
    """-inf filling, then NaN rows (fully masked) -> 0: another correct way to mask."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


# ---------------------------------------------------------------- valid alternatives

def rnn_einsum(x, h0, W_xh, W_hh, b_h):
    h = torch.zeros(x.size(0), W_xh.size(1), dtype=x.dtype, device=x.device) if h0 is None else h0
    xs = torch.einsum("btd,dh->bth", x, W_xh)
    outs = torch.empty(x.size(0), x.size(1), W_xh.size(1), dtype=x.dtype, device=x.device)
    for t in range(x.size(1)):
        h = torch.tanh(xs[:, t] + torch.einsum("bh,hk->bk", h, W_hh) + b_h)
        outs[:, t] = h
    return outs, h


def rnn_unbind(x, h0, W_xh, W_hh, b_h):
    h = x.new_zeros(x.size(0), W_hh.size(0)) if h0 is None else h0
    states = []
    for x_t in x.unbind(1):
        h = torch.tanh(torch.addmm(b_h, x_t, W_xh) + h @ W_hh)
        states.append(h)
    return torch.stack(states, 1), states[-1]


def rnn_float64_inside(x, h0, W_xh, W_hh, b_h):
    out, h = rnn_einsum(x.double(), None if h0 is None else h0.double(), W_xh.double(), W_hh.double(), b_h.double())
    return out.to(x.dtype), h.to(x.dtype)


def additive_einsum(query, keys, values, W_q, W_k, w_v, mask=None):
    scores = torch.einsum("bta,a->bt", torch.tanh((query @ W_q)[:, None] + torch.einsum("btk,ka->bta", keys, W_k)), w_v)
    weights = _softmax_masked(scores, mask)
    return torch.einsum("bt,btv->bv", weights, values), weights


def additive_loop(query, keys, values, W_q, W_k, w_v, mask=None):
    contexts, all_weights = [], []
    for b in range(query.size(0)):
        scores = torch.stack([torch.tanh(query[b] @ W_q + keys[b, j] @ W_k) @ w_v for j in range(keys.size(1))])
        allowed = torch.ones_like(scores, dtype=torch.bool) if mask is None else mask[b]
        w = torch.zeros_like(scores)
        if allowed.any():
            w[allowed] = torch.softmax(scores[allowed], dim=0)
        all_weights.append(w)
        contexts.append(w @ values[b])
    return torch.stack(contexts), torch.stack(all_weights)


def additive_large_negative(query, keys, values, W_q, W_k, w_v, mask=None):
    scores = torch.tanh((query @ W_q).unsqueeze(1) + keys @ W_k) @ w_v
    if mask is not None:
        scores = torch.where(mask, scores, torch.full_like(scores, -1e30 if scores.dtype == torch.float32 else -1e300))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights * mask
    return (weights.unsqueeze(-1) * values).sum(1), weights


class AdditiveEinsum(nn.Module):
    def __init__(self, query_dim, key_dim, attn_dim):
        super().__init__()
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(key_dim, attn_dim, bias=False)
        self.w_v = nn.Parameter(torch.zeros(attn_dim))

    def forward(self, query, keys, values, mask=None):
        return additive_einsum(query, keys, values, self.W_q.weight.t(), self.W_k.weight.t(), self.w_v, mask)


class AdditiveLinearLayers(AdditiveEinsum):
    def forward(self, query, keys, values, mask=None):
        scores = torch.tanh(self.W_q(query).unsqueeze(1) + self.W_k(keys)) @ self.w_v
        weights = _softmax_masked(scores, mask)
        return torch.bmm(weights.unsqueeze(1), values).squeeze(1), weights


ALTERNATIVES = {
    history.RNN_FORWARD: [rnn_einsum, rnn_unbind, rnn_float64_inside],
    history.ADDITIVE_ATTENTION: [additive_einsum, additive_loop, additive_large_negative],
    history.ADDITIVE_ATTENTION_MODULE: [AdditiveEinsum, AdditiveLinearLayers],
}

# ---------------------------------------------------------------- shortcuts


def rnn_torch(x, h0, W_xh, W_hh, b_h):
    rnn = nn.RNN(x.size(-1), W_xh.size(1), batch_first=True).to(x)
    return rnn(x, None if h0 is None else h0[None])


def rnn_package(x, h0, W_xh, W_hh, b_h):  # bound at import time: caught by reading the source
    return ref_rnn(x, h0, W_xh, W_hh, b_h)


class AdditivePackage(ref_attention.AdditiveAttention):
    pass


SHORTCUTS = [(history.RNN_FORWARD, rnn_torch, "torch.nn.RNN"),
             (history.RNN_FORWARD, rnn_package, "transformer_ref.rnn.rnn_forward"),
             (history.ADDITIVE_ATTENTION, lambda *a, **k: ref_attention.additive_attention(*a, **k),
              "transformer_ref.attention.additive_attention"),
             (history.ADDITIVE_ATTENTION_MODULE, AdditivePackage, "transformer_ref.attention.AdditiveAttention")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(history, "01_history", ["rnn_forward", "additive_attention", "AdditiveAttention"],
                                     ALTERNATIVES, CHECKS)


@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("item", ITEMS, ids=contract.item_id)
def test_the_reference_passes_and_scores_full_marks(item, seed):
    contract.assert_reference_scores_full_marks(item, seed)


@pytest.mark.parametrize("item,mistake", contract.mistake_params(ITEMS))
def test_mistake_fails_with_its_diagnostic(item, mistake):
    contract.assert_mistake_named(item, mistake, CHECKS[item])


@pytest.mark.parametrize("item,impl", contract.alternative_params(ALTERNATIVES))
def test_valid_alternative_passes_and_scores_full_marks(item, impl):
    contract.assert_alternative_passes(item, impl, CHECKS[item])


@pytest.mark.parametrize("item,impl,dotted", contract.shortcut_params(SHORTCUTS))
def test_shortcut_fails_with_the_shortcut_message_and_scores_0(item, impl, dotted):
    contract.assert_shortcut_scores_zero(item, impl, dotted)


# ---------------------------------------------------------------- assignment-specific tests


def test_grade_an_inverted_mask_passes_basic_shapes_and_fails_masks():
    item = history.ADDITIVE_ATTENTION
    result = contract.graded(item, contract.mistake(item, "mask_inverted").impl)
    assert {g.group: g.passed for g in result.groups} == {"basic shapes": True, "masks": False,
                                                          "float64 with a mask": False}
    assert result.mistake == "mask_inverted" and "wrong on masks and float64 with a mask" in result.message

    item = history.ADDITIVE_ATTENTION_MODULE
    result = contract.graded(item, contract.mistake(item, "mask_inverted").impl)
    assert {g.group: g.passed for g in result.groups} == {"basic shapes": True, "masks": False, "float64": True}


def test_grade_an_rnn_that_needs_h0_loses_only_that_group():
    def needs_h0(x, h0, W_xh, W_hh, b_h):
        return rnn_einsum(x, h0 + 0, W_xh, W_hh, b_h)
    result = contract.graded(history.RNN_FORWARD, needs_h0)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "batch 1, one step and float64": True, "starting from h0 = None": False}
    assert result.fraction == pytest.approx(2 / 3) and "does not run yet" in result.message
