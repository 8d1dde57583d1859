"""Run one notebook's code in the sandbox and bring back, as checked data, what each graded item returned.

`execute(cells, items, cases, limits)` starts the harness (grader.sandbox.harness) in a sandbox, reads its
frames, and enforces the wall clock of every step (a cell, or one item on all its cases) and of the
whole notebook. When the sandbox dies or a step hangs, the sandbox is killed and started again with
that step skipped: a crash in item k's cell costs item k (and whatever needs what that cell defines),
never the items before it. What comes back is untrusted: every frame is decoded by grader.sandbox.wire
(JSON and safetensors, sizes and counts checked before anything is allocated), and every value is a plain
torch.Tensor (exact type), a number, a short string, None, or a short list or tuple of those.
"""

from __future__ import annotations

import io
import signal
import time
from dataclasses import dataclass, field

import torch

from grader.sandbox import forkserver, wire
from grader.sandbox.channel import Reader
from grader.sandbox.limits import Limits
from grader.checks.run import Outcome
from grader.submission import Cell

@dataclass
class Execution:
    """outcomes: item -> its outcomes (one per case); failures: item -> why it has none;
    cell_errors: cell id -> what the cell raised, or why it was stopped; stopped: the cells the grader
    stopped (they hung, killed their process, or wrote to the grader's channel) and skipped after."""

    outcomes: dict[str, list[Outcome]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    cell_errors: dict[str, str] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)
    attempts: int = 0


class _Stop(Exception):
    """The sandbox has to be stopped: `reason` says why, `step` is what was running ((kind, id) or None)."""

    def __init__(self, reason: str, step: tuple[str, str] | None) -> None:
        super().__init__(reason)
        self.reason, self.step = reason, step


# ----------------------------------------------------------------------------- checking what came back
def load_outcomes(payload: bytes, item: str, n_cases: int) -> list[Outcome]:
    """The outcomes of `item` from an O frame (grader.sandbox.wire: checked against its limits before anything
    is allocated); ValueError, with the reason, when they are not exactly what the grader accepts."""
    outcomes = [Outcome(**data) for data in wire.decode(payload, item)]
    if len(outcomes) == 1 and outcomes[0].error is not None and n_cases != 1:
        outcomes = outcomes * n_cases                      # "not defined": the same error for every case
    if len(outcomes) != n_cases:
        raise ValueError(f"{len(outcomes)} outcomes for {n_cases} cases")
    return outcomes


# ----------------------------------------------------------------------------- why a sandbox ended
def _exit_reason(code: int | None, limits: Limits, over_memory: bool = False) -> str:
    """Why the sandbox ended; `over_memory`: its cgroup says the kernel killed for memory (whatever the code)."""
    if over_memory:
        return (f"the process was killed: over the memory limit of {limits.describe_memory()} (the notebook's "
                f"memory, its files in /tmp and shared memory count)")
    if code is None:
        return "the notebook's process stopped answering"
    signum = -code if code < 0 else code - 128 if code > 128 else 0
    if signum == signal.SIGXCPU:
        return f"the CPU time limit of {limits.cpu_seconds} s was exceeded"
    if signum == signal.SIGKILL:
        return f"the process was killed (over the memory limit of {limits.describe_memory()}, or killed by itself)"
    if signum:
        return f"the process crashed ({signal.Signals(signum).name})"
    return f"the process exited with status {code} (os._exit, sys.exit in a thread, or a crash)"


def memory_note(text: str, limits: Limits) -> str:
    """`text`, with the memory limit named when it tells of running out of memory."""
    if "memory limit of" in text:   # noted already (a cell's error, then the item's message that quotes it)
        return text
    if "MemoryError" in text or "can't allocate memory" in text or "not enough memory" in text:
        return f"{text}\n(The memory limit of {limits.describe_memory()} was exceeded.)"
    return text


# ----------------------------------------------------------------------------- the loop
def execute(cells: list[Cell], items: list[str], cases: dict[str, list], limits: Limits,
            isolate: bool = True, import_transformers: bool = False, substitute: bool = True) -> Execution:
    """Run `cells` and then every item in `items` on its `cases`, restarting past crashes and hangs; with
    `substitute`, an item's parts run as their references while it is graded (grader.checks.run.run_student)."""
    result = Execution()
    skip: set[str] = set()
    deadline = time.monotonic() + limits.submission_seconds
    while True:
        remaining = [name for name in items if name not in result.outcomes and name not in result.failures]
        if not remaining:
            return result
        if time.monotonic() >= deadline:
            for name in remaining:
                result.failures[name] = f"the notebook used up its {limits.submission_seconds:g} s"
            return result
        result.attempts += 1
        job = {"items": remaining, "cells": [{"id": c.id, "source": c.source} for c in cells],
               "skip_cells": sorted(skip), "cases": {name: cases[name] for name in remaining},
               "import_transformers": import_transformers, "substitute": substitute}
        buffer = io.BytesIO()
        torch.save(job, buffer)
        try:
            process = forkserver.shared(limits, isolate).start(buffer.getvalue())
        except forkserver.ZygoteDied as err:
            for name in remaining:
                result.failures.setdefault(name, str(err))
            return result
        try:
            _attempt(process, result, cases, limits, deadline)
            for name in remaining:             # the harness finished normally; "done" came from the notebook?
                if name not in result.outcomes:
                    result.failures.setdefault(name, "the notebook's code wrote to the grader's channel")
            return result
        except _Stop as stop:
            process.kill()
            reason = stop.reason
            if stop.step is None:               # before the first step: nothing to skip
                for name in remaining:
                    if name not in result.outcomes:
                        result.failures.setdefault(name, reason)
                return result
            kind, step_id = stop.step
            if kind == "cell":
                result.cell_errors.setdefault(step_id, reason)
                result.stopped.add(step_id)
                skip.add(step_id)
            else:                               # the first reason stays (a refused frame, then the channel)
                result.failures.setdefault(step_id, reason)
        finally:
            process.kill()


def _attempt(process: forkserver.Run, result: Execution, cases: dict[str, list], limits: Limits,
             deadline: float) -> None:
    """Read one sandbox's frames to its end; raise _Stop when it has to be killed or died. Between steps the
    last step is blamed: what arrives then was written by code that step started (a cell's thread, or an item
    that forged a frame before its own), so that step is skipped and the rest graded in a new sandbox."""
    reader = Reader(process.channel)
    step: tuple[str, str] | None = None
    last: tuple[str, str] | None = None
    step_deadline = deadline
    while True:
        try:
            frame = reader.frame(min(step_deadline, deadline))
        except TimeoutError:
            what = f"`{step[1]}`" if step else "the notebook"
            if time.monotonic() >= deadline:
                raise _Stop(f"{what} was stopped: the notebook used up its {limits.submission_seconds:g} s", step)
            raise _Stop(f"{what} was stopped after {limits.cell_seconds:g} s (an endless loop, a long sleep, "
                        f"or input() waiting for a keyboard)", step)
        except ValueError as err:
            raise _Stop(f"{'`' + step[1] + '`' if step else 'the notebook'} produced {err}", step)
        if frame is None:
            code = process.wait(timeout=5)
            what = f"while running `{step[1]}`" if step else "outside any cell"
            raise _Stop(f"the kernel died {what}: {_exit_reason(code, limits, process.over_memory())}", step or last)
        kind, payload = frame
        if kind == b"O":
            if step is None or step[0] != "item":
                raise _Stop("the notebook's code wrote to the grader's channel", step or last)
            name = step[1]
            try:
                result.outcomes[name] = load_outcomes(payload, name, len(cases[name]))
            except ValueError as err:
                result.failures[name] = f"`{name}` returned something the grader cannot accept: {err}"
            step, last, step_deadline = None, step, deadline
            continue
        try:
            event = wire.decode_event(payload)
        except ValueError:
            event = None
        # The harness opens a step only when none is open, ends only the open cell, and says "done" between
        # steps; any other event was written by the notebook's code (it shares the harness's process).
        if not isinstance(event, dict):
            raise _Stop("the notebook's code wrote to the grader's channel", step or last)
        opened = (("cell", event["cell"]) if isinstance(event.get("cell"), str) else
                  ("item", event["item"]) if isinstance(event.get("item"), str) and event["item"] in cases else None)
        if kind == b"S" and step is None and opened is not None:
            step = opened
            step_deadline = time.monotonic() + limits.cell_seconds
        elif kind == b"E" and step is None and event.get("done"):
            return
        elif kind == b"E" and step is not None and step[0] == "cell" and event.get("cell") == step[1]:
            if event.get("error"):
                result.cell_errors[step[1]] = memory_note(str(event["error"]), limits)
            step, last, step_deadline = None, step, deadline
        else:
            raise _Stop("the notebook's code wrote to the grader's channel", step or last)
