"""What a notebook's check does with a verdict: ``assert_passes`` runs the three steps and raises
:class:`CheckFailed` with the message written for the student (``for_student``: the verdict, the likely
mistake, the failing case; six lines of 80 characters at most, shown without a traceback in a notebook);
when the submission passes it prints one line (``pass_line``: the item, how many cases, its points).
Importing it inside IPython installs the Jupyter state traps of grader.checks.notebook; when the definition
checked is not the one the saved notebook shows (grader.checks.state), that comes first, pass or fail.

Report, GroupResult and Grade (and the describe/fmt helpers) are defined in grader.checks.results
and re-exported here, the module callers import them from.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from grader.checks import notebook, state
from grader.checks.cases import make_cases
from grader.checks.compare import compare
from grader.checks.item import Item
from grader.checks.points import in_words, points
from grader.checks.results import Grade, GroupResult, Report, blocks, describe, fit, fmt
from grader.checks.run import run_student

__all__ = ["Report", "GroupResult", "Grade", "CheckFailed", "check", "assert_passes", "for_student", "pass_line",
           "describe", "fmt"]


class CheckFailed(AssertionError):
    """A submission failed its check; the message is written for the student.

    In a notebook (IPython) it is shown as its message alone, no traceback of this package: verdict first,
    then the likely mistake, at most six lines of at most 80 characters (what `nbgrader validate` keeps).
    """

    def _render_traceback_(self) -> list[str]:
        return [str(self).strip("\n")]


def for_student(message: str) -> str:
    """A report's message as a notebook shows it: the verdict, then the "Likely mistake" line (moved up when
    a check put it further down), then the rest, fitted to six lines of 80 characters."""
    lines = blocks(message)
    likely = [line for line in lines[1:] if line.startswith("Likely mistake:")]
    rest = [line for line in lines[1:] if not line.startswith("Likely mistake:")]
    return fit([lines[0], *likely[:1], *rest], keep=1 + len(likely[:1]))


def check(item: Item, impl: Any, seeds: Sequence[int] = (0,), cuda: bool = False) -> Report:
    """make_cases + run_student + compare for each seed; the first failing seed's report (its ``cases``: how
    many cases ran, up to and including that seed's)."""
    report, ran = Report(True, ""), 0
    for seed in seeds:
        cases = make_cases(item, seed, cuda=cuda)
        ran += len(cases)
        report = compare(item, cases, run_student(item, impl, cases), impl)
        if not report.passed:
            break
    report.cases = ran
    return report


def assert_passes(item: Item, impl: Any, seeds: Sequence[int] = (0,), cuda: bool = False) -> None:
    """Check a submission on every seed (and CUDA copies when cuda=True and a GPU is present);
    raise CheckFailed with the first failing report's message."""
    __tracebackhide__ = True  # noqa: F841  (pytest and IPython hide this frame)
    problem = notebook.stale(item.name, impl) or _wrong_kind(item, impl)
    if problem:
        raise CheckFailed("\n" + fit([problem]))
    old = state.stale(item.name, impl)   # the kernel's definition is not the notebook's: said first, either way
    report = check(item, impl, seeds, cuda)
    note = _wrong_part_note(item, impl, report)
    if not report.passed:
        message = for_student("\n".join([report.message, *note]))
        if old:
            message = fit([old.message, ("Until then: " if old.missing else "On that old definition: ")
                           + blocks(message)[0]], keep=2)
        raise CheckFailed("\n" + message)
    print(fit([pass_line(item, report.cases, seeds), *([] if old else note)]))   # stale: that comes first
    if old:
        print(fit([f"Careful, that passed on an old definition. {old.message}"], limit=5))   # 6 with the pass line


def pass_line(item: Item, cases: int, seeds: Sequence[int] = (0,)) -> str:
    """What a passing test cell prints: "causal_mask: right on all 6 visible cases (4 points)". The visible
    test cell checks seed 0 alone; other seeds (the hidden tests, or a student's own call) are named."""
    seeds = list(seeds)
    which = "visible " if seeds == [0] else ""
    how_many = f"all {cases} {which}cases" if cases != 1 else f"its 1 {which}case"
    of_seeds = "" if seeds == [0] else f" of seed{'s' * (len(seeds) != 1)} {_numbers(seeds)}"
    worth = points(item.assignment, item.name)
    return f"{item.name}: right on {how_many}{of_seeds}" + (f" ({in_words(worth)})" if worth is not None else "")


def _numbers(seeds: list[int]) -> str:
    """"1-3" for a run of three or more, else "0, 5"."""
    if len(seeds) >= 3 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


def parts_note(name: str, part: str) -> str:
    """The line under an item that was graded with the reference `part` in place of the student's wrong one."""
    return f"{name} was graded with the reference {part} in place of yours, which is wrong (see its item)."


def _wrong_part_note(item: Item, impl: Any, report: Report) -> list[str]:
    """[parts_note] when the submission calls the student's own version of a part of the item (same notebook:
    found in the submission's globals) and that version fails its check: the check ran the part's reference in
    its place (run_student), so the item's verdict is its own, and the student learns which part to fix. Not for
    a shortcut, or when the notebook's imports are missing (then both fail for that reason, and the message says
    so)."""
    try:
        part = _failing_part(item, impl) if not report.shortcut else None
    except Exception:   # a submission that breaks the probe (odd metaclass, ...): the report stands as it is
        return []
    return [parts_note(item.name, part.name)] if part is not None else []


def _failing_part(item: Item, impl: Any) -> Item | None:
    """The first item of `item.builds_on` whose student version the submission calls and that fails its
    check; None as well when the notebook's imports are missing (then everything fails for that reason)."""
    namespace, called = _globals_and_calls(impl)
    if any(n in called and n not in namespace for n in notebook.IMPORTED):
        return None
    for part in item.builds_on:
        own = namespace.get(part.name)
        if part.name in called and callable(own) and not check(part, own).passed:
            return part
    return None


def _globals_and_calls(impl: Any) -> tuple[dict, set[str]]:
    """The global namespace a submission was defined in (a notebook's) and the global names its code uses
    (for a class, those of its methods)."""
    members = vars(impl).values() if isinstance(impl, type) else [impl]
    functions = [f for f in members if inspect.isfunction(f)]
    if not functions:
        return {}, set()
    return functions[0].__globals__, {name for f in functions for name in f.__code__.co_names}


def _wrong_kind(item: Item, impl: Any) -> str | None:
    """A one-line message when check_<item> was given something other than a function (or a class)."""
    if item.kind == "class" and not isinstance(impl, type):
        return f"check_{item.name} checks your class {item.name}; it was given {describe(impl)}."
    if item.kind == "function" and (isinstance(impl, type) or not callable(impl)):
        return f"check_{item.name} checks your function {item.name}; it was given {describe(impl)}."
    return None


notebook.install()   # the Jupyter state traps (grader.checks.notebook); nothing outside IPython
