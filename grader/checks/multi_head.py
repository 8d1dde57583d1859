"""Checks for assignment 04_multi_head: split_heads, merge_heads, MultiHeadAttention."""

from __future__ import annotations

import math

import torch
from torch import nn

from grader.checks.attention import attend
from grader.checks.cases import Case, causal, linear_state, random_mask, randn
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes
from grader.checks.shortcuts import REF_ATTENTION, TORCH_ATTENTION, TORCH_ATTENTION_OPS
from grader.checks.structure import explain_attention_mask

ASSIGNMENT = "04_multi_head"

REF_MULTIHEAD = tuple(f"transformer_ref.multihead.{n}" for n in (
    "split_heads", "merge_heads", "MultiHeadAttention.forward", "MultiHeadAttention.__init__"))


# ---------------------------------------------------------------- split_heads

def _split_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("x (2, 5, 12), 3 heads", (randn(g, 2, 5, 12), 3), group="basic shapes"),
            Case("x (1, 1, 4), 1 head", (randn(g, 1, 1, 4), 1), group="one head or d_k = 1"),
            Case("x (3, 4, 6), 6 heads (d_k = 1)", (randn(g, 3, 4, 6), 6), group="one head or d_k = 1"),
            Case("float64, x (2, 7, 10), 2 heads", (randn(g, 2, 7, 10, dtype=torch.float64), 2), group="float64")]


def _split_no_transpose(x, num_heads):
    B, T, d = x.shape
    return x.reshape(B, num_heads, T, d // num_heads)


def _split_interleaved(x, num_heads):
    B, T, d = x.shape
    return x.reshape(B, T, d // num_heads, num_heads).permute(0, 3, 1, 2)


SPLIT_HEADS = Item(
    "split_heads", ASSIGNMENT, "function", _split_cases, Reference("multihead", "split_heads"), REF_MULTIHEAD,
    outputs=("heads",),
    mistakes=(
        Mistake("no_transpose", "you reshaped (B, T, d_model) straight to (B, H, T, d_k) without a transpose, which "
                "mixes positions between heads; view as (B, T, H, d_k) first, then transpose(1, 2).",
                _split_no_transpose),
        Mistake("interleaved", "your heads take every H-th feature; head h holds the contiguous features "
                "h*d_k .. (h+1)*d_k - 1 (view as (B, T, H, d_k), not (B, T, d_k, H)).", _split_interleaved),
    ),
    hints=("Head h gets the contiguous features h*d_k .. (h+1)*d_k - 1 (d_k = d_model / H): first cut the last axis "
           "into (H, d_k), then move the head axis in front of the time axis.",
           "view (or reshape) x as (B, T, H, d_k), then swap axes 1 and 2 with transpose. A direct reshape to (B, H, "
           "T, d_k) has the right shape but mixes positions into heads."))


def check_split_heads(impl, seeds=(0,), cuda=False):
    """Check a submission of split_heads(x (B, T, d_model), num_heads) -> (B, H, T, d_k) against transformer_ref
    on random inputs (each seed, and CUDA copies when cuda=True and a GPU is present); raise CheckFailed with
    what was expected, what came back and the likely mistake."""
    assert_passes(SPLIT_HEADS, impl, seeds, cuda)


# ---------------------------------------------------------------- merge_heads

def _merge_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("x (2, 3, 5, 4)", (randn(g, 2, 3, 5, 4),), group="basic shapes"),
            Case("x (1, 1, 1, 4)", (randn(g, 1, 1, 1, 4),), group="one head or d_k = 1"),
            Case("x (3, 6, 4, 1)", (randn(g, 3, 6, 4, 1),), group="one head or d_k = 1"),
            Case("float64, x (2, 2, 7, 5)", (randn(g, 2, 2, 7, 5, dtype=torch.float64),), group="float64")]


def _merge_no_transpose(x):
    B, H, T, d_k = x.shape
    return x.reshape(B, T, H * d_k)


def _merge_interleaved(x):
    B, H, T, d_k = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, T, H * d_k)


MERGE_HEADS = Item(
    "merge_heads", ASSIGNMENT, "function", _merge_cases, Reference("multihead", "merge_heads"), REF_MULTIHEAD,
    outputs=("merged",),
    mistakes=(
        Mistake("no_transpose", "you reshaped (B, H, T, d_k) straight to (B, T, H*d_k) without moving the head axis "
                "next to d_k; transpose(1, 2) first, then reshape.", _merge_no_transpose),
        Mistake("interleaved", "your result interleaves the heads feature by feature; concatenate them: head 0's "
                "d_k features, then head 1's, ... (transpose(1, 2), then reshape).", _merge_interleaved),
    ),
    hints=("The inverse of split_heads: bring the time axis back in front of the head axis, then put the heads' "
           "features side by side.",
           "transpose axes 1 and 2 to get (B, T, H, d_k), then reshape (not view: after a transpose the memory is not "
           "contiguous) to (B, T, H * d_k)."))


def check_merge_heads(impl, seeds=(0,), cuda=False):
    """Check a submission of merge_heads(x (B, H, T, d_k)) -> (B, T, H * d_k) against transformer_ref on random
    inputs (each seed, and CUDA copies when cuda=True and a GPU is present); raise CheckFailed with what was
    expected, what came back and the likely mistake."""
    assert_passes(MERGE_HEADS, impl, seeds, cuda)


# ---------------------------------------------------------------- MultiHeadAttention

def _mha_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, group: str, B: int, T_q: int, T_k: int, d_model: int, H: int,
             mask: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
             self_attention: bool = False) -> Case:
        state = linear_state(g, ("W_q", "W_k", "W_v", "W_o"), d_model, d_model, dtype)
        query = randn(g, B, T_q, d_model, dtype=dtype)
        key = query if self_attention else randn(g, B, T_k, d_model, dtype=dtype)
        value = query if self_attention else randn(g, B, T_k, d_model, dtype=dtype)
        return Case(label, (query, key, value), {} if mask is None else {"mask": mask},
                    {"d_model": d_model, "num_heads": H}, state, group=group)
    self_attention = case("self-attention, x (2, 5, 8), 2 heads", "self-attention", 2, 5, 5, 8, 2, self_attention=True)
    cross = case("cross-attention, query (3, 2, 12), key/value (3, 6, 12), 3 heads", "cross-attention", 3, 2, 6, 12, 3)
    one = case("batch 1, one query, one key, d_model 4, 4 heads", "cross-attention", 1, 1, 1, 4, 4)
    masked = case("query (2, 4, 6), key (2, 5, 6), 2 heads, mask (2, 4, 5) with a fully masked row",
                  "masks and float64", 2, 4, 5, 6, 2, random_mask(g, 2, 4, 5))
    float64 = case("float64, self-attention (2, 5, 6), 3 heads, causal mask (5, 5)", "masks and float64",
                   2, 5, 5, 6, 3, causal(5), torch.float64, self_attention=True)
    return [self_attention, cross, one, masked, float64]


class _MHAMistake(nn.Module):
    """Multi-head attention with the members the checker sets; each mistake overrides one step."""

    def __init__(self, d_model, num_heads):
        super().__init__()
        self.h = num_heads
        self.W_q, self.W_k, self.W_v, self.W_o = (nn.Linear(d_model, d_model) for _ in range(4))

    def forward(self, query, key, value, mask=None):
        B, T_q, d = query.shape
        key, value = self.keys_and_values(query, key, value)
        q, k, v = self.split(self.W_q(query)), self.split(self.W_k(key)), self.split(self.W_v(value))
        if mask is not None and mask.dim() == 3:
            mask = mask.unsqueeze(1)
        heads, weights = attend(q, k, v, mask, scale=self.scale(d))
        merged = heads.transpose(1, 2).reshape(B, T_q, d)
        return self.project(merged), self.head_weights(weights)

    def keys_and_values(self, query, key, value):
        return key, value

    def split(self, x):  # (B, T, d_model) -> (B, H, T, d_k)
        return x.view(x.size(0), x.size(1), self.h, -1).transpose(1, 2)

    def scale(self, d_model):
        return math.sqrt(d_model // self.h)

    def project(self, merged):
        return self.W_o(merged)

    def head_weights(self, weights):
        return weights


class _MHANoTranspose(_MHAMistake):
    def split(self, x):
        return x.reshape(x.size(0), self.h, x.size(1), -1)


class _MHAScaleDModel(_MHAMistake):
    def scale(self, d_model):
        return math.sqrt(d_model)


class _MHANoOutputProjection(_MHAMistake):
    def project(self, merged):
        return merged


class _MHAQueryForKeys(_MHAMistake):
    def keys_and_values(self, query, key, value):
        return query, query


class _MHAAverageWeights(_MHAMistake):
    def head_weights(self, weights):
        return weights.mean(1)


MULTI_HEAD_ATTENTION = Item(
    "MultiHeadAttention", ASSIGNMENT, "class", _mha_cases, Reference("multihead", "MultiHeadAttention"),
    TORCH_ATTENTION + REF_ATTENTION + REF_MULTIHEAD, outputs=("output", "weights"), forbidden_ops=TORCH_ATTENTION_OPS,
    members="W_q, W_k, W_v, W_o: nn.Linear(d_model, d_model) with bias",
    mistakes=(
        Mistake("no_transpose", "your heads were reshaped to (B, H, T, d_k) without a transpose; view the "
                "projections as (B, T, H, d_k), then transpose(1, 2).", _MHANoTranspose),
        Mistake("scale_d_model", "you divided the scores by sqrt(d_model); each head scales by sqrt(d_k) with "
                "d_k = d_model / num_heads.", _MHAScaleDModel),
        Mistake("no_output_projection", "the concatenated heads are returned without the output projection W_o.",
                _MHANoOutputProjection),
        Mistake("query_for_keys", "keys and values are computed from `query`; project `key` with W_k and `value` "
                "with W_v (in cross-attention they differ from the query).", _MHAQueryForKeys),
        Mistake("average_weights", "you returned the weights averaged over the heads (as nn.MultiheadAttention "
                "does by default); return them per head, (B, H, T_q, T_k).", _MHAAverageWeights),
    ),
    builds_on=(SPLIT_HEADS, MERGE_HEADS), explain=explain_attention_mask,
    hints=("Project query, key and value with W_q, W_k and W_v, split each into heads, run attention on all heads at "
           "once, merge the heads and project with W_o.",
           "split_heads of each projection is (B, H, T, d_k); a 3-D mask needs a head axis (unsqueeze at 1) to "
           "broadcast over the heads; call the provided attention on q, k, v and the mask; return W_o of the merged "
           "heads, and the weights of every head (B, H, T_q, T_k)."))


def check_MultiHeadAttention(impl, seeds=(0,), cuda=False):
    """Check a submission of the class MultiHeadAttention(d_model, num_heads), called as
    module(query, key, value, mask=None) -> (output, weights per head), against transformer_ref with the same
    parameters on random inputs; raise CheckFailed with what was expected, what came back and the likely
    mistake."""
    assert_passes(MULTI_HEAD_ATTENTION, impl, seeds, cuda)


ITEMS = (SPLIT_HEADS, MERGE_HEADS, MULTI_HEAD_ATTENTION)
