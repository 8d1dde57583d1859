"""Jupyter state traps: what a test cell says when the function it checks is missing or stale.

Installed (once) when the checks are imported inside IPython; outside IPython nothing happens.
  * a NameError for a graded item ("run the cell that defines `x` first ...") or for torch/nn/math after a
    kernel restart is shown as one line instead of a traceback (an IPython custom exception handler);
  * a post_run_cell hook remembers, for each name a cell defines, whether that cell raised the last time
    it ran without redefining it (a SyntaxError, say): the check then reports that the definition it was
    given is the old one (``stale``) instead of checking it;
  * the same hooks note when each cell started (``ran_at``): grader.checks.state compares a definition with the
    saved notebook only when the file was saved after the cell that made it ran.
"""

from __future__ import annotations

import ast
import re
import sys
import time
from typing import Any

IMPORTED = frozenset({"torch", "nn", "F", "math", "np", "numpy"})
_DEFINES = re.compile(r"^(?:async\s+def|def|class)\s+([A-Za-z_]\w*)|^([A-Za-z_]\w*)\s*(?::[^=]*)?=(?!=)", re.M)
_raised: dict[str, str] = {}        # name -> exception type name of the last run of the cell defining it
_before: dict[str, int] = {}        # name -> id() of its value before the running cell
ran_at: dict[int, float] = {}       # execution count -> when that cell started (grader.checks.state reads it)
_started: list[float | None] = [None]   # when the running cell started (None: before the hooks were installed)


def _shell() -> Any:
    """The running IPython shell, or None; never imports IPython (the grading sandbox must not)."""
    ipython = sys.modules.get("IPython")
    return ipython.get_ipython() if ipython is not None else None


def install() -> None:
    """Install the hooks in the running IPython shell, once; a no-op outside IPython."""
    shell = _shell()
    if shell is None or getattr(shell, "_course_checks_hooks", False):
        return
    shell._course_checks_hooks = True
    shell.events.register("pre_run_cell", _pre_run_cell)
    shell.events.register("post_run_cell", _post_run_cell)
    if not shell.custom_exceptions:   # never replace someone else's handler
        shell.set_custom_exc((NameError,), _name_error)


def defined_names(source: str) -> list[str]:
    """Top-level names a cell defines (def, class, assignment); found by regex when it does not parse."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return [a or b for a, b in _DEFINES.findall(source)]
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def _pre_run_cell(info: Any) -> None:
    shell = _shell()
    _before.clear()
    if shell is not None:
        _started[0] = time.time()
        _before.update({n: id(shell.user_ns.get(n)) for n in defined_names(getattr(info, "raw_cell", "") or "")})


def _post_run_cell(result: Any) -> None:
    shell = _shell()
    if shell is None:
        return
    if isinstance(getattr(result, "execution_count", None), int) and _started[0] is not None:
        ran_at[result.execution_count] = _started[0]
    error = result.error_before_exec or result.error_in_exec
    for name, before in _before.items():
        if error is not None and id(shell.user_ns.get(name)) == before:   # not redefined: the old one stays
            _raised[name] = type(error).__name__
        else:
            _raised.pop(name, None)


def stale(name: str, impl: Any) -> str | None:
    """A message when `impl` is the old value of `name`, kept because its cell raised when last run."""
    shell = _shell()
    if shell is None or name not in _raised or shell.user_ns.get(name) is not impl:
        return None
    return (f"The cell that defines `{name}` raised {_raised[name]} the last time you ran it, so `{name}` "
            f"is still the older definition. Fix that cell and run it again, then this one.")


def missing(name: str | None) -> str | None:
    """What to tell a student whose test cell hit NameError for `name` (None: an ordinary NameError)."""
    from grader.checks import ITEMS
    if name in ITEMS:
        if name in _raised:
            return (f"`{name}` is not defined: the cell that defines it raised {_raised[name]} the last time "
                    f"you ran it. Fix that cell and run it again, then this one.")
        return (f"`{name}` is not defined: run the cell that defines `{name}` first (and the imports cell "
                f"after a kernel restart).")
    if name in IMPORTED or (name or "").startswith("check_"):
        return (f"`{name}` is not defined: the kernel has forgotten the imports (was it restarted?). "
                f"Run the notebook from the top: the imports cell first, then your cells.")
    return None


def _name_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
    message = missing(getattr(value, "name", None))
    if message is None:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)
    else:
        from grader.checks.results import wrap
        shell._showtraceback(etype, value, [wrap(f"NameError: {message}")])
