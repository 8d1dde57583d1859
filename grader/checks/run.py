"""Running a submission on the cases: its outputs or its exceptions, inputs it changed in place, and
forbidden shortcuts it used. Nothing the submission does makes :func:`run_student` raise."""

from __future__ import annotations

import contextlib
import inspect
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from grader.checks.cases import Case, clone, same, single_threaded
from grader.checks.item import Item
from grader.checks.notebook import IMPORTED
from grader.checks.results import describe
from grader.checks.shortcuts import Tripwires, find_shortcut, find_shortcut_in, shortcut_message


@dataclass
class Outcome:
    """What the student's code did on one case: a value, or an error message."""

    value: Any = None
    error: str | None = None        # the student's exception, formatted for the student
    mutated: list[str] = field(default_factory=list)   # inputs changed in place
    shortcut: str | None = None     # message when a forbidden shortcut was used


class SetupError(Exception):
    """The submission could not be set up for a case (a class without the expected members...)."""


class ArityError(TypeError):
    """The submission's signature does not take the arguments a case passes."""


@single_threaded
def run_student(item: Item, impl: Any, cases: Sequence[Case], *, watch: bool = True,
                wires: Tripwires | None = None, source: str | None = None) -> list[Outcome]:
    """Run a submission on every case; never raises for anything the submission does.

    Inputs are cloned first and compared afterwards (in-place modification). With ``watch`` (the
    default) forbidden shortcuts are caught by tripwires -- `wires`, installed by the caller before
    any student code ran, or else a Tripwires(item.forbidden) installed for this run -- and by
    reading the source: `source` when given (e.g. the whole notebook), else the submission's own
    source and its helpers' (when Python can find them).
    """
    static = None
    if watch:
        static = find_shortcut(source, item.forbidden) if source is not None else find_shortcut_in(impl, item.forbidden)
    own = Tripwires(item.forbidden) if watch and wires is None else None
    outcomes = []
    with own or contextlib.nullcontext():
        for case in cases:
            outcomes.append(_run_case(item, impl, case, (wires or own) if watch else None))
    if static is not None:
        for out in outcomes:
            out.shortcut = out.shortcut or shortcut_message(item, static)
    return outcomes


def _run_case(item: Item, impl: Any, case: Case, wires: Tripwires | None) -> Outcome:
    given = Case(case.label, *clone((case.args, case.kwargs)), case.init, case.state, case.train, case.group)
    out = Outcome()
    hits: list[str] = []
    try:
        with (wires.watching(item) if wires is not None else contextlib.nullcontext([])) as hits:
            value = _call(item, impl, given)
        out.value = detached(value)
    except Exception as err:  # the student's exception becomes a message
        out.error = _format_exception(item, err)
    out.mutated = [name for name, a, b in _named_tensors(item, impl, (case.args, case.kwargs),
                                                         (given.args, given.kwargs)) if not same(a, b)]
    if hits:
        out.shortcut = shortcut_message(item, hits[0])
    return out


MAX_PARTS = 4096   # parts of a returned value that are walked (a list of n references to one list... is n**depth)


class _TooLarge(Exception):
    pass


def detached(value: Any) -> Any:
    """`value` with its tensors detached (tuples and lists rebuilt). A value of more than MAX_PARTS parts is
    returned as it is, after MAX_PARTS steps: walking it could take forever, and no expected value is that large
    (the comparison fails it by its type; in the sandbox, grader.sandbox.wire sends it as a description)."""
    parts = 0

    def walk(obj: Any) -> Any:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS:
            raise _TooLarge
        if isinstance(obj, torch.Tensor):
            return obj.detach()
        if isinstance(obj, (tuple, list)):
            return type(obj)(walk(o) for o in obj)
        return obj

    try:
        return walk(value)
    except (_TooLarge, RecursionError):
        return value


def _format_exception(item: Item, err: BaseException) -> str:
    if isinstance(err, NotImplementedError):
        return (f"{item.name} is not implemented yet: it raised NotImplementedError. Replace "
                f"`raise NotImplementedError()` with your code.")
    if isinstance(err, SetupError):
        return str(err)
    if isinstance(err, ArityError):
        return str(err)
    frames = traceback.extract_tb(err.__traceback__)
    # The student's own frames: not this package, not torch.
    own = [f for f in frames if "/grader/checks/" not in f.filename and "site-packages" not in f.filename
           and "/torch/" not in f.filename]
    where = ""
    if own:
        f = own[-1]
        line = f" `{f.line.strip()}`" if f.line else ""
        where = f" at line {f.lineno}{line}"
    text = (str(err).strip().splitlines() or [""])[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    hint = ""
    if isinstance(err, NameError) and getattr(err, "name", None) in IMPORTED:
        hint = " (run the imports cell at the top first; after a kernel restart, run the notebook from the top)"
    return f"{item.name} raised {type(err).__name__}{where}: {text}{hint}"


def _call(item: Item, impl: Any, case: Case) -> Any:
    if item.kind == "function":
        _check_arity(item.name, impl, case.args, case.kwargs)
        return impl(*case.args, **case.kwargs)
    try:
        module = impl(**(case.init or {}))
    except NotImplementedError:
        raise
    except Exception as err:
        raise SetupError(f"{item.name}({', '.join(f'{k}={v!r}' for k, v in (case.init or {}).items())}) "
                         f"failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, torch.nn.Module):
        raise SetupError(f"{item.name} must be an nn.Module subclass; {item.name}(...) gave {describe(module)}")
    if case.state:
        _load_state(item, module, case.state)
    module.train(case.train)
    _check_arity(f"{item.name}.forward", module.forward, case.args, case.kwargs)
    return module(*case.args, **case.kwargs)


def _check_arity(name: str, fn: Any, args: tuple, kwargs: dict) -> None:
    """Raise ArityError (one line) when `fn`'s signature cannot take `args` and `kwargs`."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        given = ", ".join([f"{len(args)} positional argument{'s' * (len(args) != 1)}", *kwargs])
        raise ArityError(f"{name}{signature} cannot be called with {given}: {err}") from None


def _load_state(item: Item, module: torch.nn.Module, state: dict) -> None:
    params = dict(module.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise SetupError(f"{item.name} has no parameter {missing[0]!r} (the checker sets {item.members}); "
                         f"its parameters are: {', '.join(params) or 'none'}")
    extra = [k for k in params if k not in state]
    if extra:
        raise SetupError(f"{item.name} has a parameter {extra[0]!r} that the exercise does not ask for "
                         f"(expected exactly {item.members})")
    first = next(iter(state.values()))
    module.to(device=first.device, dtype=first.dtype)
    with torch.no_grad():
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise SetupError(f"{item.name}'s parameter {k!r} has shape {tuple(params[k].shape)}; "
                                 f"expected {tuple(v.shape)}")
            params[k].copy_(v)


def _named_tensors(item: Item, impl: Any, before: tuple, after: tuple
                   ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, before, after) for every tensor argument; names from the submission's signature."""
    try:
        params = list(inspect.signature(impl.forward if item.kind == "class" else impl).parameters)
    except (TypeError, ValueError, AttributeError):
        params = []
    if item.kind == "class" and params[:1] == ["self"]:
        params = params[1:]
    (args_b, kwargs_b), (args_a, kwargs_a) = before, after
    for i, (a, b) in enumerate(zip(args_b, args_a)):
        if isinstance(a, torch.Tensor):
            yield (params[i] if i < len(params) else f"argument {i + 1}"), a, b
    for k, a in kwargs_b.items():
        if isinstance(a, torch.Tensor):
            yield k, a, kwargs_a[k]
