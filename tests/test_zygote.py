"""The warm sandbox (grader.sandbox.forkserver and .zygote): one zygote per worker, one forked child per run.

Each run here is the harness on cells only (no graded items); a cell reports what it saw by raising,
since a cell's error is what the harness sends back. What must hold: a run sees nothing of the run
before it, cannot start processes, cannot read the zygote's memory, and a run that kills the zygote,
hangs or crashes costs only itself.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import time

import pytest
import torch

from grader.sandbox import forkserver
from grader.sandbox.channel import Reader
from test_containment import mount_points
from grader.sandbox.limits import Limits

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("zygote")]

LIMITS = Limits(cell_seconds=30.0, submission_seconds=60.0)


def _job(sources: list[str]) -> bytes:
    buffer = io.BytesIO()
    torch.save({"items": [], "cells": [{"id": f"c{k}", "source": "import os\n" + s} for k, s in enumerate(sources)],
                "skip_cells": [], "cases": {}, "import_transformers": False}, buffer)
    return buffer.getvalue()


def run_cells(server: forkserver.ForkServer, sources: list[str], seconds: float = 60.0) -> dict[str, str | None]:
    """cell id -> the error it raised (None: it ran), after the run has ended."""
    run = server.start(_job(sources))
    errors: dict[str, str | None] = {}
    reader = Reader(run.channel)
    deadline = time.monotonic() + seconds
    try:
        while (frame := reader.frame(deadline)) is not None:
            kind, payload = frame
            event = json.loads(payload)
            if kind == b"E" and "cell" in event:
                errors[event["cell"]] = event["error"]
            if event.get("done"):
                break
        run.wait(10)
    finally:
        run.kill()
    return errors


@pytest.fixture(scope="module")
def server():
    server = forkserver.ForkServer(LIMITS, isolate=True)
    yield server
    server.stop()


def _report(expression: str) -> str:
    return f"raise RuntimeError(repr({expression}))"


def test_a_run_sees_nothing_of_the_run_before(server):
    leave = ("open('/tmp/left', 'w').write('x'); open('left-in-scratch', 'w').write('x')\n"
             "os.makedirs('/tmp/locked/deep'); os.chmod('/tmp/locked', 0); os.chmod('/tmp', 0o500)\n"
             "open('/dev/shm/left', 'w').write('x')\n"
             "import ctypes; libc = ctypes.CDLL(None); assert libc.semget(0, 1, 0o1000 | 0o600) >= 0\n"
             "assert libc.shmget(0, 4096, 0o1000 | 0o600) == -1   # denied by the filter (grader.sandbox.seccomp)")
    assert run_cells(server, [leave]) == {"c0": None}
    seen = run_cells(server, [_report("(sorted(os.listdir('/tmp')), sorted(os.listdir('.')), os.listdir('/dev/shm'), "
                                      "open('/proc/sysvipc/sem').read().count('\\n'), os.access('/tmp', os.W_OK))")])
    assert seen["c0"].endswith(f"({mount_points('/tmp')}, [], [], 1, True)"), seen


def test_a_run_cannot_start_processes_or_read_the_zygote(server):
    errors = run_cells(server, ["os.fork()", "import subprocess; subprocess.run(['true'])",
                                "open(f'/proc/{os.getppid()}/mem', 'rb').read(1)", _report("os.getppid()")])
    assert errors["c0"].startswith("PermissionError"), errors
    assert errors["c1"].startswith("PermissionError"), errors
    assert errors["c2"].startswith("PermissionError"), errors


def test_a_run_that_kills_the_zygote_costs_only_itself(server):
    run_cells(server, ["import signal, time; os.kill(os.getppid(), signal.SIGKILL); time.sleep(1)  # 918274"])
    assert "918274" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert run_cells(server, ["x = 1"]) == {"c0": None}   # a new zygote took over


def test_a_hanging_run_is_killed_and_leaves_no_process(server):
    run = server.start(_job(["import time\nwhile True: time.sleep(0.01)  # 918273"]))
    time.sleep(2)
    run.kill()
    assert "918273" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert run_cells(server, ["x = 1"]) == {"c0": None}


def test_no_sandbox_mode_keeps_to_a_folder_of_its_own(tmp_path):
    plain = forkserver.ForkServer(LIMITS, isolate=False)
    try:
        errors = run_cells(plain, [_report("os.getcwd()")])
        assert "grader-zygote-" in errors["c0"], errors
        assert os.path.isdir("/tmp")   # the host's /tmp is never emptied
    finally:
        plain.stop()
