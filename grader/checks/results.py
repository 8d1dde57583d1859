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


DESCRIBE_ITEMS = 4       # elements of a list or tuple that describe() names (then "and N more")
DESCRIBE_DEPTH = 2       # levels of nesting it goes into
DESCRIBE_CHARS = 300     # characters of a description, whatever the value (a message quotes it whole)
MAX_MESSAGE = 4000       # characters of one item's report (its feedback cell and comment), whatever it quotes


class Unsent:
    """What stands for a returned value that the sandbox could not send (too large, too deep, or of a type the
    grader does not read): `what` describes it, and it matches no expected value."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"Unsent({self.what!r})"


def describe(value: Any) -> str:
    """A short description of what a submission returned: at most DESCRIBE_CHARS characters, and work
    bounded by DESCRIBE_ITEMS ** DESCRIBE_DEPTH elements, however large or deeply nested the value is."""
    text = _describe(value, 0)
    return text if len(text) <= DESCRIBE_CHARS else text[:DESCRIBE_CHARS - 3] + "..."


def _describe(value: Any, depth: int) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype} on {value.device}"
    if isinstance(value, (tuple, list)):
        n = len(value)
        if depth >= DESCRIBE_DEPTH:
            return f"a {type(value).__name__} of {n}"
        shown = [_describe(v, depth + 1) for v in value[:DESCRIBE_ITEMS]]
        more = [f"and {n - DESCRIBE_ITEMS} more"] if n > DESCRIBE_ITEMS else []
        return f"a {type(value).__name__} of {n}: (" + ", ".join(shown + more) + ")"
    if value is None:
        return "None (did you forget `return`?)"
    if isinstance(value, Unsent):
        return value.what
    if type(value).__module__ == "numpy" and hasattr(value, "shape"):
        return f"{type(value).__name__} (numpy) of shape {tuple(value.shape)}: return a torch.Tensor"
    if isinstance(value, str):   # repr of a prefix: the cost of a long string is its first characters
        text = f"str {value[:60]!r}"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        text = f"int of {value.bit_length()} bits"   # str() of a long int takes quadratic time
    else:
        text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= 60 else text[:57] + "..."


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` cut to `limit` characters (a report quotes student text: it stays small whatever that is)."""
    return message if len(message) <= limit else message[:limit - 30] + "\n... (the rest is left out)"


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
