"""The checking framework itself (transformer_ref.testing): what a student sees when their code raises,
returns the wrong type, shape, dtype or device, writes into its inputs, produces NaN, or calls a
forbidden shortcut; and the three separable steps the grader relies on."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transformer_ref import testing
from transformer_ref.attention import scaled_dot_product_attention as reference_sdpa
from transformer_ref.testing import Case, Outcome, check, compare, find_shortcut, make_cases, run_student

SDPA = "scaled_dot_product_attention"


def good_sdpa(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights


def test_a_correct_submission_passes_on_several_seeds():
    report = check(SDPA, good_sdpa, seeds=(0, 1, 2))
    assert report.passed and report.mistake is None and not report.shortcut, report.message
    testing.check_scaled_dot_product_attention(good_sdpa)  # the one-line entry point: no exception


def test_the_exception_of_a_submission_becomes_a_message():
    def broken(q, k, v, mask=None):
        return q @ k  # wrong inner dimensions for most cases
    report = check(SDPA, broken)
    assert not report.passed
    assert "raised RuntimeError at line" in report.message and "`return q @ k" in report.message
    assert "case 1 of" in report.message


def test_not_implemented_is_reported_as_such():
    def template(q, k, v, mask=None):
        raise NotImplementedError()
    report = check(SDPA, template)
    assert "not implemented yet" in report.message and "NotImplementedError" in report.message
    with pytest.raises(AssertionError, match="not implemented yet"):
        testing.check_scaled_dot_product_attention(template)


@pytest.mark.parametrize("returned, expected_text", [
    (lambda q, k, v, mask=None: good_sdpa(q, k, v, mask)[0], "should return a tuple (output, weights)"),
    (lambda q, k, v, mask=None: None, "should return a tuple (output, weights); it returned None"),
    (lambda q, k, v, mask=None: [t.tolist() for t in good_sdpa(q, k, v, mask)], "expected a torch.Tensor"),
    (lambda q, k, v, mask=None: (good_sdpa(q, k, v, mask)[0].numpy(), None), "got ndarray"),
])
def test_a_wrong_return_type_becomes_a_message(returned, expected_text):
    report = check(SDPA, returned)
    assert not report.passed and expected_text in report.message, report.message


def test_wrong_shape_dtype_and_device_are_named():
    def wrong_shape(q, k, v, mask=None):
        out, w = good_sdpa(q, k, v, mask)
        return out, w.transpose(-2, -1)
    assert "expected shape (2, 3, 5), got shape (2, 5, 3)" in check(SDPA, wrong_shape).message

    def wrong_dtype(q, k, v, mask=None):
        out, w = good_sdpa(q, k, v, mask)
        return out.double(), w
    message = check(SDPA, wrong_dtype).message
    assert "output: expected dtype torch.float32, got torch.float64" in message and "dtype=x.dtype" in message

    def wrong_device(q, k, v, mask=None):
        out, w = good_sdpa(q, k, v, mask)
        return out, w.to("meta")
    message = check(SDPA, wrong_device).message
    assert "weights: expected the result on cpu, got it on meta" in message and "device=x.device" in message


def test_modifying_an_input_in_place_is_detected_and_named():
    def in_place(q, k, v, mask=None):
        q.mul_(1.0 / math.sqrt(q.size(-1)))
        scores = q @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        w = torch.softmax(scores, -1)
        w = w if mask is None else w.masked_fill(~mask, 0.0)
        return w @ v, w
    report = check(SDPA, in_place)
    assert not report.passed and "changed its input q in place" in report.message
    # the cases themselves were left untouched, so the reference comparison stays valid
    cases = make_cases(SDPA, 0)
    pristine = [c.args[0].clone() for c in cases]
    outcomes = run_student(SDPA, in_place, cases)
    assert all(torch.equal(c.args[0], p) for c, p in zip(cases, pristine))
    assert outcomes[0].mutated == ["q"]


def test_nan_where_the_reference_has_none_is_reported():
    def nan_rows(q, k, v, mask=None):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        w = torch.softmax(scores, -1)
        return w @ v, w
    report = check(SDPA, nan_rows)
    assert "NaN at index" in report.message and "zero weights and zero output" in report.message
    assert report.mistake == "masked_row_nan"


def test_values_off_by_a_little_more_than_the_tolerance_fail_and_within_it_pass():
    def scaled(factor):
        def fn(q, k, v, mask=None):
            out, w = good_sdpa(q, k, v, mask)
            return out * factor, w
        return fn
    assert check(SDPA, scaled(1 + 1e-8)).passed
    report = check(SDPA, scaled(1 + 1e-3))
    assert not report.passed and "values differ; the largest difference is at index" in report.message
    assert report.mistake is None and "Likely mistake" not in report.message


def test_class_items_report_missing_or_extra_parameters():
    class NoProjections(nn.Module):
        def __init__(self, d_model, num_heads):
            super().__init__()
            self.q_proj = nn.Linear(d_model, d_model)

        def forward(self, query, key, value, mask=None):
            return query, None
    message = check("MultiHeadAttention", NoProjections).message
    assert "has no parameter 'W_q.weight'" in message and "W_q, W_k, W_v, W_o" in message

    class NotAModule:
        def __init__(self, d_model, num_heads):
            pass
    assert "must be an nn.Module subclass" in check("MultiHeadAttention", NotAModule).message

    class BadInit(nn.Module):
        def __init__(self, d_model):
            super().__init__()
    assert "MultiHeadAttention(d_model=" in check("MultiHeadAttention", BadInit).message


def test_shortcut_through_the_module_attribute_is_caught_at_run_time():
    def fused(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    report = check(SDPA, fused)
    assert report.shortcut and not report.passed and "scores 0" in report.message
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention  # tripwire removed


def test_shortcut_bound_by_import_is_found_by_inspection():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def aliased(q, k, v, mask=None):
        return sdpa(q, k, v, attn_mask=mask), None
    assert find_shortcut(SDPA, aliased) == "torch.nn.functional.scaled_dot_product_attention"

    def via_helper(q, k, v, mask=None):  # through a helper in the same module, and a closure
        return helper(q, k, v, mask)
    assert find_shortcut(SDPA, via_helper) == "transformer_ref.attention.scaled_dot_product_attention"

    def make_closure():
        fn = reference_sdpa
        return lambda q, k, v, mask=None: fn(q, k, v, mask)
    assert find_shortcut(SDPA, make_closure()) == "transformer_ref.attention.scaled_dot_product_attention"

    def imports_inside(q, k, v, mask=None):
        from transformer_ref.attention import scaled_dot_product_attention as s
        return s(q, k, v, mask)
    assert find_shortcut(SDPA, imports_inside) == "transformer_ref.attention.scaled_dot_product_attention"
    assert check(SDPA, imports_inside).shortcut

    class Subclass(nn.MultiheadAttention):
        pass
    assert find_shortcut("MultiHeadAttention", Subclass) == "torch.nn.MultiheadAttention"
    assert find_shortcut(SDPA, good_sdpa) is None


def helper(q, k, v, mask):
    return reference_sdpa(q, k, v, mask)


def test_a_shortcut_whose_exception_is_swallowed_is_still_caught():
    def sneaky(q, k, v, mask=None):
        try:
            return F.scaled_dot_product_attention(q, k, v), None
        except Exception:
            return good_sdpa(q, k, v, mask)
    assert check(SDPA, sneaky).shortcut


def test_cases_are_deterministic_per_seed_and_differ_between_seeds():
    a, b, c = make_cases(SDPA, 3), make_cases(SDPA, 3), make_cases(SDPA, 4)
    assert [x.label for x in a] == [x.label for x in b]
    assert all(torch.equal(x, y) for ca, cb in zip(a, b) for x, y in zip(ca.args, cb.args))
    assert not all(torch.equal(x, y) for ca, cc in zip(a, c) for x, y in zip(ca.args, cc.args) if x.shape == y.shape)
    labels = " ".join(x.label for x in a)
    assert "float64" in labels and "fully masked row" in labels and "batch 1" in labels


def test_the_three_steps_survive_a_round_trip_through_torch_save():
    """The grader runs the submission in another process: cases and outcomes must serialise."""
    for item in (SDPA, "MultiHeadAttention", "mask_tokens", "greedy_decode"):
        cases = make_cases(item, 0)
        buffer = io.BytesIO()
        torch.save(cases, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        outcomes = run_student(item, testing.EXERCISES[item].reference(), loaded, watch=False)
        buffer = io.BytesIO()
        torch.save(outcomes, buffer)
        buffer.seek(0)
        assert compare(item, cases, torch.load(buffer, weights_only=False)).passed


def test_compare_accepts_hand_made_outcomes():
    cases = make_cases(SDPA, 0)
    expected = [Outcome(value=reference_sdpa(*c.args, **c.kwargs)) for c in cases]
    assert compare(SDPA, cases, expected).passed
    assert "does not run yet" in compare(SDPA, cases, [Outcome(error="boom")] * len(cases)).message
    assert not compare(SDPA, cases, expected[:-1]).passed
    flagged = compare(SDPA, cases, [Outcome(value=o.value, shortcut="uses X") for o in expected])
    assert flagged.shortcut and flagged.message == "uses X"


def test_an_unknown_exercise_name_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown exercise 'attention'"):
        make_cases("attention")


def test_scalar_outputs_are_compared_as_numbers():
    assert check("noam_lr", lambda s, d, w: 0.0 if s == 0 else d ** -0.5 * min(s ** -0.5, s * w ** -1.5)).passed
    message = check("noam_lr", lambda s, d, w: "0.001").message
    assert "expected a number" in message and "str" in message


def mask_tokens(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15, generator=None):
    special = torch.isin(input_ids, torch.tensor(special_token_ids, dtype=input_ids.dtype))
    chosen = (torch.rand(input_ids.shape, generator=generator) < mlm_probability) & ~special
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    inputs = torch.where(chosen & (action < 0.8), mask_token_id, input_ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, torch.where(chosen, input_ids, -100)


def test_mask_tokens_statistics_pass_for_a_correct_solution_on_many_seeds():
    """6-sigma tolerances: a correct solution should essentially never fail (here: 8 seeds)."""
    report = check("mask_tokens", mask_tokens, seeds=range(10, 18))
    assert report.passed, report.message


def test_mask_tokens_invariant_messages():
    def keeps_everything(input_ids, mask_token_id, vocab_size, special_token_ids, mlm_probability=0.15,
                         generator=None):
        return input_ids.clone(), torch.full_like(input_ids, -100)
    report = check("mask_tokens", keeps_everything)
    assert not report.passed and "mlm_probability = 1.0 every word must be chosen" in report.message

    def returns_one(input_ids, *args, **kwargs):
        return input_ids.clone()
    assert "should return a tuple (inputs, labels)" in check("mask_tokens", returns_one).message


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_cases_are_added_and_checked():
    cases = make_cases(SDPA, 0, cuda=True)
    assert any(c.args[0].is_cuda for c in cases)
    assert check(SDPA, good_sdpa, cuda=True).passed

    def cpu_output(q, k, v, mask=None):
        out, w = good_sdpa(q, k, v, mask)
        return out.cpu(), w
    assert "expected the result on cuda:0, got it on cpu" in check(SDPA, cpu_output, cuda=True).message
