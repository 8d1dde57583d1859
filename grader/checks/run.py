"""Running a submission on the cases: its outputs or its exceptions, inputs it changed in place, and
forbidden shortcuts it used. Nothing the submission does makes :func:`run_student` raise.

A case can ask for a device without a GPU (see cases.Case): its inputs on the meta device, or the default
device set to meta while the call runs. Code that reads values in Python (.item(), .tolist()), which a GPU
allows and meta tensors cannot, is run again with values; an exception is reported at the student's own line,
never at a line of torch, transformer_ref or the grader."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import inspect
import os
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from grader.checks.cases import META, Case, clone, on_meta, same, single_threaded, to_device, tree_map
from grader.checks.item import Item
from grader.checks.notebook import IMPORTED
from grader.checks.results import Unsent, describe
from grader.checks.shortcuts import find_shortcut, find_shortcut_in, shortcut_message
from grader.checks.watch import Tripwires, handed, plain_tensor, substituted


@dataclass
class Outcome:
    """What the student's code did on one case: a value, or an error message."""

    value: Any = None
    error: str | None = None        # the student's exception, formatted for the student
    mutated: list[str] = field(default_factory=list)   # inputs changed in place
    shortcut: str | None = None     # message when a forbidden shortcut was used
    wiring: str | None = None       # in the sandbox, a layer's record of its sublayer calls (grader.checks.wiring)


class SetupError(Exception):
    """The submission could not be set up for a case (a class without the expected members...)."""


class ArityError(TypeError):
    """The submission's signature does not take the arguments a case passes."""


class ContractBroken(Exception):
    """Raised by an instrumented input of a case (e.g. the model given to greedy_decode) when the submission
    breaks a rule the notebook states (gradients on where it asks for torch.no_grad()); the message is written
    for the student: "<item> was stopped at line N `code`: <message>"."""


def _package_dirs() -> tuple[str, ...]:
    """The folders whose frames are not the student's: torch, the course package, the grader."""
    specs = [importlib.util.find_spec(name) for name in ("torch", "transformer_ref", "grader")]
    return tuple(os.path.realpath(d) + os.sep for spec in specs if spec for d in spec.submodule_search_locations or ())


PACKAGE_DIRS = _package_dirs()


@single_threaded
def run_student(item: Item, impl: Any, cases: Sequence[Case], *, watch: bool = True,
                wires: Tripwires | None = None, source: str | None = None, strict: bool = False,
                substitute: bool = True) -> list[Outcome]:
    """Run a submission on every case; never raises for anything the submission does.

    Inputs are cloned first and compared afterwards (in-place modification). With ``watch`` (the
    default) forbidden shortcuts are caught by tripwires -- `wires`, installed by the caller before
    any student code ran, or else a Tripwires(item.forbidden) installed for this run -- and by
    reading the source: `source` when given (e.g. the whole notebook), else the submission's own
    source and its helpers' (when Python can find them). `strict` (the grading harness) also forbids
    calls into the course's checking code while the submission runs. With `substitute` (the default), each of
    the item's parts (Item.builds_on) that the submission's namespace defines is replaced there, while it runs,
    by a stand-in that runs the part's reference (grader.checks.watch.substituted): one wrong part costs its own
    item, not every item that calls it.
    """
    static = None
    if watch:
        static = find_shortcut(source, item.forbidden) if source is not None else find_shortcut_in(impl, item.forbidden)
    own = Tripwires(item.forbidden) if watch and wires is None else None
    outcomes = []
    with own or contextlib.nullcontext(), substituted(impl, item.builds_on if substitute else ()) as parts:
        for case in cases:
            outcomes.append(_run_case(item, impl, case, (wires or own) if watch else None, strict, tuple(parts)))
    if static is not None:
        for out in outcomes:
            out.shortcut = out.shortcut or shortcut_message(item, static)
    return outcomes


def _run_case(item: Item, impl: Any, case: Case, wires: Tripwires | None, strict: bool = False,
              parts: tuple = ()) -> Outcome:
    inputs = to_device((case.args, case.kwargs), META) if case.meta_inputs else (case.args, case.kwargs)
    args, kwargs = clone(inputs)
    given = dataclasses.replace(case, args=args, kwargs=kwargs)
    out = Outcome()
    raised: Exception | None = None
    copies = _CopiesOffMeta() if on_meta(case) else contextlib.nullcontext()
    handed((given.args, given.kwargs, copies))   # what the student calls, and the mode around the call
    # Everything that decides the grade happens in the window, while it is watched: making the outputs plain (a
    # tensor subclass's detach or __torch_function__) and comparing the inputs (a tensor whose class the code
    # changed). The student's exception is only put into words after it: the traceback reads source files, which
    # the watch would count as reading the course's code, and a case that raised scores 0 whatever its text says.
    with wires.watching(item, strict, parts) if wires is not None else contextlib.nullcontext([]) as hits:
        try:
            with copies:
                value = _call(item, impl, given)
            out.value = detached(value)
        except Exception as err:  # the student's exception becomes a message, below
            raised = err
        try:
            out.mutated = [name for name, a, b in _named_tensors(item, impl, inputs, (given.args, given.kwargs))
                           if not same(a, b)]
        except Exception as err:
            raised = raised or err
    if raised is not None:
        out.error = _format_exception(item, raised)
    tampered = wires.tampered() if wires is not None else None
    if tampered:
        out.shortcut = tampering_message(item, tampered)
    elif hits:
        out.shortcut = shortcut_message(item, hits[0])
    if out.error is not None and on_meta(case) and (READS_VALUES[1] in out.error
                                                    or READS_VALUES[0] in out.error and copies.last == "tolist"):
        return _run_with_values(item, impl, case, wires, strict, parts)
    if case.default_device and out.error is None and not out.shortcut:
        _compare_without_default_device(item, impl, case, wires, out, strict, parts)
    return out


def _compare_without_default_device(item: Item, impl: Any, case: Case, wires: Tripwires | None, out: Outcome,
                                    strict: bool, parts: tuple) -> None:
    """A default-device case again without it: a submission whose result changes makes some tensor on the
    default device (some torch operations take a CPU tensor and a meta one without complaint, and return
    uninitialised values); `out` then holds an error that says so."""
    again = _run_case(item, impl, dataclasses.replace(case, default_device=None), wires, strict, parts)
    if again.error is None and not _same_values(out.value, again.value):
        out.value, out.error = None, (f"{item.name} gave other values with the default device set to "
                                      f"{case.default_device} than without it: a tensor it makes without device= is "
                                      f"on {case.default_device}")


def _same_values(a: Any, b: Any) -> bool:
    """The same structure, with tensors equal on the same device (NaN equal to NaN)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.device == b.device and same(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_values(x, y) for x, y in zip(a, b))
    return a == b


READS_VALUES = ("Cannot copy out of meta tensor",            # .cpu(), .to('cpu'), .tolist()
                "item() cannot be called on meta tensors")   # .item(), bool(), int(), `if` on a tensor


class _CopiesOffMeta(TorchFunctionMode):
    """During a meta case: the last of .cpu(), .to(...) and .tolist() called on a meta tensor. All three raise
    "Cannot copy out of meta tensor"; only .tolist() (values read in Python, which a GPU allows) is run again
    with values, while .cpu() and .to() take the computation off the inputs' device."""

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in ("cpu", "to", "tolist") and args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            self.last = name
        return func(*args, **(kwargs or {}))


def _run_with_values(item: Item, impl: Any, case: Case, wires: Tripwires | None, strict: bool,
                     parts: tuple) -> Outcome:
    """A meta case again, for code that reads tensor values in Python (.item(), .tolist(), a loop), which a
    GPU allows and meta tensors cannot: the inputs on the CPU, with values, and the default device set to
    meta, so that a tensor made without device= is on meta. A result on the inputs' device comes back as
    meta tensors (what the meta case expects); a result elsewhere becomes an error that says so."""
    device = {"device": torch.device("cpu")} if case.kwargs.get("device") == META else {}
    on_cpu = dataclasses.replace(case, kwargs={**case.kwargs, **device}, default_device="meta", meta_inputs=False)
    out = _run_case(item, impl, on_cpu, wires, strict, parts)
    if out.error is None:
        devices: list[torch.device] = []
        tree_map(lambda t: devices.append(t.device), out.value)
        elsewhere = next((d for d in devices if d.type != "cpu"), None)
        if elsewhere is None:
            out.value = tree_map(lambda t: t.to(META), out.value)
        else:
            out.value, out.error = None, (f"{item.name} returned a tensor on {elsewhere}: your code reads the "
                                          f"values of its inputs, so it ran again with them on cpu and the "
                                          f"default device set to meta")
    return out


MAX_PARTS = 4096   # parts of a returned value that are walked (a list of n references to one list... is n**depth)
MAX_NESTING = 32   # levels of lists and tuples


def detached(value: Any) -> Any:
    """`value` with its tensors detached (tuples and lists rebuilt). Past MAX_PARTS parts or MAX_NESTING levels,
    each further part is Unsent: walking all of it could take forever (so could every later walk), and no expected
    value is that large (the comparison fails it with the description)."""
    parts = 0

    def walk(obj: Any, depth: int) -> Any:
        nonlocal parts
        parts += 1
        if parts > MAX_PARTS or depth > MAX_NESTING or isinstance(obj, (tuple, list)) and parts + len(obj) > MAX_PARTS:
            return Unsent(f"a value of more than {MAX_PARTS} parts or {MAX_NESTING} levels, over the grader's limit")
        if isinstance(obj, torch.Tensor):
            return plain_tensor(obj.detach())   # a subclass's own detach runs here, watched
        if isinstance(obj, tuple) and hasattr(obj, "_fields"):   # a NamedTuple (a cache)
            return type(obj)(*(walk(o, depth + 1) for o in obj))
        if isinstance(obj, (tuple, list)):
            return type(obj)(walk(o, depth + 1) for o in obj)
        return obj

    return walk(value, 0)


def tampering_message(item: Item, what: str) -> str:
    """What the student reads when the watch on shortcuts was changed while `item` ran."""
    return (f"{item.name} changed the grader's watch on shortcuts while it ran ({what}); this item scores 0 "
            f"while that is there.")


def _format_exception(item: Item, err: BaseException) -> str:
    """The student's exception as one line for the student; never raises (an exception's __str__ is theirs)."""
    try:
        return _describe_exception(item, err)
    except Exception as inner:   # noqa: BLE001 -- whatever the submission's exception does
        return f"{item.name} raised an exception whose message could not be read ({type(inner).__name__})"


def _describe_exception(item: Item, err: BaseException) -> str:
    if isinstance(err, NotImplementedError) and not str(err).strip():   # the notebook's `raise NotImplementedError()`
        return (f"{item.name} is not implemented yet: it raised NotImplementedError. Replace "
                f"`raise NotImplementedError()` with your code.")
    if isinstance(err, (SetupError, ArityError)):
        return str(err)
    where = _student_line(err)
    if isinstance(err, ContractBroken):
        return f"{item.name} was stopped{where}: {err}"
    text = (str(err).strip().splitlines() or [""])[0]
    text = text if len(text) <= 160 else text[:157] + "..."
    hint = ""
    if isinstance(err, NameError) and getattr(err, "name", None) in IMPORTED:
        hint = " (run the imports cell at the top first; after a kernel restart, run the notebook from the top)"
    return f"{item.name} raised {type(err).__name__}{where}: {text}{hint}"


def _student_line(err: BaseException) -> str:
    """" at line N `code`" for the last frame of the traceback in the student's own code (not torch, the course
    package transformer_ref, the grader or an installed library: a crash inside the package is reported at
    the student's call of it), or "" when there is none."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if f.filename.startswith("<") or "site-packages" not in f.filename
           and not os.path.realpath(f.filename).startswith(PACKAGE_DIRS)]
    if not own:
        return ""
    f = own[-1]
    return f" at line {f.lineno}{f' `{f.line.strip()}`' if f.line else ''}"


def _call(item: Item, impl: Any, case: Case) -> Any:
    default = torch.device(case.default_device) if case.default_device else contextlib.nullcontext()
    if item.kind == "function":
        _check_arity(item.name, impl, case.args, case.kwargs)
        with default:
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
    with default:
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
