"""grader.checks.multi_head (04_multi_head): every catalogued mistake is named, valid alternatives pass, the
shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from grader.checks import multi_head
from transformer_ref import multihead as ref_multihead
from transformer_ref.multihead import merge_heads as ref_merge

import checks_contract as contract

ITEMS = multi_head.ITEMS
CHECKS = {multi_head.SPLIT_HEADS: multi_head.check_split_heads, multi_head.MERGE_HEADS: multi_head.check_merge_heads,
          multi_head.MULTI_HEAD_ATTENTION: multi_head.check_MultiHeadAttention}


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
    multi_head.SPLIT_HEADS: [split_permute, split_chunks, split_loop],
    multi_head.MERGE_HEADS: [merge_permute, merge_cat, merge_einsum],
    multi_head.MULTI_HEAD_ATTENTION: [MHAPerHead, MHAChunks, MHAFloat64],
}

# ---------------------------------------------------------------- shortcuts


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


class MHAPackage(ref_multihead.MultiHeadAttention):
    pass


SHORTCUTS = [(multi_head.SPLIT_HEADS, lambda x, h: ref_multihead.split_heads(x, h),
              "transformer_ref.multihead.split_heads"),
             (multi_head.MERGE_HEADS, merge_package, "transformer_ref.multihead.merge_heads"),
             (multi_head.MULTI_HEAD_ATTENTION, MHATorch, "torch.nn.MultiheadAttention"),
             (multi_head.MULTI_HEAD_ATTENTION, MHAPackage, "transformer_ref.multihead.MultiHeadAttention")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(multi_head, "04_multi_head", ["split_heads", "merge_heads", "MultiHeadAttention"],
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


def test_grade_keys_from_the_query_pass_self_attention_and_fail_cross_attention():
    item = multi_head.MULTI_HEAD_ATTENTION
    result = contract.graded(item, contract.mistake(item, "query_for_keys").impl)
    assert {g.group: g.passed for g in result.groups} == {
        "self-attention": True, "cross-attention": False, "masks and float64": False}
    assert result.mistake == "query_for_keys" and "wrong on cross-attention" in result.message


def test_grade_interleaved_heads_pass_only_where_one_head_or_d_k_1_hides_them():
    result = contract.graded(multi_head.SPLIT_HEADS, contract.mistake(multi_head.SPLIT_HEADS, "interleaved").impl)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": False, "one head or d_k = 1": True, "float64": False}
