"""grader.checks.attention (03_attention): every catalogued mistake is named, valid alternatives pass, the
shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grader.checks import attention
from grader.checks.cases import make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import CheckFailed, check
from grader.checks.run import run_student

ITEMS = {it.name: it for it in attention.ITEMS}


def _softmax_masked(scores, mask):
    """-inf filling, then NaN rows (fully masked) -> 0: another correct way to mask."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


# ---------------------------------------------------------------- valid alternatives

def dpa_einsum(x):
    w = torch.softmax(torch.einsum("...id,...jd->...ij", x, x), dim=-1)
    return torch.einsum("...ij,...jd->...id", w, x), w


def dpa_exp(x):
    s = x @ x.mT
    e = torch.exp(s - s.amax(-1, keepdim=True))
    w = e / e.sum(-1, keepdim=True)
    return w @ x, w


def dpa_matmul(x):
    w = F.softmax(torch.matmul(x, x.transpose(-1, -2)), -1)
    return torch.matmul(w, x), w


def sdpa_einsum(q, k, v, mask=None):
    w = _softmax_masked(torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1]), mask)
    return torch.einsum("...qk,...kd->...qd", w, v), w


def sdpa_scale_first(q, k, v, mask=None):
    scores = (q / q.size(-1) ** 0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), -torch.inf)
    w = torch.softmax(scores, -1)
    w = torch.where(torch.isnan(w), torch.zeros_like(w), w)
    return w @ v, w


def sdpa_float64_inside(q, k, v, mask=None):
    out, w = sdpa_einsum(q.double(), k.double(), v.double(), mask)
    return out.to(q.dtype), w.to(q.dtype)


def self_attention_einsum(x, W_q, W_k, W_v, mask=None):
    q, k, v = (torch.einsum("btd,de->bte", x, W) for W in (W_q, W_k, W_v))
    return sdpa_einsum(q, k, v, mask)


def self_attention_fused_qkv(x, W_q, W_k, W_v, mask=None):
    d_k = W_q.size(1)
    qkv = x @ torch.cat([W_q, W_k, W_v], dim=1)
    return sdpa_scale_first(qkv[..., :d_k], qkv[..., d_k:2 * d_k], qkv[..., 2 * d_k:], mask)


def self_attention_loop(x, W_q, W_k, W_v, mask=None):
    outs = [sdpa_einsum(x[b] @ W_q, x[b] @ W_k, x[b] @ W_v, None if mask is None else mask[b] if mask.dim() == 3
                        else mask) for b in range(x.size(0))]
    return torch.stack([o for o, _ in outs]), torch.stack([w for _, w in outs])


ALTERNATIVES = {
    "dot_product_attention": [dpa_einsum, dpa_exp, dpa_matmul],
    "scaled_dot_product_attention": [sdpa_einsum, sdpa_scale_first, sdpa_float64_inside],
    "self_attention": [self_attention_einsum, self_attention_fused_qkv, self_attention_loop],
}
ALT = [(name, impl) for name, impls in ALTERNATIVES.items() for impl in impls]


def _shortcuts():
    """(item, submission, dotted name the message must give)."""
    import transformer_ref.attention as reference
    from transformer_ref.attention import dot_product_attention as ref_dpa

    def dpa_package(x):
        return ref_dpa(x)

    def sdpa_fused(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None

    return [("dot_product_attention", dpa_package, "transformer_ref.attention.dot_product_attention"),
            ("scaled_dot_product_attention", sdpa_fused, "torch.nn.functional.scaled_dot_product_attention"),
            ("self_attention", lambda x, W_q, W_k, W_v, mask=None: reference.self_attention(x, W_q, W_k, W_v, mask),
             "transformer_ref.attention.self_attention")]


MISTAKES = [(it.name, m) for it in attention.ITEMS for m in it.mistakes]


# ---------------------------------------------------------------- the tests

def test_the_assignment_has_enough_items_mistakes_and_alternatives():
    assert attention.ASSIGNMENT == "03_attention" and len(attention.ITEMS) == 3
    assert len(MISTAKES) >= 5
    for it in attention.ITEMS:
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
        getattr(attention, f"check_{name}")(mistake.impl)


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


def _mistake(name, key):
    return next(m.impl for m in ITEMS[name].mistakes if m.key == key)


def test_grade_mask_mistakes_pass_basic_shapes_and_fail_masks():
    result = _grade("scaled_dot_product_attention", _mistake("scaled_dot_product_attention", "mask_inverted"))
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "masks": False, "fully masked rows": False}
    assert result.fraction == pytest.approx(1 / 3) and result.mistake == "mask_inverted"
    assert result.message.startswith(
        "scaled_dot_product_attention: right on basic shapes; wrong on masks and fully masked rows.")

    result = _grade("scaled_dot_product_attention", _mistake("scaled_dot_product_attention", "masked_row_uniform"))
    assert [g.passed for g in result.groups] == [True, True, False] and result.mistake == "masked_row_uniform"

    def ignores_the_mask(x, W_q, W_k, W_v, mask=None):
        return self_attention_einsum(x, W_q, W_k, W_v)
    result = _grade("self_attention", ignores_the_mask)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "masks": False, "float64 and a fully masked row": False}


def test_grade_a_mistake_everywhere_scores_zero():
    result = _grade("scaled_dot_product_attention", _mistake("scaled_dot_product_attention", "no_scale"))
    assert result.fraction == 0.0 and not result.shortcut and result.mistake == "no_scale"
    assert "Likely mistake: your weights equal softmax(QK^T) without dividing by sqrt(d_k)." in result.message
