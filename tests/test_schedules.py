"""schedules.py against closed forms and against the transformers warm-up schedules."""

import math

import pytest
import torch
from transformers import (get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

from transformer_ref.schedules import (noam_lr, noam_scheduler, warmup_cosine_lr, warmup_cosine_scheduler,
                                       warmup_linear_lr, warmup_linear_scheduler)


def optimizer_with_lr(lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def lrs_over(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The lr the optimizer uses at steps 0 .. steps-1 (one optimizer.step + scheduler.step each)."""
    lrs = []
    for _ in range(steps):
        lrs.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return lrs


# ---------------------------------------------------------------- Noam

def test_noam_peak_value_and_place():
    lrs = [noam_lr(s, d_model=512, warmup_steps=4000) for s in range(20001)]
    assert max(range(len(lrs)), key=lrs.__getitem__) == 4000
    assert f"{lrs[4000]:.3g}" == "0.000699"  # about 6.99e-4, as in the paper's Figure / eq. 3
    assert lrs[4000] == pytest.approx((512 * 4000) ** -0.5, rel=1e-12)


def test_noam_closed_form_pieces():
    assert noam_lr(0, 512, 4000) == 0.0
    # warm-up: linear in step; after: step^-0.5
    assert noam_lr(1000, 512, 4000) == pytest.approx(1000 * 4000 ** -1.5 / math.sqrt(512), rel=1e-12)
    assert noam_lr(16000, 512, 4000) == pytest.approx(0.5 * noam_lr(4000, 512, 4000), rel=1e-12)
    assert noam_lr(1000, 64, 4000, factor=2.0) == pytest.approx(2 * noam_lr(1000, 64, 4000), rel=1e-12)


def test_noam_scheduler_matches_function():
    expected = [noam_lr(s, 64, 10, factor=2.0) for s in range(40)]
    assert lrs_over(noam_scheduler(optimizer_with_lr(1.0), 64, 10, factor=2.0), 40) == pytest.approx(expected)
    # the optimizer's lr multiplies the schedule
    assert lrs_over(noam_scheduler(optimizer_with_lr(3.0), 64, 10), 40) == pytest.approx(
        [3 * noam_lr(s, 64, 10) for s in range(40)])


# ---------------------------------------------------------------- warm-up + decay

@pytest.mark.parametrize("warmup, total", [(10, 50), (1, 7), (5, 5), (30, 31)])
def test_warmup_linear_equals_transformers(warmup, total):
    reference = lrs_over(get_linear_schedule_with_warmup(optimizer_with_lr(0.1), warmup, total), total + 5)
    ours = [warmup_linear_lr(s, 0.1, warmup, total) for s in range(total + 5)]
    assert ours == pytest.approx(reference, abs=1e-15)
    assert lrs_over(warmup_linear_scheduler(optimizer_with_lr(0.1), warmup, total), total + 5) == pytest.approx(
        ours, abs=1e-15)


@pytest.mark.parametrize("warmup, total", [(10, 50), (1, 7), (5, 6), (30, 31)])
def test_warmup_cosine_equals_transformers(warmup, total):
    # up to and including total_steps: transformers' cosine rises again afterwards, ours stays at min_lr
    reference = lrs_over(get_cosine_schedule_with_warmup(optimizer_with_lr(0.1), warmup, total), total + 1)
    ours = [warmup_cosine_lr(s, 0.1, warmup, total) for s in range(total + 1)]
    assert ours == pytest.approx(reference, abs=1e-15)
    assert lrs_over(warmup_cosine_scheduler(optimizer_with_lr(0.1), warmup, total), total + 1) == pytest.approx(
        ours, abs=1e-15)


def test_warmup_cosine_with_floor_equals_transformers():
    reference = lrs_over(get_cosine_with_min_lr_schedule_with_warmup(
        optimizer_with_lr(0.1), 10, 60, min_lr_rate=0.2), 61)
    ours = [warmup_cosine_lr(s, 0.1, 10, 60, min_lr=0.02) for s in range(61)]
    assert ours == pytest.approx(reference, abs=1e-15)
    assert lrs_over(warmup_cosine_scheduler(optimizer_with_lr(0.1), 10, 60, min_lr_ratio=0.2), 61) == pytest.approx(
        ours, abs=1e-15)


def test_warmup_without_decay_phase():
    """total_steps == warmup_steps: the warm-up ends at min_lr (like transformers' linear schedule;
    transformers' cosine schedule would give base_lr at that one step)."""
    for schedule in (warmup_linear_lr, warmup_cosine_lr):
        assert [schedule(s, 1.0, 4, 4, min_lr=0.1) for s in range(6)] == pytest.approx([0, 0.25, 0.5, 0.75, 0.1, 0.1])


def test_warmup_closed_forms_with_floor():
    base, floor = 1e-3, 1e-4
    for schedule in (warmup_linear_lr, warmup_cosine_lr):
        assert schedule(0, base, 10, 110) == 0.0
        assert schedule(5, base, 10, 110) == pytest.approx(base / 2)
        assert schedule(10, base, 10, 110, min_lr=floor) == pytest.approx(base)
        assert schedule(110, base, 10, 110, min_lr=floor) == pytest.approx(floor)
        assert schedule(500, base, 10, 110, min_lr=floor) == pytest.approx(floor)
    # half-way through the decay: linear and cosine both give the mid-point
    assert warmup_linear_lr(60, base, 10, 110, min_lr=floor) == pytest.approx((base + floor) / 2)
    assert warmup_cosine_lr(60, base, 10, 110, min_lr=floor) == pytest.approx((base + floor) / 2)
    # a quarter of the way: cosine is (1 + cos(pi/4)) / 2 of the way from min_lr to base
    assert warmup_cosine_lr(35, base, 10, 110, min_lr=floor) == pytest.approx(
        floor + (base - floor) * (1 + math.cos(math.pi / 4)) / 2)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, message", [
    (lambda: noam_lr(10, 512, 0), "warmup_steps must be a positive int; got 0"),
    (lambda: noam_lr(-1, 512, 4000), r"step must be a non-negative int \(steps count from 0\); got -1"),
    (lambda: noam_lr(1.5, 512, 4000), "step must be a non-negative int .*got 1.5"),
    (lambda: noam_lr(10, 0, 4000), "d_model must be a positive int; got 0"),
    (lambda: warmup_linear_lr(3, 0.1, -5, 100), "warmup_steps must be a positive int; got -5"),
    (lambda: warmup_linear_lr(3, 0.1, 50, 20), "total_steps must be >= warmup_steps = 50 .*got total_steps = 20"),
    (lambda: warmup_cosine_lr(-2, 0.1, 5, 20), "step must be a non-negative int .*got -2"),
    (lambda: warmup_cosine_lr(3, 0.1, 5, 20, min_lr=0.5), r"min_lr must be a number in \[0, base_lr = 0.1\]; got 0.5"),
    (lambda: warmup_cosine_lr(3, 0.0, 5, 20), "base_lr must be a positive number; got 0.0"),
    (lambda: warmup_cosine_scheduler(optimizer_with_lr(0.1), 5, 20, min_lr_ratio=2),
     r"min_lr_ratio must be a number in \[0, 1\]; got 2"),
    (lambda: warmup_linear_scheduler(optimizer_with_lr(0.1), 0, 20), "warmup_steps must be a positive int; got 0"),
    (lambda: noam_scheduler(optimizer_with_lr(1.0), 512, 4000, factor=-1.0), "factor must be a positive number"),
])
def test_bad_input_is_rejected(call, message):
    with pytest.raises(ValueError, match=message):
        call()
