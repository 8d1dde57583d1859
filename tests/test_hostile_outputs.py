"""`python -m grader grade` on a class of 03_attention whose code writes forged outcome frames to the grader's
channel (file descriptor 3) while an item is graded, or returns a legal value built to amplify the host's work.

Each attack sits in scaled_dot_product_attention (5 points): dot_product_attention (graded before it) keeps its
3 points, scaled_dot_product_attention fails with a reason, self_attention (which calls it, and is graded with
the reference in its place) keeps its 4. The old reader (torch.load + a walk) hung forever on the first frame and
inflated the second to 3.66 GB. Here the
command exits 0 within RUN_SECONDS, grades.csv is complete, and no grading process (the main one or a worker;
the sandboxes are bounded by --memory) goes past WORKER_RSS, sampled every 50 ms.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_hostile_outputs.py
"""

from __future__ import annotations

import threading
import time
import uuid

import psutil
import pytest

from grader.feedback import html_text

from test_sandbox_attacks import (ASSIGNMENT, FULL, MAX_SCORE, WRONG, Context, _read_rows, edited, grade,
                                  item_scores, modified, submit)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile_outputs")]

RUN_SECONDS = 300          # the whole class; 7 submissions take about a minute on the 2-core CI machine
WORKER_RSS = 1536 * 2**20  # a grading process: ~0.5 GiB after its imports, whatever a submission sends
PAGE_BYTES = 2 * 2**20     # a feedback page (nbgrader's template is ~300 KB of it)

# Writes `frame` as an outcome frame on the grader's channel the first time the function is called (an item
# is being graded then), then answers like the solution.
FORGE = '''import math, os, struct

def _send(payload):
    data = memoryview(b"O" + struct.pack(">I", len(payload)) + payload)
    while data:
        data = data[os.write(3, data):]

_sent = []

def scaled_dot_product_attention(q, k, v, mask=None):
    if not _sent:
        _sent.append(1)
        _send(FRAME())
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, weights
'''

SHARED_PICKLE = '''import io
def FRAME():   # N references to one list of N references, 5 deep: N**5 leaves through the pickle memo
    value = [None] * 1000
    for _ in range(4):
        value = [value] * 1000
    buffer = io.BytesIO()
    torch.save({"item": "scaled_dot_product_attention", "outcomes": [
        {"value": value, "error": None, "mutated": [], "shortcut": None}]}, buffer)
    return buffer.getvalue()
'''
SHARED_TENSOR = '''import json, struct
from safetensors.torch import save
def FRAME():   # one tensor referred to 64 x 64 times, in the wire format itself
    ref = {"tensor": 0, "device": "cpu"}
    value = {"list": [{"list": [ref] * 64}] * 64}
    header = json.dumps({"item": "scaled_dot_product_attention", "outcomes": [
        {"value": value, "error": None, "mutated": [], "shortcut": None}]}).encode()
    return struct.pack(">I", len(header)) + header + save({"0": torch.ones(1000, 1000)})
'''
ZIP_BOMB = '''import io, zipfile
def FRAME():   # what torch.load reads: a zip whose DEFLATE record inflates 0.5 MB to 512 MiB
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("archive/data.pkl", "w") as f:
            chunk = bytes(1 << 24)
            for _ in range(32):
                f.write(chunk)
    return buffer.getvalue()
'''
GZIP_HEADER = '''import gzip, struct
def FRAME():   # the wire format's header, gzip'd: 256 MiB of JSON in ~1 MB
    body = gzip.compress(b"[" + b"0," * (2 ** 27 - 1) + b"0]", compresslevel=1)
    return struct.pack(">I", len(body)) + body
'''
# A legal return value that amplified the old describe(): 64 x 64 x 64 ... strings of a million characters.
AMPLIFY = '''import math

def scaled_dot_product_attention(q, k, v, mask=None):
    text = "x" * 10 ** 6
    return [[text] * 60] * 60, [[[[[None] * 64] * 64] * 64] * 64] * 64
'''
AMPLIFY_NUMBERS = '''def scaled_dot_product_attention(q, k, v, mask=None):
    return tuple([1.0] * 60 for _ in range(60)), [[2 ** 62] * 64] * 64
'''

REFUSED = "returned something the grader cannot accept"
CLASS = {
    "correct": (modified(lambda nb: None), FULL, ()),
    "shared_pickle": (edited("scaled_dot_product_attention", source=SHARED_PICKLE + FORGE), WRONG,
                      (REFUSED, "outcome header of")),
    "shared_tensor": (edited("scaled_dot_product_attention", source=SHARED_TENSOR + FORGE), WRONG,
                      (REFUSED, "referred to twice")),
    "zip_bomb": (edited("scaled_dot_product_attention", source=ZIP_BOMB + FORGE), WRONG,
                 (REFUSED, "over the limit")),
    "gzip_header": (edited("scaled_dot_product_attention", source=GZIP_HEADER + FORGE), WRONG, (REFUSED,)),
    "amplify": (edited("scaled_dot_product_attention", source=AMPLIFY), WRONG, ("expected a torch.Tensor",)),
    "amplify_numbers": (edited("scaled_dot_product_attention", source=AMPLIFY_NUMBERS), WRONG,
                        ("should return a tuple", "over the grader")),
}


class _Sampler:
    """The largest RSS of this test's child (`python -m grader grade`) and of its direct children (the grading
    workers; their children are the sandboxes), sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for grader in me.children():
                try:
                    for p in [grader, *grader.children()]:
                        if "bwrap" not in p.name():
                            self.peak = max(self.peak, p.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-outputs")
    ctx = Context(base / "submitted", base / "graded", f"unused-{uuid.uuid4().hex}", 9)
    submit(ctx.submissions, {s: build for s, (build, _, _) in CLASS.items()}, ctx)
    sampler = _Sampler()
    start = time.perf_counter()
    proc = grade(ctx.submissions, ctx.out, workers=2)
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    return proc, ctx.out, seconds, peak


def test_the_class_is_graded_in_time_and_memory(graded):
    proc, out, seconds, peak = graded
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert set(_read_rows(out)) == set(CLASS), proc.stdout[-3000:]
    assert seconds < RUN_SECONDS, seconds
    assert peak < WORKER_RSS, f"a grading process reached {peak / 2**20:.0f} MiB"
    print(f"graded {len(CLASS)} submissions in {seconds:.0f} s; largest grading process {peak / 2**20:.0f} MiB")


@pytest.mark.parametrize("student", list(CLASS))
def test_the_attacked_item_fails_with_its_reason_and_the_others_keep_their_points(graded, student):
    proc, out, _, _ = graded
    _, scores, says = CLASS[student]
    row = _read_rows(out)[student]
    assert row["status"] == "graded" and float(row["max_score"]) == MAX_SCORE, row
    assert item_scores(out, [student])[student] == scores
    page_path = out / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html"
    assert page_path.stat().st_size < PAGE_BYTES, page_path.stat().st_size
    page = html_text(page_path.read_text())
    for text in says:
        assert text in page, f"{text!r} not on the feedback page of {student}:\n{page[-3000:]}"
