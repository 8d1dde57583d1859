"""grader.checks.attention (03_attention): every catalogued mistake is named, valid alternatives pass, the
shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grader.checks import attention
from transformer_ref import attention as ref_attention
from transformer_ref.attention import dot_product_attention as ref_dpa

import checks_contract as contract

ITEMS = attention.ITEMS
CHECKS = {attention.DOT_PRODUCT_ATTENTION: attention.check_dot_product_attention,
          attention.SCALED_DOT_PRODUCT_ATTENTION: attention.check_scaled_dot_product_attention,
          attention.SELF_ATTENTION: attention.check_self_attention}


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
    attention.DOT_PRODUCT_ATTENTION: [dpa_einsum, dpa_exp, dpa_matmul],
    attention.SCALED_DOT_PRODUCT_ATTENTION: [sdpa_einsum, sdpa_scale_first, sdpa_float64_inside],
    attention.SELF_ATTENTION: [self_attention_einsum, self_attention_fused_qkv, self_attention_loop],
}

# ---------------------------------------------------------------- shortcuts


def dpa_package(x):
    return ref_dpa(x)


def sdpa_fused(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None


SHORTCUTS = [(attention.DOT_PRODUCT_ATTENTION, dpa_package, "transformer_ref.attention.dot_product_attention"),
             (attention.SCALED_DOT_PRODUCT_ATTENTION, sdpa_fused, "torch.nn.functional.scaled_dot_product_attention"),
             (attention.SELF_ATTENTION,
              lambda x, W_q, W_k, W_v, mask=None: ref_attention.self_attention(x, W_q, W_k, W_v, mask),
              "transformer_ref.attention.self_attention")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(
        attention, "03_attention", ["dot_product_attention", "scaled_dot_product_attention", "self_attention"],
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


def test_grade_mask_mistakes_pass_basic_shapes_and_fail_masks():
    sdpa = attention.SCALED_DOT_PRODUCT_ATTENTION
    result = contract.graded(sdpa, contract.mistake(sdpa, "mask_inverted").impl)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "masks": False, "fully masked rows": False}
    assert result.fraction == pytest.approx(1 / 3) and result.mistake == "mask_inverted"
    assert result.message.startswith(
        "scaled_dot_product_attention: right on basic shapes; wrong on masks and fully masked rows.")

    result = contract.graded(sdpa, contract.mistake(sdpa, "masked_row_uniform").impl)
    assert [g.passed for g in result.groups] == [True, True, False] and result.mistake == "masked_row_uniform"

    def ignores_the_mask(x, W_q, W_k, W_v, mask=None):
        return self_attention_einsum(x, W_q, W_k, W_v)
    result = contract.graded(attention.SELF_ATTENTION, ignores_the_mask)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "masks": False, "float64 and a fully masked row": False}


def test_grade_a_mistake_everywhere_scores_zero():
    sdpa = attention.SCALED_DOT_PRODUCT_ATTENTION
    result = contract.graded(sdpa, contract.mistake(sdpa, "no_scale").impl)
    assert result.fraction == 0.0 and not result.shortcut and result.mistake == "no_scale"
    assert "Likely mistake: your weights equal softmax(QK^T) without dividing by sqrt(d_k)." in result.message
