"""The verdicts the checks hand back (Report, GroupResult, Grade) and two formatting helpers for messages.

They live below compare.py and report.py so that neither imports the other in a circle;
``grader.checks.report`` re-exports them, and that is where callers import them from.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Report:
    """The verdict on one graded item; ``mistake`` is the key of a recognised mistake."""

    passed: bool
    message: str
    mistake: str | None = None
    shortcut: bool = False


@dataclass
class GroupResult:
    """Whether every case of one group (e.g. "masks") passed, and what to tell the student if not."""

    group: str
    passed: bool
    message: str


@dataclass
class Grade:
    """Partial credit on one graded item: the fraction of its groups that pass (equal weights)."""

    fraction: float
    groups: list[GroupResult] = field(default_factory=list)
    message: str = ""
    mistake: str | None = None
    shortcut: bool = False


def describe(value: Any) -> str:
    """A short description of what a submission returned."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype} on {value.device}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: (" + ", ".join(describe(v) for v in value) + ")"
    if value is None:
        return "None (did you forget `return`?)"
    return f"{type(value).__name__} {value!r}"[:200]


def fmt(t: torch.Tensor, limit: int = 48) -> str:
    """A tensor printed small enough for a message."""
    if t.numel() > limit:
        return f"tensor of shape {tuple(t.shape)}"
    with _printoptions():
        return str(t.detach().cpu()).replace("tensor(", "").rstrip(")").replace("\n       ", "\n")


@contextlib.contextmanager
def _printoptions() -> Iterator[None]:
    saved = torch._tensor_str.PRINT_OPTS.precision, torch._tensor_str.PRINT_OPTS.sci_mode
    torch.set_printoptions(precision=4, sci_mode=False)
    try:
        yield
    finally:
        torch.set_printoptions(precision=saved[0], sci_mode=saved[1])
