"""grader.checks.positional_encoding (02_positional_encoding): every catalogued mistake is named, valid
alternatives pass, the shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import math

import pytest
import torch

from grader.checks import positional_encoding
from grader.checks.cases import make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import CheckFailed, check
from grader.checks.run import run_student

ITEMS = {it.name: it for it in positional_encoding.ITEMS}


def _softmax_masked(scores, mask):
    """-inf filling, then NaN rows (fully masked) -> 0: another correct way to mask."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


# ---------------------------------------------------------------- valid alternatives

def pe_exp_log(max_len, d_model):  # the PyTorch tutorial's version, in float32 throughout
    position = torch.arange(max_len).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe


def pe_loops(max_len, d_model):
    return torch.tensor([[math.sin(pos / 10000 ** (j / d_model)) if j % 2 == 0 else
                          math.cos(pos / 10000 ** ((j - 1) / d_model)) for j in range(d_model)]
                         for pos in range(max_len)], dtype=torch.float32)


def pe_stack(max_len, d_model):
    angle = torch.arange(max_len, dtype=torch.float64)[:, None] / 10000 ** (
        torch.arange(d_model // 2, dtype=torch.float64) * 2 / d_model)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1).float()


def rel_index_loops(q_len, k_len, max_distance):
    return torch.tensor([[min(max(j - i, -max_distance), max_distance) + max_distance for j in range(k_len)]
                         for i in range(q_len)], dtype=torch.long)


def rel_index_clip_after_shift(q_len, k_len, max_distance):
    d = torch.arange(k_len)[None] - torch.arange(q_len)[:, None] + max_distance
    return torch.clip(d, 0, 2 * max_distance)


def rel_index_minimum(q_len, k_len, max_distance):
    j, i = torch.meshgrid(torch.arange(k_len), torch.arange(q_len), indexing="xy")
    return torch.minimum(torch.maximum(j - i, torch.tensor(-max_distance)), torch.tensor(max_distance)) + max_distance


def rel_attention_einsum(q, k, v, rel_k, rel_v, mask=None):
    scores = (torch.einsum("...id,...jd->...ij", q, k) + torch.einsum("...id,ijd->...ij", q, rel_k)) / q.size(-1) ** 0.5
    w = _softmax_masked(scores, mask)
    return torch.einsum("...ij,...jd->...id", w, v) + torch.einsum("...ij,ijd->...id", w, rel_v), w


def rel_attention_broadcast(q, k, v, rel_k, rel_v, mask=None):
    keys = k.unsqueeze(-3) + rel_k  # (..., T_q, T_k, d_k)
    scores = (q.unsqueeze(-2) * keys).sum(-1) / math.sqrt(q.size(-1))
    w = _softmax_masked(scores, mask)
    return (w.unsqueeze(-1) * (v.unsqueeze(-3) + rel_v)).sum(-2), w


def rel_attention_float64(q, k, v, rel_k, rel_v, mask=None):
    out, w = rel_attention_einsum(q.double(), k.double(), v.double(), rel_k.double(), rel_v.double(), mask)
    return out.to(q.dtype), w.to(q.dtype)


ALTERNATIVES = {
    "sinusoidal_positional_encoding": [pe_exp_log, pe_loops, pe_stack],
    "relative_position_index": [rel_index_loops, rel_index_clip_after_shift, rel_index_minimum],
    "relative_attention": [rel_attention_einsum, rel_attention_broadcast, rel_attention_float64],
}
ALT = [(name, impl) for name, impls in ALTERNATIVES.items() for impl in impls]


def _shortcuts():
    """(item, submission, dotted name the message must give)."""
    import torch.nn.functional as F

    import transformer_ref.positional as positional
    from transformer_ref.positional import relative_position_index as ref_index

    def index_package(q_len, k_len, max_distance):
        return ref_index(q_len, k_len, max_distance)

    def relative_fused(q, k, v, rel_k, rel_v, mask=None):
        bias = torch.einsum("...qd,qkd->...qk", q, rel_k) / math.sqrt(q.size(-1))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None

    return [("sinusoidal_positional_encoding", lambda n, d: positional.sinusoidal_positional_encoding(n, d),
             "transformer_ref.positional.sinusoidal_positional_encoding"),
            ("relative_position_index", index_package, "transformer_ref.positional.relative_position_index"),
            ("relative_attention", relative_fused, "torch.nn.functional.scaled_dot_product_attention")]


MISTAKES = [(it.name, m) for it in positional_encoding.ITEMS for m in it.mistakes]


# ---------------------------------------------------------------- the tests

def test_the_assignment_has_enough_items_mistakes_and_alternatives():
    assert positional_encoding.ASSIGNMENT == "02_positional_encoding" and len(positional_encoding.ITEMS) == 3
    assert len(MISTAKES) >= 5
    for it in positional_encoding.ITEMS:
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
        getattr(positional_encoding, f"check_{name}")(mistake.impl)


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


def test_grade_nan_on_a_fully_masked_row_loses_only_that_group():
    def nan_rows(q, k, v, rel_k, rel_v, mask=None):
        scores = (q @ k.transpose(-2, -1) + torch.einsum("...id,ijd->...ij", q, rel_k)) / math.sqrt(q.size(-1))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=-1)
        return w @ v + torch.einsum("...ij,ijd->...id", w, rel_v), w
    result = _grade("relative_attention", nan_rows)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "heads and a causal mask": True, "float64 and a fully masked row": False}
    assert "NaN at index" in result.message

