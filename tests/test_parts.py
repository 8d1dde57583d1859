"""One bug costs once: an item that calls the student's own parts (self_attention calls scaled_dot_product_attention,
decoder_self_attention_mask calls causal_mask and padding_mask; Item.builds_on) is graded with the parts' references
in their place, and its feedback names the wrong part (issue 17, "What must be true" 3).

- through `python -m grader grade` (the sandbox): a wrong part loses its own item's points only; with
  --no-substitute the item calls the student's part and loses its points too; the policy is recorded in OUT;
- in a kernel (the student's view): the self_attention check passes and names the wrong part;
- attacks: a stand-in kept in a global and called in a later item is the student's own part again; a copy of the
  stand-in's code, or a direct call of what it calls, is a shortcut.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_parts.py
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261207
NOTE = "{item} was graded with the reference {part} in place of yours, which is wrong (see its item)."
RIGHT_SDPA = "scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))"
RIGHT_CAUSAL = "tril(diagonal=T_k - T_q)"
# the two mistakes of issue 17: the missing sqrt(d_k), and a causal mask that hides the diagonal
WRONG = {"no_sqrt": ("03_attention", "scaled_dot_product_attention", RIGHT_SDPA, "scores = q @ k.transpose(-2, -1)"),
         "no_diagonal": ("05_masking", "causal_mask", RIGHT_CAUSAL, "tril(diagonal=T_k - T_q - 1)")}
CALLER = {"scaled_dot_product_attention": "self_attention", "causal_mask": "decoder_self_attention_mask"}


def solution_with(assignment: str, item: str, right: str, wrong: str) -> nbformat.NotebookNode:
    """The instructor's solution notebook with one line of `item`'s solution cell made wrong."""
    nb = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == item)
    assert right in cell.source
    cell.source = cell.source.replace(right, wrong)
    return nb


def grade(submitted: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grader", "grade", str(submitted), "--out", str(out), "--workers", "2", "--no-progress",
         "--timeout", "30", "--seed", str(SEED), *options],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)


def points(out: Path, student: str, assignment: str) -> dict[str, float]:
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        return {g.name.removeprefix("test_"): g.score
                for g in gb.find_submission_notebook(assignment, assignment, student).grades}


def page(out: Path, student: str, assignment: str) -> str:
    from grader.feedback import html_text

    return " ".join(html_text((out / "feedback" / student / assignment / f"{assignment}.html").read_text()).split())


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("parts") / "submitted"
    for student, (assignment, item, right, wrong) in WRONG.items():
        folder = base / student / assignment
        folder.mkdir(parents=True)
        nbformat.write(solution_with(assignment, item, right, wrong), folder / f"{assignment}.ipynb")
    return base


@pytest.fixture(scope="module")
def graded(submitted) -> Path:
    out = submitted.parent / "graded"
    proc = grade(submitted, out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return out


@pytest.fixture(scope="module")
def graded_without(submitted) -> Path:
    out = submitted.parent / "graded-without"
    proc = grade(submitted, out, "--no-substitute")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return out


@pytest.mark.parametrize("student", list(WRONG))
def test_a_wrong_part_loses_only_its_own_items_points(graded, student):
    from grader.checks.points import POINTS

    assignment, part, _, _ = WRONG[student]
    got, full = points(graded, student, assignment), POINTS[assignment]
    assert got[part] < full[part]
    assert {name: got[name] for name in full if name != part} == {name: full[name] for name in full if name != part}
    text = page(graded, student, assignment)
    note = NOTE.format(item=CALLER[part], part=part)
    assert note in text and text.count("in place of yours") == text.count(note), text[-2000:]   # comment, output


@pytest.mark.parametrize("student", list(WRONG))
def test_without_substitution_the_item_calls_the_students_part(graded_without, student):
    from grader.checks.points import POINTS

    assignment, part, _, _ = WRONG[student]
    got, full = points(graded_without, student, assignment), POINTS[assignment]
    assert got[part] < full[part] and got[CALLER[part]] < full[CALLER[part]]
    assert "in place of yours" not in page(graded_without, student, assignment)
    assert json.loads((graded_without / "grading-policy.json").read_text()) == {"substitute_parts": False}
    with open(graded_without / "grades.csv", newline="") as f:
        assert {r["student_id"] for r in csv.DictReader(f)} == set(WRONG)


def test_a_run_into_OUT_keeps_its_policy_unless_regraded(graded, submitted):
    """A resumed run grades as OUT was graded; asking for the other policy without --regrade is refused (OUT's
    grades would mix both)."""
    proc = grade(submitted, graded, "--no-substitute")
    assert proc.returncode == 2 and "--regrade" in proc.stderr, proc.stdout + proc.stderr
    assert json.loads((graded / "grading-policy.json").read_text()) == {"substitute_parts": True}
    proc = grade(submitted, graded)
    assert proc.returncode == 0 and "resuming" in proc.stdout, proc.stdout + proc.stderr


# ---------------------------------------------------------------- the student's view, in a kernel

def test_in_a_kernel_self_attention_passes_and_names_the_wrong_part():
    sys.path.insert(0, str(ROOT / "tests"))
    from test_student_feedback import Kernel, cells, given, solution

    folder = ROOT / "exercises" / "03_attention"
    released = cells(folder / "03_attention.ipynb")
    answers = cells(ROOT / "solutions" / "03_attention" / "03_attention.ipynb")
    kernel = Kernel(folder)
    try:
        for source in given(folder / "03_attention.ipynb"):
            kernel.run(source)
        kernel.run(solution(answers["scaled_dot_product_attention"]).replace(RIGHT_SDPA, WRONG["no_sqrt"][3]))
        kernel.run(solution(answers["self_attention"]))
        output, raised = kernel.run(released["test_scaled_dot_product_attention"])
        assert raised and "sqrt(d_k)" in output, output
        output, raised = kernel.run(released["test_self_attention"])
        text = " ".join(output.split())
        assert not raised and "self_attention: right on all" in text, output
        assert NOTE.format(item="self_attention", part="scaled_dot_product_attention") in text, output
        kernel.run(solution(answers["scaled_dot_product_attention"]))
        output, raised = kernel.run(released["test_self_attention"])
        assert not raised and "in place of yours" not in output, output
    finally:
        kernel.close()


def test_the_students_parts_are_put_back_whatever_happens():
    """Replaced while the item runs, put back after it: when it passes, when it raises, when it rebinds the name,
    and when it interrupts the check itself (KeyboardInterrupt passes through run_student)."""
    from grader.checks import ITEMS
    from grader.checks.cases import make_cases
    from grader.checks.run import run_student

    item = ITEMS["self_attention"]
    cases = make_cases(item, 0)

    def own(q, k, v, mask=None):
        raise AssertionError("the student's own part ran")

    bodies = {"passes": "return scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, mask)",
              "raises": "scaled_dot_product_attention(x, x, x)\n    raise ValueError('mine')",
              "rebinds": "global scaled_dot_product_attention\n    scaled_dot_product_attention = None",
              "interrupts": "raise KeyboardInterrupt"}
    seen = {}
    for name, body in bodies.items():
        namespace = {"scaled_dot_product_attention": own}
        exec(f"def self_attention(x, W_q, W_k, W_v, mask=None):\n    {body}\n", namespace)   # noqa: S102
        try:
            outcomes = run_student(item, namespace["self_attention"], cases)
            seen[name] = (outcomes[0].error or "")[:40]
        except KeyboardInterrupt:
            seen[name] = "interrupted"
        assert namespace["scaled_dot_product_attention"] is own, name
    assert seen == {"passes": "", "raises": "self_attention raised ValueError at line", "rebinds": seen["rebinds"],
                    "interrupts": "interrupted"}, seen


# ---------------------------------------------------------------- attacks on the stand-in, as the harness runs items

HARNESS = r'''
import json, sys
from grader.checks import ITEMS
from grader.checks.cases import make_cases
from grader.checks.compare import grade
from grader.checks.run import Outcome
from grader.checks.watch import Tripwires
from grader.sandbox.harness import run_cell, run_item

order = sys.argv[1].split(",")
items = [ITEMS[name] for name in order]
wires = Tripwires(sorted({n for i in items for n in i.forbidden}), rebind=True, between=True,
                  ops=sorted({op for i in items for op in i.forbidden_ops})).install()
namespace = {"__name__": "__main__"}
for k, source in enumerate(json.loads(sys.stdin.read())):
    assert run_cell({"id": str(k), "source": source}, namespace) is None
result = {}
for item in items:
    cases = make_cases(item, 0)
    outcomes = run_item(item, namespace, cases, wires)
    shortcut = next((o["shortcut"] for o in outcomes if o["shortcut"]), None)
    result[item.name] = {"fraction": grade(item, cases, [Outcome(**o) for o in outcomes]).fraction,
                         "shortcut": shortcut}
wires.uninstall()
print(json.dumps(result))
'''

IMPORTS = "import math\nimport torch\n"
# scaled_dot_product_attention without sqrt(d_k) until self_attention has kept the stand-in; then it calls that
KEEPS_THE_STAND_IN = '''
kept = None

def scaled_dot_product_attention(q, k, v, mask=None):
    if kept is not None:
        return kept(q, k, v, mask)
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights

def self_attention(x, W_q, W_k, W_v, mask=None):
    global kept
    kept = scaled_dot_product_attention
    return scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, mask)
'''
# self_attention running the reference of a part through a copy of the stand-in's code with globals of its own
FORGED = '''
import types
from grader.checks import ITEMS
from grader.checks import watch

def self_attention(x, W_q, W_k, W_v, mask=None):
    fake = object()
    window = types.SimpleNamespace(parts=(ITEMS["self_attention"],))
    mine = dict(vars(watch), _STANDING={fake: (ITEMS["self_attention"], None)}, _CURRENT=[window])
    call = types.FunctionType(watch._StandIn.__call__.__code__, mine)
    return call(fake, x, W_q, W_k, W_v, mask)
'''
DIRECT = '''
from grader.checks import ITEMS
from grader.checks.watch import _as_grader

def self_attention(x, W_q, W_k, W_v, mask=None):
    return _as_grader(ITEMS["self_attention"], (x, W_q, W_k, W_v, mask), {})
'''


def test_every_part_is_graded_before_the_items_that_call_it():
    """While an item runs, its stand-ins answer as its parts' references on any input; that gives nothing only
    because each part is graded before (the harness orders a job's items so, whatever the notebook's order) and is
    a function (a stand-in is not a class)."""
    from grader.checks import ASSIGNMENTS, ITEMS
    from grader.sandbox.harness import parts_first

    for names in ASSIGNMENTS.values():
        ordered = [item.name for item in parts_first([ITEMS[name] for name in reversed(names)])]
        assert sorted(ordered) == sorted(names)
        for k, name in enumerate(ordered):
            assert all(part.name in ordered[:k] and part.kind == "function" for part in ITEMS[name].builds_on), ordered


def harness(order: str, *sources: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", HARNESS, order], input=json.dumps([IMPORTS, *sources]),
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_kept_stand_in_is_the_students_own_part_in_a_later_item():
    """self_attention keeps the stand-in in a global, and scaled_dot_product_attention, graded after it, calls it:
    outside self_attention's window it runs the student's own (wrong) part, so the later item gains nothing."""
    result = harness("self_attention,scaled_dot_product_attention", KEEPS_THE_STAND_IN)
    assert result["self_attention"] == {"fraction": 1.0, "shortcut": None}, result
    assert result["scaled_dot_product_attention"]["fraction"] < 1.0, result
    # the same part graded before the item that keeps it: wrong on its own, as it is
    result = harness("scaled_dot_product_attention,self_attention", KEEPS_THE_STAND_IN)
    assert result["scaled_dot_product_attention"]["fraction"] < 1.0 and result["self_attention"]["fraction"] == 1.0


@pytest.mark.parametrize("source", [FORGED, DIRECT], ids=["forged_stand_in", "direct_call"])
def test_the_reference_behind_a_stand_in_is_a_shortcut_any_other_way(source):
    """A copy of the stand-in's code with globals that make it stand for the item itself, or a direct call of the
    function a stand-in calls, runs the reference as the student's call: a shortcut, 0 points."""
    result = harness("self_attention", source)["self_attention"]
    assert result["fraction"] == 0.0 and result["shortcut"], result
