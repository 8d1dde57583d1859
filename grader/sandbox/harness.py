"""What runs inside the sandbox: the student's cells in order, then each graded item on the grader's cases.

    python -m grader.harness      (started by grader.sandbox; the job arrives on stdin)

The job (a dict written by grader.execution with torch.save) names the graded items still to run, the
code cells to run, the cells to skip (they crashed or hung in an earlier attempt), whether an item's parts are
substituted (grader.checks.run.run_student: the instructor's --no-substitute turns it off), and the cases for
each item (an item that hung or crashed is no longer among them; cells and items are kept apart, as a
solution cell's id is its item's name). The job is read whole before any student code runs; after
that stdin is empty, so `input()` gets EOF.

Every trip-wire on a forbidden shortcut of the assignment is installed before the first cell runs (and put in
place of every alias a course module bound when it was imported), so a reference a cell saves under another
name is already the trip-wire; the profile hook and the PyTorch modes of grader.checks.shortcuts watch each
item and every cell, and an item during which any of it was changed scores 0. Reports go to the grader on file
descriptor 3 as frames (one byte of kind, four of length, the payload):
  b"S" {"cell": id} / {"item": name}        a step starts (the grader's clock for that step starts)
  b"E" {"cell": id, "error": str | None}    a cell finished
  b"O" wire.encode(item, outcomes)           an item's outcomes (grader.sandbox.wire: JSON + safetensors)
Nothing here is trusted by the grader: it decodes every frame as hostile data (grader.sandbox.wire checks
sizes, counts and types before allocating) and compares with the reference in its own process.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
import traceback
from typing import Any

import torch

from grader.sandbox import wire
from grader.checks.watch import own_code
from grader.sandbox.channel import Channel

MAX_TEXT = 2000   # characters of an error message sent back


def _strip_magics(source: str) -> str:
    """IPython magics and shell escapes (`%time`, `!pip`) are not Python; they are skipped."""
    return "\n".join("pass  # " + line if line.lstrip().startswith(("%", "!")) else line
                     for line in source.split("\n"))


def _describe_error(err: BaseException, filename: str) -> str:
    # without the frames' lines: what linecache read from the course's files would be there for the next cell
    summary = traceback.StackSummary.extract(traceback.walk_tb(err.__traceback__), lookup_lines=False)
    frames = [f for f in summary if f.filename == filename]
    where = f" at line {frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}{where}: {err}"[:MAX_TEXT]


def run_cell(cell: dict, namespace: dict) -> str | None:
    """Execute one cell in the notebook's namespace; the error it raised, as text, or None."""
    filename = f"<cell {cell['id']}>"
    try:
        code = compile(_strip_magics(cell["source"]), filename, "exec")
        own_code(code)   # the functions it defines are the student's own, whatever their text
        exec(code, namespace)  # noqa: S102 -- this is the sandbox's whole purpose
    except BaseException as err:  # SystemExit and KeyboardInterrupt from student code too
        return _describe_error(err, filename)
    return None


def run_item(item: Any, namespace: dict, cases: list, wires: Any, guard: Any = None,
             before: str | None = None, substitute: bool = True) -> list[dict]:
    """Call the student's function or class on every case; outcomes as dicts (grader.sandbox.wire encodes them:
    exact tensors, numbers, short strings, short lists and tuples; anything else is described in a string).
    `before`: the message for what the watch saw before this item (in the cells or between items) that costs it
    its points. `substitute`: the item's parts that the notebook defines run as their references while it runs."""
    from grader.checks.run import run_student

    impl = namespace.get(item.name)
    if impl is None:
        return [{"value": None, "error": f"`{item.name}` is not defined when the notebook has run",
                 "mutated": [], "shortcut": None}]
    try:
        outcomes = run_student(item, impl, cases, wires=wires, source="", strict=True, substitute=substitute)
    except BaseException as err:  # the student's code broke the runner itself (e.g. patched it)
        return [{"value": None, "error": f"{type(err).__name__}: {err}"[:MAX_TEXT], "mutated": [], "shortcut": None}]
    if guard is not None:
        guard.mark(item, outcomes)
    for outcome in outcomes:
        outcome.shortcut = outcome.shortcut or before
    wiring = _wiring(item, impl, cases, outcomes, wires)
    return [{"value": o.value, "error": None if o.error is None else str(o.error)[:MAX_TEXT],
             "mutated": [str(m) for m in o.mutated][:16], "shortcut": None if o.shortcut is None else str(o.shortcut),
             "wiring": w} for o, w in zip(outcomes, wiring)]


def _wiring(item: Any, impl: Any, cases: list, outcomes: list, wires: Any) -> list[str | None]:
    """For a layer built from sublayers (its Item.explain is wiring.explain_layer), each case's record of what
    reached its sublayers, as text (grader.checks.wiring.record_text), so that the host can say how the wiring
    differs when the values do; None where the case raised, took a shortcut, or the record could not be made.
    The student's module runs once more per case, watched for its item's shortcuts; not strictly (the wrappers
    that write the record down are the grader's code, which the student's layer calls here), as nothing of this
    run counts towards the grade: it only words the message."""
    from grader.checks import wiring

    if item.explain is not wiring.explain_layer:
        return [None] * len(outcomes)
    records: list[str | None] = []
    for case, outcome in zip(cases, outcomes):
        text = None
        if outcome.error is None and outcome.shortcut is None:
            try:
                with wires.watching(item, False) as hits:
                    text = wiring.record_text(wiring.observe(item, impl, case, item.reference()))
                text = None if hits else text
            except Exception:   # the student's module, run once more: whatever it does, no record
                text = None
        records.append(text)
    return records


def parts_first(items: list) -> list:
    """`items` in their order, except that each item's parts (Item.builds_on) come before it: while an item runs,
    its stand-ins answer as its parts' references on any input, which must not help a part still to be graded."""
    ordered: list = []

    def add(item: Any) -> None:
        if item not in ordered:
            for part in item.builds_on:
                if part in items:
                    add(part)
            ordered.append(item)
    for item in items:
        add(item)
    return ordered


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
        self.forbidden_ops = set.intersection(*(set(ITEMS[n].forbidden_ops) for n in names)) if names else set()


class _Guard:
    """The grader's own modules and classes as they were before the first cell: after each item, any attribute
    that is no longer the same object (a check, the runner or the trip-wires replaced through some module
    path), or a grader function whose code was replaced, scores that item 0."""

    def __init__(self) -> None:
        self.snapshot = self._take()

    @staticmethod
    def _take() -> dict[tuple[str, str, str], int]:
        taken = {}
        for name, module in list(sys.modules.items()):
            if not (name == "grader" or name.startswith("grader.")) or not hasattr(module, "__dict__"):
                continue
            for attr, value in list(vars(module).items()):
                taken[(name, "", attr)] = id(value)
                if isinstance(value, type) and value.__module__ == name:
                    for member, inner in list(vars(value).items()):
                        taken[(name, value.__qualname__, member)] = id(inner)
        return taken

    def changed(self) -> str | None:
        from grader.checks.watch import grader_code_changed

        now = self._take()
        changed = [".".join(p for p in key if p) for key, value in self.snapshot.items() if now.get(key) != value]
        return (f"{changed[0]} was replaced" if changed else None) or grader_code_changed()

    def mark(self, item: Any, outcomes: list) -> None:
        from grader.checks.run import tampering_message

        what = self.changed()
        if what is not None:
            for outcome in outcomes:
                outcome.shortcut = tampering_message(item, what)


def main() -> None:
    channel = Channel()
    job = torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False)   # the grader's own data
    sys.stdin = open(os.devnull)

    from grader.checks import ITEMS
    from grader.checks.run import tampering_message
    from grader.checks.shortcuts import shortcut_message
    from grader.checks.watch import Tripwires

    items = parts_first([ITEMS[name] for name in job["items"]])
    if job.get("import_transformers"):   # so that the transformers library's shortcuts get trip-wires too
        try:
            import transformers  # noqa: F401
        except ImportError:
            pass
    # Installed after the course's modules are imported (in the zygote, before it forked this process) and before
    # any student code: the trip-wires also replace every alias of a forbidden object that a module bound when it
    # was imported (rebind), and from here on every moment is watched: a cell, an item's case, or what lies
    # between (the base window: what any item forbids).
    wires = Tripwires(sorted({name for item in items for name in item.forbidden}), rebind=True, between=True,
                      ops=sorted({op for item in items for op in item.forbidden_ops})).install()
    guard = _Guard()

    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    cells = _AnyCell(items)
    with wires.watching(cells) as hits:
        for cell in job["cells"]:
            if cell["id"] in job["skip_cells"]:
                continue
            channel.event(b"S", cell=cell["id"])
            channel.event(b"E", cell=cell["id"], error=run_cell(cell, namespace))
    # A shortcut a cell took (it may have answered the grader's cases, which are in this process) costs every item,
    # and so does one taken between items (a finaliser, a signal handler, a patched method the harness calls).
    tampered, shortcut = wires.tampered(), hits[0] if hits else None

    def before(item: Any) -> str | None:
        if tampered or shortcut:
            return tampering_message(item, tampered) if tampered else shortcut_message(cells, shortcut)
        between = wires.between_windows()
        return tampering_message(item, between) if between else None

    for item in items:
        channel.event(b"S", item=item.name)
        outcomes = run_item(item, namespace, job["cases"][item.name], wires, guard, before(item),
                            job.get("substitute", True))
        late = before(item)   # code of the student's that ran while the outcomes were written
        if late and not all(o["shortcut"] for o in outcomes):
            outcomes = [{"value": None, "error": None, "mutated": [], "shortcut": late} for _ in outcomes]
        channel.send(b"O", wire.encode(item.name, outcomes))
    channel.event(b"E", done=True)


if __name__ == "__main__":
    main()
