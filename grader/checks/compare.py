"""Comparing a submission's outcomes with the reference: shape, dtype, device, NaN, then values with
dtype-fit tolerances; naming a known mistake; partial credit per group of cases.

The outcomes may come from the sandbox (grader.sandbox.wire bounds their size); every message quotes them
through describe() and bounded() (grader.checks.results), so a report stays a few KB whatever was returned."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from grader.checks.cases import Case, groups, on_meta, single_threaded, tree_map
from grader.checks.item import Item, Mistake
from grader.checks.results import Grade, GroupResult, Report, bounded, describe, row
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
    if expected.is_meta:   # no values to compare: shape, dtype and device were the point
        return None
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
    return all(mismatch(item, y.value, x.value, "") is None for x, y in usable)   # b: well-formed (a mistake's)


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
        if out.error.startswith(f"{item.name} was stopped"):   # by a case's instrumented input (run.ContractBroken)
            return f"{item.name} breaks a rule of the exercise ({where}).\n{out.error}", False
        return _device_error(item, case, where, out.error) or (f"{item.name} does not run yet ({where}).\n"
                                                               f"{out.error}"), False
    if out.mutated:
        return (f"{item.name} changed its input {', '.join(out.mutated)} in place ({where}).\n"
                f"Leave the inputs as they are: use out-of-place operations (x = x + 1, not x += 1)."), False
    if (problem := _wrong_device(item, case, where, ref.value, out.value)) is not None:
        return problem, False
    problem = mismatch(item, ref.value, out.value)
    return None if problem is None else (f"{item.name} is not right yet on {where}.\n{problem}", True)


# ---------------------------------------------------------------- the device a result must be on

def _devices(value: Any) -> list[torch.device]:
    found: list[torch.device] = []
    tree_map(lambda t: found.append(t.device), value)
    return found


def _first_input(item: Item, case: Case) -> str:
    """The name of the first tensor argument of `case` (from the reference's signature), e.g. "tokens"."""
    try:
        impl = item.reference()
        names = [n for n in inspect.signature(impl.forward if item.kind == "class" else impl).parameters
                 if n != "self"]
    except (TypeError, ValueError, AttributeError):
        names = []
    for i, a in enumerate(case.args):
        if isinstance(a, torch.Tensor):
            return names[i] if i < len(names) else f"argument {i + 1}"
    return next((k for k, a in case.kwargs.items() if isinstance(a, torch.Tensor)), "the inputs")


def _wrong_device(item: Item, case: Case, where: str, expected: Any, got: Any) -> str | None:
    """A message when a result of a meta case is a tensor on another device than the reference's; None
    otherwise (including when the structures differ: mismatch says so). A default-device case needs none: a
    result that changes with the default device is an error already (run._compare_without_default_device)."""
    if not on_meta(case):
        return None
    pairs = list(zip(_devices(expected), _devices(got)))
    wrong = next(((e, o) for e, o in pairs if e != o), None)
    if wrong is None or len(_devices(expected)) != len(_devices(got)):
        return None
    asked, given = wrong
    if case.kwargs.get("device") == asked:
        return (f"{item.name} ignored its device argument ({where}).\nAsked for {asked}, it returned a tensor on "
                f"{given}: pass device=device to the tensors you create (torch.ones, torch.arange, ...).")
    source = _first_input(item, case)
    return (f"{item.name} returned a tensor on {given} for {source} on {asked} ({where}).\nThe result must be on "
            f"the device of {source}: create new tensors with device={source}.device, and keep the computation "
            f"in torch (no .cpu(), .numpy() or torch.from_numpy).")


META_ERRORS = (   # what torch says when code needs the values of a meta tensor, and what that means
    ("to numpy", "a NumPy round trip works only on the CPU (on a GPU it fails too); use torch operations."),
    ("cannot copy out of meta", "moving tensors to the CPU (.cpu(), .to('cpu')) leaves {device}; stay on it "
                                "and use torch operations."),
    ("item() cannot be called on meta", "reading values in Python (.item(), bool(), `if` on a tensor); use "
                                        "tensor operations."),
)


def _device_error(item: Item, case: Case, where: str, error: str) -> str | None:
    """A message when a case that asks for a device makes the submission raise because of that device (its
    error names the meta device, and only this case's inputs, device argument or default device are meta);
    None otherwise."""
    if "meta" not in error or not (on_meta(case) or case.default_device):
        return None
    error = _TORCH_ADVICE.sub(".", error)   # "Use Tensor.cpu() ...": a fix that breaks the device contract
    if case.default_device and not on_meta(case):
        source = _first_input(item, case)
        return (f"{item.name} made a tensor on the default device, not on {source}'s device ({where}).\n{error}\n"
                f"Likely mistake: a tensor made without device= lands on the default device (the check sets it to "
                f"{case.default_device}, as if {source} were on a GPU); create new tensors with "
                f"device={source}.device.")
    device = "device" if case.kwargs.get("device") == torch.device("meta") else \
        f"{_first_input(item, case)}.device"
    cause = next((says for key, says in META_ERRORS if key in error.lower()),
                 "a tensor made without device={device}; create new tensors with device={device}.")
    return (f"{item.name} does not run on another device ({where}).\n{error}\n"
            f"Likely mistake: {cause.format(device=device)}")


_TORCH_ADVICE = re.compile(r"[.;] (Use Tensor\.cpu\(\)|move one of them).*$")


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
            return Report(False, bounded(out.shortcut), shortcut=True)
    if item.compare_fn is not None:
        return item.compare_fn(item, cases, outcomes)
    expected = reference_outcomes(item, cases)
    for i, (out, ref) in enumerate(zip(outcomes, expected)):
        found = _case_problem(item, cases, i, out, ref)
        if found is None:
            continue
        problem, wrong_value = found
        if not wrong_value:
            return Report(False, bounded(problem))
        message, mistake = _with_diagnosis(item, cases, outcomes, problem, impl)
        return Report(False, bounded(message), mistake=mistake.key if mistake else None)
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
    shortcut = next((bounded(out.shortcut) for out in outcomes if out.shortcut), None)
    if shortcut is not None:
        return Grade(0.0, [GroupResult(g, False, shortcut) for g in names], shortcut, shortcut=True)
    results, mistake_key = [], None
    if item.compare_fn is not None:
        for g in names:
            picked = [i for i, c in enumerate(cases) if c.group == g]
            report = item.compare_fn(item, [cases[i] for i in picked], [outcomes[i] for i in picked])
            results.append(GroupResult(g, report.passed, bounded(report.message)))
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
                results.append(GroupResult(g, False, bounded(message)))
            else:
                results.append(GroupResult(g, False, bounded(problem)))
    passed = sum(r.passed for r in results)
    verdict = f"{item.name}: {_verdict(results)}."
    first_failing = next((r for r in results if not r.passed), None)
    message = verdict if first_failing is None else f"{verdict}\n{first_failing.message}"
    return Grade(passed / len(results) if results else 0.0, results, bounded(message), mistake_key)
