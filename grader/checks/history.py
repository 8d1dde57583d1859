"""Checks for assignment 01_history: rnn_forward, additive_attention, AdditiveAttention."""

from __future__ import annotations

import torch
from torch import nn

from grader.checks.cases import Case, random_mask, randn
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.shortcuts import REF_ATTENTION

ASSIGNMENT = "01_history"


def softmax_rows(scores: torch.Tensor, mask: torch.Tensor | None, *, fill: float | None = None,
                 dim: int = -1) -> torch.Tensor:
    """softmax with masked entries filled by `fill` (default: the dtype's smallest) and fully masked rows
    zeroed: the correct masking, which the mistakes of this and later assignments build on."""
    if mask is None:
        return torch.softmax(scores, dim=dim)
    fill = torch.finfo(scores.dtype).min if fill is None else fill
    weights = torch.softmax(scores.masked_fill(~mask, fill), dim=dim)
    return weights if fill == float("-inf") else weights.masked_fill(~mask, 0.0)


# ---------------------------------------------------------------- rnn_forward

def _rnn_cases(g: torch.Generator, seed: int) -> list[Case]:
    def args(B: int, T: int, d_in: int, H: int, dtype: torch.dtype = torch.float32, h0: bool = True) -> tuple:
        return (randn(g, B, T, d_in, dtype=dtype), randn(g, B, H, dtype=dtype) if h0 else None,
                randn(g, d_in, H, dtype=dtype, scale=d_in ** -0.5), randn(g, H, H, dtype=dtype, scale=H ** -0.5),
                randn(g, H, dtype=dtype, scale=0.3))
    return [Case("x (2, 5, 3), H = 4", args(2, 5, 3, 4), group="basic shapes"),
            Case("batch 1, one step: x (1, 1, 2), H = 3", args(1, 1, 2, 3), group="batch 1, one step and float64"),
            Case("x (3, 4, 5), H = 5 (square W_xh)", args(3, 4, 5, 5), group="basic shapes"),
            Case("h0 = None (start from zeros), x (2, 3, 4), H = 2", args(2, 3, 4, 2, h0=False),
                 group="starting from h0 = None"),
            Case("float64, x (2, 6, 3), H = 4", args(2, 6, 3, 4, torch.float64), group="batch 1, one step and float64")]


def _rnn(x, h0, W_xh, W_hh, b_h, *, act=torch.tanh, recurrent=True, transpose=False, shift=False):
    """The Elman RNN with one thing done the wrong way (the keyword arguments)."""
    h = x.new_zeros(x.size(0), W_xh.size(1)) if h0 is None else h0
    W = W_hh.T if transpose else W_hh
    outputs = []
    for t in range(x.size(1)):
        if shift:
            outputs.append(h)
        h = act(x[:, t] @ W_xh + (h if recurrent or h0 is None else h0) @ W + b_h)
        if not shift:
            outputs.append(h)
    return torch.stack(outputs, dim=1), h


def _rnn_no_recurrence(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, recurrent=False)


def _rnn_outputs_shifted(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, shift=True)


def _rnn_no_tanh(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, act=lambda z: z)


def _rnn_W_hh_transposed(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, transpose=True)


def _rnn_sigmoid(x, h0, W_xh, W_hh, b_h):
    return _rnn(x, h0, W_xh, W_hh, b_h, act=torch.sigmoid)


RNN_SHORTCUTS = ("torch.nn.RNN.forward", "torch.nn.RNNCell.forward", "torch.nn.GRU.forward", "torch.nn.LSTM.forward",
                 "torch.rnn_tanh", "torch.rnn_tanh_cell", "transformer_ref.rnn.rnn_forward",
                 "transformer_ref.rnn.Seq2Seq.forward")
RNN_OPS = ("aten::rnn_tanh*", "aten::rnn_relu*", "aten::gru*", "aten::lstm*", "aten::_thnn_fused_*",
           "aten::_cudnn_rnn*", "aten::miopen_rnn*")

RNN_FORWARD = Item(
    "rnn_forward", ASSIGNMENT, "function", _rnn_cases, Reference("rnn", "rnn_forward"), RNN_SHORTCUTS,
    outputs=("outputs", "h_T"), forbidden_ops=RNN_OPS,
    mistakes=(
        Mistake("no_recurrence", "every step uses h0 instead of the previous hidden state; "
                "h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).", _rnn_no_recurrence),
        Mistake("outputs_shifted", "your outputs are h_0 .. h_{T-1}; they should be the new states h_1 .. h_T "
                "(append after the update).", _rnn_outputs_shifted),
        Mistake("no_tanh", "the tanh is missing: h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h).", _rnn_no_tanh),
        Mistake("W_hh_transposed", "you used W_hh transposed; the state is a row vector: h_{t-1} @ W_hh.",
                _rnn_W_hh_transposed),
        Mistake("sigmoid", "you used a sigmoid (or ReLU); the Elman RNN uses tanh.", _rnn_sigmoid),
    ),
    hints=("An RNN reads the sequence one step at a time: the hidden state after step t comes from the input at t and "
           "the hidden state before it, h_t = tanh(x_t W_xh + h_(t-1) W_hh + b_h), starting from h0 (zeros (B, H) when"
           " h0 is None).",
           "Loop over the time axis, taking x[:, t] (B, d_in) at each step; update h with the formula and keep every h"
           " in a list; torch.stack of the list along dim 1 is (B, T, H). Return it with the last h."))


def check_rnn_forward(impl, seeds=(0,), cuda=False):
    """Check a submission of rnn_forward(x, h0, W_xh, W_hh, b_h) -> (outputs, h_T) against transformer_ref
    on random inputs (each seed, and CUDA copies when cuda=True and a GPU is present); raise CheckFailed
    with what was expected, what came back and the likely mistake."""
    assert_passes(RNN_FORWARD, impl, seeds, cuda)


# ---------------------------------------------------------------- additive_attention

def _additive_args(g: torch.Generator, B: int, T: int, d_q: int, d_kk: int, d_v: int, d_a: int,
                   dtype: torch.dtype = torch.float32) -> tuple:
    return (randn(g, B, d_q, dtype=dtype), randn(g, B, T, d_kk, dtype=dtype), randn(g, B, T, d_v, dtype=dtype),
            randn(g, d_q, d_a, dtype=dtype), randn(g, d_kk, d_a, dtype=dtype), randn(g, d_a, dtype=dtype, scale=2.0))


def _additive_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("query (2, 3), keys (2, 5, 4), values (2, 5, 6), d_a 7", _additive_args(g, 2, 5, 3, 4, 6, 7),
                 group="basic shapes"),
            Case("batch 1, one key", _additive_args(g, 1, 1, 2, 3, 2, 4), group="basic shapes"),
            Case("query (3, 4), keys (3, 6, 4), mask (3, 6) with a fully masked row",
                 _additive_args(g, 3, 6, 4, 4, 3, 5), {"mask": random_mask(g, 3, 6)}, group="masks"),
            Case("float64, query (2, 5), keys (2, 4, 3), mask (2, 4)",
                 _additive_args(g, 2, 4, 5, 3, 2, 6, torch.float64),
                 {"mask": random_mask(g, 2, 4, empty_row=False)}, group="float64 with a mask")]


def _bahdanau(query, keys, values, W_q, W_k, w_v, mask=None, *, tanh=True, dim=-1, multiplicative=False,
              invert=False, tanh_after=False):
    """Additive attention with one thing done the wrong way (the keyword arguments)."""
    if multiplicative:
        scores = ((query @ W_q).unsqueeze(1) * (keys @ W_k)).sum(-1)
    else:
        hidden = (query @ W_q).unsqueeze(1) + keys @ W_k  # (B, T, d_a)
        if tanh_after:
            scores = torch.tanh(hidden @ w_v)
        else:
            scores = (torch.tanh(hidden) if tanh else hidden) @ w_v  # (B, T)
    if mask is not None and invert:
        mask = ~mask
    weights = softmax_rows(scores, mask, dim=dim)
    return (weights.unsqueeze(1) @ values).squeeze(1), weights


def _add_no_tanh(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, tanh=False)


def _add_softmax_over_batch(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, dim=0)


def _add_multiplicative(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, multiplicative=True)


def _add_mask_inverted(query, keys, values, W_q, W_k, w_v, mask=None):
    return _bahdanau(query, keys, values, W_q, W_k, w_v, mask, invert=True)


ADDITIVE_ATTENTION = Item(
    "additive_attention", ASSIGNMENT, "function", _additive_cases, Reference("attention", "additive_attention"),
    REF_ATTENTION, outputs=("context", "weights"),
    mistakes=(
        Mistake("no_tanh", "the tanh is missing: score_j = tanh(query W_q + keys_j W_k) . w_v.", _add_no_tanh),
        Mistake("softmax_over_batch", "your softmax runs over the batch axis (dim=0); the weights of one query are "
                "over its T keys (dim=-1).", _add_softmax_over_batch),
        Mistake("multiplicative", "you multiplied the projected query and key (a dot product); additive attention "
                "adds them, applies tanh and projects with w_v.", _add_multiplicative),
        Mistake("mask_inverted", "your mask is inverted: True means 'may attend'.", _add_mask_inverted),
    ),
    hints=("Bahdanau attention scores each key with a small network, score_j = w_v . tanh(q W_q + k_j W_k); the "
           "weights are the softmax of the scores over the keys, and the output is the weights' sum of the values.",
           "Project the query to (B, d_a) and give it a time axis so that it broadcasts against the projected keys (B,"
           " T, d_a); tanh, then a product with w_v gives scores (B, T). Masked keys get the dtype's most negative "
           "value before the softmax and weight 0 after it; sum the weighted values over T (einsum, or multiply and "
           "sum)."))


def check_additive_attention(impl, seeds=(0,), cuda=False):
    """Check a submission of additive_attention(query, keys, values, W_q, W_k, w_v, mask=None) -> (context,
    weights) against transformer_ref on random inputs (each seed, and CUDA copies when cuda=True and a GPU
    is present); raise CheckFailed with what was expected, what came back and the likely mistake."""
    assert_passes(ADDITIVE_ATTENTION, impl, seeds, cuda)


# ---------------------------------------------------------------- AdditiveAttention

def _additive_module_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, group: str, B: int, T: int, d_q: int, d_kk: int, d_v: int, d_a: int, mask: bool = False,
             dtype: torch.dtype = torch.float32) -> Case:
        query, keys, values, W_q, W_k, w_v = _additive_args(g, B, T, d_q, d_kk, d_v, d_a, dtype)
        state = {"W_q.weight": W_q.T.contiguous(), "W_k.weight": W_k.T.contiguous(), "w_v": w_v}
        return Case(label, (query, keys, values), {"mask": random_mask(g, B, T)} if mask else {},
                    {"query_dim": d_q, "key_dim": d_kk, "attn_dim": d_a}, state, group=group)
    return [case("query_dim 3, key_dim 4, attn_dim 7; keys (2, 5, 4)", "basic shapes", 2, 5, 3, 4, 6, 7),
            case("batch 1, one key", "basic shapes", 1, 1, 2, 3, 2, 4),
            case("mask (3, 6) with a fully masked row", "masks", 3, 6, 4, 5, 3, 5, mask=True),
            case("float64", "float64", 2, 4, 5, 3, 2, 6, dtype=torch.float64)]


class _AdditiveModuleMistake(nn.Module):
    """AdditiveAttention with the members the checker sets; `attend` is where a mistake goes."""

    def __init__(self, query_dim, key_dim, attn_dim):
        super().__init__()
        self.W_q = nn.Linear(query_dim, attn_dim, bias=False)
        self.W_k = nn.Linear(key_dim, attn_dim, bias=False)
        self.w_v = nn.Parameter(torch.zeros(attn_dim))

    def forward(self, query, keys, values, mask=None):
        return self.attend(query, keys, values, self.W_q.weight.T, self.W_k.weight.T, self.w_v, mask)

    def attend(self, *args):
        return _bahdanau(*args)


class _AdditiveModuleNoTanh(_AdditiveModuleMistake):
    def attend(self, *args):
        return _bahdanau(*args, tanh=False)


class _AdditiveModuleTanhAfterWv(_AdditiveModuleMistake):
    def attend(self, *args):
        return _bahdanau(*args, tanh_after=True)


class _AdditiveModuleMaskInverted(_AdditiveModuleMistake):
    def attend(self, *args):
        return _bahdanau(*args, invert=True)


ADDITIVE_ATTENTION_MODULE = Item(
    "AdditiveAttention", ASSIGNMENT, "class", _additive_module_cases, Reference("attention", "AdditiveAttention"),
    REF_ATTENTION, outputs=("context", "weights"),
    members="W_q = nn.Linear(query_dim, attn_dim, bias=False), W_k = nn.Linear(key_dim, attn_dim, bias=False) "
            "and w_v = nn.Parameter of shape (attn_dim,)",
    mistakes=(
        Mistake("no_tanh", "the tanh is missing: score_j = tanh(W_q(query) + W_k(keys_j)) . w_v.",
                _AdditiveModuleNoTanh),
        Mistake("tanh_after_w_v", "the tanh is applied to the score; it goes before w_v: "
                "tanh(W_q(query) + W_k(keys_j)) . w_v.", _AdditiveModuleTanhAfterWv),
        Mistake("mask_inverted", "your mask is inverted: True means 'may attend'.", _AdditiveModuleMaskInverted),
    ),
    builds_on=(ADDITIVE_ATTENTION,),
    hints=("The module only holds the parameters and calls your additive_attention: W_q and W_k are linear maps into "
           "attn_dim without bias, w_v is a vector of attn_dim parameters.",
           "In __init__: two nn.Linear(..., attn_dim, bias=False) members and an nn.Parameter of shape (attn_dim,) for"
           " w_v. In forward pass the Linear members' weight matrices transposed (an nn.Linear computes x W^T) to "
           "additive_attention, with the mask."))


def check_AdditiveAttention(impl, seeds=(0,), cuda=False):
    """Check a submission of the class AdditiveAttention(query_dim, key_dim, attn_dim), called as
    module(query, keys, values, mask=None) -> (context, weights), against transformer_ref with the same
    parameters on random inputs; raise CheckFailed with what was expected, what came back and the likely
    mistake."""
    assert_passes(ADDITIVE_ATTENTION_MODULE, impl, seeds, cuda)


ITEMS = (RNN_FORWARD, ADDITIVE_ATTENTION, ADDITIVE_ATTENTION_MODULE)
