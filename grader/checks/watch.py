"""The watch on forbidden shortcuts while student code runs: in the grading sandbox, and in a student's notebook.

    wires = Tripwires(names, rebind=True, between=True).install()    # before any student code (the harness)
    with wires.watching(item, strict=True) as hits: ...              # one window: one item on one case

Each layer catches a shortcut however its object was reached (an alias bound before the watch, a fresh copy of a
module, an attribute walk from a check function, the original behind a trip-wire):

- trip-wires: every forbidden name, and every module attribute that holds the same object, becomes a wire that
  raises while a window that forbids it is open (class _Wire);
- the profile hook (sys.setprofile, class _Profile): forbidden Python code by what it is -- its bytecode, names and
  constants, so a copy from runpy, importlib, exec, compile or types.FunctionType is the same code, whatever its
  file name -- the course package's code by where it is (the name "transformer_ref.*"), forbidden C functions by
  identity, and (strict) calls into the grader's own code;
- PyTorch modes (TorchFunctionMode, TorchDispatchMode) see the window's forbidden ATen operators
  (``Item.forbidden_ops``) however they are called, and raise;
- the operator trace (strict windows): the dispatcher's own record of every operator that ran (the profiler's
  RecordFunction), which switching the PyTorch modes off does not hide;
- the audit hook (it cannot be removed): reading the course's source files (what an edited copy starts from),
  making code objects or unmarshalling them, replacing the profile hook or a grader function's code; and the
  thread starters are wires too: a thread has neither the profile hook nor the modes.

A call the grader makes is not the student's (a check run again in a cell runs the reference): each layer asks
who called, skipping the standard library, site-packages and the course package, and lets the grader's own code
through. The grader's own code is known by identity (the code objects of its modules when the watch was
installed), so code compiled under a grader file name is not.

Stand-ins (grader.checks.run substitutes them for an item's parts, Item.builds_on): a window of an item graded with
its parts substituted lets the stand-in of each part run the part's reference as the grader's own call; anywhere else
a stand-in is the student's own part again, so one kept in a global and called later yields nothing the student
could not call anyway.

Windows: with ``between``, the watch is on from install() to uninstall(): outside any window a base window forbids
every name (code of the student's that runs between windows -- a finaliser, a signal handler, a patched
torch.Tensor method the harness calls -- is watched too); ``between_hits()`` says what it saw.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import linecache
import os
import sys
import sysconfig
import threading
import types
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import _thread
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from grader.checks.shortcuts import ANY_COURSE_CODE, ShortcutError, resolve, shortcut_message

if TYPE_CHECKING:
    from grader.checks.item import Item

COURSE = ANY_COURSE_CODE.removesuffix(".*")


def _folder(path: str) -> str:
    return os.path.join(os.path.realpath(path), "")


GRADER_DIR = _folder(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # .../grader/
COURSE_DIR = _folder(importlib.util.find_spec(COURSE).submodule_search_locations[0])
_LIBRARY_DIRS = tuple(dict.fromkeys(
    d for p in ("stdlib", "platstdlib", "purelib", "platlib")
    for d in (os.path.join(sysconfig.get_paths()[p], ""), _folder(sysconfig.get_paths()[p]))))
_SOURCE_SUFFIXES = (".py", ".pyc")
_DETACH, _CLONE = torch._C.TensorBase.detach, torch._C.TensorBase.clone   # an immutable type: not patchable
_TRACE_CONFIG = torch.autograd.ProfilerConfig(torch.autograd.ProfilerState.KINETO, False, False, False, False, False,
                                              torch._C._profiler._ExperimentalConfig())   # CPU operators only


# ---------------------------------------------------------------- what a code object is

_OWN, _EXEMPT, _GRADER, _LIBRARY, _COURSE, _OTHER, _STANDIN = range(7)
_KINDS: dict[types.CodeType, tuple[int, int]] = {}   # code -> (kind, content); holds the code objects it judged
_GENUINE: dict[str, set] = {"grader": set(), "own": set(), "exempt": set(), "handed": set(), "standin": set()}


def _content(code: types.CodeType) -> int:
    """What a function's code does, apart from where it says it comes from (file, name, line numbers)."""
    consts = tuple(_content(c) if isinstance(c, types.CodeType) else (type(c), c) for c in code.co_consts)
    return hash((code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, consts,
                 code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags))


def _facts(code: types.CodeType) -> tuple[int, int]:
    """(kind, content) of `code`: the student's own (compiled by the harness), the watch's own, the grader's,
    the standard library's or site-packages', the course package's, or anything else."""
    known = _KINDS.get(code)
    if known is not None:
        return known
    name = code.co_filename
    if code in _GENUINE["own"]:
        kind = _OWN
    elif code in _GENUINE["exempt"]:
        kind = _EXEMPT
    elif code in _GENUINE["handed"]:
        kind = _LIBRARY
    elif code in _GENUINE["standin"]:
        kind = _STANDIN
    elif code in _GENUINE["grader"]:
        kind = _GRADER
    elif name.startswith(_LIBRARY_DIRS) or name.startswith("<frozen "):
        kind = _LIBRARY
    elif _real(name).startswith(COURSE_DIR):
        kind = _COURSE
    else:
        kind = _OTHER   # the student's code made at run time, and code compiled under a grader file's name
    known = _KINDS[code] = (kind, _content(code))
    return known


@functools.lru_cache(maxsize=4096)
def _real(path: str) -> str:
    return os.path.realpath(path) if os.path.isabs(path) else path


def _add_code(code: types.CodeType, into: set) -> None:
    if code in into:
        return
    into.add(code)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _add_code(const, into)


def _functions_of(value: Any, module: str, depth: int = 0) -> Iterator[types.FunctionType]:
    """The Python functions a module attribute holds: itself, a class's methods and properties (classes defined in
    `module`), what a decorator wraps."""
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        for fn in (value.fget, value.fset, value.fdel):
            yield from _functions_of(fn, module, depth + 1)
    elif isinstance(value, types.FunctionType):
        yield value
        wrapped = value.__dict__.get("__wrapped__")
        if wrapped is not None and depth < 4:
            yield from _functions_of(wrapped, module, depth + 1)
    elif isinstance(value, functools._lru_cache_wrapper) and depth < 4:
        yield from _functions_of(value.__wrapped__, module, depth + 1)
    elif isinstance(value, type) and value.__module__ == module and depth < 4:
        for member in list(vars(value).values()):
            yield from _functions_of(member, module, depth + 1)


def _code_of_modules(folder: str) -> Iterator[tuple[str, types.FunctionType]]:
    """(module name, function) for every function of the imported modules whose file is in `folder`."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not isinstance(path, str) or not _real(path).startswith(folder):
            continue
        for value in list(vars(module).values()):
            for fn in _functions_of(value, name):
                if _real(fn.__code__.co_filename).startswith(folder):
                    yield name, fn


def _learn_grader_code() -> None:
    """The grader's code objects as they are when the first watch is installed (before any student code runs), by
    identity. Once per process: a watch installed later (a check a cell runs) does not learn what the cells
    planted in a grader module."""
    if _GENUINE["grader"]:
        return
    for _, fn in _code_of_modules(GRADER_DIR):
        _add_code(fn.__code__, _GENUINE["grader"])
    for fn in _EXEMPT_FUNCTIONS:
        _add_code(fn.__code__, _GENUINE["exempt"])
    _add_code(_as_grader.__code__, _GENUINE["standin"])
    _KINDS.clear()


def own_code(code: types.CodeType) -> None:
    """`code` (a notebook cell, as the harness compiled it) and the functions in it are the student's own: a
    function typed in by hand is never a copy, even when it is the reference's text."""
    _add_code(code, _GENUINE["own"])


def handed(value: Any) -> None:
    """The grader's classes whose instances a case hands to the student's code (greedy_decode's model is a
    Transformer subclass that watches the notebook's rules) or puts around its call (the TorchFunctionMode of a
    meta case): their methods are judged as library code is (passed over: what they call is judged by who called
    them), since the notebook tells the student to call them. Only the grader's genuine code (learnt before any
    student code ran) is let through this way."""
    for cls in _grader_classes(value):
        for fn in _functions_of(cls, cls.__module__):
            if fn.__code__ in _GENUINE["grader"] and fn.__code__ not in _GENUINE["handed"]:
                _add_code(fn.__code__, _GENUINE["handed"])
                _KINDS.clear()


def _grader_classes(value: Any) -> set[type]:
    """The classes defined in the grader's modules of the objects in `value` (lists, tuples, dicts and modules'
    submodules walked, at most 256 objects)."""
    found: set[type] = set()
    todo, seen = [value], 0
    while todo and seen < 256:
        obj = todo.pop()
        seen += 1
        if isinstance(obj, (list, tuple)):
            todo.extend(obj)
        elif isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, torch.nn.Module):
            todo.extend(list(obj.children()))
        if isinstance(obj, torch.Tensor) or obj is None:
            continue
        for cls in type(obj).__mro__:
            module = sys.modules.get(cls.__module__)
            path = getattr(module, "__file__", None)
            if isinstance(path, str) and _real(path).startswith(GRADER_DIR):
                found.add(cls)
    return found


def _called_by_grader(frame: types.FrameType | None, watch_is_grader: bool = False) -> bool:
    """Whether the nearest caller that is not library code (the standard library, site-packages, the course
    package) is the grader's own code. The watch's wires and modes stand between the student's code and what it
    calls, so they are passed over too -- unless `watch_is_grader` (they call the grader's helpers themselves)."""
    while frame is not None:
        kind = _facts(frame.f_code)[0]
        if kind == _GRADER or kind == _EXEMPT and watch_is_grader:
            return True
        if kind == _STANDIN:
            return _from_stand_in(frame)
        if kind not in (_LIBRARY, _COURSE, _EXEMPT):
            return False
        frame = frame.f_back
    return False


def _by_grader_or_import(frame: types.FrameType | None) -> bool:
    """_called_by_grader, or the import system loading a module by name (importlib's _find_and_load)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_find_and_load" and code.co_filename == "<frozen importlib._bootstrap>":
            return True
        kind = _facts(code)[0]
        if kind == _GRADER or kind == _STANDIN and _from_stand_in(frame):
            return True
        if kind not in (_LIBRARY, _COURSE, _EXEMPT):
            return False
        frame = frame.f_back
    return False


def _from_stand_in(frame: types.FrameType) -> bool:
    """Whether `frame` (of _as_grader) was called by a stand-in, not directly by the student's code; both with this
    module's globals (a copy of their code made with other globals, that could stand for anything, is not)."""
    caller = frame.f_back
    return caller is not None and caller.f_code is _StandIn.__call__.__code__ \
        and frame.f_globals is globals() and caller.f_globals is globals()


# ---------------------------------------------------------------- what one window forbids

def _op_matches(name: str, patterns: frozenset[str]) -> bool:
    """'aten::_scaled_dot_product_flash_attention_for_cpu' against {'aten::_scaled_dot_product_*', ...}."""
    return name in patterns or any(p.endswith("*") and name.startswith(p[:-1]) for p in patterns)


def _op_name(func: Any) -> str:
    """The ATen name of what a torch function mode sees: an OpOverload(Packet), a torch builtin, a torch function."""
    schema = getattr(func, "_schema", None)
    if schema is not None:
        return schema.name
    qualified = getattr(func, "_qualified_op_name", None)
    if isinstance(qualified, str):
        return qualified
    return "aten::" + str(getattr(func, "__name__", ""))


class _Watched:
    """One window: what is forbidden (an item's names and operators, or the cells', or everything between windows)
    and what was seen. A hit raises ShortcutError from the wires and modes; the profile hook, the trace and the
    audit hook record it (an exception there would switch the hook off)."""

    __slots__ = ("item", "names", "ops", "contents", "builtins", "course", "strict", "hits", "tampering", "parts")

    def __init__(self, item: Any, strict: bool, ops: Iterable[str] | None = None, parts: tuple = ()) -> None:
        self.item, self.strict, self.hits, self.tampering, self.parts = item, strict, [], [], parts
        self.names = frozenset(item.forbidden)
        self.ops = frozenset(getattr(item, "forbidden_ops", ()) if ops is None else ops)
        self.course = ANY_COURSE_CODE in self.names
        self.contents, self.builtins = _identities(self.names)

    def hit(self, what: str) -> str:
        self.hits.append(what)
        return shortcut_message(self.item, what)


@functools.lru_cache(maxsize=256)
def _identities(names: frozenset[str]) -> tuple[dict[int, str], dict[int, tuple[Any, str]]]:
    """content -> name of the forbidden Python functions among `names` (with "transformer_ref.*": every function of
    the course package), and id -> (C function, name) of the forbidden C functions."""
    contents, builtins = {}, {}
    if ANY_COURSE_CODE in names:
        for module, fn in _code_of_modules(COURSE_DIR):
            contents.setdefault(_content(fn.__code__), f"{module}.{fn.__qualname__}")
    for dotted in sorted(names):
        for obj in _callables_of(dotted):
            # A decorator's wrapper (torch.no_grad's decorate_context, functools.wraps) is the same code for every
            # function it decorates, a student's own included: the function it wraps is what is forbidden.
            while isinstance(obj, types.FunctionType) and isinstance(getattr(obj, "__wrapped__", None),
                                                                    types.FunctionType) \
                    and _facts(obj.__code__)[0] == _LIBRARY:
                obj = obj.__wrapped__
            if isinstance(obj, types.FunctionType):
                contents[_content(obj.__code__)] = dotted
            elif isinstance(obj, types.BuiltinFunctionType):
                builtins[id(obj)] = (obj, dotted)
    return contents, builtins


def _callables_of(dotted: str) -> list[Any]:
    """The original callables `dotted` names (a class's forbidden method, a function, a C function)."""
    found = resolve(dotted)
    if found is None:
        return []
    owner, attr, _ = found
    try:
        raw = inspect.getattr_static(owner, attr)
    except AttributeError:
        return []
    raw = original(raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw)
    return [raw, original(getattr(owner, attr, None))]


def _course_name(code: types.CodeType) -> str:
    """'transformer_ref.tiled_attention.tiled_attention' for the code of that function."""
    relative = os.path.relpath(_real(code.co_filename), COURSE_DIR).removesuffix(".py").replace(os.sep, ".")
    module = COURSE + ("" if relative == "__init__" else "." + relative.removesuffix(".__init__"))
    return f"{module}.{code.co_qualname}"


# ---------------------------------------------------------------- the layers

class _FunctionModeWatch(TorchFunctionMode):
    """Sees torch functions and torch.ops calls before they dispatch (even a composite such as the math SDPA)."""

    def __init__(self, watched: _Watched) -> None:
        super().__init__()
        self.watched = watched

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.watched.ops:
            name = _op_name(func)
            if _op_matches(name, self.watched.ops) and not _called_by_grader(sys._getframe(1)):
                raise ShortcutError(self.watched.hit(name))
        return func(*args, **(kwargs or {}))


class _DispatchModeWatch(TorchDispatchMode):
    """Sees every ATen kernel that runs (below autograd), whatever Python route reached it."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:   # True would import torch._dynamo (seconds) to wrap __torch_dispatch__
        return False

    def __init__(self, watched: _Watched) -> None:
        super().__init__()
        self.watched = watched

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if _op_matches(name, self.watched.ops) and not _called_by_grader(sys._getframe(1)):
            raise ShortcutError(self.watched.hit(name))
        return func(*args, **(kwargs or {}))


class _OpTrace:
    """The dispatcher's record of the operators that ran while a strict window was open (the profiler's
    RecordFunction callbacks: below the PyTorch modes and their off switches). A marker with a secret name opens
    the record, so a record the student stopped and started again is told apart."""

    def __init__(self) -> None:
        self.marker = "grader-window-" + os.urandom(8).hex()
        self.problem: str | None = None

    def start(self) -> None:
        from torch.autograd import ProfilerActivity

        if torch.autograd._profiler_enabled():
            self.problem = "a profiler of the notebook's was running"
            return
        torch.autograd._prepare_profiler(_TRACE_CONFIG, {ProfilerActivity.CPU})
        torch.autograd._enable_profiler(_TRACE_CONFIG, {ProfilerActivity.CPU})
        torch.ops.profiler._record_function_enter_new(self.marker, None)

    def stop(self) -> list[str]:
        """The names of the operators that ran; sets `problem` when the record is not the one start() began."""
        if self.problem is not None:
            return []
        if not torch.autograd._profiler_enabled():
            self.problem = "the operator trace was stopped"
            return []
        names = [event.name() for event in torch.autograd._disable_profiler().events()]
        if self.marker not in names:
            self.problem = "the operator trace was replaced"
        return names


_AUDIT: dict[str, Any] = {}   # "events": profile replaced while "armed"; "grader": grader code replaced


def _audit(event: str, args: tuple) -> None:
    if event in ("sys.setprofile", "sys.settrace"):
        if _AUDIT.get("armed") and not _AUDIT.get("ours"):
            _AUDIT["events"].append(event)
    elif event == "object.__setattr__":
        if len(args) == 3 and isinstance(args[0], types.FunctionType) \
                and args[1] in ("__code__", "__defaults__", "__kwdefaults__") \
                and args[0].__code__ in _GENUINE["grader"]:
            _AUDIT["grader"].append(f"{args[0].__qualname__}.{args[1]} was replaced")
    elif event == "open":
        if _CURRENT and isinstance(args[0], (str, bytes)) and _is_course_source(os.fsdecode(args[0])) \
                and not _by_grader_or_import(sys._getframe(1)) \
                and not _a_line_of_the_stack(os.fsdecode(args[0]), sys._getframe(1)):
            _CURRENT[-1].hits.append("the course's source files")
    elif event in ("code.__new__", "marshal.loads"):
        if _CURRENT and not _by_grader_or_import(sys._getframe(1)):
            _CURRENT[-1].hits.append("types.CodeType" if event == "code.__new__" else "marshal.loads")


def _a_line_of_the_stack(path: str, frame: types.FrameType | None) -> bool:
    """linecache reading a file that has a frame on the stack right now: a traceback being formatted (torch's
    manual_seed keeps one for a CUDA that may come later, a warning shows its line), not a copy of the course's
    code. A file that is not on the stack (linecache or traceback.FrameSummary asked for another path) is."""
    on_stack, reader = set(), False
    while frame is not None:
        reader = reader or frame.f_code.co_filename == linecache.__file__
        on_stack.add(frame.f_code.co_filename)
        frame = frame.f_back
    real = _real(os.path.abspath(path))
    return reader and any(_real(os.path.abspath(name)) == real for name in on_stack)


def _is_course_source(path: str) -> bool:
    if not path.endswith(_SOURCE_SUFFIXES):
        return False
    real = _real(os.path.abspath(path))
    return real.startswith(COURSE_DIR) or real.startswith(GRADER_DIR)


def _install_audit_hook() -> None:
    if not _AUDIT:
        _AUDIT.update(events=[], grader=[], armed=False, ours=False)
        sys.addaudithook(_audit)   # for the life of the process: Python has no way to remove it


def grader_code_changed() -> str | None:
    """The first grader function whose code or defaults were replaced since the watch was installed, or None."""
    return (_AUDIT.get("grader") or [None])[0]


class _Profile:
    """The profile hook: forbidden Python code by content (and the course package's by location when the window
    forbids it all), forbidden C functions by identity, and (strict) a call into the grader's own code; each
    unless the grader called it."""

    __slots__ = ("watched",)

    def __init__(self) -> None:
        self.watched: _Watched | None = None

    def __call__(self, frame: types.FrameType, event: str, arg: Any) -> None:
        watched = self.watched
        if watched is None:
            return
        if event == "call":
            kind, content = _facts(frame.f_code)
            if kind in (_OWN, _EXEMPT) or kind == _STANDIN and _from_stand_in(frame):
                return
            if kind in (_GRADER, _STANDIN):
                if watched.strict and not _called_by_grader(frame.f_back, watch_is_grader=True):
                    watched.hit("grader")
                return
            forbidden = watched.contents.get(content)
            if forbidden is None and kind == _COURSE and watched.course:
                forbidden = _course_name(frame.f_code)
            if forbidden is not None and not _called_by_grader(frame.f_back):
                watched.hit(forbidden)
        elif event == "c_call":
            entry = watched.builtins.get(id(arg))
            if entry is not None and entry[0] is arg and not _called_by_grader(frame):
                watched.hit(entry[1])


# ---------------------------------------------------------------- trip-wires

# trip-wire -> the callable it stands for. Kept here rather than on the wrapper (which holds only its name), so
# that a trip-wire in student hands carries no way back to the original; and calling an original that was
# found some other way is caught by content anyway (the profile hook and the modes).
_ORIGINALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CURRENT: list[_Watched] = []   # the open windows, innermost last


def original(obj: Any) -> Any:
    """The callable a trip-wire stands for (obj itself when it is not a trip-wire)."""
    try:
        return _ORIGINALS.get(obj, obj)
    except TypeError:   # neither hashable nor weakly referable: not a wrapper
        return obj


class _Wire:
    """A trip-wire: a call passes through to the original unless the open window forbids `dotted` (and the call is
    not the grader's)."""

    __slots__ = ("dotted", "__weakref__")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        watched = _CURRENT[-1] if _CURRENT else None
        if watched is not None and self.dotted in watched.names and not _called_by_grader(sys._getframe(1)):
            raise ShortcutError(watched.hit(self.dotted))
        return _ORIGINALS[self](*args, **kwargs)

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        return self if obj is None else types.MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<trip-wire on {self.dotted}>"

    @property
    def __name__(self) -> str:
        return self.dotted.rpartition(".")[2]


class _ThreadWire:
    """In place of the thread starters while the watch is installed: a thread runs without the profile hook and
    the modes, so starting one while a window is open is tampering with the watch."""

    __slots__ = ("start", "__weakref__")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _CURRENT:
            _CURRENT[-1].tampering.append("a thread was started")
        return self.start(*args, **kwargs)


class _StandIn:
    """In the notebook's namespace in place of one of the student's parts while an item that calls it is graded
    (see substituted). In a window that grades that item with its parts substituted, a call runs the part's
    reference as the grader's call (_as_grader); anywhere else -- kept in a global and called later, in another
    item, between items -- it calls the student's own part. What it stands for is kept in _STANDING, not on it."""

    __slots__ = ("__weakref__",)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        part, own = _STANDING[self]
        if _CURRENT and part in _CURRENT[-1].parts:
            return _as_grader(part, args, kwargs)
        return own(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<the reference {_STANDING[self][0].name}, in place of yours while the grader runs an item>"


def _as_grader(part: Any, args: tuple, kwargs: dict) -> Any:
    """The part's reference on the arguments, as the grader's own call (the watch's kind _STANDIN: what it calls
    is the grader's, when a stand-in called it; called any other way it is grader code like the rest)."""
    return original(part.reference())(*args, **kwargs)


_STANDING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # stand-in -> (part, the student's own)


@contextlib.contextmanager
def substituted(impl: Any, parts: Iterable[Item]) -> Iterator[list[Item]]:
    """While open, each of `parts` (function items) that the namespace of `impl` defines -- a function's globals, a
    class's methods' -- is a stand-in there; yields the parts replaced. Whatever happens, the student's own are put
    back. The course's and the grader's modules are never changed (a reference or a catalogued mistake run as a
    submission)."""
    try:
        namespaces = [ns for ns in {id(ns): ns for ns in _namespaces_of(impl)}.values() if not _a_package_module(ns)]
    except Exception:   # a class whose metaclass hides its namespace...: nothing to replace, its check says the rest
        namespaces = []
    replaced: list[tuple[dict, str, Any]] = []
    done: list[Item] = []
    try:
        for part in parts:
            for ns in namespaces:
                own = ns.get(part.name)
                if part.kind != "function" or not callable(own) or isinstance(own, _StandIn):
                    continue
                stand = _StandIn()
                _STANDING[stand] = (part, own)
                replaced.append((ns, part.name, own))
                ns[part.name] = stand
                done.append(part)
        yield list(dict.fromkeys(done))
    finally:
        for ns, name, own in reversed(replaced):
            ns[name] = own


def _namespaces_of(impl: Any) -> Iterator[dict]:
    """The global namespaces the code of `impl` sees: a function's (what a decorator wraps too), a class's methods'
    (its own and its bases' defined in the same module)."""
    if isinstance(impl, type):
        for cls in impl.__mro__:
            if cls.__module__ == impl.__module__:
                for fn in _functions_of(cls, cls.__module__):
                    yield fn.__globals__
    else:
        for fn in _functions_of(impl, getattr(impl, "__module__", None)):
            yield fn.__globals__


def _a_package_module(ns: dict) -> bool:
    """Whether `ns` is the namespace of a module of the course package or of the grader."""
    module = sys.modules.get(ns.get("__name__", ""))
    path = getattr(module, "__file__", None)
    return getattr(module, "__dict__", None) is ns and isinstance(path, str) \
        and _real(path).startswith((COURSE_DIR, GRADER_DIR))


_EXEMPT_FUNCTIONS = (_Wire.__call__, _Wire.__get__, _Wire.__repr__, _ThreadWire.__call__, _StandIn.__call__,
                     _StandIn.__repr__, _FunctionModeWatch.__torch_function__, _DispatchModeWatch.__torch_dispatch__)


class _Between:
    """The base window's "item": everything the watch was installed for is forbidden between windows."""

    name = "the notebook, outside the items and cells being graded,"

    def __init__(self, names: Iterable[str], ops: Iterable[str]) -> None:
        self.forbidden, self.forbidden_ops = tuple(names), tuple(ops)


class Tripwires:
    """The watch on forbidden shortcuts (see above): trip-wires on names, profile hook, PyTorch modes, trace, audit.

    ``install()`` replaces every resolvable name in `dotted_names` with a trip-wire (with ``rebind``, also every
    other module attribute that holds the same object, and the thread starters), ``uninstall()`` puts the
    originals back (also usable as a context manager). ``watching(item)`` yields the list of forbidden names and
    operators the code called while it was open; ``tampered()`` says what of the watch was found changed then.
    With ``between``, a base window forbidding all of `dotted_names` and `ops` is open whenever no other is.
    """

    def __init__(self, dotted_names: Iterable[str], rebind: bool = False, between: bool = False,
                 ops: Iterable[str] = ()) -> None:
        self.names = tuple(dict.fromkeys(dotted_names))
        self.rebind = rebind
        self.base = _Watched(_Between(self.names, ops), strict=True) if between else None
        self._patched: list[tuple[Any, str, Any, bool, Any]] = []   # owner, attribute, raw value, own, wire
        self._profile = _Profile()
        self._previous_profile: Any = None
        self._tampering: list[str] = []
        self._events = 0   # audit events seen before install()

    def install(self) -> Tripwires:
        if self._patched:
            return self
        _learn_grader_code()
        wired: dict[int, Any] = {}
        for dotted in self.names:
            found = resolve(dotted)
            if found is None:
                continue
            owner, attr = found[0], found[1]
            own = isinstance(owner, type) and attr in vars(owner) or not isinstance(owner, type)
            raw = inspect.getattr_static(owner, attr)
            wire = self._wire(dotted, raw)
            try:
                setattr(owner, attr, wire)
            except (AttributeError, TypeError):  # some C types refuse new attributes
                continue
            self._patched.append((owner, attr, raw, own, wire))
            if not isinstance(raw, (staticmethod, classmethod)):
                wired.setdefault(id(raw), (raw, wire))
        if self.rebind:
            for start in (_thread.start_new_thread, _thread.start_new):
                wire = _ThreadWire()
                wire.start = start
                wired[id(start)] = (start, wire)
            self._rebind(wired)
        _install_audit_hook()
        self._previous_profile = sys.getprofile()
        self._events = len(_AUDIT["events"])
        if self.base is not None:
            _CURRENT.append(self.base)
            self._profile.watched = self.base
            _AUDIT["armed"] = True
        self._set_profile(self._profile)
        return self

    def _rebind(self, wired: dict[int, tuple[Any, Any]]) -> None:
        """Every module attribute that is one of the wired objects (an alias a module bound when it was imported,
        ``from transformer_ref.attention import scaled_dot_product_attention``) becomes its trip-wire too."""
        for module in list(sys.modules.values()):
            namespace = getattr(module, "__dict__", None)
            if not isinstance(namespace, dict):
                continue
            for name, value in list(namespace.items()):
                try:
                    entry = wired.get(id(value))
                except TypeError:
                    continue
                if entry is not None and entry[0] is value:
                    namespace[name] = entry[1]
                    self._patched.append((module, name, value, True, entry[1]))

    def uninstall(self) -> None:
        for owner, attr, raw, own, _ in reversed(self._patched):
            if own:
                setattr(owner, attr, raw)
            else:
                delattr(owner, attr)
        self._patched = []
        if self.base is not None and self.base in _CURRENT:
            _CURRENT.remove(self.base)
            _AUDIT["armed"] = False
        self._profile.watched = None
        self._set_profile(self._previous_profile)

    def __enter__(self) -> Tripwires:
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

    @staticmethod
    def _set_profile(hook: Any) -> None:
        _AUDIT["ours"] = True
        try:
            sys.setprofile(hook)
            threading.setprofile(hook)
        finally:
            _AUDIT["ours"] = False

    @contextlib.contextmanager
    def watching(self, item: Item, strict: bool = False, parts: tuple = ()) -> Iterator[list[str]]:
        """While open, a call of a name, code or operator that `item` forbids is recorded (in the yielded list)
        and raises where it can. `strict` (an item being graded, not a cell) also forbids calling into the
        course's checking code and traces the operators that ran. Whatever of the watch is found changed
        afterwards is in ``tampered()``. `parts`: the items whose stand-ins run their reference in this window
        (the item's parts, when it is graded with them substituted)."""
        watched = _Watched(item, strict, parts=tuple(parts))
        saved = self._profile.watched
        functions, dispatch = _FunctionModeWatch(watched), _DispatchModeWatch(watched)
        trace = _OpTrace() if strict and watched.ops else None
        depth = (len(_function_mode_stack()), len(_dispatch_mode_stack()))
        linecache.clearcache()   # lines of the course's files a traceback read: no source without an open()
        _CURRENT.append(watched)
        self._profile.watched = watched
        self._set_profile(self._profile)
        events = len(_AUDIT["events"])
        _AUDIT["armed"] = True
        if trace is not None:
            trace.start()
        functions.__enter__()
        dispatch.__enter__()
        try:
            yield watched.hits
        finally:
            self._tampering = self._check_modes(functions, dispatch, depth)
            if trace is not None:
                watched.hits += [name for name in trace.stop() if _op_matches(name, watched.ops)][:1]
                self._tampering += [trace.problem] if trace.problem else []
            _AUDIT["armed"] = self.base is not None
            linecache.clearcache()
            self._tampering += watched.tampering + self._intact(events)
            if self.rebind and len(sys._current_frames()) > 1:   # (a notebook's kernel has threads of its own)
                self._tampering.append("a thread of the notebook's was running")
            if _CURRENT and _CURRENT[-1] is watched:
                _CURRENT.pop()
            else:
                self._tampering.append("the watch was changed")
                _CURRENT[:] = [w for w in _CURRENT if w is not watched]
            self._profile.watched = saved
            self._set_profile(self._profile)

    def _intact(self, events: int = 0) -> list[str]:
        """What of the profile hook and the trip-wires is not as installed (audit events since `events`)."""
        problems = []
        if sys.getprofile() is not self._profile:
            problems.append("the profile hook was replaced")
        if len(_AUDIT["events"]) > events:
            problems.append(f"{_AUDIT['events'][-1]} was called")
        return problems + [f"{getattr(owner, '__name__', owner)}.{attr} was changed"
                           for owner, attr, _, _, wire in self._patched if _static_or_none(owner, attr) is not wire]

    def between_windows(self) -> str | None:
        """What the base window saw since install() -- a forbidden call, or the watch changed -- or None."""
        if self.base is None:
            return None
        problems = [shortcut_message(self.base.item, hit) for hit in self.base.hits[:1]]
        problems += self.base.tampering + self._intact(self._events) + [w for w in [grader_code_changed()] if w]
        if _CURRENT[:1] != [self.base]:
            problems.append("the watch was changed")
        return "; ".join(problems) or None

    @staticmethod
    def _check_modes(functions: Any, dispatch: Any, depth: tuple[int, int]) -> list[str]:
        """Pop the watch's modes (and anything the code left above them); what was changed, if anything."""
        problems = []
        for stack, pop, mode, base, what in (
                (_dispatch_mode_stack, _pop_dispatch_mode, dispatch, depth[1], "dispatch"),
                (_function_mode_stack, _pop_function_mode, functions, depth[0], "function")):
            current = stack()
            if len(current) != base + 1 or current[base] is not mode:
                problems.append(f"the torch {what} mode stack was changed")
            while len(stack()) > base:
                pop()
        return problems

    def tampered(self) -> str | None:
        """What of the watch was found changed when the last ``watching`` ended (None: nothing)."""
        return "; ".join(dict.fromkeys(self._tampering)) or None

    def _wire(self, dotted: str, raw: Any) -> Any:
        """A trip-wire for `raw` (a function, staticmethod or classmethod)."""
        fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
        wire = _Wire()
        wire.dotted = dotted
        _ORIGINALS[wire] = fn
        if isinstance(raw, staticmethod):
            return staticmethod(wire)
        if isinstance(raw, classmethod):
            return classmethod(wire)
        return wire


def _static_or_none(owner: Any, attr: str) -> Any:
    try:
        return inspect.getattr_static(owner, attr)
    except AttributeError:
        return None


def _function_mode_stack() -> list:
    return torch.overrides._get_current_function_mode_stack()


def _dispatch_mode_stack() -> list:
    return torch.utils._python_dispatch._get_current_dispatch_mode_stack()


def _pop_function_mode() -> None:
    torch._C._pop_torch_function_stack()


def _pop_dispatch_mode() -> None:
    torch.utils._python_dispatch._pop_mode()


def plain_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """An exact torch.Tensor with `tensor`'s values: a contiguous copy made by the C methods (a patched
    torch.Tensor.detach is not called), with a subclass's __torch_function__ switched off, so that nothing the
    grader does with it later (compare, describe) runs the submission's code. Called while the item is still
    watched: a tensor subclass's __torch_dispatch__, if any, runs watched."""
    with torch._C.DisableTorchFunctionSubclass():
        return _CLONE(_DETACH(tensor), memory_format=torch.contiguous_format)
