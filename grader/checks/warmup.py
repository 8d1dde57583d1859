"""Checks for assignment 10_warmup: noam_lr, warmup_linear_lr, warmup_cosine_lr.

Each graded item below has, in this order: the cases it is called on (steps grouped by the phase of the
schedule they fall in), its known mistakes (one small function each, next to what the student is told),
the Item that ties them to the reference in transformer_ref.schedules and the shortcuts it may not call,
and its check_<item> function for the notebook. The two warm-up-then-decay schedules share their cases
and the mistakes that do not depend on the shape of the decay (`decay` is `_linear` or `_cosine`).
"""

from __future__ import annotations

import math
from functools import partial

import torch

from grader.checks.cases import Case
from grader.checks.item import Item, Mistake, Reference
from grader.checks.report import assert_passes

ASSIGNMENT = "10_warmup"

# ---------------------------------------------------------------- forbidden shortcuts

SCHEDULE_SHORTCUTS = (
    "transformer_ref.schedules.noam_lr", "transformer_ref.schedules.warmup_linear_lr",
    "transformer_ref.schedules.warmup_cosine_lr", "transformer_ref.schedules._warmup_then_decay",
    "transformer_ref.schedules.noam_scheduler", "transformer_ref.schedules.warmup_linear_scheduler",
    "transformer_ref.schedules.warmup_cosine_scheduler",
    "transformers.optimization.get_linear_schedule_with_warmup",
    "transformers.optimization.get_cosine_schedule_with_warmup",
    "torch.optim.lr_scheduler.CosineAnnealingLR.__init__", "torch.optim.lr_scheduler.LinearLR.__init__")

# ---------------------------------------------------------------- noam_lr


def _noam_cases(g: torch.Generator, seed: int) -> list[Case]:
    warmup = int(torch.randint(10, 200, (1,), generator=g))

    def case(step: int, d_model: int, warmup_steps: int) -> Case:
        return Case(f"step {step}, d_model {d_model}, warmup_steps {warmup_steps}", (step, d_model, warmup_steps),
                    group="steps in the warm-up" if step < warmup_steps else "steps after the warm-up")
    return ([case(s, 512, 4000) for s in (0, 1, 2, 100, 3999, 4000, 4001, 20000)]
            + [case(s, 64, warmup) for s in (1, warmup - 1, warmup, warmup + 1, 3 * warmup)])


def _noam_off_by_one(step, d_model, warmup_steps):
    step = step + 1
    return d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)


def _noam_warmup_exponent(step, d_model, warmup_steps):
    return 0.0 if step == 0 else d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -0.5)


def _noam_no_d_model(step, d_model, warmup_steps):
    return 0.0 if step == 0 else min(step ** -0.5, step * warmup_steps ** -1.5)


def _noam_d_model_sqrt(step, d_model, warmup_steps):
    return 0.0 if step == 0 else d_model ** 0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)


def _noam_max_not_min(step, d_model, warmup_steps):
    return 0.0 if step == 0 else d_model ** -0.5 * max(step ** -0.5, step * warmup_steps ** -1.5)


NOAM_LR = Item(
    "noam_lr", ASSIGNMENT, "function", _noam_cases, Reference("schedules", "noam_lr"), SCHEDULE_SHORTCUTS,
    outputs=("lr",),
    mistakes=(
        Mistake("off_by_one", "your schedule is one step ahead (step + 1); count steps from 0 as given, with step 0 "
                "giving 0.", _noam_off_by_one),
        Mistake("warmup_exponent", "the warm-up term is step * warmup_steps^-1.5 (so both terms meet at step = "
                "warmup_steps); your exponent differs.", _noam_warmup_exponent),
        Mistake("no_d_model", "the factor d_model^-0.5 is missing.", _noam_no_d_model),
        Mistake("d_model_sqrt", "you multiplied by sqrt(d_model); the factor is d_model^-0.5.", _noam_d_model_sqrt),
        Mistake("max_not_min", "you took the max of the two terms; the schedule is their min.", _noam_max_not_min),
    ),
    hints=("The Transformer's schedule: the rate rises linearly for warmup_steps, then decays like 1/sqrt(step), all "
           "scaled by d_model^-0.5; the two pieces meet at step = warmup_steps.",
           "Take the smaller of step^-0.5 and step * warmup_steps^-1.5, times d_model^-0.5. At step 0 the first piece "
           "divides by zero: return 0.0 there."))


def check_noam_lr(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of noam_lr(step, d_model, warmup_steps) against transformer_ref.schedules.noam_lr at
    steps in the warm-up, at its end and after it (the paper's d_model 512, warmup_steps 4000, and a random
    warmup_steps); raise CheckFailed with what was expected, what came back and the likely mistake.
    (cuda is accepted for a uniform signature; the schedule has no tensors.)"""
    assert_passes(NOAM_LR, impl, seeds, cuda)


# ---------------------------------------------------------------- warmup_linear_lr and warmup_cosine_lr

def _warmup_decay_cases(g: torch.Generator, seed: int) -> list[Case]:
    warmup = int(torch.randint(2, 50, (1,), generator=g))
    total = warmup + int(torch.randint(10, 500, (1,), generator=g))

    def phase(step: int, warmup_steps: int, total_steps: int) -> str:
        if step < warmup_steps:
            return "steps in the warm-up"
        return "steps in the decay" if step < total_steps else "steps after total_steps"
    cases = [Case(f"step {s}, base_lr 0.001, warmup_steps 10, total_steps 110", (s, 1e-3, 10, 110),
                  group=phase(s, 10, 110))
             for s in (0, 1, 9, 10, 11, 35, 60, 109, 110, 150)]
    cases += [Case(f"step {s}, base_lr 0.5, warmup_steps {warmup}, total_steps {total}, min_lr 0.05",
                   (s, 0.5, warmup, total), {"min_lr": 0.05}, group=phase(s, warmup, total))
              for s in (0, warmup - 1, warmup, (warmup + total) // 2, total - 1, total, total + 7)]
    return cases


def _linear(p: float) -> float:
    """The share of (base_lr - min_lr) left after a fraction p of the decay: linear."""
    return 1.0 - p


def _cosine(p: float) -> float:
    """The share of (base_lr - min_lr) left after a fraction p of the decay: half a cosine."""
    return 0.5 * (1.0 + math.cos(math.pi * p))


def _decay(step, base_lr, warmup_steps, total_steps, min_lr, decay, *, clamp=True):
    """The learning rate at a step after the warm-up: min_lr + (base_lr - min_lr) * decay(progress)."""
    span = total_steps - warmup_steps
    progress = (step - warmup_steps) / span if span > 0 else 1.0
    return min_lr + (base_lr - min_lr) * decay(min(1.0, progress) if clamp else progress)


def _warmup_off_by_one(step, base_lr, warmup_steps, total_steps, min_lr=0.0, *, decay):
    if step + 1 < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return _decay(step, base_lr, warmup_steps, total_steps, min_lr, decay)


_SAYS_WARMUP_OFF_BY_ONE = ("your warm-up is one step ahead: lr = base_lr * step / warmup_steps, with 0 at step 0 "
                           "and base_lr reached at step = warmup_steps.")


def _decay_from_step_0(step, base_lr, warmup_steps, total_steps, min_lr=0.0, *, decay):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return min_lr + (base_lr - min_lr) * decay(min(1.0, step / total_steps))


_SAYS_DECAY_FROM_STEP_0 = ("the decay's progress must count from the end of the warm-up: "
                           "p = (step - warmup_steps) / (total_steps - warmup_steps).")


def _min_lr_ignored(step, base_lr, warmup_steps, total_steps, min_lr=0.0, *, decay):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return _decay(step, base_lr, warmup_steps, total_steps, 0.0, decay)


_SAYS_MIN_LR_IGNORED = "the schedule decays to 0 instead of min_lr: lr = min_lr + (base_lr - min_lr) * ..."


def _no_clamp_after_total(step, base_lr, warmup_steps, total_steps, min_lr=0.0, *, decay):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return _decay(step, base_lr, warmup_steps, total_steps, min_lr, decay, clamp=False)


_SAYS_NO_CLAMP = "after total_steps the learning rate must stay at min_lr (clamp the progress at 1)."

WARMUP_LINEAR_LR = Item(
    "warmup_linear_lr", ASSIGNMENT, "function", _warmup_decay_cases, Reference("schedules", "warmup_linear_lr"),
    SCHEDULE_SHORTCUTS, outputs=("lr",),
    mistakes=(
        Mistake("warmup_off_by_one", _SAYS_WARMUP_OFF_BY_ONE, partial(_warmup_off_by_one, decay=_linear)),
        Mistake("decay_from_step_0", _SAYS_DECAY_FROM_STEP_0, partial(_decay_from_step_0, decay=_linear)),
        Mistake("min_lr_ignored", _SAYS_MIN_LR_IGNORED, partial(_min_lr_ignored, decay=_linear)),
        Mistake("no_clamp_after_total", _SAYS_NO_CLAMP, partial(_no_clamp_after_total, decay=_linear)),
    ),
    hints=("Two phases: from 0 up to base_lr linearly during the warmup, then linearly down from base_lr to min_lr at "
           "total_steps, and min_lr after that.",
           "During the warmup scale base_lr by step / warmup_steps. After it, the progress is (step - warmup_steps) / "
           "(total_steps - warmup_steps), clipped at 1; interpolate from base_lr (progress 0) to min_lr (progress 1)."))


def check_warmup_linear_lr(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of warmup_linear_lr(step, base_lr, warmup_steps, total_steps, min_lr=0.0) against
    transformer_ref.schedules.warmup_linear_lr at steps in the warm-up, the decay and after total_steps (with and
    without min_lr); raise CheckFailed with what was expected, what came back and the likely mistake.
    (cuda is accepted for a uniform signature; the schedule has no tensors.)"""
    assert_passes(WARMUP_LINEAR_LR, impl, seeds, cuda)


def _cosine_full_period(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return _decay(step, base_lr, warmup_steps, total_steps, min_lr, lambda p: 0.5 * (1.0 + math.cos(2 * math.pi * p)))


def _cosine_linear_decay(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return _decay(step, base_lr, warmup_steps, total_steps, min_lr, _linear)


WARMUP_COSINE_LR = Item(
    "warmup_cosine_lr", ASSIGNMENT, "function", _warmup_decay_cases, Reference("schedules", "warmup_cosine_lr"),
    SCHEDULE_SHORTCUTS, outputs=("lr",),
    mistakes=(
        Mistake("warmup_off_by_one", _SAYS_WARMUP_OFF_BY_ONE, partial(_warmup_off_by_one, decay=_cosine)),
        Mistake("decay_from_step_0", _SAYS_DECAY_FROM_STEP_0, partial(_decay_from_step_0, decay=_cosine)),
        Mistake("min_lr_ignored", _SAYS_MIN_LR_IGNORED, partial(_min_lr_ignored, decay=_cosine)),
        Mistake("no_clamp_after_total", _SAYS_NO_CLAMP, partial(_no_clamp_after_total, decay=_cosine)),
        Mistake("full_period", "you used a full cosine period, cos(2 pi p); the decay is half a period: "
                "(1 + cos(pi p)) / 2.", _cosine_full_period),
        Mistake("linear_decay", "your decay is linear; use half a cosine: (1 + cos(pi p)) / 2.", _cosine_linear_decay),
    ),
    hints=("The same warmup as warmup_linear_lr, then half a cosine from base_lr down to min_lr: slow at first, fast "
           "in the middle, slow at the end.",
           "After the warmup compute the progress p in [0, 1] as in warmup_linear_lr (clipped at 1); the factor 0.5 * "
           "(1 + cos(pi * p)) goes from 1 to 0; the rate is min_lr plus (base_lr - min_lr) times that factor."))


def check_warmup_cosine_lr(impl, seeds=(0,), cuda=False) -> None:
    """Check a submission of warmup_cosine_lr(step, base_lr, warmup_steps, total_steps, min_lr=0.0) against
    transformer_ref.schedules.warmup_cosine_lr at steps in the warm-up, the decay and after total_steps (with and
    without min_lr); raise CheckFailed with what was expected, what came back and the likely mistake.
    (cuda is accepted for a uniform signature; the schedule has no tensors.)"""
    assert_passes(WARMUP_COSINE_LR, impl, seeds, cuda)


ITEMS = (NOAM_LR, WARMUP_LINEAR_LR, WARMUP_COSINE_LR)
