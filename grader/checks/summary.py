"""The last cell of every notebook: which items of the assignment pass their visible checks, with points.

    from grader.checks.summary import summary
    summary("05_masking")

runs every item's visible check (seed 0, as its test cell does) on what the kernel defines now, with the
item's prints and warnings swallowed, and prints a small table:

    Your progress on 05_masking (the visible checks, run again now):
      item                         status              points
      causal_mask                  right               4 / 4
      padding_mask                 2 of 4 cases wrong  0 / 3
      decoder_self_attention_mask  not done            0 / 4
      total                        1 of 3 right        4 / 11
    Hidden tests (more cases, the GPU) run when it is graded.

An item whose kernel definition is not the one the saved notebook shows (a cell edited and not run again:
grader.checks.state) is "stale, run In [N] again", and earns nothing here. It is not graded: the cell is a
locked instructor cell, not a test cell. It reads the namespace of the
running IPython kernel; anywhere else (the grading sandbox runs the notebook's cells without IPython) it
checks nothing and says so in one line.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grader.checks import notebook, state
from grader.checks.cases import Case, make_cases
from grader.checks.compare import compare, mismatch, reference_outcomes
from grader.checks.item import Item
from grader.checks.points import points
from grader.checks.report import _wrong_kind
from grader.checks.run import Outcome, run_student

NOT_DONE = "is not implemented yet"   # how run._format_exception starts the message of the notebook's stub


@dataclass(frozen=True)
class Progress:
    """One row of the summary: an item, what its visible check concluded, its points (None: not in the table)."""

    name: str
    status: str
    right: bool
    points: int | None


def progress(assignment: str, namespace: Mapping[str, Any]) -> list[Progress]:
    """Every item of `assignment`, checked quietly (seed 0) on the definition `namespace` holds."""
    from grader.checks import ASSIGNMENTS, ITEMS
    if assignment not in ASSIGNMENTS:
        raise KeyError(f"unknown assignment {assignment!r}; known: {', '.join(sorted(ASSIGNMENTS))}")
    rows = []
    for name in ASSIGNMENTS[assignment]:
        status = _status(ITEMS[name], namespace)
        rows.append(Progress(name, status, status == "right", points(assignment, name)))
    return rows


def _status(item: Item, namespace: Mapping[str, Any]) -> str:
    """"right", "not defined", "not done", "3 of 6 cases wrong", "raises on 2 of 6 cases", ..."""
    if item.name not in namespace:
        return "not defined (run its cell)"
    impl = namespace[item.name]
    if notebook.stale(item.name, impl):
        return "old definition (its cell raised)"
    old = state.stale(item.name, impl)
    if old is not None:
        return f"stale, run {old.cell} again"
    if _wrong_kind(item, impl):
        return f"not a {item.kind}"
    try:
        with _quiet():
            cases = make_cases(item, 0)
            outcomes = run_student(item, impl, cases)
            return _verdict(item, cases, outcomes)
    except Exception as err:   # the checks' own failure (a broken reference): not the student's
        return f"not checked ({type(err).__name__})"


def _verdict(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> str:
    n = len(cases)
    if any(out.shortcut for out in outcomes):
        return "uses a forbidden shortcut"
    raised = [out for out in outcomes if out.error is not None]
    if raised and len(raised) == n and all(NOT_DONE in out.error for out in raised):
        return "not done"
    wrong = sum(_case_is_wrong(item, case, out) for case, out in zip(cases, outcomes) if out.error is None)
    if raised:
        return f"raises on {len(raised)}" + (f", wrong on {wrong}" if wrong else "") + f" of {n} cases"
    if wrong:
        return f"{wrong} of {n} case{'s' * (n != 1)} wrong"
    # Every case is right alone; what holds only across cases (a random item's statistics) is checked together.
    return "right" if compare(item, cases, outcomes).passed else "wrong (its test cell says why)"


def _case_is_wrong(item: Item, case: Case, out: Outcome) -> bool:
    """The case alone fails: an input changed in place, or a value that differs from the reference."""
    if out.mutated:
        return True
    if item.compare_fn is not None:
        return not item.compare_fn(item, [case], [out]).passed
    (expected,) = reference_outcomes(item, [case])
    return mismatch(item, expected.value, out.value) is not None


@contextlib.contextmanager
def _quiet():
    """The submission's prints and warnings go nowhere while the summary runs it."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def table(assignment: str, rows: Sequence[Progress]) -> str:
    """The rows as the summary cell prints them: item, status, points, the total; lines of 80 characters at most."""
    right = f"{sum(r.right for r in rows)} of {len(rows)} right"
    width = max(len("item"), *(len(r.name) for r in rows)) + 2
    status_width = max(len(right), *(len(r.status) for r in rows)) + 2

    def line(name: str, status: str, worth: str) -> str:
        return f"  {name:<{width}}{status:<{status_width}}{worth}".rstrip()

    lines = [f"Your progress on {assignment} (the visible checks, run again now):",
             line("item", "status", "points")]
    lines += [line(r.name, r.status, "" if r.points is None else f"{r.points if r.right else 0} / {r.points}")
              for r in rows]
    total = sum(r.points or 0 for r in rows)
    earned = sum(r.points or 0 for r in rows if r.right)
    lines.append(line("total", right, f"{earned} / {total}"))
    lines.append("Hidden tests (more cases, the GPU) run when it is graded." if earned < total else
                 "Every item passes its visible check: use Validate, then submit.")
    return "\n".join(lines)


def summary(assignment: str) -> None:
    """Print the progress table of `assignment` for the notebook running in this IPython kernel."""
    shell = notebook._shell()
    if shell is None:
        print(f"summary({assignment!r}) shows your progress inside the notebook's kernel; there is none here.")
        return
    print(table(assignment, progress(assignment, shell.user_ns)))
