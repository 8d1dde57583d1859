"""`python -m grader export`: the exact files Canvas and Moodle import, from a gradebook built with nbgrader's API.

Canvas's layout is checked against what its importer reads (canvas-lms lib/gradebook_importer.rb: "Student" and
"ID" first, "SIS User ID", "SIS Login ID", "Section" last of the student columns, a "Points Possible" row);
Moodle's against its CSV grade import (an identifier column mapped at import, one column per grade item).
No grading run: about 3 s, most of it one gradebook built once and the CLI run in a subprocess.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from grader.course import sqlite_url, stamp_new_gradebook
from grader.export import ExportError, export

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = {"01_history": {"test_a": 3, "test_b": 4.5}, "03_attention": {"test_c": 5}}   # points per grade cell
SCORES = {   # student -> assignment -> score of each grade cell, in ASSIGNMENTS' order
    "ann": {"01_history": (3, 4.5), "03_attention": (2.5,)},
    "bob": {"01_history": (1, 0)},
    "dee": {"03_attention": (1 / 3,)},
}
ROSTER = """student_id,name,canvas_id,sis_user_id,sis_login_id,section,email,id_number
ann,"Lee, Ann",101,S1,ann.lee,Group A,ann@uni.example,2024001
bob,"Ng, Bob",102,S2,bob.ng,Group B,bob@uni.example,2024002
cat,"Roy, Cat",103,S3,cat.roy,Group A,cat@uni.example,2024003
dee,"Ito, Dee",104,S4,dee.ito,Group B,dee@uni.example,2024004
"""


@pytest.fixture(scope="module")
def gradebook(tmp_path_factory) -> Path:
    """A gradebook as `grade` leaves it: two assignments, students ann, bob, dee (cat never submitted)."""
    from nbgrader.api import Gradebook
    from sqlalchemy.exc import SAWarning

    path = tmp_path_factory.mktemp("export") / "gradebook.db"
    stamp_new_gradebook(sqlite_url(path))
    with warnings.catch_warnings(), Gradebook(sqlite_url(path)) as gb:
        warnings.simplefilter("ignore", SAWarning)
        for assignment, cells in ASSIGNMENTS.items():
            gb.add_assignment(assignment)
            gb.add_notebook(assignment, assignment)
            for cell, points in cells.items():
                gb.add_grade_cell(cell, assignment, assignment, max_score=points, cell_type="code")
                gb.add_solution_cell(cell.replace("test_", ""), assignment, assignment)
        gb.add_student("ann", first_name="Ann", last_name="Lee", email="ann@uni.example", lms_user_id="101")
        gb.add_student("cat", first_name="Cat", last_name="Roy")
        for student, by_assignment in SCORES.items():
            gb.update_or_create_student(student)
            for assignment, scores in by_assignment.items():
                gb.add_submission(assignment, student)
                for cell, score in zip(ASSIGNMENTS[assignment], scores):
                    gb.find_grade(cell, assignment, assignment, student).auto_score = score
        gb.db.commit()
    return path


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


@pytest.fixture
def roster(tmp_path) -> Path:
    path = tmp_path / "roster.csv"
    path.write_text(ROSTER)
    return path


def test_canvas_file_has_the_documented_header_points_row_and_one_row_per_rostered_student(gradebook, roster, tmp_path):
    export(sqlite_url(gradebook), "canvas", tmp_path / "canvas.csv", roster)
    assert _rows(tmp_path / "canvas.csv") == [
        ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", "01_history", "03_attention"],
        ["Points Possible", "", "", "", "", "7.5", "5"],
        ["Lee, Ann", "101", "S1", "ann.lee", "Group A", "7.5", "2.5"],
        ["Ng, Bob", "102", "S2", "bob.ng", "Group B", "1", ""],        # 03_attention not submitted: no score
        ["Roy, Cat", "103", "S3", "cat.roy", "Group A", "", ""],       # in the roster, never submitted
        ["Ito, Dee", "104", "S4", "dee.ito", "Group B", "", "0.33"],   # two decimals, as Canvas shows
    ]


def test_assignment_columns_take_the_lms_titles(gradebook, roster, tmp_path):
    export(sqlite_url(gradebook), "canvas", tmp_path / "canvas.csv", roster,
           titles={"03_attention": "Exercise 3: attention (4711)"})
    assert _rows(tmp_path / "canvas.csv")[0][5:] == ["01_history", "Exercise 3: attention (4711)"]
    with pytest.raises(ExportError, match="--title names assignments the gradebook does not have: 99_x"):
        export(sqlite_url(gradebook), "canvas", tmp_path / "canvas.csv", roster, titles={"99_x": "X"})


def test_moodle_file_has_an_identifier_column_then_one_column_per_assignment(gradebook, roster, tmp_path):
    export(sqlite_url(gradebook), "moodle", tmp_path / "moodle.csv", roster, missing="zero")
    assert _rows(tmp_path / "moodle.csv") == [
        ["Email address", "ID number", "01_history", "03_attention"],
        ["ann@uni.example", "2024001", "7.5", "2.5"],
        ["bob@uni.example", "2024002", "1", "0"],
        ["cat@uni.example", "2024003", "0", "0"],
        ["dee@uni.example", "2024004", "0", "0.33"],
    ]


def test_plain_csv_has_the_nbgrader_ids_and_a_total(gradebook, roster, tmp_path):
    export(sqlite_url(gradebook), "csv", tmp_path / "grades.csv", roster)
    assert _rows(tmp_path / "grades.csv") == [
        ["student_id", "name", "email", "01_history", "03_attention", "total"],
        ["ann", "Lee, Ann", "ann@uni.example", "7.5", "2.5", "10"],
        ["bob", "Ng, Bob", "bob@uni.example", "1", "", "1"],
        ["cat", "Roy, Cat", "cat@uni.example", "", "", "0"],
        ["dee", "Ito, Dee", "dee@uni.example", "", "0.33", "0.33"],
    ]


def test_without_a_roster_identities_come_from_nbgraders_student_table(gradebook, tmp_path):
    export(sqlite_url(gradebook), "canvas", tmp_path / "canvas.csv")
    assert _rows(tmp_path / "canvas.csv")[2:] == [
        ["Lee, Ann", "101", "", "ann", "", "7.5", "2.5"],
        ["", "", "", "bob", "", "1", ""],     # added by grading: the nbgrader id is the login id
        ["Roy, Cat", "", "", "cat", "", "", ""],
        ["", "", "", "dee", "", "", "0.33"],
    ]


def test_a_graded_student_missing_from_the_roster_fails_and_writes_nothing(gradebook, tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("\n".join(line for line in ROSTER.splitlines() if not line.startswith("dee,")) + "\n")
    with pytest.raises(ExportError, match=r"1 graded student\(s\) are not in --roster .*: dee"):
        export(sqlite_url(gradebook), "canvas", tmp_path / "canvas.csv", roster)
    assert not (tmp_path / "canvas.csv").exists()
    assert export(sqlite_url(gradebook), "canvas", tmp_path / "canvas.csv", roster, allow_unrostered=True) == ["dee"]
    assert [row[3] for row in _rows(tmp_path / "canvas.csv")[2:]] == ["ann.lee", "bob.ng", "cat.roy"]


@pytest.mark.parametrize("text,message", [
    ("name,email\nAnn,ann@x\n", "the header must have a student_id column"),
    ("student_id,email\nann,a@x\nann,b@x\n", "line 3: student_id 'ann' is already on line 2"),
    ("student_id,email\n,a@x\n", "line 2: student_id is empty"),
    ("student_id,name\nann,Ann\nbob,Bob\ndee,Dee\n", "for --format moodle each student needs one of email, id_number"),
])
def test_a_broken_roster_is_named_with_its_line(gradebook, tmp_path, text, message):
    roster = tmp_path / "roster.csv"
    roster.write_text(text)
    with pytest.raises(ExportError, match=message.replace("(", r"\(")):
        export(sqlite_url(gradebook), "moodle", tmp_path / "out.csv", roster)


def test_the_command_line_exports_and_reports_unrostered_students(gradebook, tmp_path):
    out = tmp_path / "OUT"
    out.mkdir()
    shutil.copyfile(gradebook, out / "gradebook.db")
    roster = tmp_path / "roster.csv"
    roster.write_text("student_id,email\nann,ann@x\nbob,bob@x\n")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "grader", "export", str(out), *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)

    refused = cli("--format", "moodle", "--roster", str(roster), "--to", str(tmp_path / "m.csv"))
    assert refused.returncode == 1 and "not in --roster" in refused.stderr and "dee" in refused.stderr
    assert not (tmp_path / "m.csv").exists()
    done = cli("--format", "moodle", "--roster", str(roster), "--allow-unrostered", "--to", str(tmp_path / "m.csv"),
               "--title", "01_history=Exercise 1")
    assert done.returncode == 0, done.stderr
    assert "left out 1 graded student(s) not in the roster: dee" in done.stderr
    assert _rows(tmp_path / "m.csv") == [["Email address", "ID number", "Exercise 1", "03_attention"],
                                         ["ann@x", "", "7.5", "2.5"], ["bob@x", "", "1", ""]]
    missing = cli("--format", "csv", "--to", str(tmp_path / "x.csv"), "--db-url", sqlite_url(tmp_path / "none.db"))
    assert missing.returncode == 1 and "no gradebook at sqlite:///" in missing.stderr
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "x.csv").exists()


@pytest.fixture(scope="module")
def late_gradebook(gradebook, tmp_path_factory) -> Path:
    """The gradebook with ann's 03_attention handed in late (1.5 points off, as the late plugin records it) and
    bob's 01_history test_b given 4 points by hand in formgrader."""
    from datetime import datetime
    from nbgrader.api import Gradebook

    path = tmp_path_factory.mktemp("late") / "gradebook.db"
    shutil.copy(gradebook, path)
    with Gradebook(sqlite_url(path)) as gb:
        gb.find_submission("03_attention", "ann").timestamp = datetime(2026, 3, 2, 9, 30)
        gb.find_submission_notebook("03_attention", "03_attention", "ann").late_submission_penalty = 1.5
        gb.find_grade("test_b", "01_history", "01_history", "bob").manual_score = 4.0
        gb.db.commit()
    return path


def _nbgrader_export(db: Path, tmp_path: Path) -> dict[tuple[str, str], float]:
    """(student, assignment) -> score, from `nbgrader export` (its CSV plugin applies the penalty)."""
    to = tmp_path / "nbgrader.csv"
    subprocess.run([sys.executable, "-m", "nbgrader", "export", f"--db={sqlite_url(db)}", f"--to={to}"],
                   check=True, capture_output=True, cwd=tmp_path)
    with open(to, newline="") as f:
        return {(r["student_id"], r["assignment"]): float(r["score"]) for r in csv.DictReader(f)}


def test_every_format_exports_the_final_score_nbgrader_export_gives(late_gradebook, roster, tmp_path):
    final = _nbgrader_export(late_gradebook, tmp_path)
    assert final[("ann", "03_attention")] == 1.0 and final[("bob", "01_history")] == 5.0
    export(sqlite_url(late_gradebook), "csv", tmp_path / "grades.csv", roster)
    rows = {r[0]: r for r in _rows(tmp_path / "grades.csv")[1:]}
    assert (rows["ann"][4], rows["bob"][3]) == ("1", "5")
    export(sqlite_url(late_gradebook), "canvas", tmp_path / "canvas.csv", roster)
    canvas = {r[3]: r for r in _rows(tmp_path / "canvas.csv")[2:]}
    assert (canvas["ann.lee"][6], canvas["bob.ng"][5]) == ("1", "5")
    export(sqlite_url(late_gradebook), "moodle", tmp_path / "moodle.csv", roster)
    moodle = {r[0]: r for r in _rows(tmp_path / "moodle.csv")[1:]}
    assert (moodle["ann@uni.example"][3], moodle["bob@uni.example"][2]) == ("1", "5")
    for (student, assignment), score in final.items():
        column = ["01_history", "03_attention"].index(assignment)
        ours = rows[student][3 + column] or "0"   # nbgrader lists a missing submission as 0
        assert float(ours) == pytest.approx(score, abs=0.005), (student, assignment)


def test_raw_export_gives_the_score_before_the_penalty_and_the_submission_time(late_gradebook, roster, tmp_path):
    export(sqlite_url(late_gradebook), "csv", tmp_path / "raw.csv", roster, raw=True)
    rows = _rows(tmp_path / "raw.csv")
    assert rows[0] == ["student_id", "name", "email", "01_history", "01_history (submitted)", "03_attention",
                       "03_attention (submitted)", "total"]
    ann = next(r for r in rows if r[0] == "ann")
    assert ann[5:7] == ["2.5", "2026-03-02T09:30:00"]
    export(sqlite_url(late_gradebook), "canvas", tmp_path / "canvas.csv", roster, raw=True)
    assert _rows(tmp_path / "canvas.csv")[0][5:] == ["01_history", "03_attention"], "canvas: one column per assignment"
    times = _rows(tmp_path / "canvas.submitted.csv")
    assert times[0] == ["student_id", "assignment", "submitted"]
    assert ["ann", "03_attention", "2026-03-02T09:30:00"] in times
