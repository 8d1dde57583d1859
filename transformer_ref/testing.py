"""Checking helpers for the course's exercises, the way ``numpy.testing`` serves numpy.

A test cell in an exercise notebook is one line::

    from transformer_ref.testing import check_scaled_dot_product_attention
    check_scaled_dot_product_attention(scaled_dot_product_attention)

which raises ``AssertionError`` with a message written for the student: what was expected, what
came back, and -- when the output matches one of the catalogued mistakes in
:mod:`transformer_ref.mistakes` -- the likely mistake in plain words.

A check is three separate steps, so that a grader can run the student's code in an isolated
process and compare outside it (everything passed between the steps is picklable):

1. :func:`make_cases` ``(exercise, seed)`` -> a list of :class:`Case` (awkward shapes: batch 1, odd
   sizes, T_q != T_k, fully masked rows, float64; CUDA copies when asked for and available).
2. :func:`run_student` ``(exercise, impl, cases)`` -> a list of :class:`Outcome`: the student's
   outputs or exceptions, inputs checked for in-place modification, and any call of a forbidden
   shortcut (the package's own answer or PyTorch's fused version, caught by a tripwire while the
   student's code runs and by an inspection of the names its code refers to).
3. :func:`compare` ``(exercise, cases, outcomes)`` -> a :class:`Report` (passed, message): shape,
   dtype, device, NaN where the reference has none, then values with dtype-fit tolerances against
   the ``transformer_ref`` reference; when wrong, the catalogue of known mistakes is run on the same
   inputs and a match is named.

:func:`check` does all three; ``check_<name>(impl)`` is :func:`check` for one graded item.
"""

from __future__ import annotations

import builtins
import contextlib
import copy
import dis
import functools
import importlib
import inspect
import math
import sys
import traceback
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Case", "Outcome", "Report", "Exercise", "EXERCISES", "ASSIGNMENTS", "make_cases",
           "run_student", "compare", "check", "find_shortcut", "assert_report"]

# --------------------------------------------------------------------------------------------
# Data passed between the three steps
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One set of inputs for a graded item.

    Functions are called as ``impl(*args, **kwargs)``. Classes are built as ``impl(**init)``, given
    the parameters in ``state`` (by name, e.g. ``"W_q.weight"``), put in training mode when
    ``train`` is True (evaluation mode otherwise) and called as ``module(*args, **kwargs)``.
    """

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    init: dict | None = None
    state: dict | None = None
    train: bool = False


@dataclass
class Outcome:
    """What the student's code did on one case: a value, or an error message."""

    value: Any = None
    error: str | None = None        # the student's exception, formatted for the student
    mutated: list[str] = field(default_factory=list)   # inputs changed in place
    shortcut: str | None = None     # message when a forbidden shortcut was called


@dataclass
class Report:
    """The verdict on one graded item; ``mistake`` is the catalogue key of a recognised mistake."""

    passed: bool
    message: str
    mistake: str | None = None
    shortcut: bool = False


@dataclass(frozen=True)
class Mistake:
    """A plausible wrong implementation (same form as a submission) and what to tell the student."""

    key: str
    says: str           # completes "Likely mistake: ..."
    impl: Any


@dataclass(frozen=True)
class Exercise:
    """A graded item: how to build inputs, the reference, what it may not call, how to compare.

    ``cases(g, seed)`` builds CPU cases from the generator ``g``; ``reference()`` returns the
    reference implementation in the same form as a submission (a function or an nn.Module class),
    imported lazily from transformer_ref. ``forbidden`` lists dotted names of callables the
    submission may not use. ``tol`` overrides the float tolerances {dtype: (rtol, atol)}.
    ``compare_fn``, when set, replaces the reference comparison (randomised exercises).
    """

    name: str
    assignment: str
    kind: str                                   # "function" or "class"
    cases: Callable[[torch.Generator, int], list[Case]]
    reference: Callable[[], Any]
    forbidden: tuple[str, ...]
    outputs: tuple[str, ...] = ("output",)      # names of the returned values, for messages
    tol: dict = field(default_factory=dict)
    members: str = ""                           # for classes: the parameters the checker sets
    compare_fn: Callable | None = None


# --------------------------------------------------------------------------------------------
# Tolerances and small utilities
# --------------------------------------------------------------------------------------------

TOLERANCES = {  # (rtol, atol): loose enough for any correct order of operations, tight enough
    torch.float16: (1e-2, 1e-3),   # for every catalogued mistake
    torch.bfloat16: (2e-2, 1e-2),
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-7, 1e-10),
}


def _tree_map(fn: Callable, obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_tree_map(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: _tree_map(fn, v) for k, v in obj.items()}
    return obj


def _clone(obj: Any) -> Any:
    """Copies of the tensors and random generators in obj (a generator copy continues from the same state)."""
    if isinstance(obj, torch.Generator):
        copy_ = torch.Generator(device=obj.device)
        copy_.set_state(obj.get_state())
        return copy_
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj)
    return obj.detach().clone() if isinstance(obj, torch.Tensor) else obj


def _to(obj: Any, device: torch.device | str) -> Any:
    """obj with its tensors moved to device (a generator is re-created there with the same seed)."""
    if isinstance(obj, torch.Generator):
        return torch.Generator(device=device).manual_seed(obj.initial_seed())
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).to(device)
    return obj.to(device) if isinstance(obj, torch.Tensor) else obj


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exactly equal, NaN equal to NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a, b) or torch.equal(a.isnan(), b.isnan()) and
                    torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
    return bool(torch.equal(a, b))


def _describe(value: Any) -> str:
    """A short description of what a submission returned."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype} on {value.device}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}: (" + ", ".join(_describe(v) for v in value) + ")"
    if value is None:
        return "None (did you forget `return`?)"
    return f"{type(value).__name__} {value!r}"[:200]


def _fmt(t: torch.Tensor, limit: int = 48) -> str:
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


def _single_threaded(fn: Callable) -> Callable:
    """Run fn on one CPU thread (restored afterwards): the exercises' tensors are tiny, and on a busy
    machine the thread pool's synchronisation makes small operations 5-10x slower."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(saved)
    return wrapper


def _scalar(x: Any) -> float | None:
    """A Python number or 0-d tensor as float; None for anything else."""
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.is_complex() and x.dtype != torch.bool:
        return float(x.item())
    return None


# --------------------------------------------------------------------------------------------
# Step 1: cases
# --------------------------------------------------------------------------------------------


@_single_threaded
def make_cases(exercise: str, seed: int = 0, cuda: bool = False) -> list[Case]:
    """Inputs for one graded item, drawn from a local ``torch.Generator`` seeded with ``seed``.

    With ``cuda=True`` and a GPU present, CUDA copies of the cases are appended.
    """
    ex = _exercise(exercise)
    g = torch.Generator().manual_seed(seed)
    cases = ex.cases(g, seed)
    if cuda and torch.cuda.is_available():
        cases += [Case(c.label + ", on cuda", _to(c.args, "cuda"), _to(c.kwargs, "cuda"), c.init,
                       _to(c.state, "cuda"), c.train) for c in cases[:3]]
        cases += [Case(c.label.replace("'cpu'", "'cuda'"), c.args, {**c.kwargs, "device": torch.device("cuda")})
                  for c in cases if isinstance(c.kwargs.get("device"), torch.device)]
    return cases


def _exercise(name: str) -> Exercise:
    if isinstance(name, Exercise):
        return name
    if name not in EXERCISES:
        raise KeyError(f"unknown exercise {name!r}; known: {', '.join(sorted(EXERCISES))}")
    return EXERCISES[name]


# --------------------------------------------------------------------------------------------
# Step 2: running a submission
# --------------------------------------------------------------------------------------------


class ShortcutError(RuntimeError):
    """Raised inside the student's code when it calls a forbidden shortcut."""


class _SetupError(Exception):
    """The submission could not be set up for a case (a class without the expected members...)."""


@functools.lru_cache(maxsize=None)
def _module_cut(dotted: str) -> int:
    """How many leading parts of `dotted` name an importable module (0: none)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            importlib.import_module(".".join(parts[:cut]))
            return cut
        except ImportError:
            continue
    return 0


def _resolve(dotted: str) -> tuple[Any, str, Any] | None:
    """'torch.nn.functional.softmax' -> (owner object, attribute name, current value), or None.

    Names in the transformers library are only looked at when a submission imported it (it is slow to import).
    """
    parts = dotted.split(".")
    if parts[0] == "transformers":
        cut = next((c for c in range(len(parts) - 1, 0, -1) if ".".join(parts[:c]) in sys.modules), 0)
    else:
        cut = _module_cut(dotted)
    if cut == 0:
        return None
    owner: Any = sys.modules[".".join(parts[:cut])]
    try:
        for attr in parts[cut:-1]:
            owner = getattr(owner, attr)
        return owner, parts[-1], getattr(owner, parts[-1])
    except AttributeError:
        return None


def _shortcut_message(ex: Exercise, dotted: str) -> str:
    what = "the course's reference answer" if dotted.startswith("transformer_ref") else \
        "a ready-made version of what this exercise asks you to write"
    return (f"{ex.name} uses {dotted}, {what}. Write this part yourself (the exercise says which building "
            f"blocks you may use); this item scores 0 while that call is there.")


@contextlib.contextmanager
def _tripwires(ex: Exercise, hits: list[str]) -> Iterator[None]:
    """Temporarily replace every forbidden callable with a wrapper that records the call and raises."""
    patched = []
    for dotted in ex.forbidden:
        found = _resolve(dotted)
        if found is None:
            continue
        owner, attr, original = found

        def wire(*args: Any, __dotted: str = dotted, **kwargs: Any) -> Any:
            hits.append(__dotted)
            raise ShortcutError(_shortcut_message(ex, __dotted))

        try:
            setattr(owner, attr, wire)
        except (AttributeError, TypeError):  # some C types refuse new attributes
            continue
        patched.append((owner, attr, original))
    try:
        yield
    finally:
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)


def _forbidden_objects(ex: Exercise) -> dict[int, str]:
    objects = {}
    for dotted in ex.forbidden:
        found = _resolve(dotted)
        if found is not None:
            objects[id(found[2])] = dotted
            # A forbidden method (nn.LayerNorm.forward) also forbids its class (nn.LayerNorm).
            if isinstance(found[0], type) and found[1] in ("forward", "__init__", "__call__"):
                objects.setdefault(id(found[0]), dotted.rsplit(".", 1)[0])
    return objects


_LOAD_BASE = {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF"}
_LOAD_ATTR = {"LOAD_ATTR", "LOAD_METHOD"}


def find_shortcut(exercise: str | Exercise, impl: Any) -> str | None:
    """Inspect the names a submission's code refers to (through globals, closures, imports inside the
    function, its helpers and base classes); return the dotted name of a forbidden one, or None."""
    ex = _exercise(exercise)
    forbidden = _forbidden_objects(ex)
    seen: set[int] = set()

    def look_obj(obj: Any, home: str | None) -> str | None:
        if id(obj) in forbidden:
            return forbidden[id(obj)]
        if id(obj) in seen:
            return None
        if isinstance(obj, (types.FunctionType, types.MethodType)):
            seen.add(id(obj))
            fn = obj.__func__ if isinstance(obj, types.MethodType) else obj
            if home is not None and fn.__module__ != home:
                return None  # library code: the tripwire watches it at run time
            cells = {name: cell for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ())}
            return look_code(fn.__code__, fn.__globals__, cells, fn.__module__)
        if isinstance(obj, (staticmethod, classmethod)):
            return look_obj(obj.__func__, home)
        if isinstance(obj, property):
            return next((r for f in (obj.fget, obj.fset) if f and (r := look_obj(f, home))), None)
        if isinstance(obj, type):
            seen.add(id(obj))
            if home is not None and obj.__module__ != home:
                return None
            for base in obj.__mro__[1:]:
                if id(base) in forbidden:
                    return forbidden[id(base)]
            for value in vars(obj).values():
                if (r := look_obj(value, obj.__module__)):
                    return r
        return None

    def look_code(code: types.CodeType, globs: dict, cells: dict, home: str) -> str | None:
        chain: Any = None
        fromlist: Any = None
        for ins in dis.get_instructions(code):
            name = ins.argval if isinstance(ins.argval, str) else None
            if ins.opname in _LOAD_BASE and name is not None:
                if ins.opname == "LOAD_DEREF" and name in cells:
                    try:
                        chain = cells[name].cell_contents
                    except ValueError:
                        chain = None
                else:
                    chain = globs.get(name, getattr(builtins, name, None))
            elif ins.opname in _LOAD_ATTR and name is not None and chain is not None:
                chain = getattr(chain, name, None)
            elif ins.opname == "IMPORT_NAME" and name is not None:
                # `from a.b import c` yields a.b; `import a.b` binds a
                chain = sys.modules.get(name if fromlist else name.split(".")[0])
                continue
            elif ins.opname == "IMPORT_FROM" and name is not None and chain is not None:
                if (r := look_obj(getattr(chain, name, None), home)):
                    return r
                continue
            else:
                fromlist = ins.argval if ins.opname == "LOAD_CONST" else None
                chain = None
                continue
            if chain is not None and (r := look_obj(chain, home)):
                return r
        for const in code.co_consts:
            if isinstance(const, types.CodeType) and (r := look_code(const, globs, cells, home)):
                return r
        return None

    return look_obj(impl, None)


def _format_exception(ex: Exercise, err: BaseException) -> str:
    if isinstance(err, NotImplementedError):
        return (f"{ex.name} is not implemented yet: it raised NotImplementedError. Replace "
                f"`raise NotImplementedError()` with your code.")
    if isinstance(err, _SetupError):
        return str(err)
    frames = traceback.extract_tb(err.__traceback__)
    # The student's own frames: not this module, not torch.
    own = [f for f in frames if f.filename != __file__ and "site-packages" not in f.filename
           and "/torch/" not in f.filename]
    where = ""
    if own:
        f = own[-1]
        line = f" `{f.line.strip()}`" if f.line else ""
        where = f" at line {f.lineno}{line}"
    return f"{ex.name} raised {type(err).__name__}{where}: {err}"


def _call(ex: Exercise, impl: Any, case: Case) -> Any:
    if ex.kind == "function":
        return impl(*case.args, **case.kwargs)
    try:
        module = impl(**(case.init or {}))
    except NotImplementedError:
        raise
    except Exception as err:
        raise _SetupError(f"{ex.name}({', '.join(f'{k}={v!r}' for k, v in (case.init or {}).items())}) "
                          f"failed: {type(err).__name__}: {err}") from err
    if not isinstance(module, torch.nn.Module):
        raise _SetupError(f"{ex.name} must be an nn.Module subclass; {ex.name}(...) gave {_describe(module)}")
    if case.state:
        _load_state(ex, module, case.state)
    module.train(case.train)
    return module(*case.args, **case.kwargs)


def _load_state(ex: Exercise, module: torch.nn.Module, state: dict) -> None:
    params = dict(module.named_parameters())
    missing = [k for k in state if k not in params]
    if missing:
        raise _SetupError(f"{ex.name} has no parameter {missing[0]!r} (the checker sets {ex.members}); "
                          f"its parameters are: {', '.join(params) or 'none'}")
    extra = [k for k in params if k not in state]
    if extra:
        raise _SetupError(f"{ex.name} has a parameter {extra[0]!r} that the exercise does not ask for "
                          f"(expected exactly {ex.members})")
    first = next(iter(state.values()))
    module.to(device=first.device, dtype=first.dtype)
    with torch.no_grad():
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise _SetupError(f"{ex.name}'s parameter {k!r} has shape {tuple(params[k].shape)}; "
                                  f"expected {tuple(v.shape)}")
            params[k].copy_(v)


@_single_threaded
def run_student(exercise: str | Exercise, impl: Any, cases: Sequence[Case], *,
                watch: bool = True) -> list[Outcome]:
    """Run a submission on every case; never raises for anything the submission does.

    Inputs are cloned first and compared afterwards (in-place modification). With ``watch`` (the
    default) forbidden shortcuts are caught by a tripwire and by :func:`find_shortcut`.
    """
    ex = _exercise(exercise)
    static = find_shortcut(ex, impl) if watch else None
    outcomes = []
    for case in cases:
        given = Case(case.label, *_clone((case.args, case.kwargs)), case.init, case.state, case.train)
        hits: list[str] = []
        out = Outcome()
        try:
            with (_tripwires(ex, hits) if watch else contextlib.nullcontext()):
                value = _call(ex, impl, given)
            out.value = _tree_map(lambda t: t.detach(), value)
        except Exception as err:  # the student's exception becomes a message
            out.error = _format_exception(ex, err)
        out.mutated = [name for name, a, b in _named_tensors(ex, impl, (case.args, case.kwargs),
                                                             (given.args, given.kwargs)) if not _same(a, b)]
        dotted = hits[0] if hits else static
        if dotted:
            out.shortcut = _shortcut_message(ex, dotted)
        outcomes.append(out)
    return outcomes


def _named_tensors(ex: Exercise, impl: Any, before: tuple, after: tuple
                   ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, before, after) for every tensor argument; names from the submission's signature."""
    try:
        params = list(inspect.signature(impl.forward if ex.kind == "class" else impl).parameters)
    except (TypeError, ValueError, AttributeError):
        params = []
    if ex.kind == "class" and params[:1] == ["self"]:
        params = params[1:]
    (args_b, kwargs_b), (args_a, kwargs_a) = before, after
    for i, (a, b) in enumerate(zip(args_b, args_a)):
        if isinstance(a, torch.Tensor):
            yield (params[i] if i < len(params) else f"argument {i + 1}"), a, b
    for k, a in kwargs_b.items():
        if isinstance(a, torch.Tensor):
            yield k, a, kwargs_a[k]


# --------------------------------------------------------------------------------------------
# Step 3: comparing
# --------------------------------------------------------------------------------------------


def _reference_outcomes(ex: Exercise, cases: Sequence[Case]) -> list[Outcome]:
    return run_student(ex, ex.reference(), cases, watch=False)


def _mismatch(ex: Exercise, expected: Any, got: Any, where: str) -> str | None:
    """None when got matches expected; otherwise a message for the student."""
    names = ex.outputs
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return (f"{ex.name} should return a tuple ({', '.join(names)}); it returned {_describe(got)}")
        for name, e, o in zip(names, expected, got):
            if (msg := _mismatch_leaf(ex, e, o, f"{where}: {name}")):
                return msg
        return None
    return _mismatch_leaf(ex, expected, got, f"{where}: {names[0]}")


def _mismatch_leaf(ex: Exercise, expected: Any, got: Any, where: str) -> str | None:
    if not isinstance(expected, torch.Tensor):
        e, o = _scalar(expected), _scalar(got)
        if o is None or e is None:
            return f"{where}: expected a number like {expected!r}; got {_describe(got)}"
        if not math.isclose(o, e, rel_tol=1e-6, abs_tol=1e-12):
            return f"{where}: expected {e:.8g}, got {o:.8g}"
        return None
    if not isinstance(got, torch.Tensor):
        return f"{where}: expected a torch.Tensor of shape {tuple(expected.shape)}; got {_describe(got)}"
    if got.shape != expected.shape:
        return f"{where}: expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        hint = " (keep the dtype of the inputs; create new tensors with dtype=x.dtype)" \
            if expected.is_floating_point() else ""
        return f"{where}: expected dtype {expected.dtype}, got {got.dtype}{hint}"
    if got.device != expected.device:
        return (f"{where}: expected the result on {expected.device}, got it on {got.device} "
                f"(create new tensors with device=x.device)")
    if not expected.is_floating_point():
        if not torch.equal(got, expected):
            bad = (got != expected).nonzero()[0].tolist()
            return (f"{where}: wrong at index {tuple(bad)}: expected {expected[tuple(bad)].item()}, "
                    f"got {got[tuple(bad)].item()}\nexpected:\n{_fmt(expected)}\ngot:\n{_fmt(got)}")
        return None
    new_nan = got.isnan() & ~expected.isnan()
    if new_nan.any():
        bad = new_nan.nonzero()[0].tolist()
        return (f"{where}: NaN at index {tuple(bad)} where the reference has {expected[tuple(bad)].item():.4g}"
                f" ({int(new_nan.sum())} NaN in all). A softmax over a row of only -inf gives NaN: "
                f"a query with nothing to attend to must get zero weights and zero output.")
    rtol, atol = ex.tol.get(expected.dtype, TOLERANCES.get(expected.dtype, (1e-4, 1e-5)))
    close = torch.isclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
    if not close.all():
        diff = (got - expected).abs().nan_to_num(float("inf")).masked_fill(close, 0)
        bad = tuple(torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        bad = tuple(int(i) for i in bad)
        n_bad = int((~close).sum())
        e, o = expected[bad].item(), got[bad].item()
        digits = next((d for d in range(6, 17) if f"{e:.{d}g}" != f"{o:.{d}g}"), 17)
        msg = (f"{where}: {n_bad} of {close.numel()} values differ; the largest difference is at index "
               f"{bad}: expected {e:.{digits}g}, got {o:.{digits}g}")
        if expected.numel() <= 48:
            msg += f"\nexpected:\n{_fmt(expected)}\ngot:\n{_fmt(got)}"
        return msg
    return None


def _matches(ex: Exercise, a: list[Outcome], b: list[Outcome]) -> bool:
    """Both produced values on the same cases and the values agree (within tolerance)."""
    usable = [(x, y) for x, y in zip(a, b) if x.error is None]
    if not usable or any(y.error is not None for _, y in usable):
        return False
    return all(_mismatch(ex, x.value, y.value, "") is None for x, y in usable)


def diagnose(exercise: str | Exercise, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> Any:
    """The catalogued mistake whose outputs equal the submission's on every case, or None."""
    from transformer_ref.mistakes import CATALOGUE
    ex = _exercise(exercise)
    for mistake in CATALOGUE.get(ex.name, ()):
        produced = run_student(ex, mistake.impl, cases, watch=False)
        if _matches(ex, list(outcomes), produced):
            return mistake
    return None


@_single_threaded
def compare(exercise: str | Exercise, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> Report:
    """Compare a submission's outcomes with the reference on the same cases; name a known mistake."""
    ex = _exercise(exercise)
    if len(outcomes) != len(cases):
        return Report(False, f"{ex.name}: got {len(outcomes)} outcomes for {len(cases)} cases")
    for out in outcomes:
        if out.shortcut:
            return Report(False, out.shortcut, shortcut=True)
    if ex.compare_fn is not None:
        return ex.compare_fn(ex, cases, outcomes)
    expected = _reference_outcomes(ex, cases)
    for i, (case, out, ref) in enumerate(zip(cases, outcomes, expected)):
        if ref.error is not None:  # a bug in this module or the reference, not the student's
            raise RuntimeError(f"reference failed on case {case.label!r}: {ref.error}")
        where = f"case {i + 1} of {len(cases)} ({case.label})"
        if out.error is not None:
            return Report(False, f"{ex.name} does not run yet.\n{where}: {out.error}")
        if out.mutated:
            return Report(False, f"{ex.name} changed its input {', '.join(out.mutated)} in place ({where}); "
                          f"leave the inputs as they are (use out-of-place operations: x = x + 1, not x += 1)")
        problem = _mismatch(ex, ref.value, out.value, where)
        if problem is not None:
            mistake = diagnose(ex, cases, outcomes)
            if mistake is not None:
                problem += f"\nLikely mistake: {mistake.says}"
            return Report(False, f"{ex.name} is not right yet.\n{problem}",
                          mistake=mistake.key if mistake else None)
    return Report(True, f"{ex.name}: all {len(cases)} cases pass.")



# --------------------------------------------------------------------------------------------
# All three steps
# --------------------------------------------------------------------------------------------


def check(exercise: str, impl: Any, seeds: Sequence[int] = (0,), cuda: bool = False) -> Report:
    """make_cases + run_student + compare for each seed; the first failing seed's report."""
    report = Report(True, "")
    for seed in seeds:
        cases = make_cases(exercise, seed, cuda=cuda)
        report = compare(exercise, cases, run_student(exercise, impl, cases))
        if not report.passed:
            return report
    return report


def assert_report(report: Report) -> None:
    """Raise AssertionError with the report's message when it did not pass."""
    if not report.passed:
        raise AssertionError("\n" + report.message)


def _entry_point(name: str) -> Callable:
    def check_item(impl: Any, seeds: Sequence[int] = (0,), cuda: bool = False) -> None:
        assert_report(check(name, impl, seeds, cuda))
    check_item.__name__ = check_item.__qualname__ = f"check_{name}"
    check_item.__doc__ = (f"Check a submission of {name!r} against transformer_ref on random inputs "
                          f"(seeds, and CUDA copies when cuda=True and a GPU is present);\nraise "
                          f"AssertionError with what was expected, what came back and the likely mistake.")
    return check_item


# --------------------------------------------------------------------------------------------
# The graded items: inputs, reference, forbidden shortcuts
# --------------------------------------------------------------------------------------------


def _randn(g: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def _mask(g: torch.Generator, *shape: int, empty_row: bool = True) -> torch.Tensor:
    """A random bool mask (True = may attend) with, when asked, one query row that may attend to nothing."""
    mask = torch.rand(*shape, generator=g) < 0.6
    mask[..., 0] |= ~mask.any(-1)        # every row keeps a key ...
    if empty_row:
        mask[(0,) * (mask.dim() - 2) + (-1,)] = False   # ... except one, fully masked
    return mask


def _ref(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(f"transformer_ref.{module}"), name)


_F = "torch.nn.functional."
_SDPA = (_F + "scaled_dot_product_attention", _F + "multi_head_attention_forward",
         "torch.nn.MultiheadAttention.forward", "torch.nn.MultiheadAttention.__init__")
_REF_ATTENTION = tuple(f"transformer_ref.attention.{n}" for n in (
    "dot_product_attention", "scaled_dot_product_attention", "fused_attention", "self_attention",
    "SelfAttention.forward", "additive_attention", "AdditiveAttention.forward"))
_REF_MULTIHEAD = tuple(f"transformer_ref.multihead.{n}" for n in (
    "split_heads", "merge_heads", "MultiHeadAttention.forward", "MultiHeadAttention.__init__"))


def _attention_cases(g: torch.Generator, seed: int) -> list[Case]:
    def qkv(batch: tuple, T_q: int, T_k: int, d_k: int, d_v: int, dtype: torch.dtype = torch.float32):
        return (_randn(g, *batch, T_q, d_k, dtype=dtype, scale=1.5), _randn(g, *batch, T_k, d_k, dtype=dtype, scale=1.5),
                _randn(g, *batch, T_k, d_v, dtype=dtype))
    return [
        Case("q (2, 3, 4), k (2, 5, 4), v (2, 5, 6), no mask", qkv((2,), 3, 5, 4, 6)),
        Case("batch 1, one query, one key: q (1, 1, 7)", qkv((1,), 1, 1, 7, 3)),
        Case("q (5, 3) without a batch axis, k (6, 3), v (6, 2)", qkv((), 5, 6, 3, 2)),
        Case("q (2, 3, 4, 8) with a head axis, mask (2, 1, 4, 6) with a fully masked row",
             qkv((2, 3), 4, 6, 8, 5), {"mask": _mask(g, 2, 1, 4, 6)}),
        Case("float64, q (3, 5, 5), causal mask (5, 5)", qkv((3,), 5, 5, 5, 4, torch.float64),
             {"mask": torch.ones(5, 5, dtype=torch.bool).tril()}),
        Case("float64, q (2, 4, 3), k (2, 7, 3), mask (2, 4, 7) with a fully masked row",
             qkv((2,), 4, 7, 3, 3, torch.float64), {"mask": _mask(g, 2, 4, 7)}),
    ]


def _dot_product_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [
        Case("x (2, 5, 4)", (_randn(g, 2, 5, 4, scale=0.7),)),
        Case("batch 1, x (1, 1, 3)", (_randn(g, 1, 1, 3),)),
        Case("x (6, 3) without a batch axis", (_randn(g, 6, 3, scale=0.7),)),
        Case("float64, x (3, 7, 5)", (_randn(g, 3, 7, 5, dtype=torch.float64, scale=0.6),)),
    ]


def _self_attention_cases(g: torch.Generator, seed: int) -> list[Case]:
    def args(B: int, T: int, d_model: int, d_k: int, d_v: int, dtype: torch.dtype = torch.float32):
        return (_randn(g, B, T, d_model, dtype=dtype), _randn(g, d_model, d_k, dtype=dtype, scale=0.8),
                _randn(g, d_model, d_k, dtype=dtype, scale=0.8), _randn(g, d_model, d_v, dtype=dtype))
    return [
        Case("x (2, 5, 6), W_q (6, 4), W_v (6, 3)", args(2, 5, 6, 4, 3)),
        Case("batch 1, T = 1: x (1, 1, 4), W_q (4, 2)", args(1, 1, 4, 2, 2)),
        Case("x (3, 4, 8), causal mask (4, 4)", args(3, 4, 8, 5, 7), {"mask": torch.ones(4, 4, dtype=torch.bool).tril()}),
        Case("float64, x (2, 6, 5), mask (2, 6, 6) with a fully masked row", args(2, 6, 5, 3, 4, torch.float64),
             {"mask": _mask(g, 2, 6, 6)}),
    ]


# ------------------------------------------------------------------ 02_positional_encoding

_REF_POSITIONAL = tuple(f"transformer_ref.positional.{n}" for n in (
    "sinusoidal_positional_encoding", "SinusoidalPositionalEncoding.forward", "relative_position_index",
    "relative_attention", "relative_logits_naive", "relative_logits_skewed", "RelativeMultiHeadAttention.forward"))


def _sinusoidal_cases(g: torch.Generator, seed: int) -> list[Case]:
    extra = int(torch.randint(2, 40, (1,), generator=g))
    return [Case("max_len 10, d_model 8", (10, 8)), Case("max_len 1, d_model 2", (1, 2)),
            Case("max_len 50, d_model 16", (50, 16)), Case("max_len 6, d_model 64", (6, 64)),
            Case(f"max_len {extra}, d_model 12", (extra, 12))]


def _relative_index_cases(g: torch.Generator, seed: int) -> list[Case]:
    q_len, k_len = (int(n) for n in torch.randint(1, 12, (2,), generator=g))
    return [Case("q_len 5, k_len 5, max_distance 2", (5, 5, 2)), Case("q_len 1, k_len 1, max_distance 3", (1, 1, 3)),
            Case("q_len 3, k_len 7, max_distance 2", (3, 7, 2)), Case("q_len 6, k_len 4, max_distance 1", (6, 4, 1)),
            Case("q_len 4, k_len 4, max_distance 0", (4, 4, 0)), Case("q_len 4, k_len 6, max_distance 10", (4, 6, 10)),
            Case(f"q_len {q_len}, k_len {k_len}, max_distance 3", (q_len, k_len, 3))]


def _relative_attention_cases(g: torch.Generator, seed: int) -> list[Case]:
    def args(batch: tuple, T_q: int, T_k: int, d_k: int, d_v: int, dtype: torch.dtype = torch.float32) -> tuple:
        return (_randn(g, *batch, T_q, d_k, dtype=dtype, scale=1.5), _randn(g, *batch, T_k, d_k, dtype=dtype, scale=1.5),
                _randn(g, *batch, T_k, d_v, dtype=dtype), _randn(g, T_q, T_k, d_k, dtype=dtype, scale=1.5),
                _randn(g, T_q, T_k, d_v, dtype=dtype))
    return [Case("q (2, 4, 4), k (2, 4, 4), v (2, 4, 3)", args((2,), 4, 4, 4, 3)),
            Case("q (3, 5), k (7, 5): T_q != T_k", args((), 3, 7, 5, 2)),
            Case("q (2, 2, 5, 4) with heads, mask (5, 5) causal", args((2, 2), 5, 5, 4, 4),
                 {"mask": torch.ones(5, 5, dtype=torch.bool).tril()}),
            Case("float64, q (1, 6, 3), mask (1, 6, 6) with a fully masked row", args((1,), 6, 6, 3, 5, torch.float64),
                 {"mask": _mask(g, 1, 6, 6)})]


# ------------------------------------------------------------------ 04_multi_head

def _split_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("x (2, 5, 12), 3 heads", (_randn(g, 2, 5, 12), 3)), Case("x (1, 1, 4), 1 head", (_randn(g, 1, 1, 4), 1)),
            Case("x (3, 4, 6), 6 heads (d_k = 1)", (_randn(g, 3, 4, 6), 6)),
            Case("float64, x (2, 7, 10), 2 heads", (_randn(g, 2, 7, 10, dtype=torch.float64), 2))]


def _merge_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("x (2, 3, 5, 4)", (_randn(g, 2, 3, 5, 4),)), Case("x (1, 1, 1, 4)", (_randn(g, 1, 1, 1, 4),)),
            Case("x (3, 6, 4, 1)", (_randn(g, 3, 6, 4, 1),)),
            Case("float64, x (2, 2, 7, 5)", (_randn(g, 2, 2, 7, 5, dtype=torch.float64),))]


def _linear_state(g: torch.Generator, names: Sequence[str], d_in: int, d_out: int, dtype: torch.dtype,
                  bias: bool = True) -> dict:
    state = {}
    for n in names:
        state[f"{n}.weight"] = _randn(g, d_out, d_in, dtype=dtype, scale=d_in ** -0.5)
        if bias:
            state[f"{n}.bias"] = _randn(g, d_out, dtype=dtype, scale=0.1)
    return state


def _mha_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T_q: int, T_k: int, d_model: int, H: int, mask: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32, self_attention: bool = False) -> Case:
        state = _linear_state(g, ("W_q", "W_k", "W_v", "W_o"), d_model, d_model, dtype)
        query = _randn(g, B, T_q, d_model, dtype=dtype)
        key = query if self_attention else _randn(g, B, T_k, d_model, dtype=dtype)
        value = query if self_attention else _randn(g, B, T_k, d_model, dtype=dtype)
        return Case(label, (query, key, value), {} if mask is None else {"mask": mask},
                    {"d_model": d_model, "num_heads": H}, state)
    return [case("self-attention, x (2, 5, 8), 2 heads", 2, 5, 5, 8, 2, self_attention=True),
            case("cross-attention, query (3, 2, 12), key/value (3, 6, 12), 3 heads", 3, 2, 6, 12, 3),
            case("batch 1, one query, one key, d_model 4, 4 heads", 1, 1, 1, 4, 4),
            case("query (2, 4, 6), key (2, 5, 6), 2 heads, mask (2, 4, 5) with a fully masked row", 2, 4, 5, 6, 2,
                 _mask(g, 2, 4, 5)),
            case("float64, self-attention (2, 5, 6), 3 heads, causal mask (5, 5)", 2, 5, 5, 6, 3,
                 torch.ones(5, 5, dtype=torch.bool).tril(), torch.float64, self_attention=True)]


# ------------------------------------------------------------------ 05_masking

def _causal_cases(g: torch.Generator, seed: int) -> list[Case]:
    T = int(torch.randint(2, 12, (1,), generator=g))
    return [Case("T = 4", (4,)), Case("T = 1", (1,)), Case(f"T = {T}", (T,)),
            Case("T_q = 3, T_k = 5 (queries are the last 3 of 5 positions)", (3, 5)),
            Case("T_q = 1, T_k = 6", (1, 6)), Case("T = 3, device='cpu'", (3,), {"device": torch.device("cpu")})]


def _tokens(g: torch.Generator, B: int, T: int, pad_id: int, vocab: int = 9) -> torch.Tensor:
    """Token ids with padding at the end of each row (row 0 unpadded, the last row all padding when B > 2)."""
    tokens = torch.randint(0, vocab, (B, T), generator=g)
    tokens = torch.where(tokens == pad_id, (pad_id + 1) % vocab, tokens)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    if B > 2:
        lengths[-1] = 0
    return tokens.masked_fill(torch.arange(T) >= lengths[:, None], pad_id)


def _padding_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("tokens (3, 5), pad_id 0", (_tokens(g, 3, 5, 0), 0)),
            Case("tokens (1, 1), pad_id 0", (_tokens(g, 1, 1, 0), 0)),
            Case("tokens (4, 6), pad_id 3", (_tokens(g, 4, 6, 3), 3)),
            Case("tokens (2, 7) of dtype int32, pad_id 1", (_tokens(g, 2, 7, 1).int(), 1))]


# ------------------------------------------------------------------ 06_add_norm

def _layer_norm_cases(g: torch.Generator, seed: int) -> list[Case]:
    def ln(*shape: int, dtype: torch.dtype = torch.float32, spread: float = 2.0, shift: float = 3.0) -> tuple:
        d = shape[-1]
        return (_randn(g, *shape, dtype=dtype, scale=spread) + shift, 1 + _randn(g, d, dtype=dtype, scale=0.3),
                _randn(g, d, dtype=dtype, scale=0.3))
    return [Case("x (2, 5, 6) with mean about 3", ln(2, 5, 6)), Case("batch 1, x (1, 1, 7)", ln(1, 1, 7)),
            Case("x (4, 3) without a sequence axis", ln(4, 3)),
            Case("x (2, 3, 8) with a tiny spread (0.001) around 0: eps matters", ln(2, 3, 8, spread=1e-3, shift=0.0)),
            Case("x (3, 5), eps = 0.1", ln(3, 5), {"eps": 0.1}),
            Case("float64, x (2, 4, 5)", ln(2, 4, 5, dtype=torch.float64))]


def _norm_state(g: torch.Generator, d_model: int, dtype: torch.dtype) -> dict:
    return {"norm.weight": 1 + _randn(g, d_model, dtype=dtype, scale=0.3),
            "norm.bias": _randn(g, d_model, dtype=dtype, scale=0.3)}


def _add_norm_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T: int, d: int, dtype: torch.dtype = torch.float32, dropout: float = 0.0,
             train: bool = False) -> Case:
        return Case(label, (_randn(g, B, T, d, dtype=dtype) + 1, _randn(g, B, T, d, dtype=dtype, scale=2.0)), {},
                    {"d_model": d, "dropout": dropout}, _norm_state(g, d, dtype), train)
    return [case("x, sublayer_out (2, 5, 6)", 2, 5, 6), case("batch 1, (1, 1, 5)", 1, 1, 5),
            case("float64, (3, 4, 7)", 3, 4, 7, torch.float64),
            case("dropout 0.3 in evaluation mode: no dropout", 2, 3, 6, dropout=0.3),
            case("dropout 1.0 in training mode: the sublayer output is dropped entirely", 2, 3, 6, dropout=1.0, train=True)]


def _ffn_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, shape: tuple, d_ff: int, dtype: torch.dtype = torch.float32) -> Case:
        d = shape[-1]
        state = {**{k.replace("l1", "linear1"): v for k, v in _linear_state(g, ("l1",), d, d_ff, dtype).items()},
                 **{k.replace("l2", "linear2"): v for k, v in _linear_state(g, ("l2",), d_ff, d, dtype).items()}}
        return Case(label, (_randn(g, *shape, dtype=dtype),), {}, {"d_model": d, "d_ff": d_ff}, state)
    return [case("x (2, 5, 6), d_ff 10", (2, 5, 6), 10), case("batch 1, x (1, 1, 3), d_ff 1", (1, 1, 3), 1),
            case("x (4, 5) without a sequence axis, d_ff 7", (4, 5), 7),
            case("float64, x (3, 2, 4), d_ff 16", (3, 2, 4), 16)]


_LN = (_F + "layer_norm", "torch.layer_norm", "torch.native_layer_norm", "torch.nn.LayerNorm.forward",
       _F + "group_norm", _F + "batch_norm", _F + "instance_norm", "torch.nn.functional.rms_norm",
       "transformer_ref.layers.layer_norm", "transformer_ref.layers.LayerNorm.forward")
_REF_LAYERS = tuple(f"transformer_ref.layers.{n}" for n in (
    "AddNorm.forward", "PreNormResidual.forward", "PositionwiseFeedForward.forward", "EncoderLayer.forward",
    "DecoderLayer.forward"))
_TORCH_LAYERS = ("torch.nn.TransformerEncoderLayer.forward", "torch.nn.TransformerDecoderLayer.forward",
                 "torch.nn.TransformerEncoder.forward", "torch.nn.TransformerDecoder.forward",
                 "torch.nn.Transformer.forward")

# ------------------------------------------------------------------ 01_history

def _rnn_cases(g: torch.Generator, seed: int) -> list[Case]:
    def args(B: int, T: int, d_in: int, H: int, dtype: torch.dtype = torch.float32, h0: bool = True) -> tuple:
        return (_randn(g, B, T, d_in, dtype=dtype), _randn(g, B, H, dtype=dtype) if h0 else None,
                _randn(g, d_in, H, dtype=dtype, scale=d_in ** -0.5), _randn(g, H, H, dtype=dtype, scale=H ** -0.5),
                _randn(g, H, dtype=dtype, scale=0.3))
    return [Case("x (2, 5, 3), H = 4", args(2, 5, 3, 4)), Case("batch 1, one step: x (1, 1, 2), H = 3", args(1, 1, 2, 3)),
            Case("x (3, 4, 5), H = 5 (square W_xh)", args(3, 4, 5, 5)),
            Case("h0 = None (start from zeros), x (2, 3, 4), H = 2", args(2, 3, 4, 2, h0=False)),
            Case("float64, x (2, 6, 3), H = 4", args(2, 6, 3, 4, torch.float64))]


def _additive_args(g: torch.Generator, B: int, T: int, d_q: int, d_kk: int, d_v: int, d_a: int,
                   dtype: torch.dtype = torch.float32) -> tuple:
    return (_randn(g, B, d_q, dtype=dtype), _randn(g, B, T, d_kk, dtype=dtype), _randn(g, B, T, d_v, dtype=dtype),
            _randn(g, d_q, d_a, dtype=dtype), _randn(g, d_kk, d_a, dtype=dtype), _randn(g, d_a, dtype=dtype, scale=2.0))


def _additive_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("query (2, 3), keys (2, 5, 4), values (2, 5, 6), d_a 7", _additive_args(g, 2, 5, 3, 4, 6, 7)),
            Case("batch 1, one key", _additive_args(g, 1, 1, 2, 3, 2, 4)),
            Case("query (3, 4), keys (3, 6, 4), mask (3, 6) with a fully masked row", _additive_args(g, 3, 6, 4, 4, 3, 5),
                 {"mask": _mask(g, 3, 6)}),
            Case("float64, query (2, 5), keys (2, 4, 3), mask (2, 4)", _additive_args(g, 2, 4, 5, 3, 2, 6, torch.float64),
                 {"mask": _mask(g, 2, 4, empty_row=False)})]


def _additive_module_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T: int, d_q: int, d_kk: int, d_v: int, d_a: int, mask: bool = False,
             dtype: torch.dtype = torch.float32) -> Case:
        query, keys, values, W_q, W_k, w_v = _additive_args(g, B, T, d_q, d_kk, d_v, d_a, dtype)
        state = {"W_q.weight": W_q.T.contiguous(), "W_k.weight": W_k.T.contiguous(), "w_v": w_v}
        return Case(label, (query, keys, values), {"mask": _mask(g, B, T)} if mask else {},
                    {"query_dim": d_q, "key_dim": d_kk, "attn_dim": d_a}, state)
    return [case("query_dim 3, key_dim 4, attn_dim 7; keys (2, 5, 4)", 2, 5, 3, 4, 6, 7),
            case("batch 1, one key", 1, 1, 2, 3, 2, 4),
            case("mask (3, 6) with a fully masked row", 3, 6, 4, 5, 3, 5, mask=True),
            case("float64", 2, 4, 5, 3, 2, 6, dtype=torch.float64)]


# ------------------------------------------------------------------ 07_bert

_SPECIAL = (0, 1, 2, 3)  # [PAD], [CLS], [SEP], [MASK] in the cases below; [MASK] = 3


def _bert_batch(g: torch.Generator, B: int, T: int, vocab: int) -> torch.Tensor:
    """[CLS] w w ... [SEP] [PAD] ...: random words in [4, vocab), random lengths."""
    ids = torch.randint(4, vocab, (B, T), generator=g)
    lengths = torch.randint(max(2, T // 2), T + 1, (B,), generator=g)
    ids[:, 0] = 1
    ids[torch.arange(B), lengths - 1] = 2
    return ids.masked_fill(torch.arange(T) >= lengths[:, None], 0)


def _mask_tokens_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, ids: torch.Tensor, vocab: int, p: float = 0.15, gen_seed: int = seed) -> Case:
        return Case(label, (ids, 3, vocab, list(_SPECIAL)),
                    {"mlm_probability": p, "generator": torch.Generator().manual_seed(1000 + gen_seed)})
    small = _bert_batch(g, 4, 12, 50)
    return [case("input_ids (4, 12), vocab 50", small, 50),
            case("the same inputs and generator seed again (the result must be the same)", small, 50),
            case("input_ids (1, 1) holding one word", torch.tensor([[7]]), 50),
            case("mlm_probability 1.0: every word is chosen", _bert_batch(g, 3, 10, 40), 40, 1.0),
            case("mlm_probability 0.0: nothing is chosen", _bert_batch(g, 3, 10, 40), 40, 0.0),
            case("input_ids (3, 8) of dtype int32", _bert_batch(g, 3, 8, 30).int(), 30),
            case("statistics: input_ids (96, 512), vocab 1000", _bert_batch(g, 96, 512, 1000), 1000)]


def _bert_embeddings_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, T: int, vocab: int, d: int, max_len: int, types: int, segments: bool = True,
             dtype: torch.dtype = torch.float32) -> Case:
        state = {"word_embeddings.weight": _randn(g, vocab, d, dtype=dtype),
                 "position_embeddings.weight": _randn(g, max_len, d, dtype=dtype),
                 "token_type_embeddings.weight": _randn(g, types, d, dtype=dtype), **_norm_state(g, d, dtype)}
        ids = torch.randint(0, vocab, (B, T), generator=g)
        token_types = (torch.arange(T) >= torch.randint(1, T + 1, (B, 1), generator=g)).long()
        return Case(label, (ids, token_types if segments else None), {},
                    {"vocab_size": vocab, "d_model": d, "max_len": max_len, "type_vocab_size": types}, state)
    return [case("input_ids (2, 7), segments A then B", 2, 7, 20, 8, 10, 2),
            case("batch 1, one token", 1, 1, 5, 4, 3, 2),
            case("token_type_ids None (all segment A)", 3, 5, 11, 6, 5, 2, segments=False),
            case("float64 parameters, input_ids (2, 4)", 2, 4, 9, 5, 6, 3, dtype=torch.float64)]


def _mlm_loss_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, shape: tuple, vocab: int, keep: float, dtype: torch.dtype = torch.float32) -> Case:
        logits = _randn(g, *shape, vocab, dtype=dtype, scale=2.0)  # (..., vocab)
        labels = torch.randint(0, vocab, shape, generator=g)
        ignored = torch.rand(shape, generator=g) > keep
        ignored.view(-1)[0] = False  # at least one label counts
        return Case(label, (logits, labels.masked_fill(ignored, -100)))
    return [case("logits (2, 6, 11), about 30% of the labels used", (2, 6), 11, 0.3),
            case("logits (1, 1, 5), one label", (1, 1), 5, 1.0), case("logits (3, 4, 7), every label used", (3, 4), 7, 1.0),
            case("logits (8, 10) without a batch axis, half the labels used", (8,), 10, 0.5),
            case("float64, logits (4, 5, 9)", (4, 5), 9, 0.5, torch.float64)]


def _mask_tokens_compare(ex: Exercise, cases: Sequence[Case], outcomes: Sequence[Outcome]) -> Report:
    """Exact invariants on every case, then statistics on the large one (each test at 6 sigma, so a
    correct solution fails one of them with probability below 1e-7 per seed)."""
    def fail(key: str | None, message: str) -> Report:
        from transformer_ref.mistakes import CATALOGUE
        says = next((m.says for m in CATALOGUE.get(ex.name, ()) if m.key == key), None)
        return Report(False, f"{ex.name} is not right yet.\n{message}" + (f"\nLikely mistake: {says}" if says else ""),
                      mistake=key)
    for i, (case, out) in enumerate(zip(cases, outcomes)):
        where = f"case {i + 1} of {len(cases)} ({case.label})"
        if out.error is not None:
            return Report(False, f"{ex.name} does not run yet.\n{where}: {out.error}")
        if out.mutated:
            return fail("in_place", f"{where}: {ex.name} changed input_ids in place; work on a copy (input_ids.clone()).")
        ids, mask_id, vocab, special = case.args
        value = out.value
        if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(t, torch.Tensor) for t in value)):
            return Report(False, f"{where}: {ex.name} should return a tuple (inputs, labels) of tensors; "
                                 f"it returned {_describe(value)}")
        for name, t in zip(("inputs", "labels"), value):
            if t.shape != ids.shape or t.dtype != ids.dtype or t.device != ids.device:
                return Report(False, f"{where}: {name} should be shaped and typed like input_ids, {tuple(ids.shape)} "
                                     f"{ids.dtype} on {ids.device}; got {_describe(t)}")
        inputs, labels = value
        chosen = labels != -100
        if ids.numel() > 1 and case.kwargs["mlm_probability"] < 1 and chosen.all():
            return fail("labels", f"{where}: no label is -100; labels must be -100 wherever a token was not chosen")
        if (chosen & (labels != ids)).any():
            return fail("labels", f"{where}: labels must hold the original token where a token was chosen and -100 "
                                  f"everywhere else; found labels that are neither")
        is_special = torch.isin(ids, torch.tensor(special, dtype=ids.dtype, device=ids.device))
        if (chosen & is_special).any():
            return fail("special_chosen", f"{where}: a special token ({', '.join(map(str, special))}) was chosen "
                                          f"for prediction; special tokens are never chosen")
        if (~chosen & (inputs != ids)).any():
            return fail("labels", f"{where}: a token was changed but its label is -100; every changed token must be "
                                  f"one of the chosen ones (label = the original token)")
        if ((inputs < 0) | (inputs >= vocab)).any():
            return fail(None, f"{where}: inputs hold token ids outside [0, vocab_size = {vocab})")
        p = case.kwargs["mlm_probability"]
        eligible = ~is_special
        if p in (0.0, 1.0) and not torch.equal(chosen, eligible & (p == 1.0)):
            return fail("probability", f"{where}: with mlm_probability = {p} {'every' if p else 'no'} word must be "
                                       f"chosen; {int(chosen.sum())} of {int(eligible.sum())} were")
    first, again = outcomes[0].value, outcomes[1].value
    if not all(torch.equal(a, b) for a, b in zip(first, again)):
        return fail("global_rng", "the same inputs with generators seeded alike gave different results: take every "
                                  "random number from `generator` (torch.rand(..., generator=generator)).")
    big = next(i for i, c in enumerate(cases) if c.label.startswith("statistics"))
    case, (inputs, labels) = cases[big], outcomes[big].value
    ids, mask_id, vocab, special = case.args
    eligible = ~torch.isin(ids, torch.tensor(special, dtype=ids.dtype, device=ids.device))
    chosen = labels != -100

    def z_fail(observed: float, expected: float, n: int, what: str, key: str) -> Report | None:
        sigma = math.sqrt(expected * (1 - expected) / n)
        if abs(observed - expected) > 6 * sigma:
            return fail(key, f"{case.label}: {what} is {observed:.2%}; expected {expected:.2%} "
                             f"(± {6 * sigma:.2%} allows for chance)")
        return None
    p = case.kwargs["mlm_probability"]
    n_eligible = int(eligible.sum())
    checks = []
    T = ids.size(-1)
    for q in range(4):  # chosen uniformly along the sequence, not e.g. the first 15 % of each row
        part = eligible[..., q * T // 4:(q + 1) * T // 4]
        frac = chosen[..., q * T // 4:(q + 1) * T // 4][part].float().mean().item()
        checks.append((frac, p, int(part.sum()), f"the fraction chosen in quarter {q + 1} of the sequence", "positions"))
    checks.append((chosen[eligible].float().mean().item(), p, n_eligible, "the fraction of words chosen", "probability"))
    n = int(chosen.sum())
    became_mask = (inputs[chosen] == mask_id).float().mean().item()
    kept = (inputs[chosen] == ids[chosen]).float().mean().item()
    checks += [(became_mask, 0.8 + 0.1 / vocab, n, "the share of chosen words replaced by [MASK]", "split"),
               (kept, 0.1 + 0.1 / vocab, n, "the share of chosen words left unchanged", "split")]
    for observed, expected, count, what, key in checks:
        if (report := z_fail(observed, expected, count, what, key)) is not None:
            return report
    replaced = inputs[chosen & (inputs != mask_id) & (inputs != ids)].double()
    if replaced.numel() and abs(replaced.mean().item() - (vocab - 1) / 2) > 6 * vocab / math.sqrt(12 * replaced.numel()):
        return fail("random_range", f"{case.label}: the random replacement tokens average {replaced.mean().item():.1f}; "
                                    f"tokens drawn uniformly from [0, {vocab}) average {(vocab - 1) / 2:.1f}")
    return Report(True, f"{ex.name}: all {len(cases)} cases pass (invariants and statistics).")


# ------------------------------------------------------------------ 08_vit

def _patchify_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("images (2, 3, 8, 8), patch 4", (_randn(g, 2, 3, 8, 8), 4)),
            Case("images (1, 1, 2, 2), patch 2 (one patch)", (_randn(g, 1, 1, 2, 2), 2)),
            Case("images (2, 2, 6, 9), patch 3 (not square)", (_randn(g, 2, 2, 6, 9), 3)),
            Case("images (1, 3, 4, 4), patch 1", (_randn(g, 1, 3, 4, 4), 1)),
            Case("float64, images (3, 2, 4, 8), patch 2", (_randn(g, 3, 2, 4, 8, dtype=torch.float64), 2))]


def _unpatchify_reference() -> Callable:
    def unpatchify(patches: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
        """Inverse of transformer_ref.vit.patchify: (B, N, C*P*P) -> (B, C, H, W)."""
        B, N, D = patches.shape
        P = patch_size
        C = D // (P * P)
        x = patches.reshape(B, height // P, width // P, C, P, P)  # (B, H/P, W/P, C, P, P)
        return x.permute(0, 3, 1, 4, 2, 5).reshape(B, C, height, width)
    return unpatchify


def _unpatchify_cases(g: torch.Generator, seed: int) -> list[Case]:
    return [Case("patches (2, 4, 48): 3 channels, patch 4, 8 x 8", (_randn(g, 2, 4, 48), 4, 8, 8)),
            Case("patches (1, 1, 4): 1 channel, patch 2, 2 x 2", (_randn(g, 1, 1, 4), 2, 2, 2)),
            Case("patches (2, 6, 18): 2 channels, patch 3, 6 x 9", (_randn(g, 2, 6, 18), 3, 6, 9)),
            Case("float64, patches (3, 8, 8): 2 channels, patch 2, 4 x 8",
                 (_randn(g, 3, 8, 8, dtype=torch.float64), 2, 4, 8))]


def _patch_embedding_cases(g: torch.Generator, seed: int) -> list[Case]:
    def case(label: str, B: int, C: int, size: int | tuple, P: int, d: int, dtype: torch.dtype = torch.float32) -> Case:
        H, W = (size, size) if isinstance(size, int) else size
        N = (H // P) * (W // P)
        state = {"proj.weight": _randn(g, d, C * P * P, dtype=dtype, scale=(C * P * P) ** -0.5),
                 "proj.bias": _randn(g, d, dtype=dtype, scale=0.1), "cls_token": _randn(g, 1, 1, d, dtype=dtype),
                 "pos_embedding": _randn(g, 1, N + 1, d, dtype=dtype)}
        return Case(label, (_randn(g, B, C, H, W, dtype=dtype),), {},
                    {"image_size": size, "patch_size": P, "in_channels": C, "d_model": d}, state)
    return [case("images (2, 3, 8, 8), patch 4, d_model 6", 2, 3, 8, 4, 6),
            case("batch 1, images (1, 1, 4, 4), patch 2, d_model 5", 1, 1, 4, 2, 5),
            case("image_size (6, 9), patch 3, 2 channels", 2, 2, (6, 9), 3, 4),
            case("float64, images (3, 2, 4, 4), patch 2", 3, 2, 4, 2, 8, torch.float64)]


# ------------------------------------------------------------------ 09_warmup

def _noam_cases(g: torch.Generator, seed: int) -> list[Case]:
    warmup = int(torch.randint(10, 200, (1,), generator=g))
    steps = [0, 1, 2, 100, 3999, 4000, 4001, 20000]
    return ([Case(f"step {s}, d_model 512, warmup_steps 4000", (s, 512, 4000)) for s in steps]
            + [Case(f"step {s}, d_model 64, warmup_steps {warmup}", (s, 64, warmup))
               for s in (1, warmup - 1, warmup, warmup + 1, 3 * warmup)])


def _warmup_decay_cases(g: torch.Generator, seed: int) -> list[Case]:
    warmup = int(torch.randint(2, 50, (1,), generator=g))
    total = warmup + int(torch.randint(10, 500, (1,), generator=g))
    cases = [Case(f"step {s}, base_lr 0.001, warmup_steps 10, total_steps 110", (s, 1e-3, 10, 110))
             for s in (0, 1, 9, 10, 11, 35, 60, 109, 110, 150)]
    cases += [Case(f"step {s}, base_lr 0.5, warmup_steps {warmup}, total_steps {total}, min_lr 0.05",
                   (s, 0.5, warmup, total), {"min_lr": 0.05})
              for s in (0, warmup - 1, warmup, (warmup + total) // 2, total - 1, total, total + 7)]
    return cases


# ------------------------------------------------------------------ 10_transformer

def _layer_state(g: torch.Generator, reference: type, init: dict, dtype: torch.dtype) -> dict:
    """Random parameters (in `dtype`) for every parameter of reference(**init), by name."""
    module = reference(**init)
    return {name: (_randn(g, *p.shape, dtype=dtype, scale=p.size(-1) ** -0.5) if p.dim() > 1 else
                   (1 + _randn(g, *p.shape, dtype=dtype, scale=0.2) if "norm" in name and name.endswith("weight")
                    else _randn(g, *p.shape, dtype=dtype, scale=0.2)))
            for name, p in module.named_parameters()}


def _encoder_layer_cases(g: torch.Generator, seed: int) -> list[Case]:
    from transformer_ref.layers import EncoderLayer

    def case(label: str, B: int, T: int, d: int, H: int, d_ff: int, mask: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32) -> Case:
        init = {"d_model": d, "num_heads": H, "d_ff": d_ff}
        return Case(label, (_randn(g, B, T, d, dtype=dtype),), {} if mask is None else {"mask": mask}, init,
                    _layer_state(g, EncoderLayer, init, dtype))
    return [case("x (2, 5, 8), 2 heads, d_ff 16", 2, 5, 8, 2, 16),
            case("batch 1, one position, d_model 4, 1 head", 1, 1, 4, 1, 6),
            case("x (3, 6, 6), padding mask (3, 1, 6)", 3, 6, 6, 3, 10, _mask(g, 3, 1, 6, empty_row=False)),
            case("float64, x (2, 4, 8), causal mask (4, 4)", 2, 4, 8, 4, 12, torch.ones(4, 4, dtype=torch.bool).tril(),
                 torch.float64)]


def _decoder_layer_cases(g: torch.Generator, seed: int) -> list[Case]:
    from transformer_ref.layers import DecoderLayer

    def case(label: str, B: int, T: int, S: int, d: int, H: int, d_ff: int, masks: bool = False,
             dtype: torch.dtype = torch.float32) -> Case:
        init = {"d_model": d, "num_heads": H, "d_ff": d_ff}
        kwargs = {"self_mask": torch.ones(T, T, dtype=torch.bool).tril(),
                  "memory_mask": _mask(g, B, 1, S, empty_row=False)} if masks else {}
        return Case(label, (_randn(g, B, T, d, dtype=dtype), _randn(g, B, S, d, dtype=dtype)), kwargs, init,
                    _layer_state(g, DecoderLayer, init, dtype))
    return [case("x (2, 4, 8), memory (2, 6, 8), 2 heads", 2, 4, 6, 8, 2, 16),
            case("batch 1, one target position, memory of 3", 1, 1, 3, 4, 1, 6),
            case("x (3, 5, 6), memory (3, 7, 6), causal self_mask and padding memory_mask", 3, 5, 7, 6, 3, 10, True),
            case("float64, x (2, 4, 8), memory (2, 3, 8), with masks", 2, 4, 3, 8, 4, 12, True, torch.float64)]


def _greedy_reference() -> Callable:
    def greedy_decode(model: torch.nn.Module, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> torch.Tensor:
        return model.greedy_decode(src, bos_id, eos_id, max_len)
    return greedy_decode


def _greedy_cases(g: torch.Generator, seed: int) -> list[Case]:
    from transformer_ref.model import Transformer
    cases = []
    for label, B, S, vocab, max_len in (("src (3, 5), vocab 12", 3, 5, 12, 8), ("batch 1, src (1, 2)", 1, 2, 9, 6),
                                        ("src (4, 6) with padding, vocab 10", 4, 6, 10, 10)):
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=g)))  # only the model's initialisation
        model = Transformer(vocab, vocab, d_model=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                            d_ff=32, dropout=0.0, max_len=16).eval()
        src = _tokens(g, B, S, 0, vocab)
        src[:, 0] = torch.where(src[:, 0] == 0, 3, src[:, 0])  # no empty source
        # eos: a token the last sequence produces at its third step, so that sequences finish at different steps
        free = model.greedy_decode(src, 1, 1, max_len)
        eos = int(free[-1, min(3, free.size(1) - 1)])
        eos = eos if eos not in (0, 1) else 2
        cases.append(Case(f"{label}, bos 1, eos {eos}, max_len {max_len}", (model, src, 1, eos, max_len)))
    return cases


_RNN = ("torch.nn.RNN.forward", "torch.nn.RNNCell.forward", "torch.nn.GRU.forward", "torch.nn.LSTM.forward",
        "torch.rnn_tanh", "torch.rnn_tanh_cell", "transformer_ref.rnn.rnn_forward", "transformer_ref.rnn.Seq2Seq.forward")
_BERT = ("transformer_ref.bert.mask_tokens", "transformer_ref.bert.BertEmbeddings.forward",
         "transformer_ref.bert.BertModel.forward", "transformer_ref.bert.BertForMaskedLM.forward",
         "transformers.models.bert.modeling_bert.BertEmbeddings.forward",
         "transformers.data.data_collator.DataCollatorForLanguageModeling.torch_mask_tokens")
_CE = (_F + "cross_entropy", _F + "nll_loss", "torch.nn.CrossEntropyLoss.forward", "torch.nn.NLLLoss.forward")
_VIT = ("transformer_ref.vit.patchify", "transformer_ref.vit.PatchEmbedding.forward",
        "transformer_ref.vit.VisionTransformer.forward", "transformers.models.vit.modeling_vit.ViTEmbeddings.forward",
        "transformers.models.vit.modeling_vit.ViTPatchEmbeddings.forward")
_SCHEDULES = tuple(f"transformer_ref.schedules.{n}" for n in (
    "noam_lr", "warmup_linear_lr", "warmup_cosine_lr", "_warmup_then_decay", "noam_scheduler",
    "warmup_linear_scheduler", "warmup_cosine_scheduler")) + (
    "transformers.optimization.get_linear_schedule_with_warmup",
    "transformers.optimization.get_cosine_schedule_with_warmup",
    "torch.optim.lr_scheduler.CosineAnnealingLR.__init__", "torch.optim.lr_scheduler.LinearLR.__init__")
_MODEL = ("transformer_ref.model.Encoder.forward", "transformer_ref.model.Decoder.forward",
          "transformer_ref.model.Transformer.greedy_decode", "transformer_ref.model.DecoderOnlyLM.forward",
          "transformer_ref.rnn.Seq2Seq.greedy_decode")

_EXERCISE_LIST = [
    Exercise("rnn_forward", "01_history", "function", _rnn_cases, _ref("rnn", "rnn_forward"), _RNN, ("outputs", "h_T")),
    Exercise("additive_attention", "01_history", "function", _additive_cases, _ref("attention", "additive_attention"),
             _REF_ATTENTION, ("context", "weights")),
    Exercise("AdditiveAttention", "01_history", "class", _additive_module_cases, _ref("attention", "AdditiveAttention"),
             _REF_ATTENTION, ("context", "weights"),
             members="W_q = nn.Linear(query_dim, attn_dim, bias=False), W_k = nn.Linear(key_dim, attn_dim, bias=False) "
                     "and w_v = nn.Parameter of shape (attn_dim,)"),
    Exercise("sinusoidal_positional_encoding", "02_positional_encoding", "function", _sinusoidal_cases,
             _ref("positional", "sinusoidal_positional_encoding"), _REF_POSITIONAL, ("PE",),
             tol={torch.float32: (1e-4, 1e-4)}),
    Exercise("relative_position_index", "02_positional_encoding", "function", _relative_index_cases,
             _ref("positional", "relative_position_index"), _REF_POSITIONAL, ("index",)),
    Exercise("relative_attention", "02_positional_encoding", "function", _relative_attention_cases,
             _ref("positional", "relative_attention"), _SDPA + _REF_ATTENTION + _REF_POSITIONAL, ("output", "weights")),
    Exercise("dot_product_attention", "03_attention", "function", _dot_product_cases,
             _ref("attention", "dot_product_attention"), _SDPA + _REF_ATTENTION, ("output", "weights")),
    Exercise("scaled_dot_product_attention", "03_attention", "function", _attention_cases,
             _ref("attention", "scaled_dot_product_attention"), _SDPA + _REF_ATTENTION, ("output", "weights")),
    Exercise("self_attention", "03_attention", "function", _self_attention_cases,
             _ref("attention", "self_attention"), _SDPA + _REF_ATTENTION, ("output", "weights")),
    Exercise("split_heads", "04_multi_head", "function", _split_cases, _ref("multihead", "split_heads"),
             _REF_MULTIHEAD, ("heads",)),
    Exercise("merge_heads", "04_multi_head", "function", _merge_cases, _ref("multihead", "merge_heads"),
             _REF_MULTIHEAD, ("merged",)),
    Exercise("MultiHeadAttention", "04_multi_head", "class", _mha_cases, _ref("multihead", "MultiHeadAttention"),
             _SDPA + _REF_ATTENTION + _REF_MULTIHEAD, ("output", "weights"),
             members="W_q, W_k, W_v, W_o: nn.Linear(d_model, d_model) with bias"),
    Exercise("causal_mask", "05_masking", "function", _causal_cases, _ref("masks", "causal_mask"),
             ("transformer_ref.masks.causal_mask", "transformer_ref.masks.decoder_self_attention_mask",
              "torch.nn.Transformer.generate_square_subsequent_mask"), ("mask",)),
    Exercise("padding_mask", "05_masking", "function", _padding_cases, _ref("masks", "padding_mask"),
             ("transformer_ref.masks.padding_mask", "transformer_ref.masks.decoder_self_attention_mask"), ("mask",)),
    Exercise("decoder_self_attention_mask", "05_masking", "function", _padding_cases,
             _ref("masks", "decoder_self_attention_mask"),
             ("transformer_ref.masks.decoder_self_attention_mask", "transformer_ref.masks.combine_masks"), ("mask",)),
    Exercise("layer_norm", "06_add_norm", "function", _layer_norm_cases, _ref("layers", "layer_norm"), _LN, ("output",)),
    Exercise("AddNorm", "06_add_norm", "class", _add_norm_cases, _ref("layers", "AddNorm"),
             _REF_LAYERS + _TORCH_LAYERS, ("output",),
             members="norm (a LayerNorm with parameters weight and bias of shape (d_model,), eps 1e-5)"),
    Exercise("PositionwiseFeedForward", "06_add_norm", "class", _ffn_cases, _ref("layers", "PositionwiseFeedForward"),
             _REF_LAYERS + _TORCH_LAYERS, ("output",),
             members="linear1 = nn.Linear(d_model, d_ff) and linear2 = nn.Linear(d_ff, d_model)"),
    Exercise("mask_tokens", "07_bert", "function", _mask_tokens_cases, _ref("bert", "mask_tokens"), _BERT,
             ("inputs", "labels"), compare_fn=_mask_tokens_compare),
    Exercise("BertEmbeddings", "07_bert", "class", _bert_embeddings_cases, _ref("bert", "BertEmbeddings"), _BERT,
             ("embeddings",), members="word_embeddings, position_embeddings, token_type_embeddings (nn.Embedding) "
                                      "and norm (a LayerNorm with weight and bias, eps 1e-12)"),
    Exercise("masked_lm_loss", "07_bert", "function", _mlm_loss_cases,
             lambda: lambda logits, labels: torch.nn.functional.cross_entropy(logits.flatten(0, -2), labels.flatten()),
             _CE + _BERT, ("loss",)),
    Exercise("patchify", "08_vit", "function", _patchify_cases, _ref("vit", "patchify"), _VIT, ("patches",)),
    Exercise("unpatchify", "08_vit", "function", _unpatchify_cases, _unpatchify_reference, _VIT,
             ("images",)),
    Exercise("PatchEmbedding", "08_vit", "class", _patch_embedding_cases, _ref("vit", "PatchEmbedding"), _VIT,
             ("embeddings",), members="proj = nn.Linear(C*P*P, d_model), cls_token (1, 1, d_model) and "
                                      "pos_embedding (1, N+1, d_model)"),
    Exercise("noam_lr", "09_warmup", "function", _noam_cases, _ref("schedules", "noam_lr"), _SCHEDULES, ("lr",)),
    Exercise("warmup_linear_lr", "09_warmup", "function", _warmup_decay_cases, _ref("schedules", "warmup_linear_lr"),
             _SCHEDULES, ("lr",)),
    Exercise("warmup_cosine_lr", "09_warmup", "function", _warmup_decay_cases, _ref("schedules", "warmup_cosine_lr"),
             _SCHEDULES, ("lr",)),
    Exercise("EncoderLayer", "10_transformer", "class", _encoder_layer_cases, _ref("layers", "EncoderLayer"),
             _REF_LAYERS[3:] + _TORCH_LAYERS + _MODEL, ("output",),
             members="self_attn (MultiHeadAttention), feed_forward (PositionwiseFeedForward), norm1, norm2 (LayerNorm)"),
    Exercise("DecoderLayer", "10_transformer", "class", _decoder_layer_cases, _ref("layers", "DecoderLayer"),
             _REF_LAYERS[3:] + _TORCH_LAYERS + _MODEL, ("output",),
             members="self_attn, cross_attn (MultiHeadAttention), feed_forward (PositionwiseFeedForward), "
                     "norm1, norm2, norm3 (LayerNorm)"),
    Exercise("greedy_decode", "10_transformer", "function", _greedy_cases, _greedy_reference, _MODEL[2:], ("tokens",)),
]

EXERCISES: dict[str, Exercise] = {ex.name: ex for ex in _EXERCISE_LIST}
ASSIGNMENTS: dict[str, list[str]] = {}
for _ex in _EXERCISE_LIST:
    ASSIGNMENTS.setdefault(_ex.assignment, []).append(_ex.name)

for _name in EXERCISES:
    globals()[f"check_{_name}"] = _entry_point(_name)
    __all__.append(f"check_{_name}")
