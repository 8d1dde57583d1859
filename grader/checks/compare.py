"""Comparing a submission's outcomes with the reference: shape, dtype, device, NaN, then values with
dtype-fit tolerances; naming a known mistake; partial credit per group of cases."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from grader.checks.cases import Case, groups, single_threaded
from grader.checks.item import Item, Mistake
from grader.checks.results import Grade, GroupResult, Report, describe, row
from grader.checks.run import Outcome, run_student

TOLERANCES = {  # (rtol, atol): loose enough for any correct order of operations, tight enough
    torch.float16: (1e-2, 1e-3),   # for every catalogued mistake
    torch.bfloat16: (2e-2, 1e-2),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-7, 1e-10),
}


NAN_HINT = (" A softmax over a row of only -inf gives NaN: a query with nothing to attend to must get zero weights "
            "and zero output.")   # left out when a catalogued mistake is named


def reference_outcomes(item: Item, cases: Sequence[Case]) -> list[Outcome]:
    """The reference's outcomes on `cases` (unwatched: the reference may use anything)."""
    return run_student(item, item.reference(), cases, watch=False)


def _scalar(x: Any) -> float | None:
    """A Python number or 0-d tensor as float; None for anything else."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex() and x.dtype != torch.bool:
        return float(x.item())
    return None


def mismatch(item: Item, expected: Any, got: Any, where: str = "") -> str | None:
    """None when got matches expected; otherwise a short message for the student (its first line says what
    is wrong; a wrong value adds two lines: the row of expected and of got values where it differs most).
    `where`, when given, is put in front ("case 2 of 6 (...): weights: ...")."""
    names = item.outputs
    prefix = f"{where}: " if where else ""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"{item.name} should return a tuple ({', '.join(names)}); it returned {describe(got)}"
        for name, e, o in zip(names, expected, got):
            if (msg := _mismatch_leaf(item, e, o, prefix + name)):
                return msg
        return None
    return _mismatch_leaf(item, expected, got, prefix + names[0])


def _mismatch_leaf(item: Item, expected: Any, got: Any, where: str) -> str | None:
    if not isinstance(expected, torch.Tensor):
        e, o = _scalar(expected), _scalar(got)
        if o is None or e is None:
            return f"{where}: expected a number like {expected!r}; got {describe(got)}"
        if not math.isclose(o, e, rel_tol=1e-6, abs_tol=1e-12):
            return f"{where}: expected {e:.8g}, got {o:.8g}"
        return None
    if not isinstance(got, torch.Tensor):
        return f"{where}: expected a torch.Tensor of shape {tuple(expected.shape)}; got {describe(got)}"
    if got.shape != expected.shape:
        return f"{where}: expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        hint = " (keep the dtype of the inputs; create new tensors with dtype=x.dtype)" \
            if expected.is_floating_point() else ""
        return f"{where}: expected dtype {expected.dtype}, got {got.dtype}{hint}"
    if got.device != expected.device:
        return (f"{where}: expected the result on {expected.device}, got it on {got.device} "
                f"(create new tensors with device=x.device)")
    name = where.rsplit(": ", 1)[-1]
    if not expected.is_floating_point():
        if not torch.equal(got, expected):
            bad = tuple((got != expected).nonzero()[0].tolist())
            n_bad = int((got != expected).sum())
            return (f"{where}: {n_bad} of {expected.numel()} values differ, the first at index {bad}\n"
                    + row(name, expected, got, bad))
        return None
    new_nan = got.isnan() & ~expected.isnan()
    if new_nan.any():
        bad = new_nan.nonzero()[0].tolist()
        hint = NAN_HINT if "weights" in item.outputs else ""
        return (f"{where}: NaN at index {tuple(bad)} where the reference has {expected[tuple(bad)].item():.4g}"
                f" ({int(new_nan.sum())} NaN in all).{hint}")
    rtol, atol = item.tol.get(expected.dtype, TOLERANCES.get(expected.dtype, (1e-4, 1e-5)))
    close = torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if not close.all():
        diff = (got - expected).abs().nan_to_num(float("inf")).masked_fill(close, 0)
        bad = tuple(torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        bad = tuple(int(i) for i in bad)
        n_bad = int((~close).sum())
        e, o = expected[bad].item(), got[bad].item()
        digits = next((d for d in range(6, 17) if f"{e:.{d}g}" != f"{o:.{d}g}"), 17)
        msg = f"{where}: {n_bad} of {close.numel()} values differ; the largest difference is at index {bad}"
        if expected.dim() == 0 or expected.shape[-1] == 1:
            return f"{msg}: expected {e:.{digits}g}, got {o:.{digits}g}"
        return f"{msg}\n{row(name, expected, got, bad)}"
    return None


def _matches(item: Item, a: Sequence[Outcome], b: Sequence[Outcome]) -> bool:
    """Both produced values on the same cases and the values agree (within tolerance)."""
    usable = [(x, y) for x, y in zip(a, b) if x.error is None]
    if not usable or any(y.error is not None for _, y in usable):
        return False
    return all(mismatch(item, x.value, y.value, "") is None for x, y in usable)


@single_threaded
def diagnose(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> Mistake | None:
    """The known mistake whose outputs equal the submission's on every case it ran, or None."""
    for mistake in item.mistakes:
        produced = run_student(item, mistake.impl, cases, watch=False)
        if _matches(item, outcomes, produced):
            return mistake
    return None


def _case_problem(item: Item, cases: Sequence[Case], index: int, out: Outcome, ref: Outcome
                  ) -> tuple[str, bool] | None:
    """(message, whether it is a wrong value) for one case, or None when the case passes. A wrong value's
    message is "<verdict>\n<what differs>"; the likely mistake goes between the two (_with_diagnosis)."""
    case = cases[index]
    if ref.error is not None:  # a bug in the checks or the reference, not the student's
        raise RuntimeError(f"reference failed on case {case.label!r}: {ref.error}")
    where = f"case {index + 1} of {len(cases)}: {case.label}"
    if out.error is not None:
        return f"{item.name} does not run yet ({where}).\n{out.error}", False
    if out.mutated:
        return (f"{item.name} changed its input {', '.join(out.mutated)} in place ({where}).\n"
                f"Leave the inputs as they are: use out-of-place operations (x = x + 1, not x += 1)."), False
    problem = mismatch(item, ref.value, out.value)
    return None if problem is None else (f"{item.name} is not right yet on {where}.\n{problem}", True)


def _with_diagnosis(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome], problem: str,
                    impl: Any = None) -> tuple[str, Mistake | None]:
    mistake = diagnose(item, cases, outcomes)
    if mistake is None and item.explain is not None and (line := item.explain(item, cases, outcomes, impl)):
        # "Likely mistake" goes after the verdict; an observation last, the block for_student always keeps
        verdict, _, detail = problem.partition("\n")
        order = (verdict, line, detail) if line.startswith("Likely mistake:") else (verdict, detail, line)
        return "\n".join(part for part in order if part), None
    return _message(problem, mistake), mistake


def _message(problem: str, mistake: Mistake | None) -> str:
    """The verdict, then the likely mistake, then what differs (report.for_student fits it to six lines)."""
    verdict, _, detail = problem.partition("\n")
    if mistake is not None:
        detail = detail.replace(NAN_HINT, "")
    return "\n".join(line for line in (verdict, f"Likely mistake: {mistake.says}" if mistake else "", detail) if line)


@single_threaded
def compare(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome], impl: Any = None) -> Report:
    """Compare a submission's outcomes with the reference on the same cases (the first failing case
    decides the message); name a known mistake. `impl`, the submission when the caller has it (a notebook's
    check; not the batch grader, whose outcomes come from the sandbox), lets item.explain run it again."""
    if len(outcomes) != len(cases):
        return Report(False, f"{item.name}: got {len(outcomes)} outcomes for {len(cases)} cases")
    for out in outcomes:
        if out.shortcut:
            return Report(False, out.shortcut, shortcut=True)
    if item.compare_fn is not None:
        return item.compare_fn(item, cases, outcomes)
    expected = reference_outcomes(item, cases)
    for i, (out, ref) in enumerate(zip(outcomes, expected)):
        found = _case_problem(item, cases, i, out, ref)
        if found is None:
            continue
        problem, wrong_value = found
        if not wrong_value:
            return Report(False, problem)
        message, mistake = _with_diagnosis(item, cases, outcomes, problem, impl)
        return Report(False, message, mistake=mistake.key if mistake else None)
    return Report(True, f"{item.name}: all {len(cases)} cases pass.")


def _verdict(results: Sequence[GroupResult]) -> str:
    right = [r.group for r in results if r.passed]
    wrong = [r.group for r in results if not r.passed]
    parts = ([f"right on {_join(right)}"] if right else []) + ([f"wrong on {_join(wrong)}"] if wrong else [])
    return "; ".join(parts)


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


@single_threaded
def grade(item: Item, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> Grade:
    """Partial credit: the fraction of the item's groups of cases that pass (equal weights).

    A shortcut scores 0. A group passes when each of its cases ran without error, changed no input
    and matches the reference (items with compare_fn: when compare_fn passes on the group's cases).
    The message starts with a verdict ("right on basic shapes; wrong on masks"), then what compare
    would say about the first failing group, with the likely mistake (diagnosed over all cases).
    """
    names = groups(cases)
    if len(outcomes) != len(cases):
        message = f"{item.name}: got {len(outcomes)} outcomes for {len(cases)} cases"
        return Grade(0.0, [GroupResult(g, False, message) for g in names], message)
    shortcut = next((out.shortcut for out in outcomes if out.shortcut), None)
    if shortcut is not None:
        return Grade(0.0, [GroupResult(g, False, shortcut) for g in names], shortcut, shortcut=True)
    results, mistake_key = [], None
    if item.compare_fn is not None:
        for g in names:
            picked = [i for i, c in enumerate(cases) if c.group == g]
            report = item.compare_fn(item, [cases[i] for i in picked], [outcomes[i] for i in picked])
            results.append(GroupResult(g, report.passed, report.message))
            mistake_key = mistake_key or (None if report.passed else report.mistake)
    else:
        expected = reference_outcomes(item, cases)
        problems = [_case_problem(item, cases, i, out, ref) for i, (out, ref) in enumerate(zip(outcomes, expected))]
        diagnosis: list[Mistake | None] = []   # diagnosed once, for the first failing group with a wrong value
        for g in names:
            found = next((p for p, c in zip(problems, cases) if c.group == g and p is not None), None)
            if found is None:
                results.append(GroupResult(g, True, f"{item.name}: all cases of {g!r} pass."))
                continue
            problem, wrong_value = found
            if wrong_value:
                if not diagnosis:
                    message, mistake = _with_diagnosis(item, cases, outcomes, problem)
                    diagnosis.append(mistake)
                    mistake_key = mistake.key if mistake else None
                else:
                    message = _message(problem, diagnosis[0])
                results.append(GroupResult(g, False, message))
            else:
                results.append(GroupResult(g, False, problem))
    passed = sum(r.passed for r in results)
    verdict = f"{item.name}: {_verdict(results)}."
    first_failing = next((r for r in results if not r.passed), None)
    message = verdict if first_failing is None else f"{verdict}\n{first_failing.message}"
    return Grade(passed / len(results) if results else 0.0, results, message, mistake_key)
