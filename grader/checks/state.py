"""Stale kernel state: is the definition a check was given the one the notebook shows?

A notebook is graded from the top, cell by cell; a kernel holds whatever ran last. They part when a cell is
edited and not run again, when a definition (a provided helper such as `attention`) is redefined in another
cell, or when a cell is deleted after it ran. A check then tests code the student no longer sees.

    stale(name, impl) -> Stale | None     (.message for the test cell, .cell to run again for the summary)

compares, for `impl` and every function or class of the notebook it uses (transitively: `attention` in
MultiHeadAttention.forward, causal_mask in decoder_self_attention_mask), the code of the cell that defined it
in the kernel (IPython names each cell's code `In [N]`: ``shell.compile._filename_map`` maps the file name of
a function's ``__code__`` to N, the history holds the text that ran) with the cell that defines that name last
above the running cell in the saved notebook (the path ipykernel puts in ``__session__``; JupyterLab
autosaves, and `make lab` saves every few seconds). It returns one message naming the cell (`In [12]`) and
what to run again (a Stale), or None when they agree, when the saved notebook cannot be found or read (Colab, an
unsaved notebook), or when the saved file is older than the cell that defined the name (it may not show that
run yet). It never raises: a check must not crash on the student's kernel state.
"""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import json
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

from grader.checks import notebook
from grader.checks.results import describe

MAX_NOTEBOOK_BYTES = 32 * 2**20   # a notebook with larger outputs is not read (the check stays fast)
MAX_NAMES = 40                    # how many names of the notebook a definition's closure may visit


@dataclass(frozen=True)
class Cell:
    """A code cell of the saved notebook: its position among the code cells, its text, its `In [N]` (or None)."""

    index: int
    source: str
    count: int | None

    def label(self) -> str:
        """How the student finds it: "In [9]", or the cell's first line when it has not run."""
        if self.count is not None:
            return f"In [{self.count}]"
        first = next((line.strip() for line in self.source.splitlines() if line.strip()), "")
        return f"the cell `{first[:40]}`" if first else "an empty cell"


@dataclass(frozen=True)
class Stale:
    """What a check says about a definition the notebook does not show: the message, and the cell to run again."""

    message: str
    cell: str
    missing: bool = False   # the kernel lacks a name (no older definition was checked)


def stale(name: str, impl: Any) -> Stale | None:
    """A Stale when `impl` (or a definition it uses) is not what the saved notebook defines above the running
    cell; None when they agree or when that cannot be told."""
    try:
        shell = notebook._shell()
        return _stale(shell, name, impl) if shell is not None else None
    except Exception:   # whatever the kernel holds, the check goes on
        return None


def _stale(shell: Any, name: str, impl: Any) -> Stale | None:
    saved = _saved_notebook(shell)
    if saved is None:
        return None
    cells, mtime = saved
    running = _running_count(shell)
    here = _running_cell(shell, cells, running)
    above = cells[:here.index] if here is not None else cells
    for dep, value in [(name, impl), *_uses(shell, impl, exclude=name)]:
        problem = _compare(shell, dep, value, above, cells, mtime, running)
        if problem:
            return problem if dep == name else Stale(f"{name} uses `{dep}`. {problem.message}", problem.cell,
                                                     problem.missing)
    return _unbound_or_rebound(shell, name, impl, above)


def _compare(shell: Any, name: str, value: Any, above: list[Cell], cells: list[Cell], mtime: float,
             running: int | None) -> Stale | None:
    """The message for one name: its kernel definition came from `In [N]`; the notebook defines it in `expected`."""
    count = _origin(shell, value)
    if count is None or count == running:   # not from a cell, or from the running one
        return None
    if count not in notebook.ran_at or notebook.ran_at[count] > mtime:     # the saved file may not show that run yet
        return None
    ran = _text(_history(shell, count))
    expected = next((c for c in reversed(above) if name in notebook.defined_names(c.source)), None)
    if expected is not None and _text(expected.source) == ran:
        return None
    yours = f"The `{name}` in your kernel is the one In [{count}] defined"
    if expected is not None and expected.count == count:
        return Stale(f"{yours}, but that cell has been edited since. Run it again, then this cell.", f"In [{count}]")
    where = next((c for c in cells if c.count == count and _text(c.source) == ran), None)
    if where is None:
        origin = "a cell that is no longer in the notebook (deleted, or changed and not run)"
    elif above and where.index > above[-1].index:
        origin = "a cell below this one"
    else:
        origin = "another cell"
    if expected is None:
        return Stale(f"{yours}, {origin}; graded from the top, the notebook defines no `{name}` before this "
                     f"cell. Put its definition back above, run it, then this cell.", f"the cell defining {name}")
    return Stale(f"{yours}, {origin}, not the one graded: {expected.label()} defines it above this cell. Run "
                 f"{expected.label()} again, then this cell.", expected.label())


def _unbound_or_rebound(shell: Any, name: str, impl: Any, above: list[Cell]) -> Stale | None:
    """A global name `impl` reads whose last binding above is a cell's, while the kernel lacks it (`del attention`)
    or holds for it something no cell defined (`from torch.nn.functional import ... as attention`, since deleted)."""
    used = set().union(*(_names(code) for code in _codes(impl))) if _codes(impl) else set()
    decided: set[str] = set()
    for cell in reversed(above):
        for bound, kind in _bindings(cell.source).items():
            if bound not in used or bound in decided or hasattr(builtins, bound):
                continue
            decided.add(bound)
            if bound not in shell.user_ns:
                return Stale(f"{name} uses `{bound}`, which your kernel does not have (deleted, or its cell not "
                             f"run). Run {cell.label()}, then this cell.", cell.label(), missing=True)
            value = shell.user_ns[bound]
            if kind in ("function", "class") and not _in_the_notebook(shell, value):
                return Stale(f"{name} uses `{bound}`: the one in your kernel is {_what(value)}, not the {kind} "
                             f"{cell.label()} defines. Run {cell.label()} again, then this cell.", cell.label())
    return None


def _bindings(source: str) -> dict[str, str]:
    """The names a cell binds at its top level: "function", "class", or "value" (assignments, imports)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {n: "value" for n in notebook.defined_names(source)}
    bound: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            bound[node.name] = "function"
        elif isinstance(node, ast.ClassDef):
            bound[node.name] = "class"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update({(a.asname or a.name).split(".")[0]: "value" for a in node.names if a.name != "*"})
        else:
            bound.update({n: "value" for n in notebook.defined_names(ast.unparse(node))})
    return bound


def _what(value: Any) -> str:
    """`torch.nn.functional.scaled_dot_product_attention`, or a short description of a value."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return describe(value)


def _uses(shell: Any, impl: Any, exclude: str) -> list[tuple[str, Any]]:
    """The functions and classes of the notebook that `impl` uses, directly or through each other (at most
    MAX_NAMES), with the names they have in the kernel; base classes defined in the notebook count."""
    namespace = shell.user_ns
    seen: dict[str, Any] = {}
    todo = [impl]
    while todo and len(seen) < MAX_NAMES:
        value = todo.pop()
        names = set().union(*(_names(code) for code in _codes(value))) if _codes(value) else set()
        if isinstance(value, type):
            names |= {base.__name__ for base in value.__mro__[1:] if base.__module__ == "__main__"}
        for used in sorted(names):
            target = namespace.get(used)
            if used == exclude or used in seen or not _from_a_cell(shell, target):
                continue
            seen[used] = target
            todo.append(target)
    return list(seen.items())


def _codes(value: Any) -> list[types.CodeType]:
    """The code objects of a function, or of a class's own methods (properties, static and class methods too)."""
    if isinstance(value, type):
        members = []
        for member in vars(value).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                members += [f for f in (member.fget, member.fset, member.fdel) if f is not None]
            else:
                members.append(member)
        return [m.__code__ for m in members if isinstance(m, types.FunctionType)]
    if isinstance(value, types.MethodType):
        value = value.__func__
    value = inspect.unwrap(value) if callable(value) else value   # @functools.wraps decorators, @torch.no_grad()
    return [value.__code__] if isinstance(value, types.FunctionType) else []


def _names(code: types.CodeType) -> set[str]:
    """The global names a code object and the functions nested in it read (not attributes: `self.attention`)."""
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _origin(shell: Any, value: Any) -> int | None:
    """The execution count of the cell that defined `value`: a function's, or the earliest of a class's own
    methods (a method patched in later, `MultiHeadAttention.forward = ...`, comes from a later cell)."""
    filenames = getattr(shell.compile, "_filename_map", {})
    counts = [filenames[code.co_filename] for code in _codes(value) if code.co_filename in filenames]
    return min(counts) if counts else None


def _from_a_cell(shell: Any, value: Any) -> bool:
    return isinstance(value, (type, types.FunctionType)) and _origin(shell, value) is not None


def _in_the_notebook(shell: Any, value: Any) -> bool:
    """Defined by some cell: from a cell's code, or of the notebook's module (a class without methods, a function
    that a decorator wrapped)."""
    return _from_a_cell(shell, inspect.unwrap(value)) or getattr(value, "__module__", None) == "__main__"


def _history(shell: Any, count: int) -> str:
    raw = shell.history_manager.input_hist_raw
    return raw[count] if 0 <= count < len(raw) else ""


def _text(source: str) -> str:
    """A cell's text as compared: trailing spaces and blank lines at either end do not count."""
    return "\n".join(line.rstrip() for line in source.strip().splitlines())


def _running_count(shell: Any) -> int | None:
    """The `In [N]` of the running cell: the outermost frame of the call stack whose code is a cell's (IPython 8
    and 9 count differently while a cell runs)."""
    filenames = getattr(shell.compile, "_filename_map", {})
    frame, count = sys._getframe(), None
    while frame is not None:
        if frame.f_code.co_filename in filenames:
            count = filenames[frame.f_code.co_filename]
        frame = frame.f_back
    return count


def _running_cell(shell: Any, cells: list[Cell], running: int | None) -> Cell | None:
    """The saved cell being run: the last one with the running cell's text (test cells are locked)."""
    text = _text(_history(shell, running)) if running is not None else ""
    return next((c for c in reversed(cells) if _text(c.source) == text), None) if text else None


def _saved_notebook(shell: Any) -> tuple[list[Cell], float] | None:
    """The saved notebook's code cells and the time it was saved; None when there is no readable .ipynb."""
    path = _notebook_path(shell)
    if path is None:
        return None
    stat = os.stat(path)
    if stat.st_size > MAX_NOTEBOOK_BYTES:
        return None
    with open(path, encoding="utf-8") as f:
        nb = json.load(f)
    cells = []
    for cell in nb.get("cells", []) if isinstance(nb, dict) else []:
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            source = cell.get("source", "")
            source = "".join(source) if isinstance(source, list) else str(source)
            count = cell.get("execution_count")
            cells.append(Cell(len(cells), source, count if isinstance(count, int) else None))
    return cells, stat.st_mtime


def _notebook_path(shell: Any) -> str | None:
    """The notebook the kernel runs: ipykernel's ``__session__`` (JupyterLab, Notebook), VS Code's variable, or
    the env; relative paths are tried from the kernel's folder (the notebook's)."""
    namespace = shell.user_ns
    for candidate in (namespace.get("__session__"), namespace.get("__vsc_ipynb_file__"),
                      os.environ.get("JPY_SESSION_NAME")):
        if not isinstance(candidate, str) or not candidate.endswith(".ipynb"):
            continue
        for path in (candidate, os.path.join(os.getcwd(), os.path.basename(candidate))):
            if os.path.isfile(path):
                return path
    return None
