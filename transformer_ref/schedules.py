"""Learning-rate schedules: the Noam schedule of Vaswani et al. 2017 (section 5.3) and linear warm-up
followed by linear or cosine decay.

Each schedule is a plain function of the integer step (what the book plots) and a
``torch.optim.lr_scheduler.LambdaLR`` factory (what training uses). Steps count from 0 like
LambdaLR's counter: call ``scheduler.step()`` after each ``optimizer.step()``, and the optimizer then
runs step s with the rate the function gives for s. The LambdaLR factories multiply the optimizer's
own lr by the schedule: build the optimizer with lr=1.0 for the Noam schedule and with the peak lr
(base_lr) for the warm-up schedules.
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
from torch.optim.lr_scheduler import LambdaLR

from transformer_ref._checks import check_positive_int


def _check_step(step: object) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be a non-negative int (steps count from 0); got {step!r}")
    return int(step)


def _check_positive_float(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number; got {value!r}")
    return float(value)


def _check_warmup(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> int:
    """Check the arguments of the warm-up schedules; return step as an int."""
    step = _check_step(step)
    _check_positive_float(base_lr, "base_lr")
    check_positive_int(warmup_steps, "warmup_steps")
    check_positive_int(total_steps, "total_steps")
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps must be >= warmup_steps = {warmup_steps} (the warm-up is part of "
                         f"training); got total_steps = {total_steps}")
    if isinstance(min_lr, bool) or not isinstance(min_lr, numbers.Real) or not 0 <= min_lr <= base_lr:
        raise ValueError(f"min_lr must be a number in [0, base_lr = {base_lr}]; got {min_lr!r}")
    return step


def _check_noam(step: int, d_model: int, warmup_steps: int, factor: float) -> tuple[int, float]:
    step = _check_step(step)
    check_positive_int(d_model, "d_model")
    check_positive_int(warmup_steps, "warmup_steps")
    return step, _check_positive_float(factor, "factor")


def noam_lr(step: int, d_model: int, warmup_steps: int, factor: float = 1.0) -> float:
    """lr = factor * d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5)  (Vaswani et al. 2017, eq. 3).

    Rises linearly for warmup_steps steps, peaks at step = warmup_steps with
    factor * (d_model * warmup_steps)^-0.5, then decays like step^-0.5. Step 0 gives 0.
    """
    step, factor = _check_noam(step, d_model, warmup_steps, factor)  # arguments checked here
    if step == 0:
        return 0.0
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)


def _warmup_then_decay(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr: float,
                       decay: str) -> float:
    """lr = base_lr * step / warmup_steps for step < warmup_steps, then from base_lr down to min_lr at
    step = total_steps along 1 - p (linear) or (1 + cos(pi p)) / 2 (cosine), p = progress in [0, 1];
    min_lr after total_steps.
    """
    step = _check_warmup(step, base_lr, warmup_steps, total_steps, min_lr)  # arguments checked here
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    remaining = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + (base_lr - min_lr) * remaining


def warmup_linear_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                     min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to base_lr over warmup_steps, then linear decay to min_lr at total_steps
    (and min_lr after). With min_lr = 0 this equals transformers' get_linear_schedule_with_warmup.
    """
    return _warmup_then_decay(step, base_lr, warmup_steps, total_steps, min_lr, "linear")


def warmup_cosine_lr(step: int, base_lr: float, warmup_steps: int, total_steps: int,
                     min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to base_lr over warmup_steps, then half a cosine down to min_lr at total_steps
    (and min_lr after):  lr = min_lr + (base_lr - min_lr) (1 + cos(pi p)) / 2,
    p = (step - warmup_steps) / (total_steps - warmup_steps).
    With min_lr = 0 this equals transformers' get_cosine_schedule_with_warmup up to total_steps
    (transformers' curve rises again after total_steps; this one stays at min_lr).
    """
    return _warmup_then_decay(step, base_lr, warmup_steps, total_steps, min_lr, "cosine")


def noam_scheduler(optimizer: torch.optim.Optimizer, d_model: int, warmup_steps: int,
                   factor: float = 1.0) -> LambdaLR:
    """LambdaLR whose multiplier at step s is noam_lr(s, ...): build the optimizer with lr=1.0."""
    return LambdaLR(optimizer, functools.partial(noam_lr, d_model=d_model, warmup_steps=warmup_steps,
                                                 factor=factor))


def warmup_linear_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LambdaLR:
    """LambdaLR for warmup_linear_lr; the optimizer's lr is the peak (base_lr), reached at warmup_steps."""
    return LambdaLR(optimizer, functools.partial(warmup_linear_lr, base_lr=1.0, warmup_steps=warmup_steps,
                                                 total_steps=total_steps))


def warmup_cosine_scheduler(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                            min_lr_ratio: float = 0.0) -> LambdaLR:
    """LambdaLR for warmup_cosine_lr; the optimizer's lr is the peak, and the rate ends at
    min_lr_ratio * that peak (min_lr_ratio in [0, 1]).
    """
    if isinstance(min_lr_ratio, bool) or not isinstance(min_lr_ratio, numbers.Real) or not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be a number in [0, 1]; got {min_lr_ratio!r}")
    return LambdaLR(optimizer, functools.partial(warmup_cosine_lr, base_lr=1.0, warmup_steps=warmup_steps,
                                                 total_steps=total_steps, min_lr=min_lr_ratio))
