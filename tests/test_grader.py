"""`python -m grader grade`: full marks for the solutions, zero for blank exercises, broken submissions
recorded with a reason, shortcuts caught, and feedback that never shows hidden tests or solution code.

The slow tests share one graded class (graded once per session, with 2 workers, whichever pytest-xdist
worker gets there first); the fast ones check the pieces without running a kernel.
"""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from filelock import FileLock

from grader.cli import discover, main
from grader.feedback import RedactHiddenTests, html_text, secret_lines, split_hidden
from grader.runner import NbgraderRunner

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
ASSIGNMENTS = sorted(p.name for p in SOLUTIONS.iterdir() if (p / f"{p.name}.ipynb").is_file())
BROKEN_ON = "03_attention"   # the assignment the broken submissions are made from
HIDDEN = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")
TIMEOUT = 30   # seconds per cell in the graded class: short, for the infinite loop


def _read(kind: Path, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(kind / assignment / f"{assignment}.ipynb", as_version=4)


def _cells(nb: nbformat.NotebookNode, solution: bool) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution") == solution
            and c.metadata.get("nbgrader", {}).get("grade_id")]


def _tests(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]


def _replace_body(cell: nbformat.NotebookNode, body: str) -> None:
    """Keep the `def` line of a solution cell, replace everything after it with `body`."""
    head = cell.source.split("\n")[0]
    cell.source = head + "\n" + body


def broken_submissions() -> dict[str, nbformat.NotebookNode | str]:
    """student_id -> notebook (or raw text) of a broken submission of BROKEN_ON."""
    sol, ex = _read(SOLUTIONS, BROKEN_ON), _read(EXERCISES, BROKEN_ON)
    out: dict[str, nbformat.NotebookNode | str] = {"bad_json": '{"cells": [ this is not JSON'}

    nb = copy.deepcopy(sol)            # an exception while the student's first cell runs
    first = _cells(nb, solution=True)[0]
    first.source = "import this_module_does_not_exist\n" + first.source
    out["import_error"] = nb

    nb = copy.deepcopy(sol)            # an infinite loop in the last graded function
    cell = _cells(nb, solution=True)[-1]
    cell.source = "while True:\n    pass\n" + cell.source
    out["infinite_loop"] = nb

    nb = copy.deepcopy(sol)            # a test cell deleted
    deleted = _tests(nb)[-1].metadata.nbgrader.grade_id
    nb.cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") != deleted]
    out["deleted_test"] = nb

    nb = copy.deepcopy(sol)            # grade metadata and a test cell rewritten, the answer wrong
    test = _tests(nb)[0]
    test.metadata.nbgrader.points = 1000
    test.source = "pass"
    _replace_body(_cells(nb, solution=True)[0], "    return None")
    out["tampered"] = nb

    nb = copy.deepcopy(sol)            # the kernel dies
    _cells(nb, solution=True)[0].source += "\nimport os\nos._exit(1)"
    out["kernel_crash"] = nb

    nb = copy.deepcopy(sol)            # calls the PyTorch shortcut for scaled_dot_product_attention
    cell = next(c for c in _cells(nb, solution=True) if c.metadata.nbgrader.grade_id == "scaled_dot_product_attention")
    _replace_body(cell, "    import torch.nn.functional as F\n"
                        "    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)\n"
                        "    return out, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), dim=-1)")
    out["shortcut"] = nb

    nb = copy.deepcopy(ex)             # a blank exercise that fails before its first stub
    first = _cells(nb, solution=True)[0]
    first.source = "raise ImportError('broken on purpose')\n" + first.source
    out["exercise_import_error"] = nb
    return out


@dataclass
class Graded:
    out: Path
    rc: int
    log: str
    rows: dict[tuple[str, str], dict[str, str]]


def _grade_class(base: Path) -> subprocess.CompletedProcess:
    """Submit every solution and exercise plus the broken ones, and grade them into base/graded."""
    submissions, out = base / "submitted", base / "graded"
    for assignment in ASSIGNMENTS:
        for student, kind in (("solution", SOLUTIONS), ("exercise", EXERCISES)):
            if (kind / assignment / f"{assignment}.ipynb").exists():
                dest = submissions / student / assignment
                dest.mkdir(parents=True, exist_ok=True)
                nbformat.write(_read(kind, assignment), dest / f"{assignment}.ipynb")
    for student, nb in broken_submissions().items():
        dest = submissions / student / BROKEN_ON
        dest.mkdir(parents=True)
        path = dest / f"{BROKEN_ON}.ipynb"
        path.write_text(nb) if isinstance(nb, str) else nbformat.write(nb, path)
    return subprocess.run(
        [sys.executable, "-m", "grader", "grade", str(submissions), "--out", str(out), "--workers", "2",
         "--timeout", str(TIMEOUT)], capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="session")
def graded(tmp_path_factory, worker_id) -> Graded:
    """One class graded once for the whole session, shared by the pytest-xdist workers through a lock."""
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    base, done = shared / "grader-class", shared / "grader-class.json"
    with FileLock(str(shared / "grader-class.lock")):
        if not done.exists():
            proc = _grade_class(base)
            done.write_text(json.dumps({"rc": proc.returncode, "log": proc.stdout + proc.stderr}))
    meta = json.loads(done.read_text())
    with open(base / "graded" / "grades.csv", newline="") as f:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(f)}
    return Graded(base / "graded", meta["rc"], meta["log"], rows)


# ------------------------------------------------------------------------------------------------
# The graded class (slow: about 30 notebooks)
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_command_exits_0_and_grades_every_submission(graded):
    assert graded.rc == 0, graded.log[-3000:]
    expected = {(s, a) for a in ASSIGNMENTS for s in ("solution", "exercise")}
    expected |= {(s, BROKEN_ON) for s in broken_submissions()}
    assert set(graded.rows) == expected
    assert list(next(iter(graded.rows.values())))[:4] == ["student_id", "assignment", "score", "max_score"]
    assert (graded.out / "gradebook.db").exists()
    for student, assignment in expected:
        assert (graded.out / "feedback" / student / assignment / f"{assignment}.html").exists()


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_solution_scores_full_marks(graded, assignment):
    row = graded.rows[("solution", assignment)]
    assert row["status"] == "graded", row
    assert float(row["max_score"]) >= 10
    assert float(row["score"]) == float(row["max_score"]), row


@pytest.mark.slow
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_unmodified_exercise_scores_zero(graded, assignment):
    row = graded.rows[("exercise", assignment)]
    assert row["status"] == "graded", row
    assert float(row["score"]) == 0 and float(row["max_score"]) >= 10, row


@pytest.mark.slow
@pytest.mark.parametrize("student, status, score, reason", [
    ("bad_json", "failed", "zero", "not a readable notebook"),
    ("import_error", "graded", "partial", "ModuleNotFoundError"),
    ("infinite_loop", "graded", "partial", "timed out"),
    ("deleted_test", "graded", "full", "was deleted (restored from the source)"),
    ("tampered", "graded", "partial", "restored from the source"),
    ("kernel_crash", "failed", "zero", "DeadKernelError"),
    ("exercise_import_error", "graded", "zero", "ImportError: broken on purpose"),
])
def test_broken_submission_is_recorded_with_a_reason(graded, student, status, score, reason):
    row = graded.rows[(student, BROKEN_ON)]
    full = float(graded.rows[("solution", BROKEN_ON)]["max_score"])
    assert row["status"] == status and reason in row["reason"], row
    assert float(row["max_score"]) == full, "a tampered notebook must not change the points"
    got = float(row["score"])
    assert {"zero": got == 0, "partial": 0 < got < full, "full": got == full}[score], row


@pytest.mark.slow
def test_gradebook_matches_grades_csv(graded):
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(graded.out / "gradebook.db")) as gb:
        for (student, assignment), row in graded.rows.items():
            submission = gb.find_submission(assignment, student)
            assert (submission.score, submission.max_score) == (float(row["score"]), float(row["max_score"]))


@pytest.mark.slow
def test_shortcut_scores_zero_for_that_item_with_the_message(graded):
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(graded.out / "gradebook.db")) as gb:
        grade = gb.find_grade("test_scaled_dot_product_attention", BROKEN_ON, BROKEN_ON, "shortcut")
        assert grade.score == 0 and grade.max_score > 0
        others = gb.find_grade("test_dot_product_attention", BROKEN_ON, BROKEN_ON, "shortcut")
        assert others.score == others.max_score, "only the item with the shortcut loses its points"
    page = html_text((graded.out / "feedback" / "shortcut" / BROKEN_ON / f"{BROKEN_ON}.html").read_text())
    assert "torch.nn.functional.scaled_dot_product_attention" in page
    assert "ready-made version" in page


@pytest.mark.slow
def test_feedback_shows_no_hidden_tests_and_no_solution_code(graded):
    # What students may see anyway: the released notebooks and the course package (tracebacks quote it).
    package = "\n".join(p.read_text() for p in (ROOT / "transformer_ref").glob("*.py"))
    leaks = []
    for page in sorted((graded.out / "feedback").glob("*/*/*.html")):
        student, assignment = page.parts[-3], page.parts[-2]
        text = html_text(page.read_text())
        source = _read(SOLUTIONS, assignment)
        public = package + "\n".join(c.source for c in _read(EXERCISES, assignment).cells)
        secrets = secret_lines(source, *HIDDEN)
        if student in ("exercise", "bad_json", "exercise_import_error"):   # no solution code was submitted
            secrets |= secret_lines(source, *SOLUTION)
        leaks += [f"{student}/{assignment}: {line}" for line in sorted(secrets) if line in text and line not in public]
        assert "HIDDEN TESTS" not in text, f"{student}/{assignment}"
    assert not leaks, "\n".join(leaks[:20])


@pytest.mark.slow
def test_feedback_shows_visible_test_results(graded):
    page = html_text((graded.out / "feedback" / "exercise" / BROKEN_ON / f"{BROKEN_ON}.html").read_text())
    visible = split_hidden(_tests(_read(EXERCISES, BROKEN_ON))[0].source, *HIDDEN)[0]
    assert visible.strip().split("\n")[-1].strip() in page
    assert "NotImplementedError" in page and "Score: 0" in page


# ------------------------------------------------------------------------------------------------
# Pieces, without a kernel (fast)
# ------------------------------------------------------------------------------------------------

def _error_cell(source: str, frames: list[str], count: int = 7) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source, execution_count=count)
    cell.outputs = [nbformat.v4.new_output("error", ename="AssertionError", evalue="wrong", traceback=frames)]
    return cell


def test_redaction_removes_hidden_code_and_the_frames_that_quote_it():
    source = "visible_check(f)\n### BEGIN HIDDEN TESTS\nsecret_check(f, seeds=range(9))\n### END HIDDEN TESTS"
    frames = ["\x1b[31m-----\x1b[39m",
              "\x1b[32mCell In[7], line 3\x1b[39m\n----> 3 secret_check(f, seeds=range(9))",
              "File ~/student.py:2, in f(x)\n----> 2 return x.sum()",
              "File testing.py:9, in helper()\n      8 # quoted: secret_check(f, seeds=range(9))",
              "\x1b[31mAssertionError\x1b[39m: wrong"]
    nb = nbformat.v4.new_notebook(cells=[_error_cell(source, frames), _error_cell("plain(f)", frames[:3], 8)])
    nb, _ = RedactHiddenTests()(nb, {})
    cell, untouched = nb.cells
    assert cell.source == "visible_check(f)"
    assert [f.split("\n")[0][-20:] for f in cell.outputs[0].traceback] == \
        [frames[0][-20:], frames[2].split("\n")[0][-20:], frames[4][-20:]]
    assert untouched.outputs[0].traceback == frames[:3], "cells without hidden tests keep their tracebacks"


def test_secret_lines_and_html_text():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("def f(x):\n    ### BEGIN SOLUTION\n    y = x.cumsum(0)\n    return y\n"
                                  "    ### END SOLUTION"),
        nbformat.v4.new_markdown_cell("Example:\n    return y"),
    ])
    assert secret_lines(nb, *SOLUTION) == {"y = x.cumsum(0)"}   # `return y` occurs outside too; kept out
    with pytest.raises(ValueError, match="without a matching"):
        split_hidden("a\n### BEGIN HIDDEN TESTS\nb", *HIDDEN)
    page = '<style>.x{}</style><pre><span class="n">y</span> <span class="o">=</span> x&gt;0</pre>'
    assert html_text(page) == "y = x>0"


def test_discover_skips_unknown_assignments(tmp_path):
    for student, assignment in (("ann", "03_attention"), ("ann", "99_nope"), ("bob", "03_attention")):
        (tmp_path / student / assignment).mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    jobs, skipped = discover(tmp_path, {"03_attention"})
    assert [(j.student_id, j.assignment_id) for j in jobs] == [("ann", "03_attention"), ("bob", "03_attention")]
    assert [(r.student_id, r.status) for r in skipped] == [("ann", "skipped")]
    assert "99_nope" in skipped[0].reason


@pytest.fixture
def runner(tmp_path) -> NbgraderRunner:
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / BROKEN_ON).symlink_to(SOLUTIONS / BROKEN_ON, target_is_directory=True)
    return NbgraderRunner(tmp_path, tmp_path / "template.db", None)


def _submit(tmp_path: Path, nb: nbformat.NotebookNode | str):
    from grader.runner import Job

    dest = tmp_path / "sub" / "ann" / BROKEN_ON
    dest.mkdir(parents=True)
    path = dest / f"{BROKEN_ON}.ipynb"
    path.write_text(nb) if isinstance(nb, str) else nbformat.write(nb, path)
    return Job("ann", BROKEN_ON, dest)


@pytest.mark.parametrize("student, note", [
    ("deleted_test", "was deleted"), ("tampered", "were changed"), ("tampered", "was edited"),
])
def test_inspection_names_what_was_tampered_with(runner, tmp_path, student, note):
    notes = runner._inspect(_submit(tmp_path, broken_submissions()[student]))
    assert any(note in n for n in notes), notes


def test_inspection_accepts_the_released_and_the_source_notebook(runner, tmp_path):
    assert runner._inspect(_submit(tmp_path, _read(EXERCISES, BROKEN_ON))) == []
    (tmp_path / "sub").rename(tmp_path / "sub1")
    assert runner._inspect(_submit(tmp_path, _read(SOLUTIONS, BROKEN_ON))) == []


def test_inspection_rejects_invalid_json(runner, tmp_path):
    with pytest.raises(ValueError, match="not a readable notebook"):
        runner._inspect(_submit(tmp_path, broken_submissions()["bad_json"]))


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["grade", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert err.value.code == 2 and "--workers must be at least 1; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])


def test_results_are_merged_into_the_gradebook_at_any_url(tmp_path):
    from nbgrader.api import Gradebook

    from grader.course import prepare_course, sqlite_url
    from grader.gradebook import record
    from grader.runner import CellGrade, Job, Result

    out, url = tmp_path / "out", sqlite_url(tmp_path / "elsewhere.db")
    template = prepare_course(out, SOLUTIONS, [BROKEN_ON], url, ROOT / "nbgrader_config.py")
    assert not (out / "gradebook.db").exists() and (out / "nbgrader_config.py").exists()
    failed = NbgraderRunner(out, template, None).failure(Job("ann", BROKEN_ON, tmp_path), "broken <on> purpose")
    graded = Result("bob", BROKEN_ON, "graded", score=3.0, max_score=failed.max_score,
                    grades=[CellGrade(BROKEN_ON, "test_dot_product_attention", 3.0, 3.0, False)])
    with Gradebook(url) as gb:
        record(gb, failed)
        record(gb, graded)
        assert gb.find_submission(BROKEN_ON, "ann").score == 0
        assert gb.find_submission(BROKEN_ON, "bob").score == 3
        assert gb.find_assignment(BROKEN_ON).max_score == failed.max_score >= 10
    page = (out / "feedback" / "ann" / BROKEN_ON / f"{BROKEN_ON}.html").read_text()
    assert "broken &lt;on&gt; purpose" in page and f"0 / {failed.max_score:g}" in page
