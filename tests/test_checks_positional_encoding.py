"""grader.checks.positional_encoding (02_positional_encoding): every catalogued mistake is named, valid
alternatives pass, the shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grader.checks import positional_encoding
from transformer_ref import positional as ref_positional
from transformer_ref.positional import relative_position_index as ref_index

import checks_contract as contract

ITEMS = positional_encoding.ITEMS
CHECKS = {positional_encoding.SINUSOIDAL_POSITIONAL_ENCODING: positional_encoding.check_sinusoidal_positional_encoding,
          positional_encoding.RELATIVE_POSITION_INDEX: positional_encoding.check_relative_position_index,
          positional_encoding.RELATIVE_ATTENTION: positional_encoding.check_relative_attention}


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
    positional_encoding.SINUSOIDAL_POSITIONAL_ENCODING: [pe_exp_log, pe_loops, pe_stack],
    positional_encoding.RELATIVE_POSITION_INDEX: [rel_index_loops, rel_index_clip_after_shift, rel_index_minimum],
    positional_encoding.RELATIVE_ATTENTION: [rel_attention_einsum, rel_attention_broadcast, rel_attention_float64],
}

# ---------------------------------------------------------------- shortcuts


def index_package(q_len, k_len, max_distance):
    return ref_index(q_len, k_len, max_distance)


def relative_fused(q, k, v, rel_k, rel_v, mask=None):
    bias = torch.einsum("...qd,qkd->...qk", q, rel_k) / math.sqrt(q.size(-1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias), None


SHORTCUTS = [(positional_encoding.SINUSOIDAL_POSITIONAL_ENCODING,
              lambda n, d: ref_positional.sinusoidal_positional_encoding(n, d),
              "transformer_ref.positional.sinusoidal_positional_encoding"),
             (positional_encoding.RELATIVE_POSITION_INDEX, index_package,
              "transformer_ref.positional.relative_position_index"),
             (positional_encoding.RELATIVE_ATTENTION, relative_fused,
              "torch.nn.functional.scaled_dot_product_attention")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(
        positional_encoding, "02_positional_encoding",
        ["sinusoidal_positional_encoding", "relative_position_index", "relative_attention"], ALTERNATIVES, CHECKS)


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


def test_grade_nan_on_a_fully_masked_row_loses_only_that_group():
    def nan_rows(q, k, v, rel_k, rel_v, mask=None):
        scores = (q @ k.transpose(-2, -1) + torch.einsum("...id,ijd->...ij", q, rel_k)) / math.sqrt(q.size(-1))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, dim=-1)
        return w @ v + torch.einsum("...ij,ijd->...id", w, rel_v), w
    result = contract.graded(positional_encoding.RELATIVE_ATTENTION, nan_rows)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "heads and a causal mask": True, "float64 and a fully masked row": False}
    assert "NaN at index" in result.message
