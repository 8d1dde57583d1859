"""`python -m grader grade`: full marks for the solutions, zero for blank exercises, partial credit that
explains itself, a gradebook nbgrader can read, and feedback that never shows hidden tests or solution code.
(Attacks on the sandbox and broken notebooks: tests/test_sandbox_attacks.py.)

The slow tests share one graded class (graded once per session, with 2 workers, whichever pytest-xdist
worker gets there first); the fast ones check the pieces without a sandbox.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import torch
from filelock import FileLock

from grader.cli import discover, main
from grader.feedback import RedactHiddenTests, html_text, secret_lines, split_hidden
from grader.execution import load_outcomes
from grader.submission import code_cells, load_source

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
ASSIGNMENTS = sorted(p.name for p in SOLUTIONS.iterdir() if (p / f"{p.name}.ipynb").is_file())
BROKEN_ON = "03_attention"   # the assignment the broken submissions are made from
HIDDEN = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")


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


def partial_submissions() -> dict[str, nbformat.NotebookNode]:
    """student_id -> a submission of BROKEN_ON with one item partly wrong (see test_partial_credit...)."""
    sol = _read(SOLUTIONS, BROKEN_ON)
    out = {}
    nb = copy.deepcopy(sol)            # the mask inverted: right without a mask, wrong with one
    cell = next(c for c in _cells(nb, solution=True) if c.metadata.nbgrader.grade_id == "scaled_dot_product_attention")
    cell.source = cell.source.replace("masked_fill(~mask", "masked_fill(mask")
    out["mask_inverted"] = nb

    nb = copy.deepcopy(sol)            # the first function deleted from its cell, the rest right
    _replace_body(_cells(nb, solution=True)[0], "    raise NotImplementedError()")
    out["first_missing"] = nb
    return out


@dataclass
class Graded:
    out: Path
    rc: int
    log: str
    rows: dict[tuple[str, str], dict[str, str]]


def _grade_class(base: Path) -> subprocess.CompletedProcess:
    """Submit every solution and exercise plus the partly wrong ones, and grade them into base/graded."""
    submissions, out = base / "submitted", base / "graded"
    for assignment in ASSIGNMENTS:
        for student, kind in (("solution", SOLUTIONS), ("exercise", EXERCISES)):
            dest = submissions / student / assignment
            dest.mkdir(parents=True, exist_ok=True)
            nbformat.write(_read(kind, assignment), dest / f"{assignment}.ipynb")
    for student, nb in partial_submissions().items():
        dest = submissions / student / BROKEN_ON
        dest.mkdir(parents=True)
        nbformat.write(nb, dest / f"{BROKEN_ON}.ipynb")
    return subprocess.run(
        [sys.executable, "-m", "grader", "grade", str(submissions), "--out", str(out), "--workers", "2"],
        capture_output=True, text=True, cwd=ROOT)


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


def _grade(out: Path, student: str, item: str):
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(out / "gradebook.db")) as gb:
        g = gb.find_grade(f"test_{item}", BROKEN_ON, BROKEN_ON, student)
        return g.score, g.max_score


def _page(out: Path, student: str, assignment: str = BROKEN_ON) -> str:
    return html_text((out / "feedback" / student / assignment / f"{assignment}.html").read_text())


# ------------------------------------------------------------------------------------------------
# The graded class (slow: about 22 notebooks)
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_command_exits_0_and_grades_every_submission(graded):
    assert graded.rc == 0, graded.log[-3000:]
    expected = {(s, a) for a in ASSIGNMENTS for s in ("solution", "exercise")}
    expected |= {(s, BROKEN_ON) for s in partial_submissions()}
    missing = {(s, a) for a in ASSIGNMENTS for s in partial_submissions() if a != BROKEN_ON}
    assert set(graded.rows) == expected | missing, "a row for every student and every assignment handed in"
    assert list(next(iter(graded.rows.values()))) == \
        ["student_id", "assignment", "score", "max_score", "status", "reason", "seconds", "sandbox", "late_penalty",
         "final_score"]
    assert {graded.rows[key]["status"] for key in missing} == {"missing"}
    assert {graded.rows[key]["sandbox"] for key in expected} == {"bwrap"}
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
    assert "not implemented yet" in _page(graded.out, "exercise", assignment)


@pytest.mark.slow
def test_gradebook_matches_grades_csv(graded):
    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(graded.out / "gradebook.db")) as gb:
        for (student, assignment), row in graded.rows.items():
            if row["status"] == "missing":     # no submission: in grades.csv only
                continue
            submission = gb.find_submission(assignment, student)
            assert (submission.score, submission.max_score) == (float(row["score"]), float(row["max_score"]))


@pytest.mark.slow
def test_partial_credit_names_the_failing_group_and_the_mistake(graded):
    score, points = _grade(graded.out, "mask_inverted", "scaled_dot_product_attention")
    assert 0 < score < points, (score, points)
    assert _grade(graded.out, "mask_inverted", "dot_product_attention") == (3, 3)
    page = _page(graded.out, "mask_inverted")
    assert f"{score:g} of {points:g} points" in page
    assert "right on" in page and "wrong on masks" in page
    assert "mask is inverted" in page


@pytest.mark.slow
def test_an_unimplemented_item_costs_only_its_points(graded):
    assert _grade(graded.out, "first_missing", "dot_product_attention") == (0, 3)
    assert _grade(graded.out, "first_missing", "scaled_dot_product_attention") == (5, 5)
    assert _grade(graded.out, "first_missing", "self_attention") == (4, 4)
    assert "dot_product_attention is not implemented yet" in _page(graded.out, "first_missing")


@pytest.mark.slow
def test_feedback_shows_no_hidden_tests_and_no_solution_code(graded):
    # What students may see anyway: the released notebooks and the course packages (messages quote them).
    package = "\n".join(p.read_text() for d in ("transformer_ref", "grader") for p in (ROOT / d).rglob("*.py"))
    leaks = []
    for page in sorted((graded.out / "feedback").glob("*/*/*.html")):
        student, assignment = page.parts[-3], page.parts[-2]
        text = html_text(page.read_text())
        source = _read(SOLUTIONS, assignment)
        public = package + "\n".join(c.source for c in _read(EXERCISES, assignment).cells)
        secrets = secret_lines(source, *HIDDEN)
        if student == "exercise":   # no solution code was submitted
            secrets |= secret_lines(source, *SOLUTION)
        leaks += [f"{student}/{assignment}: {line}" for line in sorted(secrets) if line in text and line not in public]
        assert "HIDDEN TESTS" not in text, f"{student}/{assignment}"
    assert not leaks, "\n".join(leaks[:20])


@pytest.mark.slow
def test_feedback_shows_visible_tests_and_the_verdict(graded):
    page = _page(graded.out, "exercise")
    visible = split_hidden(_tests(_read(EXERCISES, BROKEN_ON))[0].source, *HIDDEN)[0]
    assert visible.strip().split("\n")[-1].strip() in page
    assert "NotImplementedError" in page and "Score: 0" in page
    assert "5 of 5 points" in _page(graded.out, "solution")


@pytest.mark.slow
def test_no_sandbox_is_explicit_and_recorded(tmp_path):
    dest = tmp_path / "sub" / "ann" / BROKEN_ON
    dest.mkdir(parents=True)
    nbformat.write(_read(SOLUTIONS, BROKEN_ON), dest / f"{BROKEN_ON}.ipynb")
    assert main(["grade", str(tmp_path / "sub"), "--out", str(tmp_path / "out"), "--workers", "1",
                 "--no-sandbox", "--no-progress"]) == 0
    with open(tmp_path / "out" / "grades.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["sandbox"] == "none (--no-sandbox)" and row["score"] == row["max_score"], row


# ------------------------------------------------------------------------------------------------
# Pieces, without a sandbox (fast)
# ------------------------------------------------------------------------------------------------

def test_grading_stops_with_the_fix_when_the_sandbox_cannot_start(tmp_path, capsys, monkeypatch):
    import grader.sandbox.bwrap

    monkeypatch.setattr(grader.sandbox.bwrap.shutil, "which", lambda name: None)
    (tmp_path / "sub").mkdir()
    assert main(["grade", str(tmp_path / "sub"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "bubblewrap (`bwrap`) is not installed" in err and "apt-get install bubblewrap" in err
    assert "--no-sandbox" in err
    assert not (tmp_path / "out").exists(), "nothing is graded unprotected"


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


def test_cells_to_run_come_from_the_source_not_the_metadata():
    source = load_source(SOLUTIONS / BROKEN_ON / f"{BROKEN_ON}.ipynb")
    assert [(i.name, i.test_id, i.points) for i in source.items] == [
        ("dot_product_attention", "test_dot_product_attention", 3), ("scaled_dot_product_attention",
         "test_scaled_dot_product_attention", 5), ("self_attention", "test_self_attention", 4)]
    nb = _read(SOLUTIONS, BROKEN_ON)
    test = _tests(nb)[0]
    copy_ = copy.deepcopy(test)
    copy_.metadata.nbgrader.grade_id = "renamed"          # a renamed copy of a test cell is still a test cell
    test.metadata.nbgrader.solution = True                # and so is a re-flagged one
    imports = nb.cells[1]
    imports.source = "import os"                           # a locked cell runs as released
    nb.cells.insert(3, copy_)
    nb.cells.append(nbformat.v4.new_code_cell("print('mine')"))
    cells, notes = code_cells(source, nb)
    assert [c.id for c in cells] == ["imports", "dot_product_attention", "scaled_dot_product_attention",
                                     "self_attention", "summary", f"cell {len(nb.cells)}"]
    assert "check_dot_product_attention" in cells[0].source and not cells[0].written_by_student
    assert notes == ["the locked cell imports was edited (it ran as released)"]
    del nb.cells[1]                                         # a deleted locked cell is put back first
    cells, notes = code_cells(source, nb)
    assert cells[0].id == "imports" and "deleted" in notes[0]


class Liar(torch.Tensor):
    """A tensor subclass (a student's could answer True to every comparison)."""


def test_outcomes_are_accepted_only_as_plain_data():
    import io

    from grader.checks.results import Unsent
    from grader.sandbox import wire

    good = {"value": (torch.ones(2), 3.0), "error": None, "mutated": [], "shortcut": None}
    (outcome,) = load_outcomes(wire.encode("f", [good]), "f", 1)
    assert type(outcome.value[0]) is torch.Tensor and outcome.value[1] == 3.0
    (outcome,) = load_outcomes(wire.encode("f", [{**good, "value": torch.ones(2).as_subclass(Liar)}]), "f", 1)
    assert type(outcome.value) is Unsent and outcome.value.what == "a test_grader.Liar object"   # never a tensor

    for frame in (wire.encode("g", [good]), wire.encode("f", [good, good])):
        with pytest.raises(ValueError):
            load_outcomes(frame, "f", 1)
    buffer = io.BytesIO()
    torch.save({"item": "f", "outcomes": [good]}, buffer)   # the old format: a pickle is refused
    for frame in (b"not a frame", buffer.getvalue()):
        with pytest.raises(ValueError):
            load_outcomes(frame, "f", 1)


class DyingRunner:
    """A runner whose worker process dies on the submissions of student "killer" (picklable: module level)."""

    def run(self, job):
        from grader.records import Result

        if job.student_id == "killer":
            import os
            os._exit(1)
        return Result(job.student_id, job.assignment_id, "graded", score=1.0, max_score=1.0)

    def failure(self, job, reason):
        from grader.records import Result

        return Result(job.student_id, job.assignment_id, "failed", reason, 0.0, 1.0)


def test_a_dying_worker_costs_only_its_own_submission(tmp_path):
    from grader.cli import grade_jobs
    from grader.records import Job

    jobs = [Job(s, BROKEN_ON, tmp_path) for s in ("ann", "killer", "bob", "cat", "dan")]
    results = {r.student_id: r for r in grade_jobs(DyingRunner(), jobs, 2, tmp_path / "log", progress=False)}
    assert set(results) == {"ann", "killer", "bob", "cat", "dan"}
    assert results["killer"].status == "failed" and "died twice" in results["killer"].reason
    assert all(results[s].status == "graded" for s in ("ann", "bob", "cat", "dan"))


def test_the_summary_lists_failures_and_graded_submissions_with_a_note(tmp_path):
    """What an instructor of a large class reads at the end: the submissions that need a look, and why."""
    from grader.cli import Run, summary
    from grader.records import Result

    rows = [Result("ann", BROKEN_ON, "graded", "", 12.0, 12.0),
            Result("cat", BROKEN_ON, "graded", "cell 15: the notebook's code wrote to the grader's channel", 0.0, 12.0),
            Result("dan", BROKEN_ON, "failed", "03_attention.ipynb is not a readable notebook", 0.0, 12.0)]
    text = summary(Run(rows=rows, graded=rows), 3.0, tmp_path)
    assert "3 in all, 1 not graded normally, 1 graded with a note" in text
    assert f"not graded normally:\n  dan/{BROKEN_ON}: failed: 03_attention.ipynb is not a readable notebook" in text
    assert (f"graded, with a note worth a look:\n  cat/{BROKEN_ON}: 0 of 12: cell 15: the notebook's code wrote "
            "to the grader's channel") in text
    assert "ann/" not in text


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["grade", str(tmp_path), "--out", str(tmp_path / "o"), "--workers", "0"])
    assert err.value.code == 2 and "--workers must be at least 1; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])


@contextlib.contextmanager
def _writes_to(database: Path) -> Iterator[list[str]]:
    """The INSERT, UPDATE and DELETE statements any engine sends to the SQLite file `database` meanwhile."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        if Path(conn.engine.url.database).resolve() == database.resolve() \
                and statement.lstrip().split(" ", 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(Engine, "before_cursor_execute", seen)


def test_a_second_shard_leaves_the_shared_gradebooks_cells_alone(tmp_path):
    """prepare_course on a gradebook that already holds the assignment's cells does not generate it again:
    nbgrader would delete the notebook and add its cells back one commit at a time while another shard
    records grades against them (a CI run lost a submission's comments this way). Changed cells are stored."""
    from nbgrader.api import Gradebook

    from grader.course import prepare_course, sqlite_url

    shared, config = tmp_path / "shared.db", ROOT / "nbgrader_config.py"
    url = sqlite_url(shared)
    prepare_course(tmp_path / "shard-1", SOLUTIONS, [BROKEN_ON], url, config)
    with _writes_to(shared) as statements:
        prepare_course(tmp_path / "shard-2", SOLUTIONS, [BROKEN_ON], url, config)
    assert statements == []

    source = tmp_path / "changed"
    shutil.copytree(SOLUTIONS / BROKEN_ON, source / BROKEN_ON)
    path = source / BROKEN_ON / f"{BROKEN_ON}.ipynb"
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "test_self_attention")
    cell.metadata.nbgrader.points += 1
    nbformat.write(nb, path)
    prepare_course(tmp_path / "shard-3", source, [BROKEN_ON], url, config)
    with Gradebook(url) as gb:
        stored = gb.find_grade_cell("test_self_attention", BROKEN_ON, BROKEN_ON).max_score
    assert stored == cell.metadata.nbgrader.points


def test_results_are_merged_into_the_gradebook_at_any_url(tmp_path):
    from nbgrader.api import Gradebook

    from grader.course import prepare_course, sqlite_url
    from grader.gradebook import record
    from grader.records import CellGrade, Job, Result
    from grader.runner import SandboxRunner
    from grader.sandbox import Limits

    out, url = tmp_path / "out", sqlite_url(tmp_path / "elsewhere.db")
    template = prepare_course(out, SOLUTIONS, [BROKEN_ON], url, ROOT / "nbgrader_config.py")
    assert not (out / "gradebook.db").exists() and (out / "nbgrader_config.py").exists()
    runner = SandboxRunner(out, template, None, Limits(), isolate=True, seed=0)
    failed = runner.failure(Job("ann", BROKEN_ON, tmp_path), "broken <on> purpose")
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
    (tmp_path / "plain").mkdir()   # the failure page's folder is readable like any other (not mkdtemp's 0700)
    assert (out / "feedback" / "ann" / BROKEN_ON).stat().st_mode == (tmp_path / "plain").stat().st_mode
