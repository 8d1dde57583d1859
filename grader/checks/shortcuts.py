"""Forbidden shortcuts: calling the course's own answer, or PyTorch's ready-made version of an exercise.

Two independent guards:

- the watch at run time (grader.checks.watch): trip-wires on the forbidden names, a profile hook that knows
  forbidden code by content and the course's by location, PyTorch modes and the dispatcher's trace for the
  forbidden ATen operators, an audit hook. It catches a shortcut however its object was reached, while the
  code runs.
- :func:`find_shortcut` (here) reads the submission's source text (``ast``, no bytecode, so it does not depend
  on one Python version's opcodes) and finds references to forbidden names through import aliases,
  and ways around the check (``importlib``, ``sys.modules``, ``getattr(m, "x" + "y")``, ...). This
  catches names bound before the watch was installed (``from torch.nn.functional import
  scaled_dot_product_attention as sdpa``) and subclasses of forbidden classes.

This module also holds what both share: the messages, how a dotted name is resolved, and the forbidden names
several assignments share.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import inspect
import sys
import textwrap
import types
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grader.checks.item import Item


class ShortcutError(RuntimeError):
    """Raised inside the student's code when it calls a forbidden shortcut."""


# Ways around the check that find_shortcut reports by these names.
EVASIONS = ("importlib", "__import__", "sys.modules", "exec", "eval", "compile", "getattr", "vars", "globals",
            "__dict__", "__closure__", "__wrapped__", "__globals__", "__builtins__", "ctypes", "builtins",
            "inspect", "gc", "grader", "_getframe", "f_back", "f_locals", "f_globals", "tb_frame", "gi_frame")
# inspect and gc reach into live objects (a trip-wire's original, the grader's cases); grader is the course's
# own checking code (its mistakes and helpers include correct implementations).
_EVASIVE_MODULES = ("importlib", "ctypes", "builtins", "inspect", "gc", "grader")
_EVASIVE_CALLS = ("__import__", "exec", "eval", "compile")
_EVASIVE_ATTRIBUTES = ("__closure__", "__wrapped__", "__globals__", "__builtins__",   # and the frames of the
                       "_getframe", "f_back", "f_locals", "f_globals", "tb_frame", "gi_frame")   # grader's code
# A forbidden name for every function of the course package, wherever it is bound or copied: what the notebooks
# mean by "nothing from transformer_ref". The watch knows that code by where it is and by what it is.
ANY_COURSE_CODE = "transformer_ref.*"
# What the watch reports for ways around it that only run time shows (grader.checks.watch).
RUNTIME_EVASIONS = ("the course's source files", "types.CodeType", "marshal.loads")
_CLASS_METHODS = ("forward", "__init__", "__call__")   # forbidding X.forward forbids the class X
# Conventional names a submission's function body uses without importing them itself (the imports
# sit in another notebook cell): used only when neither the source nor the namespace binds them.
_CONVENTIONAL = {"torch": "torch", "nn": "torch.nn", "F": "torch.nn.functional"}


def _public_check(dotted: str) -> bool:
    """grader.checks.<assignment>.check_<item>: what a test cell imports, and a student may copy to re-run."""
    parts = dotted.split(".")
    return len(parts) == 4 and parts[:2] == ["grader", "checks"] and parts[3].startswith("check_")


def shortcut_message(item: Item, dotted: str) -> str:
    """What the student reads when `item`'s submission uses `dotted`."""
    if dotted in EVASIONS or dotted in RUNTIME_EVASIONS:
        return (f"{item.name} uses {dotted}, which can reach code around the course's check for ready-made "
                f"answers. Write this part with ordinary imports and calls; this item scores 0 while that "
                f"is there.")
    what = "the course's reference answer" if dotted.startswith("transformer_ref") else \
        "a ready-made version of what this exercise asks you to write"
    return (f"{item.name} uses {dotted}, {what}. Write this part yourself (the exercise says which building "
            f"blocks you may use); this item scores 0 while that call is there.")


# ---------------------------------------------------------------- resolving dotted names

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


def resolve(dotted: str) -> tuple[Any, str, Any] | None:
    """'torch.nn.functional.softmax' -> (owner object, attribute name, current value), or None.

    Names in the transformers library are only looked at when it is already imported (it is slow to import).
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


# ---------------------------------------------------------------- reading the source

def _forbidden_objects(forbidden: Iterable[str]) -> tuple[set[str], dict[int, str]]:
    """The forbidden dotted names (plus the classes whose forward/__init__/__call__ is forbidden), and
    the objects they name today by id (to catch the same object under another name, a trip-wire's original too)."""
    names, objects = set(), {}
    for dotted in forbidden:
        names.add(dotted)
        owner_name, _, attr = dotted.rpartition(".")
        found = resolve(dotted)
        if attr in _CLASS_METHODS:
            names.add(owner_name)
        if found is None:
            continue
        owner, attr, value = found
        if isinstance(owner, type):
            if attr not in vars(owner):
                continue  # inherited (object.__init__ ...): not this class's own code
            if attr in _CLASS_METHODS:
                objects.setdefault(id(owner), owner_name)
        objects[id(value)] = dotted
        objects[id(_unwrapped(value))] = dotted
    return names, objects


def _unwrapped(obj: Any) -> Any:
    """The original behind a trip-wire (obj itself when it is none)."""
    from grader.checks.watch import original   # (the watch imports this module)

    return original(obj)


def _lookup(dotted: str) -> Any:
    """The object `dotted` names among the modules already imported, or None (nothing is imported here)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:cut]))
        if module is None:
            continue
        obj: Any = module
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None


def _dotted_of(obj: Any) -> str | None:
    """'torch.nn.functional' for a module, 'pkg.mod.Class' for a class or function; None otherwise."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if module and qualname and "<" not in qualname:
            return f"{module}.{qualname}"
    return None


def parse_source(source: str) -> ast.AST | None:
    """The syntax tree of `source`; for a fragment cut out of a larger expression (what
    inspect.getsource gives for a lambda), the tree of the lambda in it; None if nothing parses."""
    text = textwrap.dedent(source)
    try:
        return ast.parse(text)
    except SyntaxError:
        pass
    start = text.find("lambda")
    if start < 0:
        return None
    for end in range(min(len(text), start + 2000), start, -1):   # the shortest cut that parses is the lambda
        try:
            return ast.parse(text[start:end].strip(), mode="eval")
        except SyntaxError:
            continue
    return None


def _chain(node: ast.AST) -> tuple[str, list[str]] | None:
    """`a.b.c` -> ("a", ["b", "c"]); None when the chain does not start at a name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, attrs[::-1]
    return None


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _Reader(ast.NodeVisitor):
    """One pass over a submission's source; ``found`` is the first forbidden or evasive name."""

    def __init__(self, forbidden: tuple[set[str], dict[int, str]], namespace: dict | None, home: str | None,
                 seen: set[int]) -> None:
        self.names, self.objects = forbidden
        self.namespace, self.home, self.seen = namespace, home, seen
        self.aliases: dict[str, str] = {}     # name bound by an import -> dotted name
        self.bound: set[str] = set()          # names the source binds otherwise (def, class, =, arguments)
        self.found: str | None = None
        self.last_parts = {n.rpartition(".")[2]: n for n in sorted(self.names)
                           if n.rpartition(".")[2] not in _CLASS_METHODS}

    # ---- bindings (collected before the references are judged)
    def collect(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        self.aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name == "*":
                        for dotted in self.names:
                            if dotted.startswith(node.module + ".") and "." not in dotted[len(node.module) + 1:]:
                                self.aliases[dotted.rpartition(".")[2]] = dotted
                    else:
                        self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.bound.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
                self.bound.add(node.id)
            elif isinstance(node, ast.arg):
                self.bound.add(node.arg)
        self.bound -= set(self.aliases)

    # ---- judging
    def report(self, name: str | None) -> None:
        if name is not None and self.found is None:
            self.found = name

    # An import alone is not a shortcut (a notebook's imports cell serves several items); using the name is.
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.report(self._evasive_module(a.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level and not all(_public_check(f"{node.module}.{a.name}") for a in node.names):
            self.report(self._evasive_module(node.module))

    def visit_Name(self, node: ast.Name) -> None:
        if isinstance(node.ctx, ast.Load):
            if node.id in (*_EVASIVE_CALLS, "__builtins__") and node.id not in self.bound:
                self.report(node.id)
            self.report(self._judge_chain(node.id, []))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _EVASIVE_ATTRIBUTES:
            self.report(node.attr)
        chain = _chain(node)
        if chain is not None and isinstance(node.ctx, ast.Load):
            self.report(self._judge_chain(*chain))
            return  # the inner attributes are prefixes of this chain: judged already
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        # vars(m)["x"], globals()["x"], m.__dict__["x"]: allowed with a literal key that is not forbidden
        target = node.value
        lookup = self._namespace_lookup(target)
        if lookup is not None:
            key = _literal(node.slice)
            self.report(lookup if key is None else self._judge_key(target, key))
            self.visit(node.slice)
            if isinstance(target, ast.Call):
                for arg in target.args:
                    self.visit(arg)
            elif isinstance(target, ast.Attribute):
                self.visit(target.value)
            return
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id not in self.bound and func.id not in self.aliases:
            if func.id in _EVASIVE_CALLS:
                self.report(func.id)
            elif func.id == "getattr":
                self.report(self._judge_getattr(node))
            elif func.id in ("vars", "globals"):
                self.report(func.id)   # a subscripted vars(...)/globals() is judged in visit_Subscript
        if isinstance(func, ast.Attribute) and func.attr == "get" and self._namespace_lookup(func.value):
            key = _literal(node.args[0]) if node.args else None
            self.report(self._namespace_lookup(func.value) if key is None else self._judge_key(func.value, key))
            for arg in node.args:
                self.visit(arg)
            return
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            chain = _chain(base)
            if chain is not None:
                self.report(self._judge_class(self._root_object(chain[0]), chain[1]))
        self.generic_visit(node)

    # ---- helpers
    def _namespace_lookup(self, node: ast.AST) -> str | None:
        """'vars' / 'globals' / '__dict__' when node is such a lookup table, else None."""
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("vars", "globals") \
                and node.func.id not in self.bound:
            return node.func.id
        if isinstance(node, ast.Attribute) and node.attr == "__dict__":
            return "__dict__"
        return None

    def _judge_key(self, table: ast.AST, key: str) -> str | None:
        """The forbidden name `key` looks up in `table` (vars(m), m.__dict__ or globals())."""
        owner = table.value if isinstance(table, ast.Attribute) else table.args[0] if table.args else None
        chain = _chain(owner) if owner is not None else None
        if chain is not None and (found := self._judge_chain(chain[0], chain[1] + [key])):
            return found
        return self._forbidden_key(key)

    def _forbidden_key(self, key: str) -> str | None:
        return self.last_parts.get(key)

    def _judge_getattr(self, node: ast.Call) -> str | None:
        if len(node.args) < 2:
            return "getattr"
        key = _literal(node.args[1])
        if key is None:
            return "getattr"
        chain = _chain(node.args[0])
        if chain is not None:
            found = self._judge_chain(chain[0], chain[1] + [key])
            if found:
                return found
        return self._forbidden_key(key)

    def _evasive_module(self, module: str) -> str | None:
        top = module.split(".")[0]
        return top if top in _EVASIVE_MODULES else None

    def _root_dotted(self, root: str) -> str | None:
        if root in self.aliases:
            return self.aliases[root]
        if root in self.bound:
            return None
        if self.namespace is not None and root in self.namespace:
            return _dotted_of(self.namespace[root])
        return _CONVENTIONAL.get(root)

    def _root_object(self, root: str) -> Any:
        if root in self.aliases:
            return _lookup(self.aliases[root])
        if root in self.bound:
            return None
        if self.namespace is not None and root in self.namespace:
            return self.namespace[root]
        return _lookup(_CONVENTIONAL[root]) if root in _CONVENTIONAL else None

    def _forbidden_dotted(self, dotted: str) -> str | None:
        if ANY_COURSE_CODE in self.names and dotted.startswith(ANY_COURSE_CODE[:-1]) and dotted.count(".") > 1:
            return dotted   # transformer_ref.<module>.<anything>: the course's code (a module alone is no call)
        parts = dotted.split(".")
        return next((".".join(parts[:n]) for n in range(1, len(parts) + 1) if ".".join(parts[:n]) in self.names),
                    None)

    def _forbidden_object(self, obj: Any) -> str | None:
        if obj is None:
            return None
        return self.objects.get(id(obj)) or self.objects.get(id(_unwrapped(obj)))

    def _judge_chain(self, root: str, attrs: list[str]) -> str | None:
        """The forbidden name `root.attrs...` refers to: by its dotted name, or by the object it names."""
        root_dotted = self._root_dotted(root)
        if root_dotted is not None:
            full = ".".join([root_dotted, *attrs])
            top = full.split(".")[0]
            # The course's own checks count only when the source imports them itself: a notebook's namespace
            # holds the check functions its imports cell brought in, and a catalogued mistake's module is grader's.
            if top in _EVASIVE_MODULES and (top != "grader" or root in self.aliases and not _public_check(full)):
                return top
            if full == "sys.modules" or full.startswith("sys.modules."):
                return "sys.modules"
            if (found := self._forbidden_dotted(full)):
                return found
        obj = self._root_object(root)
        if obj is None:
            return None
        if not attrs and root not in self.aliases and self.namespace is not None:
            found = self._follow(obj)   # a helper of the submission's own, defined elsewhere in its module
            if found:
                return found
        for attr in [None, *attrs]:
            if attr is not None:
                try:
                    obj = inspect.getattr_static(obj, attr) if isinstance(obj, type) else getattr(obj, attr)
                except AttributeError:
                    return None
                obj = obj.__func__ if isinstance(obj, (staticmethod, classmethod)) else obj
            if (found := self._forbidden_object(obj)):
                return found
        return None

    def _judge_class(self, cls: Any, attrs: list[str]) -> str | None:
        for attr in attrs:
            cls = getattr(cls, attr, None)
        if not isinstance(cls, type):
            return None
        return next((f for base in cls.__mro__ if (f := self._forbidden_object(base))), None)

    def _follow(self, obj: Any) -> str | None:
        """Read the source of a function or class the submission's module defines (its own helpers)."""
        if not isinstance(obj, (type, types.FunctionType)) or id(obj) in self.seen:
            return None
        if getattr(obj, "__module__", None) != self.home:
            return self._judge_class(obj, []) if isinstance(obj, type) else None
        self.seen.add(id(obj))
        found = _read(obj, (self.names, self.objects), self.seen)
        return found or (self._judge_class(obj, []) if isinstance(obj, type) else None)


def _namespace_of(obj: Any) -> dict:
    """The names a function or class's source refers to: its module's globals, plus a function's closure."""
    fn = obj
    if isinstance(fn, types.FunctionType):
        namespace = dict(fn.__globals__)
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            with contextlib.suppress(ValueError):
                namespace[name] = cell.cell_contents
        return namespace
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    return dict(vars(module)) if module is not None else {}


def _read(obj: Any, forbidden: tuple[set[str], dict[int, str]], seen: set[int]) -> str | None:
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return None
    tree = parse_source(source)
    if tree is None:
        return None
    reader = _Reader(forbidden, _namespace_of(obj), getattr(obj, "__module__", None), seen)
    reader.collect(tree)
    reader.visit(tree)
    return reader.found


def find_shortcut(source: str, forbidden: Iterable[str], namespace: dict | None = None) -> str | None:
    """The dotted name of a forbidden callable `source` refers to, the name of a way around the check
    (one of EVASIONS, e.g. "importlib"), or None.

    Names are resolved through the source's own imports; names it does not bind are looked up in
    `namespace` when given (the globals the code runs with, e.g. a notebook's), else taken as the
    conventional ``torch``, ``nn`` and ``F``. A function the source defines under a forbidden name is
    the student's own, not a shortcut.
    """
    tree = parse_source(source)
    if tree is None:
        return None
    reader = _Reader(_forbidden_objects(forbidden), namespace, namespace.get("__name__") if namespace else None,
                     set())
    reader.collect(tree)
    reader.visit(tree)
    return reader.found


def find_shortcut_in(impl: Any, forbidden: Iterable[str]) -> str | None:
    """find_shortcut on a submission object: its source, the helpers its module defines, its closure;
    None when its source is not available (then only the tripwires watch it)."""
    return _read(impl, _forbidden_objects(forbidden), {id(impl)})


# ---------------------------------------------------------------- forbidden names several assignments share

F = "torch.nn.functional."
TORCH_ATTENTION = (F + "scaled_dot_product_attention", F + "multi_head_attention_forward",
                   "torch.nn.MultiheadAttention.forward", "torch.nn.MultiheadAttention.__init__")
# The ATen operators behind TORCH_ATTENTION, however they are called (torch.ops.aten, torch._C._nn, the math
# kernel that also returns the weights; _safe_softmax is the math kernel's masked softmax, used by nothing else).
TORCH_ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_*", "aten::_safe_softmax",
                       "aten::_native_multi_head_attention", "aten::_transformer_encoder_layer_fwd",
                       "aten::_fused_sdp_choice", "aten::_flash_attention_*", "aten::_efficient_attention_*",
                       "aten::_cudnn_attention_*")
REF_ATTENTION = tuple(f"transformer_ref.attention.{n}" for n in (
    "dot_product_attention", "scaled_dot_product_attention", "fused_attention", "_fused_attention",
    "_masked_softmax", "self_attention",
    "SelfAttention.forward", "additive_attention", "AdditiveAttention.forward")) + (ANY_COURSE_CODE,)
