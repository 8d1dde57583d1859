"""grader.checks.masking (05_masking): every catalogued mistake is named, valid alternatives pass, the
shortcuts are caught, and partial credit follows the groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grader.checks import masking
from grader.checks.cases import make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import CheckFailed, check
from grader.checks.run import run_student

ITEMS = {it.name: it for it in masking.ITEMS}


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
    "causal_mask": [causal_arange, causal_triu, causal_loops],
    "padding_mask": [padding_ne, padding_view, padding_logical_not],
    "decoder_self_attention_mask": [decoder_mask_and, decoder_mask_loops, decoder_mask_logical],
}
ALT = [(name, impl) for name, impls in ALTERNATIVES.items() for impl in impls]


def _shortcuts():
    """(item, submission, dotted name the message must give)."""
    import transformer_ref.masks as masks
    from transformer_ref.masks import padding_mask as ref_padding

    def causal_torch(T_q, T_k=None, device=None):
        return nn.Transformer.generate_square_subsequent_mask(T_q, device=device) == 0

    def padding_package(tokens, pad_id):
        return ref_padding(tokens, pad_id)

    def decoder_combined(tokens, pad_id):
        return masks.combine_masks(padding_ne(tokens, pad_id), causal_arange(tokens.size(1), device=tokens.device))

    return [("causal_mask", lambda T_q, T_k=None, device=None: masks.causal_mask(T_q, T_k, device),
             "transformer_ref.masks.causal_mask"),
            ("causal_mask", causal_torch, "torch.nn.Transformer.generate_square_subsequent_mask"),
            ("padding_mask", padding_package, "transformer_ref.masks.padding_mask"),
            ("decoder_self_attention_mask", decoder_combined, "transformer_ref.masks.combine_masks")]


MISTAKES = [(it.name, m) for it in masking.ITEMS for m in it.mistakes]


# ---------------------------------------------------------------- the tests

def test_the_assignment_has_enough_items_mistakes_and_alternatives():
    assert masking.ASSIGNMENT == "05_masking" and len(masking.ITEMS) == 3
    assert len(MISTAKES) >= 5
    for it in masking.ITEMS:
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
        getattr(masking, f"check_{name}")(mistake.impl)


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


def test_grade_a_top_left_causal_mask_fails_only_where_T_q_differs_from_T_k():
    result = _grade("causal_mask", _mistake("causal_mask", "top_left"))
    assert {g.group: g.passed for g in result.groups} == {
        "square masks": True, "T_q != T_k": False, "the device argument": True}
    assert result.fraction == pytest.approx(2 / 3) and result.mistake == "top_left"


def test_grade_ignoring_pad_id_passes_pad_id_0_only():
    for name in ("padding_mask", "decoder_self_attention_mask"):
        def zero_as_pad(tokens, pad_id, _correct=ALTERNATIVES[name][0]):
            return _correct(tokens, 0)
        result = _grade(name, zero_as_pad)
        assert {g.group: g.passed for g in result.groups} == {
            "pad_id 0": True, "another pad_id and int32 tokens": False}, name
