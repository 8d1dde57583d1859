"""What a notebook's check does with a verdict: ``assert_passes`` runs the three steps and raises
:class:`CheckFailed` with the message written for the student.

Report, GroupResult and Grade (and the describe/fmt helpers) are defined in grader.checks.results
and re-exported here, the module callers import them from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grader.checks.cases import make_cases
from grader.checks.compare import compare
from grader.checks.item import Item
from grader.checks.results import Grade, GroupResult, Report, describe, fmt
from grader.checks.run import run_student

__all__ = ["Report", "GroupResult", "Grade", "CheckFailed", "check", "assert_passes", "describe", "fmt"]


class CheckFailed(AssertionError):
    """A submission failed its check; the message is written for the student."""


def check(item: Item, impl: Any, seeds: Sequence[int] = (0,), cuda: bool = False) -> Report:
    """make_cases + run_student + compare for each seed; the first failing seed's report."""
    report = Report(True, "")
    for seed in seeds:
        cases = make_cases(item, seed, cuda=cuda)
        report = compare(item, cases, run_student(item, impl, cases))
        if not report.passed:
            return report
    return report


def assert_passes(item: Item, impl: Any, seeds: Sequence[int] = (0,), cuda: bool = False) -> None:
    """Check a submission on every seed (and CUDA copies when cuda=True and a GPU is present);
    raise CheckFailed with the first failing report's message."""
    __tracebackhide__ = True  # noqa: F841  (pytest and IPython hide this frame)
    report = check(item, impl, seeds, cuda)
    if not report.passed:
        raise CheckFailed("\n" + report.message)
