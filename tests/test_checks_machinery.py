"""The shared machinery of grader.checks: what a student sees when their code raises, returns the wrong
type, shape, dtype or device, writes into its inputs, produces NaN, or uses a forbidden shortcut; the
three separable steps the grader relies on; the tripwires, the source reading and partial credit."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import grader.checks
from grader.checks.attention import SCALED_DOT_PRODUCT_ATTENTION as SDPA
from grader.checks.attention import check_scaled_dot_product_attention
from grader.checks.cases import Case, make_cases
from grader.checks.compare import compare, grade
from grader.checks.masking import CAUSAL_MASK
from grader.checks.multi_head import MULTI_HEAD_ATTENTION as MHA
from grader.checks.report import CheckFailed, check
from grader.checks.run import Outcome, run_student
from grader.checks.shortcuts import ShortcutError, find_shortcut, find_shortcut_in
from grader.checks.watch import Tripwires
from transformer_ref.attention import scaled_dot_product_attention as reference_sdpa

FUSED = "torch.nn.functional.scaled_dot_product_attention"
REF_SDPA = "transformer_ref.attention.scaled_dot_product_attention"


def good_sdpa(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights


def nan_rows(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = torch.softmax(scores, -1)
    return w @ v, w


# ---------------------------------------------------------------- the registry

def test_the_registry_lists_eleven_assignments_of_two_or_three_items_in_notebook_order():
    assert list(grader.checks.ASSIGNMENTS) == sorted(grader.checks.ASSIGNMENTS)
    assert len(grader.checks.ASSIGNMENTS) == 11
    assert grader.checks.ASSIGNMENTS["03_attention"] == (
        "dot_product_attention", "scaled_dot_product_attention", "self_attention")
    assert grader.checks.MODULES["03_attention"] == "grader.checks.attention"
    for assignment, names in grader.checks.ASSIGNMENTS.items():
        assert len(names) >= 2
        for name in names:
            assert grader.checks.item(name).assignment == assignment
    assert grader.checks.item("scaled_dot_product_attention") is SDPA
    with pytest.raises(KeyError, match="unknown item 'attention'"):
        grader.checks.item("attention")


@pytest.mark.parametrize("name", sorted(grader.checks.ITEMS))
def test_every_item_has_two_to_four_groups_and_a_check_function(name):
    it = grader.checks.item(name)
    groups = list(dict.fromkeys(c.group for c in make_cases(it, 0)))
    assert 2 <= len(groups) <= 4, groups
    assert "basic" not in groups, "every case names its group"
    module = __import__(grader.checks.MODULES[it.assignment], fromlist=["ITEMS"])
    assert callable(getattr(module, f"check_{name}"))
    assert getattr(module, f"check_{name}").__doc__


# ---------------------------------------------------------------- messages

def test_a_correct_submission_passes_on_several_seeds():
    report = check(SDPA, good_sdpa, seeds=(0, 1, 2))
    assert report.passed and report.mistake is None and not report.shortcut, report.message
    check_scaled_dot_product_attention(good_sdpa)  # the one-line entry point: no exception


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
    with pytest.raises(CheckFailed, match="not implemented yet"):
        check_scaled_dot_product_attention(template)
    assert issubclass(CheckFailed, AssertionError)


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
    message = check(MHA, NoProjections).message
    assert "has no parameter 'W_q.weight'" in message and "W_q, W_k, W_v, W_o" in message

    class NotAModule:
        def __init__(self, d_model, num_heads):
            pass
    assert "must be an nn.Module subclass" in check(MHA, NotAModule).message

    class BadInit(nn.Module):
        def __init__(self, d_model):
            super().__init__()
    assert "MultiHeadAttention(d_model=" in check(MHA, BadInit).message


def test_scalar_outputs_are_compared_as_numbers():
    noam = grader.checks.item("noam_lr")
    assert check(noam, lambda s, d, w: 0.0 if s == 0 else d ** -0.5 * min(s ** -0.5, s * w ** -1.5)).passed
    message = check(noam, lambda s, d, w: "0.001").message
    assert "expected a number" in message and "str" in message


# ---------------------------------------------------------------- shortcuts at run time

def test_shortcut_through_the_module_attribute_is_caught_at_run_time():
    def fused(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    report = check(SDPA, fused)
    assert report.shortcut and not report.passed and "scores 0" in report.message
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention  # tripwire removed


def test_a_shortcut_whose_exception_is_swallowed_is_still_caught():
    def sneaky(q, k, v, mask=None):
        try:
            return F.scaled_dot_product_attention(q, k, v), None
        except Exception:
            return good_sdpa(q, k, v, mask)
    assert check(SDPA, sneaky).shortcut


def test_tripwires_pass_calls_through_unless_the_watched_item_forbids_them():
    q = torch.randn(1, 2, 4)
    expected = F.scaled_dot_product_attention(q, q, q)
    wires = Tripwires([FUSED, "torch.nn.Transformer.generate_square_subsequent_mask"])
    with wires:
        assert F.scaled_dot_product_attention is not torch._C._nn.scaled_dot_product_attention
        assert torch.equal(F.scaled_dot_product_attention(q, q, q), expected)   # nothing watched
        with wires.watching(CAUSAL_MASK) as hits:   # causal_mask does not forbid the fused attention ...
            assert torch.equal(F.scaled_dot_product_attention(q, q, q), expected)
            with pytest.raises(ShortcutError, match="causal_mask uses torch.nn.Transformer"):
                nn.Transformer.generate_square_subsequent_mask(3)   # ... but this
        assert hits == ["torch.nn.Transformer.generate_square_subsequent_mask"]
        with wires.watching(SDPA) as hits:
            with pytest.raises(ShortcutError, match="scores 0"):
                F.scaled_dot_product_attention(q, q, q)
            assert nn.Transformer.generate_square_subsequent_mask(2).shape == (2, 2)   # a staticmethod still
        assert hits == [FUSED]
        assert torch.equal(F.scaled_dot_product_attention(q, q, q), expected)   # watching ended
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    assert isinstance(vars(nn.Transformer)["generate_square_subsequent_mask"], staticmethod)


def test_tripwires_on_an_inherited_method_leave_the_class_as_it_was():
    assert "__call__" not in vars(nn.RNN)
    with Tripwires(["torch.nn.RNN.__call__"]):
        assert "__call__" in vars(nn.RNN)
        rnn = nn.RNN(2, 3, batch_first=True)
        assert rnn(torch.randn(1, 4, 2))[0].shape == (1, 4, 3)   # passes through to Module.__call__
    assert "__call__" not in vars(nn.RNN)


def test_run_student_uses_the_callers_tripwires():
    def fused(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v), None
    cases = make_cases(SDPA, 0)[:2]
    with Tripwires(SDPA.forbidden) as wires:
        outcomes = run_student(SDPA, fused, cases, wires=wires, source="")
        reference = run_student(SDPA, fused, cases, watch=False, wires=wires)
    assert all(o.shortcut and FUSED in o.shortcut for o in outcomes)
    assert all(o.shortcut is None and o.error is None for o in reference)


# ---------------------------------------------------------------- shortcuts in the source

FORBIDDEN = SDPA.forbidden + MHA.forbidden


@pytest.mark.parametrize("source, found", [
    ("import torch.nn.functional as G\ndef f(q):\n    return G.scaled_dot_product_attention(q, q, q)\n", FUSED),
    ("from torch.nn import functional\ndef f(q):\n    return functional.scaled_dot_product_attention(q, q, q)\n",
     FUSED),
    ("from torch.nn.functional import scaled_dot_product_attention as sdpa\ndef f(q):\n    return sdpa(q, q, q)\n",
     FUSED),
    ("from transformer_ref import attention as A\ndef f(q, k, v):\n"
     "    return A.scaled_dot_product_attention(q, k, v)\n",
     REF_SDPA),
    ("from transformer_ref.attention import scaled_dot_product_attention as s\nfns = [s]\n", REF_SDPA),
    ("import transformer_ref.attention\ndef f(q):\n    return transformer_ref.attention.scaled_dot_product_attention\n",
     REF_SDPA),
    ("from transformer_ref.attention import *\ndef f(q, k, v):\n    return scaled_dot_product_attention(q, k, v)\n",
     REF_SDPA),
    ("def f(q):\n    return F.scaled_dot_product_attention(q, q, q)\n", FUSED),   # F from another cell
    ("import torch\ndef f(q):\n    return torch._C._nn.scaled_dot_product_attention(q, q, q)\n", FUSED),  # same object
    ("from torch import nn\nclass M(nn.MultiheadAttention):\n    pass\n", "torch.nn.MultiheadAttention"),
    ("from torch.nn.modules.activation import MultiheadAttention as X\nclass M(X):\n    pass\n",
     "torch.nn.MultiheadAttention"),
    ("class M(nn.Module):\n    def forward(self, x):\n        return nn.MultiheadAttention.forward(self, x)\n",
     "torch.nn.MultiheadAttention"),
    ("import importlib\ndef f(q):\n    return importlib.import_module('torch.nn.functional')\n", "importlib"),
    ("from importlib import import_module\n", "importlib"),
    ("def f(q):\n    return __import__('torch')\n", "__import__"),
    ("import sys\ndef f(q):\n    return sys.modules['torch.nn.functional']\n", "sys.modules"),
    ("def f(q):\n    return eval('q')\n", "eval"),
    ("def f(q):\n    exec('x = 1')\n", "exec"),
    ("import torch.nn.functional as F\ndef f(q):\n    return getattr(F, 'scaled_dot_' + 'product_attention')\n",
     "getattr"),
    ("import torch.nn.functional as F\ndef f(q):\n    return getattr(F, 'scaled_dot_product_attention')\n", FUSED),
    ("import torch.nn.functional as F\ndef f(q):\n    return F.__dict__['scaled_dot_product_attention']\n", FUSED),
    ("def f(q):\n    return vars(F)[name]\n", "vars"),
    ("def f(q):\n    return globals()['scaled_dot_product_attention']\n", REF_SDPA),
    ("def f(g):\n    return g.__wrapped__\n", "__wrapped__"),
    ("def f(g):\n    return g.__closure__[0].cell_contents\n", "__closure__"),
    ("def f(g):\n    return g.__globals__['x']\n", "__globals__"),
    ("import ctypes\n", "ctypes"),
    ("import builtins\n", "builtins"),
    ("import inspect\nf = inspect.unwrap(g)\n", "inspect"),
    ("import gc\njobs = gc.get_objects()\n", "gc"),
    ("from grader.checks.attention import attend\n", "grader"),
    ("from grader.checks.attention import check_self_attention, attend\n", "grader"),
    ("import grader.checks.attention as g\ng.check_self_attention(f)\n", "grader"),
    ("from grader.checks.attention import check_self_attention as c\nx = c.__globals__\n", "__globals__"),
    ("import sys\ndef f(q):\n    return sys._getframe(1).f_locals\n", "f_locals"),
    ("def f(err):\n    return err.__traceback__.tb_frame.f_back\n", "f_back"),
])
def test_find_shortcut_reads_the_source(source, found):
    assert find_shortcut(source, FORBIDDEN) == found


@pytest.mark.parametrize("source", [
    # the student's own function with a forbidden name, and calls of its own helpers
    "def scaled_dot_product_attention(q, k, v, mask=None):\n    return helper(q, k, v, mask)\n",
    "import torch\nclass MultiHeadAttention(torch.nn.Module):\n"
    "    def forward(self, x):\n        return torch.softmax(self.W_q(x), dim=-1)\n",
    "import torch.nn.functional as F\ndef f(x, m):\n    m.eval()\n    return F.softmax(x, -1), getattr(m, 'weight')\n",
    "def f(m):\n    return vars(m)['weight'], m.__dict__.get('bias')\n",
    "from torch.nn import Linear\nclass A(Linear):\n    pass\n",
    "def f(x):\n    scaled_dot_product_attention = 3\n    return scaled_dot_product_attention\n",
    "this is not Python (",
    # an import alone (a notebook's imports cell serves several items): only using the name counts
    "from transformer_ref.attention import scaled_dot_product_attention\nimport torch.nn.functional as F\n",
    # a test cell copied into a cell of one's own, to run the check again
    "from grader.checks.attention import check_self_attention\n\ncheck_self_attention(self_attention)\n",
])
def test_find_shortcut_leaves_ordinary_code_alone(source):
    assert find_shortcut(source, FORBIDDEN) is None


def helper(q, k, v, mask):
    return reference_sdpa(q, k, v, mask)


def test_find_shortcut_in_follows_names_bound_elsewhere_helpers_and_closures():
    from torch.nn.functional import scaled_dot_product_attention as sdpa

    def aliased(q, k, v, mask=None):   # the alias is bound in this test, outside the function's source
        return sdpa(q, k, v, attn_mask=mask), None
    assert find_shortcut_in(aliased, SDPA.forbidden) == FUSED

    def via_helper(q, k, v, mask=None):   # through a helper in the same module
        return helper(q, k, v, mask)
    assert find_shortcut_in(via_helper, SDPA.forbidden) == REF_SDPA

    def make_closure():
        fn = reference_sdpa
        return lambda q, k, v, mask=None: fn(q, k, v, mask)
    assert find_shortcut_in(make_closure(), SDPA.forbidden) == REF_SDPA

    def imports_inside(q, k, v, mask=None):
        from transformer_ref.attention import scaled_dot_product_attention as s
        return s(q, k, v, mask)
    assert find_shortcut_in(imports_inside, SDPA.forbidden) == REF_SDPA
    assert check(SDPA, imports_inside).shortcut

    class Subclass(nn.MultiheadAttention):
        pass
    assert find_shortcut_in(Subclass, MHA.forbidden) == "torch.nn.MultiheadAttention"
    assert find_shortcut_in(good_sdpa, SDPA.forbidden) is None
    assert find_shortcut_in(len, SDPA.forbidden) is None   # no source: nothing to read


def test_run_student_reads_the_source_it_is_given():
    cases = make_cases(SDPA, 0)[:1]
    source = "from transformer_ref.attention import scaled_dot_product_attention\n" + \
             "def good_sdpa(q, k, v, mask=None):\n    return scaled_dot_product_attention(q, k, v, mask)\n"
    outcomes = run_student(SDPA, good_sdpa, cases, source=source)
    assert REF_SDPA in outcomes[0].shortcut and outcomes[0].error is None
    assert run_student(SDPA, good_sdpa, cases, source="def good_sdpa(q, k, v): ...")[0].shortcut is None


# ---------------------------------------------------------------- the three steps

def test_cases_are_deterministic_per_seed_and_differ_between_seeds():
    a, b, c = make_cases(SDPA, 3), make_cases(SDPA, 3), make_cases(SDPA, 4)
    assert [x.label for x in a] == [x.label for x in b]
    assert all(torch.equal(x, y) for ca, cb in zip(a, b) for x, y in zip(ca.args, cb.args))
    assert not all(torch.equal(x, y) for ca, cc in zip(a, c) for x, y in zip(ca.args, cc.args) if x.shape == y.shape)
    labels = " ".join(x.label for x in a)
    assert "float64" in labels and "fully masked row" in labels and "batch 1" in labels


def test_the_three_steps_survive_a_round_trip_through_torch_save():
    """The grader runs the submission in another process: cases and outcomes must serialise."""
    for name in ("scaled_dot_product_attention", "MultiHeadAttention", "mask_tokens", "greedy_decode"):
        it = grader.checks.item(name)
        cases = make_cases(it, 0)
        buffer = io.BytesIO()
        torch.save(cases, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        outcomes = run_student(it, it.reference(), loaded, watch=False)
        buffer = io.BytesIO()
        torch.save(outcomes, buffer)
        buffer.seek(0)
        assert compare(it, cases, torch.load(buffer, weights_only=False)).passed


def test_compare_accepts_hand_made_outcomes():
    cases = make_cases(SDPA, 0)
    expected = [Outcome(value=reference_sdpa(*c.args, **c.kwargs)) for c in cases]
    assert compare(SDPA, cases, expected).passed
    assert "does not run yet" in compare(SDPA, cases, [Outcome(error="boom")] * len(cases)).message
    assert not compare(SDPA, cases, expected[:-1]).passed
    flagged = compare(SDPA, cases, [Outcome(value=o.value, shortcut="uses X") for o in expected])
    assert flagged.shortcut and flagged.message == "uses X"


# ---------------------------------------------------------------- partial credit

def _grade(it, impl, seed=0):
    cases = make_cases(it, seed)
    return grade(it, cases, run_student(it, impl, cases))


def test_a_correct_submission_scores_one_in_every_group():
    result = _grade(SDPA, good_sdpa)
    assert result.fraction == 1.0 and not result.shortcut and result.mistake is None
    assert [g.group for g in result.groups] == ["basic shapes", "masks", "fully masked rows"]
    assert all(g.passed for g in result.groups)
    assert result.message.startswith("scaled_dot_product_attention: right on basic shapes, masks and fully masked rows")


def test_a_mistake_on_fully_masked_rows_loses_only_that_group():
    result = _grade(SDPA, nan_rows)
    assert result.fraction == pytest.approx(2 / 3)
    assert [g.passed for g in result.groups] == [True, True, False]
    lines = result.message.splitlines()
    assert lines[0] == "scaled_dot_product_attention: right on basic shapes and masks; wrong on fully masked rows."
    assert "NaN at index" in result.message and "Likely mistake: filling masked scores with -inf" in result.message
    assert result.mistake == "masked_row_nan"


def test_a_shortcut_scores_zero_and_an_error_fails_its_groups():
    def fused(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None
    result = _grade(SDPA, fused)
    assert result.fraction == 0.0 and result.shortcut and "scores 0" in result.message

    def fails_with_masks(q, k, v, mask=None):
        if mask is not None:
            raise ValueError("masks are for later")
        return good_sdpa(q, k, v)
    result = _grade(SDPA, fails_with_masks)
    assert result.fraction == pytest.approx(1 / 3) and result.mistake is None
    assert "does not run yet" in result.message and "masks are for later" in result.message


def test_grade_of_hand_made_outcomes_and_gpu_copies_form_their_own_group():
    cases = make_cases(SDPA, 0)
    outcomes = [Outcome(value=reference_sdpa(*c.args, **c.kwargs)) for c in cases]
    outcomes[0] = Outcome(error="boom")
    result = grade(SDPA, cases, outcomes)
    assert [g.passed for g in result.groups] == [False, True, True]
    assert grade(SDPA, cases, outcomes[:-1]).fraction == 0.0
    gpu = Case("on cuda", cases[0].args, group="on the GPU")
    assert [g.group for g in grade(SDPA, [*cases, gpu], [*outcomes, outcomes[1]]).groups][-1] == "on the GPU"


# ---------------------------------------------------------------- the GPU

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_cases_are_added_and_checked():
    cases = make_cases(SDPA, 0, cuda=True)
    assert any(c.args[0].is_cuda for c in cases)
    assert {c.group for c in cases if c.args[0].is_cuda} == {"on the GPU"}
    assert check(SDPA, good_sdpa, cuda=True).passed

    def cpu_output(q, k, v, mask=None):
        out, w = good_sdpa(q, k, v, mask)
        return out.cpu(), w
    assert "expected the result on cuda:0, got it on cpu" in check(SDPA, cpu_output, cuda=True).message
    result = grade(SDPA, cases, run_student(SDPA, cpu_output, cases))
    assert [g.passed for g in result.groups] == [True, True, True, False]


# ---------------------------------------------------------------- an item that calls a wrong part

def solution_namespace(assignment: str) -> dict:
    """The globals of a student notebook that holds the solution: every code cell of
    solutions/<id>/<id>.ipynb run in one namespace, test cells (the check_ calls) left out."""
    import nbformat

    notebook = nbformat.read(f"solutions/{assignment}/{assignment}.ipynb", as_version=4)
    namespace: dict = {}
    for cell in notebook.cells:
        if cell.cell_type == "code" and not re.search(r"^check_\w+\(", cell.source, re.M):
            exec(compile(cell.source, assignment, "exec"), namespace)   # noqa: S102 - our own solution code
    return namespace


BUILDS_ON = [pytest.param(item, part, id=f"{item.name}-{part.name}")
             for item in grader.checks.ITEMS.values() for part in item.builds_on]


def test_five_items_build_on_parts_of_their_notebook():
    assert {(p.values[0].name, p.values[1].name) for p in BUILDS_ON} == {
        ("AdditiveAttention", "additive_attention"), ("self_attention", "scaled_dot_product_attention"),
        ("MultiHeadAttention", "split_heads"), ("MultiHeadAttention", "merge_heads"),
        ("decoder_self_attention_mask", "causal_mask"), ("decoder_self_attention_mask", "padding_mask"),
        ("PatchEmbedding", "patchify")}
    assert all(part.assignment == item.assignment for item, part in (p.values for p in BUILDS_ON))


@pytest.mark.parametrize("item, part", BUILDS_ON)
def test_an_item_that_calls_a_wrong_part_passes_and_names_that_part(item, part, capsys):
    """The solution's item, calling a wrong version of its part (the part's first catalogued mistake), is checked
    with the part's reference in its place: it passes, and says which part is wrong; with the right part it prints
    its pass line alone."""
    from grader.checks.report import assert_passes

    namespace = solution_namespace(item.assignment)
    assert_passes(item, namespace[item.name])
    assert "in place of yours" not in capsys.readouterr().out
    wrong = namespace[part.name] = part.mistakes[0].impl
    assert_passes(item, namespace[item.name])
    text = " ".join(capsys.readouterr().out.split())
    assert f"{item.name} was graded with the reference {part.name} in place of yours, which is wrong (see its item)" \
        in text, text
    assert namespace[part.name] is wrong


def test_a_wrong_item_with_right_parts_is_not_blamed_on_them():
    from grader.checks.attention import SELF_ATTENTION
    from grader.checks.report import assert_passes

    namespace = solution_namespace("03_attention")
    source = "def self_attention(x, W_q, W_k, W_v, mask=None):\n" \
             "    return scaled_dot_product_attention(x @ W_q, x @ W_q, x @ W_v, mask)\n"   # keys from W_q
    exec(source, namespace)   # noqa: S102 - a made-up submission that calls the right part
    with pytest.raises(CheckFailed) as failed:
        assert_passes(SELF_ATTENTION, namespace["self_attention"])
    assert "in place of yours" not in str(failed.value)


def test_a_submission_that_breaks_the_probe_of_its_parts_keeps_its_own_message():
    """A class whose metaclass makes vars() raise: the check still fails with its own message."""
    from grader.checks.report import assert_passes

    class Meta(type):
        @property
        def __dict__(cls):
            raise RuntimeError("no namespace for you")

    class MultiHeadAttention(metaclass=Meta):
        def __init__(self, d_model, num_heads):
            pass

    with pytest.raises(CheckFailed) as failed:
        assert_passes(MHA, MultiHeadAttention)
    assert "MultiHeadAttention" in str(failed.value) and "in place of yours" not in str(failed.value)
