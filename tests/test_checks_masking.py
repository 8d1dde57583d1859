"""grader.checks.masking (05_masking): every catalogued mistake is named, valid alternatives pass, the
shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from grader.checks import masking
from transformer_ref import masks
from transformer_ref.masks import padding_mask as ref_padding

import checks_contract as contract

ITEMS = masking.ITEMS
CHECKS = {masking.CAUSAL_MASK: masking.check_causal_mask, masking.PADDING_MASK: masking.check_padding_mask,
          masking.DECODER_SELF_ATTENTION_MASK: masking.check_decoder_self_attention_mask}


# ---------------------------------------------------------------- valid alternatives

def causal_arange(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    i = torch.arange(T_q, device=device)[:, None]
    j = torch.arange(T_k, device=device)[None]
    return j <= i + (T_k - T_q)


def causal_triu(T_q, T_k=None, device=None):
    T_k = T_k or T_q
    return ~torch.triu(torch.ones(T_q, T_k, dtype=torch.bool, device=device), diagonal=T_k - T_q + 1)


def causal_loops(T_q, T_k=None, device=None):
    T_k = T_k or T_q
    return torch.tensor([[j <= i + T_k - T_q for j in range(T_k)] for i in range(T_q)], device=device)


def padding_ne(tokens, pad_id):
    return tokens.ne(pad_id)[:, None, :]


def padding_view(tokens, pad_id):
    return (tokens != pad_id).view(tokens.size(0), 1, tokens.size(1))


def padding_logical_not(tokens, pad_id):
    return torch.logical_not(tokens == pad_id).unsqueeze(-2)


def decoder_mask_and(tokens, pad_id):
    T = tokens.size(1)
    return (tokens != pad_id)[:, None, :] & causal_arange(T, device=tokens.device)


def decoder_mask_loops(tokens, pad_id):
    B, T = tokens.shape
    return torch.tensor([[[j <= i and tokens[b, j].item() != pad_id for j in range(T)] for i in range(T)]
                         for b in range(B)], device=tokens.device)


def decoder_mask_logical(tokens, pad_id):
    causal = torch.tril(torch.ones(tokens.size(1), tokens.size(1), device=tokens.device)).bool()
    return torch.logical_and(padding_view(tokens, pad_id).expand(-1, tokens.size(1), -1), causal)


ALTERNATIVES = {
    masking.CAUSAL_MASK: [causal_arange, causal_triu, causal_loops],
    masking.PADDING_MASK: [padding_ne, padding_view, padding_logical_not],
    masking.DECODER_SELF_ATTENTION_MASK: [decoder_mask_and, decoder_mask_loops, decoder_mask_logical],
}

# ---------------------------------------------------------------- shortcuts


def causal_torch(T_q, T_k=None, device=None):
    return nn.Transformer.generate_square_subsequent_mask(T_q, device=device) == 0


def padding_package(tokens, pad_id):
    return ref_padding(tokens, pad_id)


def decoder_combined(tokens, pad_id):
    return masks.combine_masks(padding_ne(tokens, pad_id), causal_arange(tokens.size(1), device=tokens.device))


SHORTCUTS = [(masking.CAUSAL_MASK, lambda T_q, T_k=None, device=None: masks.causal_mask(T_q, T_k, device),
              "transformer_ref.masks.causal_mask"),
             (masking.CAUSAL_MASK, causal_torch, "torch.nn.Transformer.generate_square_subsequent_mask"),
             (masking.PADDING_MASK, padding_package, "transformer_ref.masks.padding_mask"),
             (masking.DECODER_SELF_ATTENTION_MASK, decoder_combined, "transformer_ref.masks.combine_masks")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(
        masking, "05_masking", ["causal_mask", "padding_mask", "decoder_self_attention_mask"], ALTERNATIVES, CHECKS)


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


def test_grade_a_top_left_causal_mask_fails_only_where_T_q_differs_from_T_k():
    result = contract.graded(masking.CAUSAL_MASK, contract.mistake(masking.CAUSAL_MASK, "top_left").impl)
    assert {g.group: g.passed for g in result.groups} == {
        "square masks": True, "T_q != T_k": False, "the device argument": True}
    assert result.fraction == pytest.approx(2 / 3) and result.mistake == "top_left"


def test_grade_ignoring_pad_id_passes_pad_id_0_only():
    for item in (masking.PADDING_MASK, masking.DECODER_SELF_ATTENTION_MASK):
        def zero_as_pad(tokens, pad_id, _correct=ALTERNATIVES[item][0]):
            return _correct(tokens, 0)
        result = contract.graded(item, zero_as_pad)
        assert {g.group: g.passed for g in result.groups} == {
            "pad_id 0": True, "another pad_id and int32 tokens": False, "tokens on another device": True}, item.name


# ---------------------------------------------------------------- no silent pass: the device (issue 16, item 3)
# Each of these is right on the CPU; before the meta cases, each passed with full marks.

def causal_device_ignored(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool).tril(T_k - T_q)


def causal_arange_on_default(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.arange(T_k)[None] <= torch.arange(T_q)[:, None] + (T_k - T_q)


def causal_moved_to_cpu(T_q, T_k=None, device=None):
    return causal_arange(T_q, T_k, device).cpu()


def padding_numpy(tokens, pad_id):
    return torch.from_numpy(tokens.numpy() != pad_id).unsqueeze(1)


def padding_numpy_via_cpu(tokens, pad_id):
    return torch.from_numpy(np.not_equal(tokens.cpu().numpy(), pad_id))[:, None]


def padding_lists_on_default(tokens, pad_id):
    return torch.tensor([[t != pad_id for t in row] for row in tokens.tolist()]).unsqueeze(1)


def decoder_causal_on_default(tokens, pad_id):
    T = tokens.size(1)
    return (tokens != pad_id).unsqueeze(1) & torch.ones(T, T, dtype=torch.bool).tril()


def decoder_calls_causal_without_device(tokens, pad_id):
    return padding_ne(tokens, pad_id) & causal_arange(tokens.size(1))


def decoder_loops_on_default(tokens, pad_id):
    B, T = tokens.shape
    return torch.tensor([[[j <= i and tokens[b, j].item() != pad_id for j in range(T)] for i in range(T)]
                         for b in range(B)])


DEVICE_MISTAKES = [  # (item, impl, what the message must say)
    (masking.CAUSAL_MASK, causal_device_ignored, "causal_mask ignored its device argument"),
    (masking.CAUSAL_MASK, causal_arange_on_default, "Asked for meta, it returned a tensor on cpu: pass device=device"),
    (masking.CAUSAL_MASK, causal_moved_to_cpu, "Likely mistake: moving tensors to the CPU"),
    (masking.PADDING_MASK, padding_numpy, "Likely mistake: a NumPy round trip works only on the CPU"),
    (masking.PADDING_MASK, padding_numpy_via_cpu, "Likely mistake: moving tensors to the CPU (.cpu()"),
    (masking.PADDING_MASK, padding_lists_on_default, "create new tensors with device=tokens.device"),
    (masking.DECODER_SELF_ATTENTION_MASK, decoder_causal_on_default, "create new tensors with device=tokens.device"),
    (masking.DECODER_SELF_ATTENTION_MASK, decoder_calls_causal_without_device, "device=tokens.device"),
    (masking.DECODER_SELF_ATTENTION_MASK, decoder_loops_on_default, "device=tokens.device"),
]


@pytest.mark.parametrize("item,impl,says", DEVICE_MISTAKES, ids=lambda x: getattr(x, "__name__", None))
def test_a_result_off_the_device_fails_with_a_named_message_in_the_view_and_in_grading(item, impl, says):
    report = contract.check(item, impl)
    assert not report.passed and says in report.message and "meta" in report.message, report.message
    assert "Use Tensor.cpu()" not in report.message, report.message   # torch's advice breaks the device contract
    with pytest.raises(contract.CheckFailed, match="device"):
        CHECKS[item](impl)
    result = contract.graded(item, impl)
    device_group = "the device argument" if item is masking.CAUSAL_MASK else "tokens on another device"
    assert {g.group for g in result.groups if not g.passed} == {device_group}, result.message
    assert says in next(g.message for g in result.groups if not g.passed)


def test_code_that_reads_values_in_python_passes_when_it_keeps_the_device():
    """.tolist() and .item() work on a GPU: the meta case runs them again with values (default device meta)."""
    def padding_lists(tokens, pad_id):
        return torch.tensor([[t != pad_id for t in row] for row in tokens.tolist()], device=tokens.device)[:, None]
    for item, impl in ((masking.PADDING_MASK, padding_lists),
                       (masking.DECODER_SELF_ATTENTION_MASK, decoder_mask_loops)):
        report = contract.check(item, impl)
        assert report.passed, report.message


def test_a_dtype_conversion_before_reading_values_is_still_run_again_with_values():
    """.to(dtype) on a meta tensor is fine; the .item() after it is what meta cannot do (a GPU can)."""
    def padding_items(tokens, pad_id):
        ids = tokens.to(torch.long)
        B, T = ids.shape
        return torch.tensor([[ids[b, t].item() != pad_id for t in range(T)] for b in range(B)],
                            device=tokens.device)[:, None]
    report = contract.check(masking.PADDING_MASK, padding_items)
    assert report.passed, report.message
