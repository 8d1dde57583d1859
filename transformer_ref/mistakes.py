"""The catalogue of known mistakes, per graded item, for :mod:`transformer_ref.testing`.

Each entry is a small, plausible wrong implementation in the same form as a submission (a function
or an nn.Module class), with a sentence that completes "Likely mistake: ...". When a submission's
outputs equal a mistake's outputs on every case, the checker names that mistake. The same entries
are the wrong submissions of ``tests/test_catalogue.py``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from transformer_ref.testing import Mistake

CATALOGUE: dict[str, list[Mistake]] = {}


def mistake(item: str, key: str, says: str):
    """Decorator: register the decorated function or class as mistake `key` of graded item `item`."""
    def register(impl: Any) -> Any:
        CATALOGUE.setdefault(item, []).append(Mistake(key, says, impl))
        return impl
    return register


# ------------------------------------------------------------------ shared pieces of attention

def _softmax_rows(scores: torch.Tensor, mask: torch.Tensor | None, *, fill: float | None = None,
                  dim: int = -1) -> torch.Tensor:
    """softmax with masked entries filled by `fill` (default: the dtype's smallest) and fully masked rows zeroed."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    fill = torch.finfo(scores.dtype).min if fill is None else fill
    weights = torch.softmax(scores.masked_fill(~mask, fill), dim=dim)
    return weights if fill == float("-inf") else weights.masked_fill(~mask, 0.0)


def _attend(q, k, v, mask=None, *, scale: float | None = None, dim: int = -1, invert: bool = False,
            after: bool = False, fill: float | None = None):
    """Scaled dot-product attention with one knob turned the wrong way."""
    scale = math.sqrt(q.size(-1)) if scale is None else scale
    scores = q @ k.transpose(-2, -1) / scale
    if mask is not None and invert:
        mask = ~mask
    if mask is not None and after:
        weights = torch.softmax(scores, dim=dim) * mask
    elif fill is not None and mask is not None:
        weights = torch.softmax(scores.masked_fill(~mask, fill), dim=dim)
    else:
        weights = _softmax_rows(scores, mask, dim=dim)
    return weights @ v, weights


# ------------------------------------------------------------------ 03_attention

@mistake("dot_product_attention", "scaled",
         "you divided X X^T by sqrt(d); this first version has no scaling: softmax(X X^T) X.")
def _dpa_scaled(x):
    return _attend(x, x, x)


@mistake("dot_product_attention", "softmax_axis",
         "your softmax runs over the wrong axis (dim=-2, down the columns); each query's row of weights "
         "must sum to 1, so use dim=-1.")
def _dpa_axis(x):
    return _attend(x, x, x, scale=1.0, dim=-2)


@mistake("scaled_dot_product_attention", "no_scale",
         "your weights equal softmax(QK^T) without dividing by sqrt(d_k).")
def _sdpa_no_scale(q, k, v, mask=None):
    return _attend(q, k, v, mask, scale=1.0)


@mistake("scaled_dot_product_attention", "scale_d_k",
         "you divided QK^T by d_k; the paper divides by sqrt(d_k).")
def _sdpa_scale_d_k(q, k, v, mask=None):
    return _attend(q, k, v, mask, scale=q.size(-1))


@mistake("scaled_dot_product_attention", "softmax_axis",
         "your softmax runs over the queries (dim=-2) instead of the keys (dim=-1); each row of "
         "weights must sum to 1.")
def _sdpa_axis(q, k, v, mask=None):
    return _attend(q, k, v, mask, dim=-2)


@mistake("scaled_dot_product_attention", "mask_inverted",
         "your mask is inverted: True means 'may attend', so fill the scores where the mask is False "
         "(masked_fill(~mask, ...)).")
def _sdpa_inverted(q, k, v, mask=None):
    return _attend(q, k, v, mask, invert=True)


@mistake("scaled_dot_product_attention", "mask_after_softmax",
         "you applied the mask after the softmax (weights * mask), so the remaining weights no longer "
         "sum to 1; mask the scores before the softmax.")
def _sdpa_after(q, k, v, mask=None):
    return _attend(q, k, v, mask, after=True)


@mistake("scaled_dot_product_attention", "masked_row_uniform",
         "a query whose keys are all masked gets uniform weights (filling with a large negative number "
         "and nothing else); such a row must get zero weights and zero output.")
def _sdpa_uniform(q, k, v, mask=None):
    return _attend(q, k, v, mask, fill=-1e9)


@mistake("scaled_dot_product_attention", "masked_row_nan",
         "filling masked scores with -inf makes a fully masked row softmax(-inf, ..., -inf) = NaN; "
         "give such a row zero weights and zero output.")
def _sdpa_nan(q, k, v, mask=None):
    return _attend(q, k, v, mask, fill=float("-inf"))


@mistake("self_attention", "scale_d_model",
         "you divided by sqrt(d_model); scale by sqrt(d_k), the size of the query/key projections "
         "(W_q.shape[1]).")
def _sa_d_model(x, W_q, W_k, W_v, mask=None):
    return _attend(x @ W_q, x @ W_k, x @ W_v, mask, scale=math.sqrt(x.size(-1)))


@mistake("self_attention", "no_scale", "your weights equal softmax(QK^T) without dividing by sqrt(d_k).")
def _sa_no_scale(x, W_q, W_k, W_v, mask=None):
    return _attend(x @ W_q, x @ W_k, x @ W_v, mask, scale=1.0)


@mistake("self_attention", "q_k_swapped",
         "your weights are transposed: the scores are K Q^T instead of Q K^T (softmax then runs "
         "over the wrong index).")
def _sa_swapped(x, W_q, W_k, W_v, mask=None):
    return _attend(x @ W_k, x @ W_q, x @ W_v, mask)
