"""The checks of assignment 06_add_norm (grader/checks/add_norm.py): each catalogued mistake fails with its
diagnostic, valid alternatives written the way a student might pass, calling the shortcut scores 0, and
grade() gives partial credit per group."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grader.checks import add_norm
from grader.checks.report import check
from transformer_ref import layers

import checks_contract as contract

ITEMS = add_norm.ITEMS
CHECKS = {add_norm.LAYER_NORM: add_norm.check_layer_norm, add_norm.ADD_NORM: add_norm.check_AddNorm,
          add_norm.POSITIONWISE_FEED_FORWARD: add_norm.check_PositionwiseFeedForward}

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
    add_norm.LAYER_NORM: [ln_var_mean, ln_moments, ln_float64],
    add_norm.ADD_NORM: [AddNormOwnNorm, AddNormFunctionalDropout, AddNormTorchLN],
    add_norm.POSITIONWISE_FEED_FORWARD: [FFNClamp, FFNFunctional, FFNEinsum],
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

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(add_norm, "06_add_norm", ["layer_norm", "AddNorm", "PositionwiseFeedForward"],
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


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("item", ITEMS, ids=contract.item_id)
def test_cuda_copies_pass_for_an_alternative(item):
    contract.assert_cuda_copies_pass(item, ALTERNATIVES[item][0])


# ---------------------------------------------------------------- assignment-specific tests


def test_grade_a_missing_dropout_fails_only_the_dropout_group():
    no_dropout = contract.mistake(add_norm.ADD_NORM, "no_dropout")
    result = contract.graded(add_norm.ADD_NORM, no_dropout.impl)
    assert {g.group: g.passed for g in result.groups} == {
        "basic shapes": True, "float64": True, "dropout in training and evaluation mode": False}
    assert result.fraction == pytest.approx(2 / 3) and result.mistake == "no_dropout"
    assert result.message.startswith("AddNorm: right on basic shapes and float64; wrong on dropout in training")
    assert "dropout 1.0 in training mode" in result.message and f"Likely mistake: {no_dropout.says}" in result.message


def test_grade_eps_outside_the_square_root_fails_only_where_eps_matters():
    result = contract.graded(add_norm.LAYER_NORM, add_norm._ln_eps_outside)
    passed = {g.group: g.passed for g in result.groups}
    assert passed["basic shapes"] and not passed["a tiny variance and eps"]   # (float64's tolerance sees it too)
    assert result.mistake == "eps_outside_sqrt" and 0 < result.fraction < 1


def test_grade_a_float32_only_submission_fails_only_float64():
    def float32_inside(x, gamma, beta, eps=1e-5):
        return ln_var_mean(x.float(), gamma.float(), beta.float(), eps)
    result = contract.graded(add_norm.LAYER_NORM, float32_inside)
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
