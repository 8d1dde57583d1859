"""Checks for assignment 03_attention: dot_product_attention, scaled_dot_product_attention, self_attention."""

from __future__ import annotations

import math

import torch

from grader.checks.cases import Case, causal, random_mask, randn
from grader.checks.history import softmax_rows
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.shortcuts import REF_ATTENTION, TORCH_ATTENTION, TORCH_ATTENTION_OPS
from grader.checks.structure import explain_attention_mask

ASSIGNMENT = "03_attention"

ATTENTION_SHORTCUTS = TORCH_ATTENTION + REF_ATTENTION


def attend(q, k, v, mask=None, *, scale: float | None = None, dim: int = -1, invert: bool = False,
           after: bool = False, fill: float | None = None):
    """Scaled dot-product attention with one knob turned the wrong way (the mistakes of this assignment and
    of 04_multi_head build on it); with no knob turned it is right."""
    scale = math.sqrt(q.size(-1)) if scale is None else scale
    scores = q @ k.transpose(-2, -1) / scale
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and after:
        weights = torch.softmax(scores, dim=dim) * mask
    elif fill is not None and mask is not None:
        weights = torch.softmax(scores.masked_fill(~mask, fill), dim=dim)
    else:
        weights = softmax_rows(scores, mask, dim=dim)
    return weights @ v, weights


# ---------------------------------------------------------------- dot_product_attention

def _dot_product_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("x (2, 5, 4)", (randn(g, 2, 5, 4, scale=0.7),), group="basic shapes"),
            Case("batch 1, x (1, 1, 3)", (randn(g, 1, 1, 3),), group="batch 1 and no batch axis"),
            Case("x (6, 3) without a batch axis", (randn(g, 6, 3, scale=0.7),), group="batch 1 and no batch axis"),
            Case("float64, x (3, 7, 5)", (randn(g, 3, 7, 5, dtype=torch.float64, scale=0.6),), group="float64")]


def _dpa_scaled(x):
    return attend(x, x, x)


def _dpa_softmax_axis(x):
    return attend(x, x, x, scale=1.0, dim=-2)


DOT_PRODUCT_ATTENTION = Item(
    "dot_product_attention", ASSIGNMENT, "function", _dot_product_cases,
    Reference("attention", "dot_product_attention"), ATTENTION_SHORTCUTS, outputs=("output", "weights"),
    forbidden_ops=TORCH_ATTENTION_OPS,
    mistakes=(
        Mistake("scaled", "you divided X X^T by sqrt(d); this first version has no scaling: softmax(X X^T) X.",
                _dpa_scaled),
        Mistake("softmax_axis", "your softmax runs over the wrong axis (dim=-2, down the columns); each query's row "
                "of weights must sum to 1, so use dim=-1.", _dpa_softmax_axis),
    ),
    hints=("Attention without projections: every position is compared with every position by a dot product, a softmax "
           "over the keys turns the scores into weights, and the output mixes the positions with those weights.",
           "One matrix product of x with x transposed over its last two axes gives the scores (..., T, T); take the "
           "softmax over the last axis (the keys); the output is the weights times x. Return both."))


def check_dot_product_attention(impl, seeds=(0,), cuda=False):
    """Check a submission of dot_product_attention(x) -> (output, weights) against transformer_ref on random
    inputs (each seed, and CUDA copies when cuda=True and a GPU is present); raise CheckFailed with what was
    expected, what came back and the likely mistake."""
    assert_passes(DOT_PRODUCT_ATTENTION, impl, seeds, cuda)


# ---------------------------------------------------------------- scaled_dot_product_attention

def _sdpa_cases(g: torch.Generator, seed: int) -> list[Case]:
    def qkv(batch: tuple, T_q: int, T_k: int, d_k: int, d_v: int, dtype: torch.dtype = torch.float32):
        return (randn(g, *batch, T_q, d_k, dtype=dtype, scale=1.5), randn(g, *batch, T_k, d_k, dtype=dtype, scale=1.5),
                randn(g, *batch, T_k, d_v, dtype=dtype))
    basic = [Case("q (2, 3, 4), k (2, 5, 4), v (2, 5, 6), no mask", qkv((2,), 3, 5, 4, 6), group="basic shapes"),
             Case("batch 1, one query, one key: q (1, 1, 7)", qkv((1,), 1, 1, 7, 3), group="basic shapes"),
             Case("q (5, 3) without a batch axis, k (6, 3), v (6, 2)", qkv((), 5, 6, 3, 2), group="basic shapes")]
    heads = Case("q (2, 3, 4, 8) with a head axis, mask (2, 1, 4, 6) with a fully masked row",
                 qkv((2, 3), 4, 6, 8, 5), {"mask": random_mask(g, 2, 1, 4, 6)}, group="fully masked rows")
    causal_case = Case("float64, q (3, 5, 5), causal mask (5, 5)", qkv((3,), 5, 5, 5, 4, torch.float64),
                       {"mask": causal(5)}, group="masks")
    float64 = Case("float64, q (2, 4, 3), k (2, 7, 3), mask (2, 4, 7) with a fully masked row",
                   qkv((2,), 4, 7, 3, 3, torch.float64), {"mask": random_mask(g, 2, 4, 7)}, group="fully masked rows")
    return [*basic, causal_case, heads, float64]   # drawn in today's order, listed basic to advanced


def _sdpa_no_scale(q, k, v, mask=None):
    return attend(q, k, v, mask, scale=1.0)


def _sdpa_scale_d_k(q, k, v, mask=None):
    return attend(q, k, v, mask, scale=q.size(-1))


def _sdpa_softmax_axis(q, k, v, mask=None):
    return attend(q, k, v, mask, dim=-2)


def _sdpa_mask_inverted(q, k, v, mask=None):
    return attend(q, k, v, mask, invert=True)


def _sdpa_mask_after_softmax(q, k, v, mask=None):
    return attend(q, k, v, mask, after=True)


def _sdpa_masked_row_uniform(q, k, v, mask=None):
    return attend(q, k, v, mask, fill=-1e9)


def _sdpa_masked_row_nan(q, k, v, mask=None):
    return attend(q, k, v, mask, fill=float("-inf"))


SCALED_DOT_PRODUCT_ATTENTION = Item(
    "scaled_dot_product_attention", ASSIGNMENT, "function", _sdpa_cases,
    Reference("attention", "scaled_dot_product_attention"), ATTENTION_SHORTCUTS, outputs=("output", "weights"),
    forbidden_ops=TORCH_ATTENTION_OPS,
    mistakes=(
        Mistake("no_scale", "your weights equal softmax(QK^T) without dividing by sqrt(d_k).", _sdpa_no_scale),
        Mistake("scale_d_k", "you divided QK^T by d_k; the paper divides by sqrt(d_k).", _sdpa_scale_d_k),
        Mistake("softmax_axis", "your softmax runs over the queries (dim=-2) instead of the keys (dim=-1); each row "
                "of weights must sum to 1.", _sdpa_softmax_axis),
        Mistake("mask_inverted", "your mask is inverted: True means 'may attend', so fill the scores where the mask "
                "is False (masked_fill(~mask, ...)).", _sdpa_mask_inverted),
        Mistake("mask_after_softmax", "you applied the mask after the softmax (weights * mask), so the remaining "
                "weights no longer sum to 1; mask the scores before the softmax.", _sdpa_mask_after_softmax),
        Mistake("masked_row_uniform", "a query whose keys are all masked gets uniform weights (filling with a large "
                "negative number and nothing else); such a row must get zero weights and zero output.",
                _sdpa_masked_row_uniform),
        Mistake("masked_row_nan", "filling masked scores with -inf makes a fully masked row "
                "softmax(-inf, ..., -inf) = NaN; give such a row zero weights and zero output.", _sdpa_masked_row_nan),
    ), explain=explain_attention_mask,
    hints=("Dot products grow with d_k and push the softmax into saturation: divide the scores by sqrt(d_k). The mask "
           "removes keys before the softmax, so that masked keys get no weight.",
           "Before the softmax, fill the scores where the mask is False with torch.finfo(scores.dtype).min (not -inf: "
           "a row with every key masked would become NaN); after it, set those weights to 0, so that such a row is "
           "zeros."))


def check_scaled_dot_product_attention(impl, seeds=(0,), cuda=False):
    """Check a submission of scaled_dot_product_attention(q, k, v, mask=None) -> (output, weights) against
    transformer_ref on random inputs (each seed, and CUDA copies when cuda=True and a GPU is present); raise
    CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(SCALED_DOT_PRODUCT_ATTENTION, impl, seeds, cuda)


# ---------------------------------------------------------------- self_attention

def _self_attention_cases(g: torch.Generator, seed: int) -> list[Case]:
    def args(B: int, T: int, d_model: int, d_k: int, d_v: int, dtype: torch.dtype = torch.float32):
        return (randn(g, B, T, d_model, dtype=dtype), randn(g, d_model, d_k, dtype=dtype, scale=0.8),
                randn(g, d_model, d_k, dtype=dtype, scale=0.8), randn(g, d_model, d_v, dtype=dtype))
    return [
        Case("x (2, 5, 6), W_q (6, 4), W_v (6, 3)", args(2, 5, 6, 4, 3), group="basic shapes"),
        Case("batch 1, T = 1: x (1, 1, 4), W_q (4, 2)", args(1, 1, 4, 2, 2), group="basic shapes"),
        Case("x (3, 4, 8), causal mask (4, 4)", args(3, 4, 8, 5, 7), {"mask": causal(4)}, group="masks"),
        Case("float64, x (2, 6, 5), mask (2, 6, 6) with a fully masked row", args(2, 6, 5, 3, 4, torch.float64),
             {"mask": random_mask(g, 2, 6, 6)}, group="float64 and a fully masked row"),
    ]


def _sa_scale_d_model(x, W_q, W_k, W_v, mask=None):
    return attend(x @ W_q, x @ W_k, x @ W_v, mask, scale=math.sqrt(x.size(-1)))


def _sa_no_scale(x, W_q, W_k, W_v, mask=None):
    return attend(x @ W_q, x @ W_k, x @ W_v, mask, scale=1.0)


def _sa_q_k_swapped(x, W_q, W_k, W_v, mask=None):
    return attend(x @ W_k, x @ W_q, x @ W_v, mask)


SELF_ATTENTION = Item(
    "self_attention", ASSIGNMENT, "function", _self_attention_cases, Reference("attention", "self_attention"),
    ATTENTION_SHORTCUTS, outputs=("output", "weights"), forbidden_ops=TORCH_ATTENTION_OPS,
    mistakes=(
        Mistake("scale_d_model", "you divided by sqrt(d_model); scale by sqrt(d_k), the size of the query/key "
                "projections (W_q.shape[1]).", _sa_scale_d_model),
        Mistake("no_scale", "your weights equal softmax(QK^T) without dividing by sqrt(d_k).", _sa_no_scale),
        Mistake("q_k_swapped", "your weights are transposed: the scores are K Q^T instead of Q K^T (softmax then "
                "runs over the wrong index).", _sa_q_k_swapped),
    ),
    builds_on=(SCALED_DOT_PRODUCT_ATTENTION,), explain=explain_attention_mask,
    hints=("Self-attention is attention whose queries, keys and values are all projections of the same x.",
           "Compute Q, K and V as x times each of the three matrices and call your scaled_dot_product_attention on "
           "them with the mask; return what it returns."))


def check_self_attention(impl, seeds=(0,), cuda=False):
    """Check a submission of self_attention(x, W_q, W_k, W_v, mask=None) -> (output, weights) against
    transformer_ref on random inputs (each seed, and CUDA copies when cuda=True and a GPU is present); raise
    CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(SELF_ATTENTION, impl, seeds, cuda)


ITEMS = (DOT_PRODUCT_ATTENTION, SCALED_DOT_PRODUCT_ATTENTION, SELF_ATTENTION)
