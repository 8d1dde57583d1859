"""grader.checks.multi_head (04_multi_head): every catalogued mistake is named, valid alternatives pass, the
shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grader.checks import multi_head
from grader.checks.cases import make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import CheckFailed, check
from grader.checks.run import run_student

ITEMS = {it.name: it for it in multi_head.ITEMS}


def _softmax_masked(scores, mask):
    """-inf filling, then NaN rows (fully masked) -> 0: another correct way to mask."""
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


def sdpa_einsum(q, k, v, mask=None):
    w = _softmax_masked(torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1]), mask)
    return torch.einsum("...qk,...kd->...qd", w, v), w


def sdpa_scale_first(q, k, v, mask=None):
    scores = (q / q.size(-1) ** 0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), -torch.inf)
    w = torch.softmax(scores, -1)
    return w.nan_to_num(0.0) @ v, w.nan_to_num(0.0)


# ---------------------------------------------------------------- valid alternatives

def split_permute(x, num_heads):
    B, T, d = x.shape
    return x.reshape(B, T, num_heads, d // num_heads).permute(0, 2, 1, 3)


def split_chunks(x, num_heads):
    return torch.stack(x.chunk(num_heads, dim=-1), dim=1)


def split_loop(x, num_heads):
    d_k = x.size(-1) // num_heads
    return torch.stack([x[..., h * d_k:(h + 1) * d_k] for h in range(num_heads)], dim=1).contiguous()


def merge_permute(x):
    B, H, T, d_k = x.shape
    return x.permute(0, 2, 1, 3).contiguous().view(B, T, H * d_k)


def merge_cat(x):
    return torch.cat(x.unbind(1), dim=-1)


def merge_einsum(x):
    B, H, T, d_k = x.shape
    return torch.einsum("bhtd->bthd", x).reshape(B, T, H * d_k)


class MHAPerHead(nn.Module):
    """One head at a time, slicing the projections' outputs."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, query, key, value, mask=None):
        d_k = query.size(-1) // self.h
        q, k, v = self.W_q(query), self.W_k(key), self.W_v(value)
        heads, weights = [], []
        for h in range(self.h):
            sl = slice(h * d_k, (h + 1) * d_k)
            o, w = sdpa_einsum(q[..., sl], k[..., sl], v[..., sl], mask)
            heads.append(o)
            weights.append(w)
        return self.W_o(torch.cat(heads, -1)), torch.stack(weights, 1)


class MHAChunks(nn.Module):
    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, query, key, value, mask=None):
        q, k, v = (split_chunks(lin(x), self.h) for lin, x in ((self.W_q, query), (self.W_k, key), (self.W_v, value)))
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        out, w = sdpa_scale_first(q, k, v, mask)
        return self.W_o(merge_cat(out)), w


class MHAFloat64(MHAChunks):
    def forward(self, query, key, value, mask=None):
        dtype = query.dtype
        self.double()
        out, w = super().forward(query.double(), key.double(), value.double(), mask)
        self.to(dtype)
        return out.to(dtype), w.to(dtype)


ALTERNATIVES = {
    "split_heads": [split_permute, split_chunks, split_loop],
    "merge_heads": [merge_permute, merge_cat, merge_einsum],
    "MultiHeadAttention": [MHAPerHead, MHAChunks, MHAFloat64],
}
ALT = [(name, impl) for name, impls in ALTERNATIVES.items() for impl in impls]


def _shortcuts():
    """(item, submission, dotted name the message must give)."""
    import transformer_ref.multihead as multihead
    from transformer_ref.multihead import merge_heads as ref_merge

    def merge_package(x):
        return ref_merge(x)

    class MHATorch(nn.Module):
        def __init__(self, d_model, num_heads):
            super().__init__()
            self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))
            self.h = num_heads

        def forward(self, query, key, value, mask=None):
            mha = nn.MultiheadAttention(query.size(-1), self.h, batch_first=True)
            return mha(query, key, value)

    class MHAPackage(multihead.MultiHeadAttention):
        pass

    return [("split_heads", lambda x, h: multihead.split_heads(x, h), "transformer_ref.multihead.split_heads"),
            ("merge_heads", merge_package, "transformer_ref.multihead.merge_heads"),
            ("MultiHeadAttention", MHATorch, "torch.nn.MultiheadAttention"),
            ("MultiHeadAttention", MHAPackage, "transformer_ref.multihead.MultiHeadAttention")]


MISTAKES = [(it.name, m) for it in multi_head.ITEMS for m in it.mistakes]


# ---------------------------------------------------------------- the tests

def test_the_assignment_has_enough_items_mistakes_and_alternatives():
    assert multi_head.ASSIGNMENT == "04_multi_head" and len(multi_head.ITEMS) == 3
    assert len(MISTAKES) >= 5
    for it in multi_head.ITEMS:
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
        getattr(multi_head, f"check_{name}")(mistake.impl)


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


def _mistake(name, key):
    return next(m.impl for m in ITEMS[name].mistakes if m.key == key)


def test_grade_a_correct_submission_scores_one():
    for name in ITEMS:
        assert _grade(name, ALTERNATIVES[name][0]).fraction == 1.0


def test_grade_keys_from_the_query_pass_self_attention_and_fail_cross_attention():
    result = _grade("MultiHeadAttention", _mistake("MultiHeadAttention", "query_for_keys"))
    assert {g.group: g.passed for g in result.groups} == {
        "self-attention": True, "cross-attention": False, "masks and float64": False}
    assert result.mistake == "query_for_keys" and "wrong on cross-attention" in result.message


def test_grade_interleaved_heads_pass_only_where_one_head_or_d_k_1_hides_them():
    result = _grade("split_heads", _mistake("split_heads", "interleaved"))
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": False, "one head or d_k = 1": True, "float64": False}
