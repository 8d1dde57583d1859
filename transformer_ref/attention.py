"""Attention without heads: dot-product, scaled dot-product, self-attention, additive (Bahdanau).

Mask convention: bool, True = may attend, broadcastable to (..., T_q, T_k) -- the same as
``torch.nn.functional.scaled_dot_product_attention``. A query row with nothing to attend to gets
zero weights and zero output, never NaN (and no NaN gradients).

Two implementations of scaled dot-product attention are kept side by side:
:func:`scaled_dot_product_attention` writes the formula out (what the book teaches and what the
grader compares against); :func:`fused_attention` calls PyTorch's fused kernel (what runs fast).
A test shows they agree.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref._checks import (check_floating, check_mask, check_min_ndim, check_ndim,
                                     check_positive_int, check_same_device, check_same_dtype, check_size)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None) -> tuple[int, ...]:
    """Validate q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v) and a bool mask broadcastable to
    (..., T_q, T_k); return the scores' shape."""
    for name, x, hint in (("q", q, "(..., T_q, d_k)"), ("k", k, "(..., T_k, d_k)"), ("v", v, "(..., T_k, d_v)")):
        check_floating(x, name)
        check_min_ndim(x, name, 2, hint)
    check_same_device(("q", q), ("k", k), ("v", v))
    check_same_dtype(("q", q), ("k", k), ("v", v))
    check_size(k, "k", -1, q.size(-1), "d_k = q.shape[-1]")
    check_size(v, "v", -2, k.size(-2), "T_k = k.shape[-2]")
    try:
        batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(f"the leading (batch/head) dimensions of q {tuple(q.shape)}, k {tuple(k.shape)} "
                         f"and v {tuple(v.shape)} do not broadcast together") from None
    scores_shape = (*batch, q.size(-2), k.size(-2))
    check_mask(mask, "mask", scores_shape, device=q.device)
    return scores_shape


def _check_sequence_input(x: torch.Tensor) -> None:
    """x must be a floating-point (..., T, d) tensor."""
    check_floating(x, "x")
    check_min_ndim(x, "x", 2, "(..., T, d)")


def _check_self_attention(x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor) -> None:
    """x: (B, T, d_model); W_q, W_k: (d_model, d_k); W_v: (d_model, d_v); all floating, on one device."""
    check_floating(x, "x")
    check_min_ndim(x, "x", 2, "(B, T, d_model)")
    d_model = x.size(-1)
    for name, W, hint in (("W_q", W_q, "(d_model, d_k)"), ("W_k", W_k, "(d_model, d_k)"),
                          ("W_v", W_v, "(d_model, d_v)")):
        check_floating(W, name)
        check_ndim(W, name, 2, hint)
        check_size(W, name, 0, d_model, "d_model = x.shape[-1]")
    check_same_device(("x", x), ("W_q", W_q), ("W_k", W_k), ("W_v", W_v))


def _check_additive(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, W_q: torch.Tensor,
                    W_k: torch.Tensor, w_v: torch.Tensor, mask: torch.Tensor | None) -> None:
    """The shapes of :func:`additive_attention`: query (B, d_q), keys (B, T, d_kk), values (B, T, d_v),
    W_q (d_q, d_a), W_k (d_kk, d_a), w_v (d_a,), mask bool broadcastable to (B, T)."""
    check_ndim(query, "query", 2, "(B, d_q)")
    check_ndim(keys, "keys", 3, "(B, T, d_kk)")
    check_ndim(values, "values", 3, "(B, T, d_v)")
    check_ndim(W_q, "W_q", 2, "(d_q, d_a)")
    check_ndim(W_k, "W_k", 2, "(d_kk, d_a)")
    check_ndim(w_v, "w_v", 1, "(d_a,)")
    for name, x in (("query", query), ("keys", keys), ("values", values), ("W_q", W_q), ("W_k", W_k), ("w_v", w_v)):
        check_floating(x, name)
    check_same_device(("query", query), ("keys", keys), ("values", values), ("W_q", W_q), ("W_k", W_k), ("w_v", w_v))
    B, T = keys.shape[:2]
    check_size(query, "query", 0, B, "B = keys.shape[0]")
    check_size(values, "values", 0, B, "B = keys.shape[0]")
    check_size(values, "values", 1, T, "T = keys.shape[1]")
    check_size(W_q, "W_q", 0, query.size(1), "d_q = query.shape[1]")
    check_size(W_k, "W_k", 0, keys.size(2), "d_kk = keys.shape[2]")
    check_size(W_k, "W_k", 1, W_q.size(1), "d_a = W_q.shape[1]")
    check_size(w_v, "w_v", 0, W_q.size(1), "d_a = W_q.shape[1]")
    check_mask(mask, "mask", (B, T), "(B, T)", device=keys.device)


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax over the last axis, restricted to mask == True; fully masked rows -> all zeros.

    scores: (..., T_q, T_k); mask: bool, broadcastable to scores.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    # The smallest finite number rather than -inf: a row with every key masked would be
    # softmax([-inf, ..., -inf]) = 0/0 = NaN, in the forward pass and in the gradient.
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)  # (..., T_q, T_k)
    # Fully masked rows came out uniform; every other masked entry is already exactly 0.
    return weights.masked_fill(~mask, 0.0)


def dot_product_attention(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(X X^T) X: attention with no parameters and no scaling (the book's first step).

    x: (..., T, d). Returns (output (..., T, d), weights (..., T, T)); each row of weights sums to 1.
    """
    _check_sequence_input(x)  # arguments checked here
    scores = x @ x.transpose(-2, -1)  # (..., T, T)
    weights = torch.softmax(scores, dim=-1)
    return weights @ x, weights  # (..., T, d), (..., T, T)


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                                 training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d_k)) v  (Vaswani et al. 2017, eq. 1), written out.

    q: (..., T_q, d_k)   k: (..., T_k, d_k)   v: (..., T_k, d_v); leading axes broadcast.
    mask: bool, broadcastable to (..., T_q, T_k); True = may attend.
    dropout_p: dropout on the attention weights, applied only when ``training`` is True.
    Returns (output (..., T_q, d_v), weights (..., T_q, T_k)); the weights are the ones actually
    used (after dropout), so output == weights @ v always.
    A query row with nothing to attend to gets zero weights and zero output, not NaN.
    """
    _check_qkv(q, k, v, mask)  # arguments checked here
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., T_q, T_k)
    weights = _masked_softmax(scores, mask)
    if training and dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights  # (..., T_q, d_v), (..., T_q, T_k)


def fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """The same as :func:`scaled_dot_product_attention`, through PyTorch's fused kernel.

    Shapes and mask convention as there; returns only the output (..., T_q, d_v). The kernel
    (``F.scaled_dot_product_attention``: flash or memory-efficient attention where the backend has
    one) never materialises the (T_q, T_k) scores or weights, so its memory grows linearly in T, not
    quadratically (a mask passed in keeps its own shape: a key padding mask (B, 1, 1, T_k) is linear,
    a full (T_q, T_k) bool mask is T_q T_k bytes). dropout_p is applied whenever it is > 0 (pass 0.0 in
    evaluation). Fully masked query rows give zero output here too, whatever the backend.
    """
    _check_qkv(q, k, v, mask)  # arguments checked here
    return _fused_attention(q, k, v, mask, dropout_p)


def _fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     dropout_p: float, enable_gqa: bool = False) -> torch.Tensor:
    """:func:`fused_attention` without the argument checks (for callers that checked them once).

    enable_gqa: k and v have fewer heads (axis -3) than q, each shared by a group of query heads
    (multihead.grouped_query_attention's grouping, which is the kernel's)."""
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, enable_gqa=enable_gqa)
    mask = torch.atleast_2d(mask)  # the kernel wants the (T_q, T_k) axes present, if only as size 1
    has_key = mask.any(dim=-1, keepdim=True)  # (..., T_q, 1)
    # Let empty rows attend everywhere (some backends return NaN for them), then zero them.
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, dropout_p=dropout_p,
                                            enable_gqa=enable_gqa)
    return output.masked_fill(~has_key, 0.0)  # (..., T_q, d_v)


def self_attention(x: torch.Tensor, W_q: torch.Tensor, W_k: torch.Tensor, W_v: torch.Tensor,
                   mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-head self-attention: Q = x W_q, K = x W_k, V = x W_v, then scaled dot-product attention.

    x: (B, T, d_model)   W_q, W_k: (d_model, d_k)   W_v: (d_model, d_v)
    mask: bool, broadcastable to (B, T, T); True = may attend.
    Returns (output (B, T, d_v), weights (B, T, T)).
    """
    _check_self_attention(x, W_q, W_k, W_v)  # arguments checked here (the mask in the call below)
    return scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, mask)  # Q, K: (B, T, d_k); V: (B, T, d_v)


class SelfAttention(nn.Module):
    """Single-head self-attention with learned projections W_q, W_k (d_model -> d_k) and W_v (d_model -> d_v).

    With bias=False, ``SelfAttention(x)`` equals ``self_attention(x, W_q.weight.T, W_k.weight.T, W_v.weight.T)``
    (nn.Linear stores its weight as (out, in)).
    """

    def __init__(self, d_model: int, d_k: int, d_v: int | None = None, bias: bool = False) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        check_positive_int(d_k, "d_k")
        d_v = d_k if d_v is None else check_positive_int(d_v, "d_v")
        self.W_q = nn.Linear(d_model, d_k, bias=bias)
        self.W_k = nn.Linear(d_model, d_k, bias=bias)
        self.W_v = nn.Linear(d_model, d_v, bias=bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, d_model); mask bool broadcastable to (B, T, T), True = may attend.

        Returns (output (B, T, d_v), weights (B, T, T)).
        """
        check_floating(x, "x")
        check_size(x, "x", -1, self.W_q.in_features, "d_model")
        return scaled_dot_product_attention(self.W_q(x), self.W_k(x), self.W_v(x), mask)


def additive_attention(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                       W_q: torch.Tensor, W_k: torch.Tensor, w_v: torch.Tensor,
                       mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention (Bahdanau et al. 2015): score_j = tanh(query W_q + keys_j W_k) . w_v.

    query: (B, d_q)   keys: (B, T, d_kk)   values: (B, T, d_v)
    W_q: (d_q, d_a)   W_k: (d_kk, d_a)   w_v: (d_a,)
    mask: bool (B, T) (or broadcastable to it); True = may attend.
    Returns (context (B, d_v), weights (B, T)); context = sum_j weights_j values_j.
    A row with nothing to attend to gets zero weights and a zero context.
    """
    _check_additive(query, keys, values, W_q, W_k, w_v, mask)  # arguments checked here
    hidden = torch.tanh((query @ W_q).unsqueeze(1) + keys @ W_k)  # (B, T, d_a)
    scores = hidden @ w_v  # (B, T)
    weights = _masked_softmax(scores, mask)  # (B, T)
    context = (weights.unsqueeze(1) @ values).squeeze(1)  # (B, d_v)
    return context, weights


class AdditiveAttention(nn.Module):
    """Bahdanau attention with learned W_q (query_dim -> attn_dim), W_k (key_dim -> attn_dim), w_v (attn_dim,).

    forward(query (B, query_dim), keys (B, T, key_dim), values (B, T, d_v), mask (B, T) bool True = may attend)
    -> (context (B, d_v), weights (B, T)); see :func:`additive_attention`.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim), ("attn_dim", attn_dim)):
            check_positive_int(value, name)
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(key_dim, attn_dim, bias=False)
        bound = 1.0 / math.sqrt(attn_dim)  # nn.Linear's default initialisation for a fan-in of attn_dim
        self.w_v = nn.Parameter(torch.empty(attn_dim).uniform_(-bound, bound))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return additive_attention(query, keys, values, self.W_q.weight.T, self.W_k.weight.T, self.w_v, mask)
