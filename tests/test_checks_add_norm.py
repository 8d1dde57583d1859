"""The checks of assignment 06_add_norm (grader/checks/add_norm.py): each catalogued mistake fails with its
diagnostic, valid alternatives written the way a student might pass, calling the shortcut scores 0, and
grade() gives partial credit per group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grader.checks import add_norm
from grader.checks.cases import groups, make_cases
from grader.checks.compare import compare, grade
from grader.checks.report import CheckFailed, check
from grader.checks.run import run_student
from transformer_ref import layers

ITEMS = add_norm.ITEMS
CHECKS = {"layer_norm": add_norm.check_layer_norm, "AddNorm": add_norm.check_AddNorm,
          "PositionwiseFeedForward": add_norm.check_PositionwiseFeedForward}

# ---------------------------------------------------------------- valid alternatives


def ln_var_mean(x, gamma, beta, eps=1e-5):
    var, mean = torch.var_mean(x, dim=-1, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps) * gamma + beta


def ln_moments(x, gamma, beta, eps=1e-5):
    mean = x.sum(-1, keepdim=True) / x.size(-1)
    centred = x - mean
    return gamma * centred / (centred.pow(2).sum(-1, keepdim=True) / x.size(-1) + eps).sqrt() + beta


def ln_float64(x, gamma, beta, eps=1e-5):
    return ln_var_mean(x.double(), gamma.double(), beta.double(), eps).to(x.dtype)


class OwnLayerNorm(nn.Module):
    def __init__(self, d_model, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x):
        return ln_moments(x, self.weight, self.bias, self.eps)


class AddNormOwnNorm(nn.Module):
    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = OwnLayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, sublayer_out):
        return self.norm(self.dropout(sublayer_out) + x)


class AddNormFunctionalDropout(nn.Module):
    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.p = dropout

    def forward(self, x, sublayer_out):
        return self.norm(x + F.dropout(sublayer_out, self.p, self.training))


class AddNormTorchLN(nn.Module):
    def __init__(self, d_model, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model, eps=1e-5)
        self.drop = nn.Dropout(p=dropout)

    def forward(self, x, sublayer_out):
        residual = x + self.drop(sublayer_out)
        return self.norm(residual)


class FFNClamp(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x):
        return self.linear2(self.linear1(x).clamp(min=0))


class FFNFunctional(FFNClamp):
    def forward(self, x):
        h = F.relu(F.linear(x, self.linear1.weight, self.linear1.bias))
        return F.linear(h, self.linear2.weight, self.linear2.bias)


class FFNEinsum(FFNClamp):
    def forward(self, x):
        h = torch.relu(torch.einsum("...d,fd->...f", x, self.linear1.weight) + self.linear1.bias)
        return torch.einsum("...f,df->...d", h, self.linear2.weight) + self.linear2.bias


ALTERNATIVES = {
    "layer_norm": [ln_var_mean, ln_moments, ln_float64],
    "AddNorm": [AddNormOwnNorm, AddNormFunctionalDropout, AddNormTorchLN],
    "PositionwiseFeedForward": [FFNClamp, FFNFunctional, FFNEinsum],
}

# ---------------------------------------------------------------- shortcuts


def layer_norm_torch(x, gamma, beta, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], gamma, beta, eps)


class AddNormPackage(layers.AddNorm):
    pass


class FFNPackage(nn.Module):
    def __init__(self, d_model, d_ff, dropout=0.0):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x):
        return layers.PositionwiseFeedForward.forward(self, x)


SHORTCUTS = [(add_norm.LAYER_NORM, layer_norm_torch, "torch.nn.functional.layer_norm"),
             (add_norm.ADD_NORM, AddNormPackage, "transformer_ref.layers.AddNorm"),
             (add_norm.POSITIONWISE_FEED_FORWARD, FFNPackage, "transformer_ref.layers.PositionwiseFeedForward.forward")]

# ---------------------------------------------------------------- the tests

MISTAKES = [(item, m) for item in ITEMS for m in item.mistakes]
ALT = [(item, impl) for item in ITEMS for impl in ALTERNATIVES[item.name]]


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    assert add_norm.ASSIGNMENT == "06_add_norm"
    assert [item.name for item in ITEMS] == ["layer_norm", "AddNorm", "PositionwiseFeedForward"]
    for item in ITEMS:
        assert item.assignment == add_norm.ASSIGNMENT and item.mistakes and len(ALTERNATIVES[item.name]) >= 2
        names = groups(make_cases(item, 0))
        assert 2 <= len(names) <= 4 and "basic" not in names, (item.name, names)  # every case names its group


@pytest.mark.parametrize("item", ITEMS, ids=lambda item: item.name)
def test_the_reference_passes_and_scores_full_marks(item):
    for seed in (0, 1):
        cases = make_cases(item, seed)
        outcomes = run_student(item, item.reference(), cases, watch=False)
        assert compare(item, cases, outcomes).passed
        result = grade(item, cases, outcomes)
        assert result.fraction == 1.0 and all(g.passed for g in result.groups), result.message


@pytest.mark.parametrize("item,mistake", MISTAKES, ids=[f"{i.name}-{m.key}" for i, m in MISTAKES])
def test_mistake_fails_with_its_diagnostic(item, mistake):
    report = check(item, mistake.impl)
    assert not report.passed, f"the mistake {mistake.key!r} of {item.name} passes the check"
    assert report.mistake == mistake.key, report.message
    assert f"Likely mistake: {mistake.says}" in report.message
    with pytest.raises(CheckFailed, match="Likely mistake"):
        CHECKS[item.name](mistake.impl)


@pytest.mark.parametrize("item,impl", ALT, ids=[f"{i.name}-{f.__name__}" for i, f in ALT])
def test_valid_alternative_passes(item, impl):
    report = check(item, impl, seeds=(0, 1))
    assert report.passed, report.message
    CHECKS[item.name](impl)  # no exception


@pytest.mark.parametrize("item,impl,dotted", SHORTCUTS, ids=[i.name for i, _, _ in SHORTCUTS])
def test_shortcut_fails_with_the_shortcut_message_and_scores_0(item, impl, dotted):
    report = check(item, impl)
    assert not report.passed and report.shortcut and report.mistake is None, report.message
    assert dotted in report.message and "scores 0" in report.message
    cases = make_cases(item, 0)
    result = grade(item, cases, run_student(item, impl, cases))
    assert result.fraction == 0.0 and result.shortcut and dotted in result.message


def test_grade_a_missing_dropout_fails_only_the_dropout_group():
    item = add_norm.ADD_NORM
    no_dropout = next(m for m in item.mistakes if m.key == "no_dropout")
    cases = make_cases(item, 0)
    result = grade(item, cases, run_student(item, no_dropout.impl, cases))
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "float64": True, "dropout in training and evaluation mode": False}
    assert result.fraction == pytest.approx(2 / 3) and result.mistake == "no_dropout"
    assert result.message.startswith("AddNorm: right on basic shapes and float64; wrong on dropout in training")
    assert "dropout 1.0 in training mode" in result.message and f"Likely mistake: {no_dropout.says}" in result.message


def test_grade_eps_outside_the_square_root_fails_only_where_eps_matters():
    item = add_norm.LAYER_NORM
    cases = make_cases(item, 0)
    result = grade(item, cases, run_student(item, add_norm._ln_eps_outside, cases))
    passed = {g.group: g.passed for g in result.groups}
    assert passed["basic shapes"] and not passed["a tiny variance and eps"]   # (float64's tolerance sees it too)
    assert result.mistake == "eps_outside_sqrt" and 0 < result.fraction < 1


def test_grade_a_float32_only_submission_fails_only_float64():
    def float32_inside(x, gamma, beta, eps=1e-5):
        return ln_var_mean(x.float(), gamma.float(), beta.float(), eps)
    item = add_norm.LAYER_NORM
    cases = make_cases(item, 0)
    result = grade(item, cases, run_student(item, float32_inside, cases))
    assert [g.group for g in result.groups if not g.passed] == ["float64"]
    assert "expected dtype torch.float64, got torch.float32" in result.message


def test_a_class_with_other_member_names_is_told_which_members_the_checker_sets():
    class Renamed(nn.Module):
        def __init__(self, d_model, dropout=0.0):
            super().__init__()
            self.ln = nn.LayerNorm(d_model)

        def forward(self, x, sublayer_out):
            return self.ln(x + sublayer_out)
    message = check(add_norm.ADD_NORM, Renamed).message
    assert "has no parameter 'norm.weight'" in message and "norm (a LayerNorm" in message


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("item", ITEMS, ids=lambda item: item.name)
def test_cuda_copies_pass_for_an_alternative(item):
    impl = ALTERNATIVES[item.name][0]
    cases = make_cases(item, 0, cuda=True)
    assert "on the GPU" in groups(cases)
    result = grade(item, cases, run_student(item, impl, cases))
    assert result.fraction == 1.0, result.message
