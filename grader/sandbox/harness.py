"""What runs inside the sandbox: the student's cells in order, then each graded item on the grader's cases.

    python -m grader.harness      (started by grader.sandbox; the job arrives on stdin)

The job (a dict written by grader.execution with torch.save) names the graded items still to run, the
code cells to run, the cells to skip (they crashed or hung in an earlier attempt), and the cases for
each item (an item that hung or crashed is no longer among them; cells and items are kept apart, as a
solution cell's id is its item's name). The job is read whole before any student code runs; after
that stdin is empty, so `input()` gets EOF.

Every trip-wire on a forbidden shortcut of the assignment is installed before the first cell runs, so a
reference a cell saves under another name is already the trip-wire. Reports go to the grader on file
descriptor 3 as frames (one byte of kind, four of length, the payload):
  b"S" {"cell": id} / {"item": name}        a step starts (the grader's clock for that step starts)
  b"E" {"cell": id, "error": str | None}    a cell finished
  b"O" torch.save({"item", "outcomes"})      an item's outcomes: plain tensors, numbers, strings, lists
Nothing here is trusted by the grader: it loads outcomes with weights_only=True, checks every type again,
and compares with the reference in its own process.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
import traceback
from typing import Any

import torch

from grader.sandbox.channel import Channel

MAX_TEXT = 2000   # characters of an error message sent back


def plain(value: Any, depth: int = 0) -> Any:
    """`value` as data the grader accepts: exact torch.Tensor (detached, contiguous copy), int, float, bool,
    None, str, lists and tuples of those. Anything else becomes a string that describes it."""
    if type(value) is torch.Tensor:
        return value.detach().clone().contiguous()
    if value is None or type(value) in (int, float, bool, str):
        return value
    if type(value) in (tuple, list) and depth < 4 and len(value) <= 64:
        return type(value)(plain(v, depth + 1) for v in value)
    return f"<{type(value).__module__}.{type(value).__qualname__} object>"


def _strip_magics(source: str) -> str:
    """IPython magics and shell escapes (`%time`, `!pip`) are not Python; they are skipped."""
    return "\n".join("pass  # " + line if line.lstrip().startswith(("%", "!")) else line
                     for line in source.split("\n"))


def _describe_error(err: BaseException, filename: str) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == filename]
    where = f" at line {frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}{where}: {err}"[:MAX_TEXT]


def run_cell(cell: dict, namespace: dict) -> str | None:
    """Execute one cell in the notebook's namespace; the error it raised, as text, or None."""
    filename = f"<cell {cell['id']}>"
    try:
        code = compile(_strip_magics(cell["source"]), filename, "exec")
        exec(code, namespace)  # noqa: S102 -- this is the sandbox's whole purpose
    except BaseException as err:  # SystemExit and KeyboardInterrupt from student code too
        return _describe_error(err, filename)
    return None


def run_item(item: Any, namespace: dict, cases: list, wires: Any) -> list[dict]:
    """Call the student's function or class on every case; outcomes as plain dicts."""
    from grader.checks.run import run_student

    impl = namespace.get(item.name)
    if impl is None:
        return [{"value": None, "error": f"`{item.name}` is not defined when the notebook has run",
                 "mutated": [], "shortcut": None}]
    try:
        outcomes = run_student(item, impl, cases, wires=wires, source="")
    except BaseException as err:  # the student's code broke the runner itself (e.g. patched it)
        return [{"value": None, "error": f"{type(err).__name__}: {err}"[:MAX_TEXT], "mutated": [], "shortcut": None}]
    return [{"value": plain(o.value), "error": None if o.error is None else str(o.error)[:MAX_TEXT],
             "mutated": [str(m) for m in o.mutated][:16], "shortcut": None if o.shortcut is None else str(o.shortcut)}
            for o in outcomes]


class _AnyCell:
    """What the trip-wires watch while the cells run: the names that every item of the assignment forbids.

    No item may use them, so no cell needs them; and a cell that could call one freely could compute the
    reference's answers on the grader's cases (they are in this process's memory) for a function to look
    up when it is graded.
    """

    name = "a cell of this notebook"

    def __init__(self, items: list) -> None:
        from grader.checks import ASSIGNMENTS, ITEMS

        names = ASSIGNMENTS[items[0].assignment] if items else ()
        self.forbidden = set.intersection(*(set(ITEMS[n].forbidden) for n in names)) if names else set()


def main() -> None:
    channel = Channel()
    job = torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False)   # the grader's own data
    sys.stdin = open(os.devnull)

    from grader.checks import ITEMS
    from grader.checks.shortcuts import Tripwires

    items = [ITEMS[name] for name in job["items"]]
    if job.get("import_transformers"):   # so that the transformers library's shortcuts get trip-wires too
        try:
            import transformers  # noqa: F401
        except ImportError:
            pass
    wires = Tripwires(sorted({name for item in items for name in item.forbidden}))
    wires.install()

    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    with wires.watching(_AnyCell(items)):
        for cell in job["cells"]:
            if cell["id"] in job["skip_cells"]:
                continue
            channel.event(b"S", cell=cell["id"])
            channel.event(b"E", cell=cell["id"], error=run_cell(cell, namespace))
    for item in items:
        channel.event(b"S", item=item.name)
        outcomes = run_item(item, namespace, job["cases"][item.name], wires)
        buffer = io.BytesIO()
        torch.save({"item": item.name, "outcomes": outcomes}, buffer)
        channel.send(b"O", buffer.getvalue())
    channel.event(b"E", done=True)


if __name__ == "__main__":
    main()
