"""The verdicts the checks hand back (Report, GroupResult, Grade) and two formatting helpers for messages.

They live below compare.py and report.py so that neither imports the other in a circle;
``grader.checks.report`` re-exports them, and that is where callers import them from.
"""

from __future__ import annotations

import contextlib
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Report:
    """The verdict on one graded item; ``mistake`` is the key of a recognised mistake; ``cases``, how many
    cases the check ran (all seeds; set by report.check)."""

    passed: bool
    message: str
    mistake: str | None = None
    shortcut: bool = False
    cases: int = 0


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
    if type(value).__module__ == "numpy" and hasattr(value, "shape"):
        return f"{type(value).__name__} (numpy) of shape {tuple(value.shape)}: return a torch.Tensor"
    text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= 60 else text[:57] + "..."


WIDTH = 80      # nbgrader validate keeps 83 characters of each line of an error (90 minus indent and "...")
MAX_LINES = 6   # what a test cell may print


def wrap(text: str, width: int = WIDTH) -> str:
    """`text` with every line wrapped at `width` (so that `nbgrader validate` does not cut it), never inside a
    short parenthesis such as a shape "(2, 5, 4)"."""
    def fill(line: str) -> str:
        kept = _SHORT_PARENS.sub(lambda m: m.group(0).replace(" ", "\x00"), line)
        return textwrap.fill(kept, width, break_on_hyphens=False, break_long_words=True).replace("\x00", " ")
    return "\n".join(fill(line) if len(line) > width else line for line in text.splitlines())


_SHORT_PARENS = re.compile(r"\([^()\n]{0,18}\)")


def fit(blocks: list[str], keep: int = 2, limit: int = MAX_LINES) -> str:
    """The blocks wrapped and joined in at most `limit` lines: the first `keep` (the verdict, the likely
    mistake) stay; of the others the earlier ones are dropped first; the last one stays (cut if need be)."""
    wrapped = [wrap(b) for b in blocks if b]
    while len(wrapped) > keep + 1 and sum(len(b.splitlines()) for b in wrapped) > limit:
        del wrapped[keep]
    lines = "\n".join(wrapped).splitlines()
    if len(lines) > limit:
        lines = lines[:limit - 1] + [lines[limit - 1][:WIDTH - 3] + "..."]
    return "\n".join(lines)


def blocks(message: str) -> list[str]:
    """A message's logical lines; a line that starts with a space continues the one before it."""
    out: list[str] = []
    for line in message.strip("\n").splitlines():
        if line.startswith(" ") and out:
            out[-1] += "\n" + line
        else:
            out.append(line)
    return out


def row(name: str, expected: torch.Tensor, got: torch.Tensor, index: tuple, limit: int = 5) -> str:
    """Two aligned lines: the row (last axis) of `expected` and `got` that holds `index`, a few values of it."""
    if expected.dim() == 0:
        return ""
    start = max(0, min(index[-1] - limit // 2, expected.shape[-1] - limit))
    stop = min(expected.shape[-1], start + limit)
    where = ", ".join(str(i) for i in index[:-1])
    label = f"{name}[{where + ', ' if where else ''}{start}:{stop}]" if (start, stop) != (0, expected.shape[-1]) \
        else f"{name}[{where}]" if where else name
    values = [_values(t[index[:-1]][start:stop]) for t in (expected, got)]
    pad = " " * len(label)
    return f"{label} expected {values[0]}\n{pad} got      {values[1]}"


def _values(t: torch.Tensor) -> str:
    t = t.detach().cpu()
    if t.dtype == torch.bool:
        return str(t.tolist())
    if not t.is_floating_point():
        return str(t.tolist())
    return "[" + ", ".join(f"{x:.4g}" for x in t.tolist()) + "]"


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
