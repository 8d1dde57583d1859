"""`python -m grader grade` against a class of adversarial and broken submissions of 03_attention.

Each student below is one attack or one way of breaking a notebook, built from the instructor's solution
(solutions/03_attention) by editing solution cells (or the file itself). The whole class is graded once,
in one `python -m grader grade` run with 2 workers and short limits, and each test reads the outcome:
the exact points of every item (from the gradebook), the reason the student is given (feedback page or
grades.csv), and, for attempts to reach outside the sandbox, that nothing happened on this machine
(no file written, no connection to a server this test runs, no process left behind).

Items: dot_product_attention 3 points, scaled_dot_product_attention 5, self_attention 4 (which calls
scaled_dot_product_attention: graded with the reference in its place, it falls with it only when the student's
is missing or the whole notebook is lost). SMALL_CLASS is graded twice more (1 worker,
2 workers) for the same grades each time.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_sandbox_attacks.py
"""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from filelock import FileLock

import transformer_ref
from grader.feedback import html_text

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sandbox_attacks")]

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "03_attention"
SOURCE = ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
ITEMS = ("dot_product_attention", "scaled_dot_product_attention", "self_attention")
POINTS = {"dot_product_attention": 3.0, "scaled_dot_product_attention": 5.0, "self_attention": 4.0}
MAX_SCORE = sum(POINTS.values())
TIMEOUT, SUBMISSION_TIMEOUT, MEMORY_GIB, SEED = 10, 60, 2, 20240611
SLEEP_MARKERS = ("987654", "987655", "987656")   # `sleep <marker>`: what a process left behind would show in ps


@dataclass(frozen=True)
class Context:
    """What an attack may know (or guess) about the grading machine."""

    submissions: Path     # the SUBMISSIONS directory given to the grader
    out: Path             # the grader's OUT directory
    token: str            # a unique name for files an attack tries to write on the host
    port: int             # a TCP server on 127.0.0.1 run by this test


# ------------------------------------------------------------------------------------------------
# Building submissions
# ------------------------------------------------------------------------------------------------

def solution() -> nbformat.NotebookNode:
    return nbformat.read(SOURCE, as_version=4)


def cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def edited(item: str, before: str = "", after: str = "", source: str | None = None) -> Callable:
    """A builder: the solution with code put before/after the solution cell of `item` (or replacing it)."""
    def build(ctx: Context) -> nbformat.NotebookNode:
        nb = solution()
        c = cell(nb, item)
        text = c.source if source is None else _fill(source, ctx)
        c.source = (_fill(before, ctx) + "\n" if before else "") + text + ("\n" + _fill(after, ctx) if after else "")
        return nb
    return build


def with_cell(code: str) -> Callable:
    """A builder: the solution with one more code cell of the student's, right after the imports cell."""
    def build(ctx: Context) -> nbformat.NotebookNode:
        nb = solution()
        at = nb.cells.index(cell(nb, "imports")) + 1
        nb.cells.insert(at, nbformat.v4.new_code_cell(_fill(code, ctx)))
        return nb
    return build


def _fill(code: str, ctx: Context) -> str:
    """Put what the attack knows into its code (`{SOLUTION}`, `{SUBMISSIONS}`, ...)."""
    for key, value in {"SOLUTION": SOURCE, "SUBMISSIONS": ctx.submissions, "OUT": ctx.out, "TOKEN": ctx.token,
                       "PORT": ctx.port, "PACKAGE": Path(transformer_ref.__file__).parent, "HOME": Path.home(),
                       "REPO": ROOT}.items():
        code = code.replace("{" + key + "}", str(value))
    return code


def modified(change: Callable[[nbformat.NotebookNode], None]) -> Callable:
    def build(ctx: Context) -> nbformat.NotebookNode:
        nb = solution()
        change(nb)
        return nb
    return build


def raw(text: str | bytes) -> Callable:
    return lambda ctx: text


def _tests(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def _duplicate_test(nb):
    test = _tests(nb)[0]
    twin = copy.deepcopy(test)
    twin.id = "a-copy-of-the-test"   # Jupyter gives a copied cell an id of its own
    nb.cells.insert(nb.cells.index(test) + 1, twin)


def _rename_test(nb):
    _tests(nb)[1].metadata.nbgrader.grade_id = "my_own_test"


def _test_as_solution(nb):
    _tests(nb)[1].metadata.nbgrader.solution = True


def _change_points(nb):
    for test in _tests(nb):
        test.metadata.nbgrader.points = 1000


def _delete_test(nb):
    test = _tests(nb)[1]
    nb.cells.remove(test)


def _test_to_pass(nb):
    for test in _tests(nb):
        test.source = "pass"


def _v3(ctx: Context) -> str:
    return nbformat.writes(nbformat.convert(solution(), 3), version=3)


def _null_byte(ctx: Context) -> str:
    nb = solution()
    cell(nb, "dot_product_attention").source += "\n# a stray \x00 byte"
    return nbformat.writes(nb)


# ---- the code of the attacks

# Scaled dot-product attention without the 1/sqrt(d_k): wrong on every group of cases.
UNSCALED = '''def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights'''

# Copies the solution cell of scaled_dot_product_attention out of a notebook found on disk, as a module.
STEAL = '''import glob, json, sys, tempfile
from pathlib import Path

def _steal(paths):
    for path in paths:
        if Path(path).is_file():
            for c in json.loads(Path(path).read_text())["cells"]:
                if c["metadata"].get("nbgrader", {}).get("grade_id") == "scaled_dot_product_attention":
                    return "".join(c["source"])
    raise FileNotFoundError(f"no notebook to copy from among {paths}")

_where = tempfile.mkdtemp()
Path(_where, "stolen.py").write_text("import math\\nimport torch\\n" + _steal(GUESSES))
sys.path.insert(0, _where)
from stolen import scaled_dot_product_attention'''
STEAL_SOLUTION = STEAL.replace("GUESSES", '["{SOLUTION}", "{REPO}/solutions/03_attention/03_attention.ipynb"]')
STEAL_CLASSMATE = STEAL.replace(
    "GUESSES", '["{SUBMISSIONS}/correct/03_attention/03_attention.ipynb", '
               '*sorted(glob.glob("{SUBMISSIONS}/*/03_attention/*.ipynb"))]')

# Zeros in a Tensor subclass that says it equals anything.
AGREEABLE = '''class Agreeable(torch.Tensor):
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.allclose, torch.equal, torch.eq, torch.isclose, torch.Tensor.eq, torch.Tensor.__eq__,
                    torch.Tensor.allclose, torch.Tensor.equal, torch.Tensor.isclose):
            return True
        return super().__torch_function__(func, types, args, kwargs or {})

def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    return (torch.zeros(*scores.shape[:-1], v.size(-1), dtype=v.dtype).as_subclass(Agreeable),
            torch.zeros_like(scores).as_subclass(Agreeable))'''

# 12 GiB, 1 GiB at a time (the limit is 2 GiB of address space).
HOG = '''_blocks = []
for _ in range(12):
    _blocks.append(torch.ones(2 ** 28))  # 1 GiB'''
HOG_IN_FUNCTION = '''def self_attention(x, W_q, W_k, W_v, mask=None):
    blocks = [bytearray(2 ** 32) for _ in range(3)]  # 12 GiB, 4 GiB at a time: each case fails at once
    return scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, mask)'''

NOISY = '''import sys, warnings
warnings.warn("a warning at definition time")
print("to stderr at definition time", file=sys.stderr)
_sdpa = scaled_dot_product_attention

def scaled_dot_product_attention(q, k, v, mask=None):
    warnings.warn("a warning on every call")
    print("to stderr on every call", file=sys.stderr)
    return _sdpa(q, k, v, mask)'''

PATCH_ASSERT_CLOSE = '''import torch.testing
torch.testing.assert_close = lambda *args, **kwargs: None'''
PATCH_ALLCLOSE = '''torch.allclose = lambda *args, **kwargs: True
torch.equal = lambda *args, **kwargs: True
torch.Tensor.allclose = lambda *args, **kwargs: True'''
PATCH_NUMPY = '''import numpy, numpy.testing
numpy.testing.assert_allclose = lambda *args, **kwargs: None
numpy.testing.assert_array_equal = lambda *args, **kwargs: None
numpy.allclose = lambda *args, **kwargs: True'''
REBIND_CHECKS = '''check_dot_product_attention = lambda *a, **k: None
check_scaled_dot_product_attention = lambda *a, **k: None
check_self_attention = lambda *a, **k: None'''
PATCH_GRADER = '''import grader.checks.attention, grader.checks.compare
grader.checks.attention.check_scaled_dot_product_attention = lambda *a, **k: None
grader.checks.compare.grade = lambda *a, **k: None
grader.checks.compare.compare = lambda *a, **k: None'''

SELF_VIA_F = '''import torch.nn.functional as F

def self_attention(x, W_q, W_k, W_v, mask=None):
    q, k, v = x @ W_q, x @ W_k, x @ W_v
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), weights'''
SELF_VIA_REF = '''import transformer_ref.attention

def self_attention(x, W_q, W_k, W_v, mask=None):
    return transformer_ref.attention.self_attention(x, W_q, W_k, W_v, mask)'''
SELF_VIA_IMPORTLIB = '''import importlib

def self_attention(x, W_q, W_k, W_v, mask=None):
    return importlib.import_module("transformer_ref.attention").self_attention(x, W_q, W_k, W_v, mask)'''
SELF_VIA_SYS_MODULES = '''import sys
import transformer_ref.attention

def self_attention(x, W_q, W_k, W_v, mask=None):
    return sys.modules["transformer_ref.attention"].self_attention(x, W_q, W_k, W_v, mask)'''
HELPER_CALLS_REF = '''import transformer_ref.attention as ta

def helper(*args):
    return ta.self_attention(*args)'''
SELF_VIA_HELPER = '''def self_attention(x, W_q, W_k, W_v, mask=None):
    return helper(x, W_q, W_k, W_v, mask)'''

SELF_VIA_CHECKS = '''from grader.checks.attention import attend

def self_attention(x, W_q, W_k, W_v, mask=None):
    return attend(x @ W_q, x @ W_k, x @ W_v, mask)'''
# The reference behind its trip-wire, taken in a cell of the student's own, called from the solution cell.
UNWRAP_REFERENCE = '''import inspect
import transformer_ref.attention as ta
reference = inspect.unwrap(ta.scaled_dot_product_attention)'''
RECHECK = '''from grader.checks.attention import check_scaled_dot_product_attention
check_scaled_dot_product_attention(scaled_dot_product_attention, seeds=(5,))'''
# The reference saved under another name in a cell of the student's own: what it saved is the trip-wire.
SAVE_REFERENCE = '''import transformer_ref.attention as ta
reference = ta.scaled_dot_product_attention'''
SDPA_VIA_UNWRAPPED = '''def scaled_dot_product_attention(q, k, v, mask=None):
    return reference(q, k, v, mask)'''
# While the cells run no item is being graded, so the reference answers freely: on the grader's own cases,
# found in the harness's memory.
PRECOMPUTE = '''import gc
import transformer_ref.attention as ta
answers = []
for job in [o for o in gc.get_objects() if type(o) is dict and "cases" in o and "cells" in o]:
    for case in job["cases"].get("self_attention", []):
        answers.append((case.args, case.kwargs, ta.self_attention(*case.args, **case.kwargs)))'''
SELF_LOOKS_UP = '''def self_attention(*args, **kwargs):
    for a, k, answer in answers:
        if len(a) == len(args) and all(torch.equal(u, w) for u, w in zip(a, args)) and k.keys() == kwargs.keys():
            return answer
    raise ValueError("no answer stored")'''
# A cell that tells the grader the notebook is done.
FORGE_DONE = '''import json, os, struct
payload = json.dumps({"done": True}).encode()
os.write(3, b"E" + struct.pack(">I", len(payload)) + payload)'''

WRITES = '''import os
from pathlib import Path
for _folder in ["{PACKAGE}", "{PACKAGE}/..", "{HOME}", "/tmp", "{OUT}", "{OUT}/feedback", "{SUBMISSIONS}",
                "{REPO}", os.path.expanduser("~")]:
    try:
        Path(_folder, "{TOKEN}").write_text("escaped")
    except OSError:
        pass'''
CONNECT = '''import socket
try:
    socket.create_connection(("127.0.0.1", {PORT}), timeout=3).sendall(b"escaped")
except OSError:
    pass'''
SPAWN = '''import os, subprocess
try:
    subprocess.Popen(["sleep", "987654"], start_new_session=True)
except OSError:
    pass
try:
    os.posix_spawnp("sleep", ["sleep", "987655"], dict(os.environ))
except OSError:
    pass
try:
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "987656"])
except OSError:
    pass'''


# ------------------------------------------------------------------------------------------------
# The class, with what each student must get
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Expect:
    """scores: dot_product_attention, scaled_dot_product_attention, self_attention.
    feedback / reason: texts that must appear on the feedback page / in grades.csv's reason column."""

    scores: tuple[float, float, float]
    feedback: tuple[str, ...] = ()
    reason: tuple[str, ...] = ()
    status: str = "graded"


FULL = (3.0, 5.0, 4.0)
NONE = (0.0, 0.0, 0.0)
BUT_FIRST = (0.0, 5.0, 4.0)      # the first item's cell broke; the others are graded as usual
ONLY_FIRST = (3.0, 0.0, 0.0)     # the second item's cell broke (nothing defined), and the third that calls it
BUT_LAST = (3.0, 5.0, 0.0)
STOPPED = f"was stopped after {TIMEOUT} s"
WRONG = (3.0, 0.0, 4.0)          # scaled_dot_product_attention wrong (self_attention is graded with the reference)
NOT_DEFINED = "`scaled_dot_product_attention` is not defined"
SHORTCUT = "this item scores 0 while that call is there"
EVADES = "which can reach code around the course's check"

CLASS: dict[str, tuple[Callable, Expect]] = {
    "correct": (modified(lambda nb: None), Expect(FULL)),
    # ---- code or answers from elsewhere on the disk
    "steal_solution": (edited("scaled_dot_product_attention", source=STEAL_SOLUTION),
                       Expect(ONLY_FIRST, ("FileNotFoundError", NOT_DEFINED))),
    "steal_classmate": (edited("scaled_dot_product_attention", source=STEAL_CLASSMATE),
                        Expect(ONLY_FIRST, ("FileNotFoundError", NOT_DEFINED))),
    # ---- results that lie about themselves
    "tensor_subclass": (edited("scaled_dot_product_attention", source=AGREEABLE),
                        Expect(WRONG, ("scaled_dot_product_attention is not right yet", "self_attention was graded "
                                       "with the reference scaled_dot_product_attention in place of yours"))),
    # ---- the kernel dies
    "os_exit": (edited("scaled_dot_product_attention", after="import os\nos._exit(1)"),
                Expect(ONLY_FIRST, ("the kernel died while running `scaled_dot_product_attention`",
                                    "exited with status 1"),
                       ("the kernel died while running `scaled_dot_product_attention`",))),
    # a real SIGSEGV, without ctypes
    "segfault": (edited("scaled_dot_product_attention", after="import faulthandler\nfaulthandler._sigsegv()"),
                 Expect(ONLY_FIRST, ("the kernel died while running `scaled_dot_product_attention`", "SIGSEGV"),
                        ("the kernel died while running `scaled_dot_product_attention`",))),
    # ctypes is one of the ways around the shortcut checks: every item scores 0, whatever it does next
    "segfault_ctypes": (edited("scaled_dot_product_attention", after="import ctypes\nctypes.string_at(0)"),
                        Expect(NONE, ("uses ctypes", EVADES))),
    # ---- memory
    "memory_in_cell": (edited("dot_product_attention", before=HOG),
                       Expect(BUT_FIRST, ("memory limit of 2 GiB",))),
    "memory_in_function": (edited("self_attention", source=HOG_IN_FUNCTION),
                           Expect(BUT_LAST, ("memory limit of 2 GiB",))),
    # ---- noise is not an error
    "warnings_and_stderr": (edited("scaled_dot_product_attention", after=NOISY), Expect(FULL)),
    # a student who runs a check again in code of their own (copied from a test cell) loses nothing
    "check_run_again": (edited("scaled_dot_product_attention", after=RECHECK), Expect(FULL)),
    # ---- test cells and grading metadata are the instructor's, whatever the submission says
    "test_duplicated": (modified(_duplicate_test), Expect(FULL)),
    "test_renamed": (modified(_rename_test), Expect(FULL)),
    "test_marked_solution": (modified(_test_as_solution), Expect(FULL)),
    "test_points_changed": (modified(_change_points), Expect(FULL)),
    "test_deleted": (modified(_delete_test), Expect(FULL)),
    "test_pass": (modified(_test_to_pass), Expect(FULL)),
    # ---- a wrong answer with the checks disabled inside the notebook: the comparison is made outside
    "wrong": (edited("scaled_dot_product_attention", source=UNSCALED),
              Expect(WRONG, ("without dividing by sqrt(d_k)",))),
    "wrong_patch_assert_close": (edited("scaled_dot_product_attention", before=PATCH_ASSERT_CLOSE, source=UNSCALED),
                                 Expect(WRONG, ("without dividing by sqrt(d_k)",))),
    "wrong_patch_allclose": (edited("scaled_dot_product_attention", before=PATCH_ALLCLOSE, source=UNSCALED),
                             Expect(WRONG, ("without dividing by sqrt(d_k)",))),
    "wrong_patch_numpy": (edited("scaled_dot_product_attention", before=PATCH_NUMPY, source=UNSCALED),
                          Expect(WRONG, ("without dividing by sqrt(d_k)",))),
    "wrong_rebind_checks": (edited("scaled_dot_product_attention", before=REBIND_CHECKS, source=UNSCALED),
                            Expect(WRONG, ("without dividing by sqrt(d_k)",))),
    # patching the course's checking code in the sandbox changes nothing outside it, and importing it is a way
    # around the checks (it holds correct implementations): every item scores 0
    "patch_grader": (edited("scaled_dot_product_attention", before=PATCH_GRADER, source=UNSCALED),
                           Expect(NONE, ("uses grader", EVADES))),
    # ---- shortcuts
    "shortcut_torch": (edited("self_attention", source=SELF_VIA_F),
                       Expect(BUT_LAST, ("torch.nn.functional.scaled_dot_product_attention", SHORTCUT))),
    "shortcut_reference": (edited("self_attention", source=SELF_VIA_REF),
                           Expect(BUT_LAST, ("transformer_ref.attention.self_attention", SHORTCUT))),
    "shortcut_helper": (lambda ctx: _with_cell_and("self_attention", HELPER_CALLS_REF, SELF_VIA_HELPER, ctx),
                        Expect(BUT_LAST, ("transformer_ref.attention.self_attention", SHORTCUT))),
    # ways around the checks (reaching into live objects, the course's own checking code): every item scores 0
    "shortcut_precomputed": (lambda ctx: _with_cell_and("self_attention", PRECOMPUTE, SELF_LOOKS_UP, ctx),
                             Expect(NONE, ("uses gc", EVADES))),
    "shortcut_checks_code": (edited("self_attention", source=SELF_VIA_CHECKS), Expect(NONE, ("uses grader", EVADES))),
    "shortcut_unwrapped": (lambda ctx: _with_cell_and("scaled_dot_product_attention", UNWRAP_REFERENCE,
                                                      SDPA_VIA_UNWRAPPED, ctx), Expect(NONE, ("uses inspect", EVADES))),
    "shortcut_saved_wire": (lambda ctx: _with_cell_and("scaled_dot_product_attention", SAVE_REFERENCE,
                                                       SDPA_VIA_UNWRAPPED, ctx),
                            Expect(WRONG, ("transformer_ref.attention.scaled_dot_product_attention", SHORTCUT))),
    # importlib and sys.modules are ways around the checks: every item scores 0
    "shortcut_importlib": (edited("self_attention", source=SELF_VIA_IMPORTLIB),
                           Expect(NONE, ("uses importlib", EVADES))),
    "shortcut_sys_modules": (edited("self_attention", source=SELF_VIA_SYS_MODULES),
                             Expect(NONE, ("uses sys.modules", EVADES))),
    # ---- a cell that stops early or never finishes costs its own item only
    "sys_exit": (edited("dot_product_attention", before="import sys\nsys.exit()"), Expect(BUT_FIRST, ("SystemExit",))),
    "keyboard_interrupt": (edited("dot_product_attention", before="raise KeyboardInterrupt"),
                           Expect(BUT_FIRST, ("KeyboardInterrupt",))),
    "input": (edited("dot_product_attention", before="name = input('your name? ')"), Expect(BUT_FIRST, ("EOFError",))),
    "while_true": (edited("dot_product_attention", before="while True:\n    pass"),
                   Expect(BUT_FIRST, (STOPPED,), (f"dot_product_attention: `dot_product_attention` {STOPPED}",))),
    "sleep": (edited("dot_product_attention", before="import time\ntime.sleep(10 ** 6)"),
              Expect(BUT_FIRST, (STOPPED,), (STOPPED,))),
    "while_true_in_function": (edited("self_attention", source="def self_attention(*a):\n    while 1:\n        pass"),
                               Expect(BUT_LAST, (f"`self_attention` {STOPPED}",))),
    # ---- broken files
    "invalid_json": (raw('{"cells": [ this is not JSON'), Expect(NONE, (), ("not a readable notebook",), "failed")),
    "empty_file": (raw(""), Expect(NONE, (), ("is empty",), "failed")),
    "nbformat_3": (_v3, Expect(FULL)),
    "null_byte": (_null_byte, Expect(BUT_FIRST, ("null bytes",))),
    "output_50_mb": (edited("dot_product_attention", after="print('x' * 50_000_000)"), Expect(FULL)),
    # past the 64 MiB file size limit the print fails (Python ignores SIGXFSZ), after the function is defined
    "output_100_mb": (edited("dot_product_attention", after="print('x' * 100_000_000)"), Expect(FULL)),
    # ---- reaching out of the sandbox: a correct answer that also tries, and nothing happens
    "write_files": (with_cell(WRITES), Expect(FULL)),
    "connect": (with_cell(CONNECT), Expect(FULL)),
    "spawn": (with_cell(SPAWN), Expect(FULL)),
    # ---- the report channel is the grader's
    "forged_done": (with_cell(FORGE_DONE), Expect(FULL, (), ("wrote to the grader's channel",))),
}


def _with_cell_and(item: str, code: str, solution_cell: str, ctx: Context) -> nbformat.NotebookNode:
    """The solution with one more cell of the student's after the imports, and `item`'s cell replaced."""
    nb = with_cell(code)(ctx)
    cell(nb, item).source = solution_cell
    return nb


# A small class graded again, with 1 worker and then with 2, for the same grades every time.
SMALL_CLASS = ("correct", "wrong", "os_exit", "shortcut_torch")


# ------------------------------------------------------------------------------------------------
# Grading the class once
# ------------------------------------------------------------------------------------------------

class _Server:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> int:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.connections


def submit(submissions: Path, students: dict[str, Callable], ctx: Context) -> None:
    for student, build in students.items():
        dest = submissions / student / ASSIGNMENT
        dest.mkdir(parents=True, exist_ok=True)
        nb = build(ctx)
        path = dest / f"{ASSIGNMENT}.ipynb"
        if isinstance(nb, (str, bytes)):
            path.write_bytes(nb.encode() if isinstance(nb, str) else nb)
        else:
            nbformat.write(nb, path)


def grade(submissions: Path, out: Path, workers: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grader", "grade", str(submissions), "--out", str(out), "--workers", str(workers),
         "--no-progress", "--timeout", str(TIMEOUT), "--submission-timeout", str(SUBMISSION_TIMEOUT),
         "--memory", str(MEMORY_GIB), "--seed", str(SEED)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1500)


def _sleepers() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if any(f"sleep {m}" in line for m in SLEEP_MARKERS)]


@dataclass
class Graded:
    base: Path
    out: Path
    rc: int
    log: str
    token: str
    connections: int
    seconds: float
    rows: dict[str, dict[str, str]] = field(default_factory=dict)

    def scores(self, student: str) -> tuple[float, ...]:
        return item_scores(self.out, [student])[student]

    def feedback(self, student: str) -> str:
        return html_text((self.out / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())


def item_scores(out: Path, students) -> dict[str, tuple[float, ...]]:
    """The points of each item, from the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(out / "gradebook.db")) as gb:
        return {s: tuple(gb.find_grade(f"test_{item}", ASSIGNMENT, ASSIGNMENT, s).score for item in ITEMS)
                for s in students}


def _read_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "grades.csv", newline="") as f:
        return {r["student_id"]: r for r in csv.DictReader(f) if r["assignment"] == ASSIGNMENT}


def _shared(tmp_path_factory, worker_id) -> Path:
    return tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent


@pytest.fixture(scope="session")
def graded(tmp_path_factory, worker_id) -> Graded:
    """The whole class graded once (2 workers), shared by pytest-xdist workers through a lock."""
    import time

    shared = _shared(tmp_path_factory, worker_id)
    base, done = shared / "sandbox-attacks", shared / "sandbox-attacks.json"
    with FileLock(str(shared / "sandbox-attacks.lock")):
        if not done.exists():
            server = _Server()
            ctx = Context(base / "submitted", base / "graded", f"escaped-{uuid.uuid4().hex}", server.port)
            try:
                submit(ctx.submissions, {s: build for s, (build, _) in CLASS.items()}, ctx)
                start = time.perf_counter()
                proc = grade(ctx.submissions, ctx.out, workers=2)
                seconds = time.perf_counter() - start
            finally:
                connections = server.close()
            done.write_text(json.dumps({"rc": proc.returncode, "log": proc.stdout + proc.stderr, "token": ctx.token,
                                        "connections": connections, "seconds": seconds}))
    meta = json.loads(done.read_text())
    out = base / "graded"
    return Graded(base, out, meta["rc"], meta["log"], meta["token"], meta["connections"], meta["seconds"],
                  _read_rows(out) if (out / "grades.csv").exists() else {})


@pytest.fixture(scope="session")
def regraded(graded, tmp_path_factory, worker_id) -> dict[str, dict[str, dict[str, str]]]:
    """SMALL_CLASS graded twice more with the same seed: with 1 worker, and again with 2."""
    shared = _shared(tmp_path_factory, worker_id)
    base, done = shared / "sandbox-attacks-again", shared / "sandbox-attacks-again.json"
    with FileLock(str(shared / "sandbox-attacks-again.lock")):
        if not done.exists():
            runs = {}
            for name, workers in (("1 worker", 1), ("2 workers", 2)):
                ctx = Context(base / name / "submitted", base / name / "graded", "unused", 9)
                submit(ctx.submissions, {s: CLASS[s][0] for s in SMALL_CLASS}, ctx)
                proc = grade(ctx.submissions, ctx.out, workers)
                assert proc.returncode == 0, proc.stdout + proc.stderr
                rows = _read_rows(ctx.out)
                runs[name] = {s: {**row, "items": item_scores(ctx.out, [s])[s]} for s, row in rows.items()}
            done.write_text(json.dumps(runs))
    return json.loads(done.read_text())


# ------------------------------------------------------------------------------------------------
# The tests
# ------------------------------------------------------------------------------------------------

def test_command_exits_0_and_grades_every_student(graded):
    assert graded.rc == 0, graded.log[-3000:]
    assert set(graded.rows) == set(CLASS), graded.log[-3000:]
    for student in CLASS:
        assert (graded.out / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html").is_file(), student
    print(f"graded {len(CLASS)} submissions in {graded.seconds:.0f} s")


@pytest.mark.parametrize("student", list(CLASS))
def test_scores_and_reason(graded, student):
    expect = CLASS[student][1]
    row = graded.rows[student]
    assert row["status"] == expect.status, row
    assert row["sandbox"] == "bwrap", row
    assert float(row["max_score"]) == MAX_SCORE, "the points are the instructor's, whatever the notebook says"
    assert graded.scores(student) == expect.scores, graded.feedback(student)[-3000:]
    assert float(row["score"]) == sum(expect.scores), row
    page = graded.feedback(student)
    for text in expect.feedback:
        assert text in page, f"{text!r} not on the feedback page of {student}:\n{page[-3000:]}"
    for text in expect.reason:
        assert text in row["reason"], row


def test_the_disk_attacks_would_have_found_their_notebooks(graded):
    """Outside the sandbox, the paths steal_solution and steal_classmate guess are there to read."""
    assert SOURCE.is_file()
    assert (graded.base / "submitted" / "correct" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").is_file()


def test_wrong_answers_score_the_same_with_the_checks_patched(graded):
    wrong = graded.scores("wrong")
    for student in CLASS:
        if student.startswith("wrong_"):
            assert graded.scores(student) == wrong, student


def test_nothing_was_written_on_the_host(graded):
    folders = [Path(transformer_ref.__file__).parent, Path(transformer_ref.__file__).parent.parent, Path.home(),
               Path("/tmp"), graded.out, graded.out / "feedback", graded.base / "submitted", ROOT]
    written = [str(f / graded.token) for f in folders if (f / graded.token).exists()]
    assert not written, written


def test_no_connection_reached_the_host(graded):
    assert graded.connections == 0


def test_no_process_was_left_behind(graded):
    assert not _sleepers()


def test_same_grades_with_1_and_2_workers_and_when_run_again(graded, regraded):
    def grades(rows):
        return {s: (tuple(r["items"]), r["score"], r["max_score"], r["status"], r["reason"]) for s, r in rows.items()}

    first = grades({s: {**graded.rows[s], "items": graded.scores(s)} for s in SMALL_CLASS})
    assert grades(regraded["1 worker"]) == first
    assert grades(regraded["2 workers"]) == first
