"""The checks of assignment 10_warmup (grader/checks/warmup.py): each catalogued mistake fails with its
diagnostic, valid alternatives written the way a student might pass (branches, other formulas, tensors),
calling the shortcut scores 0, and grade() gives partial credit per phase of the schedule."""

from __future__ import annotations

import math

import pytest
import torch

from grader.checks import warmup
from grader.checks.cases import groups, make_cases
from grader.checks.compare import grade
from grader.checks.report import check
from grader.checks.run import run_student
from transformer_ref import schedules

import checks_contract as contract

ITEMS = warmup.ITEMS
CHECKS = {warmup.NOAM_LR: warmup.check_noam_lr, warmup.WARMUP_LINEAR_LR: warmup.check_warmup_linear_lr,
          warmup.WARMUP_COSINE_LR: warmup.check_warmup_cosine_lr}

# ---------------------------------------------------------------- valid alternatives


def noam_sqrt(step, d_model, warmup_steps):
    return 0.0 if step == 0 else min(1 / math.sqrt(step), step / warmup_steps ** 1.5) / math.sqrt(d_model)


def noam_branches(step, d_model, warmup_steps):
    if step == 0:
        return 0.0
    if step < warmup_steps:
        return step * warmup_steps ** -1.5 * d_model ** -0.5
    return (d_model * step) ** -0.5


def noam_tensor(step, d_model, warmup_steps):
    s = torch.tensor(float(step), dtype=torch.float64)
    return float(torch.where(s == 0, 0.0, d_model ** -0.5 * torch.minimum(s.rsqrt(), s * warmup_steps ** -1.5)))


def _progress(step, warmup_steps, total_steps):
    return max(0.0, min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def linear_branches(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return step / warmup_steps * base_lr
    if step >= total_steps:
        return min_lr
    return base_lr - (base_lr - min_lr) * (step - warmup_steps) / (total_steps - warmup_steps)


def linear_factor(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    warm = min(1.0, step / warmup_steps)
    return min_lr + (warm * base_lr - min_lr) * (1 - _progress(step, warmup_steps, total_steps)) \
        if step >= warmup_steps else warm * base_lr


def linear_interp(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step <= warmup_steps:
        return base_lr * step / warmup_steps
    p = _progress(step, warmup_steps, total_steps)
    return (1 - p) * base_lr + p * min_lr


def cosine_branches(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * _progress(step, warmup_steps, total_steps)))


def cosine_squared(step, base_lr, warmup_steps, total_steps, min_lr=0.0):  # (1 + cos x) / 2 = cos^2(x / 2)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return min_lr + (base_lr - min_lr) * math.cos(math.pi * _progress(step, warmup_steps, total_steps) / 2) ** 2


def cosine_torch(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    p = torch.tensor(_progress(step, warmup_steps, total_steps), dtype=torch.float64)
    return float(min_lr + (base_lr - min_lr) * (1 + torch.cos(torch.pi * p)) / 2)


ALTERNATIVES = {
    warmup.NOAM_LR: [noam_sqrt, noam_branches, noam_tensor],
    warmup.WARMUP_LINEAR_LR: [linear_branches, linear_factor, linear_interp],
    warmup.WARMUP_COSINE_LR: [cosine_branches, cosine_squared, cosine_torch],
}

# ---------------------------------------------------------------- shortcuts


def noam_package(step, d_model, warmup_steps):
    return schedules.noam_lr(step, d_model, warmup_steps)


def linear_through_the_scheduler(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    scheduler = schedules.warmup_linear_scheduler(optimizer, warmup_steps, total_steps)
    return base_lr * scheduler.lr_lambdas[0](step)


def cosine_package(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    from transformer_ref.schedules import warmup_cosine_lr as ready_made
    return ready_made(step, base_lr, warmup_steps, total_steps, min_lr)


SHORTCUTS = [(warmup.NOAM_LR, noam_package, "transformer_ref.schedules.noam_lr"),
             (warmup.WARMUP_LINEAR_LR, linear_through_the_scheduler,
              "transformer_ref.schedules.warmup_linear_scheduler"),
             (warmup.WARMUP_COSINE_LR, cosine_package, "transformer_ref.schedules.warmup_cosine_lr")]

# ---------------------------------------------------------------- the contract (tests/checks_contract.py)


def test_the_assignment_has_its_items_groups_mistakes_and_alternatives():
    contract.assert_assignment_shape(warmup, "10_warmup", ["noam_lr", "warmup_linear_lr", "warmup_cosine_lr"],
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


def test_scalar_outputs_are_compared_as_numbers():
    message = check(warmup.NOAM_LR, lambda s, d, w: "0.001").message
    assert "expected a number" in message and "str" in message
    assert check(warmup.NOAM_LR, lambda s, d, w: torch.tensor(noam_sqrt(s, d, w), dtype=torch.float64)).passed


def test_grade_a_wrong_warmup_exponent_passes_after_the_warmup():
    result = contract.graded(warmup.NOAM_LR, warmup._noam_warmup_exponent)
    passed = {g.group: g.passed for g in result.groups}
    assert passed == {"steps in the warm-up": False, "steps after the warm-up": True}
    assert result.fraction == 0.5 and result.mistake == "warmup_exponent"
    assert result.message.startswith("noam_lr: right on steps after the warm-up; wrong on steps in the warm-up.")


@pytest.mark.parametrize("item", [warmup.WARMUP_LINEAR_LR, warmup.WARMUP_COSINE_LR], ids=contract.item_id)
def test_grade_each_phase_on_its_own(item):
    """A mistake in one phase of the schedule costs that phase only."""
    by_key = {m.key: m for m in item.mistakes}
    warm, decay, after = "steps in the warm-up", "steps in the decay", "steps after total_steps"
    expected_failing = {"warmup_off_by_one": [warm], "decay_from_step_0": [decay], "no_clamp_after_total": [after],
                        "min_lr_ignored": [decay, after]}
    cases = make_cases(item, 0)
    assert groups(cases) == [warm, decay, after]
    for key, failing in expected_failing.items():
        result = grade(item, cases, run_student(item, by_key[key].impl, cases))
        assert [g.group for g in result.groups if not g.passed] == failing, (key, result.message)
        assert result.mistake == key
