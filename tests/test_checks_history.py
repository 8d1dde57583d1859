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
from grader.checks.cases import make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import CheckFailed, check
from grader.checks.run import run_student

ITEMS = {it.name: it for it in history.ITEMS}


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
    "rnn_forward": [rnn_einsum, rnn_unbind, rnn_float64_inside],
    "additive_attention": [additive_einsum, additive_loop, additive_large_negative],
    "AdditiveAttention": [AdditiveEinsum, AdditiveLinearLayers],
}
ALT = [(name, impl) for name, impls in ALTERNATIVES.items() for impl in impls]


def _shortcuts():
    """(item, submission, dotted name the message must give)."""
    import transformer_ref.attention as attention
    from transformer_ref.rnn import rnn_forward as ref_rnn

    def rnn_torch(x, h0, W_xh, W_hh, b_h):
        rnn = nn.RNN(x.size(-1), W_xh.size(1), batch_first=True).to(x)
        return rnn(x, None if h0 is None else h0[None])

    def rnn_package(x, h0, W_xh, W_hh, b_h):  # bound at import time: caught by reading the source
        return ref_rnn(x, h0, W_xh, W_hh, b_h)

    class AdditivePackage(attention.AdditiveAttention):
        pass

    return [("rnn_forward", rnn_torch, "torch.nn.RNN"), ("rnn_forward", rnn_package, "transformer_ref.rnn.rnn_forward"),
            ("additive_attention", lambda *a, **k: attention.additive_attention(*a, **k),
             "transformer_ref.attention.additive_attention"),
            ("AdditiveAttention", AdditivePackage, "transformer_ref.attention.AdditiveAttention")]


MISTAKES = [(it.name, m) for it in history.ITEMS for m in it.mistakes]


# ---------------------------------------------------------------- the tests

def test_the_assignment_has_enough_items_mistakes_and_alternatives():
    assert history.ASSIGNMENT == "01_history" and len(history.ITEMS) == 3
    assert len(MISTAKES) >= 5
    for it in history.ITEMS:
        assert it.mistakes and len(ALTERNATIVES[it.name]) >= 2, it.name


@pytest.mark.parametrize("name", ITEMS)
def test_reference_passes_its_own_comparison(name):
    it = ITEMS[name]
    for seed in (0, 1):
        cases = make_cases(it, seed)
        report = compare(it, cases, run_student(it, it.reference(), cases, watch=False))
        assert report.passed, report.message


@pytest.mark.parametrize("name,mistake", MISTAKES, ids=[f"{n}-{m.key}" for n, m in MISTAKES])
def test_mistake_fails_with_its_diagnostic(name, mistake):
    report = check(ITEMS[name], mistake.impl)
    assert not report.passed, f"the mistake {mistake.key!r} of {name} passes the check"
    assert report.mistake == mistake.key, report.message
    assert f"Likely mistake: {mistake.says}" in report.message
    with pytest.raises(CheckFailed, match="Likely mistake"):
        getattr(history, f"check_{name}")(mistake.impl)


@pytest.mark.parametrize("name,impl", ALT, ids=[f"{n}-{f.__name__}" for n, f in ALT])
def test_valid_alternative_passes(name, impl):
    report = check(ITEMS[name], impl, seeds=(0, 1))
    assert report.passed, report.message


@pytest.mark.parametrize("index", range(len(_shortcuts())))
def test_shortcut_fails_with_the_shortcut_message(index):
    name, impl, dotted = _shortcuts()[index]
    report = check(ITEMS[name], impl)
    assert not report.passed and report.shortcut, report.message
    assert dotted in report.message and "scores 0" in report.message
    assert report.mistake is None


def _grade(name, impl):
    it = ITEMS[name]
    cases = make_cases(it, 0)
    return grade(it, cases, run_student(it, impl, cases))


def test_grade_a_correct_submission_scores_one():
    for name in ITEMS:
        assert _grade(name, ALTERNATIVES[name][0]).fraction == 1.0


def test_grade_an_inverted_mask_passes_basic_shapes_and_fails_masks():
    mistake = next(m for m in ITEMS["additive_attention"].mistakes if m.key == "mask_inverted")
    result = _grade("additive_attention", mistake.impl)
    assert {g.group: g.passed for g in result.groups} == {"basic shapes": True, "masks": False,
                                                          "float64 with a mask": False}
    assert result.mistake == "mask_inverted" and "wrong on masks and float64 with a mask" in result.message

    mistake = next(m for m in ITEMS["AdditiveAttention"].mistakes if m.key == "mask_inverted")
    result = _grade("AdditiveAttention", mistake.impl)
    assert {g.group: g.passed for g in result.groups} == {"basic shapes": True, "masks": False, "float64": True}


def test_grade_an_rnn_that_needs_h0_loses_only_that_group():
    def needs_h0(x, h0, W_xh, W_hh, b_h):
        return rnn_einsum(x, h0 + 0, W_xh, W_hh, b_h)
    result = _grade("rnn_forward", needs_h0)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "batch 1, one step and float64": True, "starting from h0 = None": False}
    assert result.fraction == pytest.approx(2 / 3) and "does not run yet" in result.message
