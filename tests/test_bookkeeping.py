"""`python -m grader grade` doing an instructor's bookkeeping for a real class, on 03_attention:

a notebook saved under another name (what an LMS download makes) is found and graded with a note, several are
listed and none guessed; a failed submission is graded again once its folder changes (no --regrade); --student
grades one student; students the gradebook knows without a submission get a "missing" row; the closing summary
lists only what the run concerns.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_bookkeeping.py
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from grader.feedback import html_text

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bookkeeping")]

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "03_attention"
SOLUTION = ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
BLANK = ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"


def _grade(submissions: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(submissions), "--out", str(out),
                           "--no-progress", "--seed", "7", *extra], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "grades.csv", newline="") as f:
        return {r["student_id"]: r for r in csv.DictReader(f) if r["assignment"] == ASSIGNMENT}


def _hand_in(submissions: Path, student: str, files: dict[str, Path]) -> Path:
    folder = submissions / student / ASSIGNMENT
    folder.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, folder / name)
    return folder


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    base = tmp_path_factory.mktemp("bookkeeping")
    submissions, out = base / "submitted", base / "graded"
    _hand_in(submissions, "ann", {f"{ASSIGNMENT}.ipynb": SOLUTION})
    _hand_in(submissions, "bob", {f"{ASSIGNMENT} (1).ipynb": SOLUTION})                # an LMS download
    _hand_in(submissions, "cat", {"Copy of 03_attention.ipynb": SOLUTION, "draft.ipynb": BLANK})
    return submissions, out, _grade(submissions, out, "--workers", "2")


def test_a_notebook_saved_under_another_name_is_graded_with_a_note(first):
    _, out, proc = first
    bob = _rows(out)["bob"]
    assert (bob["status"], bob["score"]) == ("graded", bob["max_score"]), bob
    assert "03_attention (1).ipynb was graded as 03_attention.ipynb" in bob["reason"]
    assert "03_attention (1).ipynb was graded as" in proc.stdout, "the summary notes it"


def test_several_notebooks_are_listed_and_none_is_guessed(first):
    _, out, _ = first
    cat = _rows(out)["cat"]
    assert (cat["status"], float(cat["score"])) == ("failed", 0.0), cat
    assert "Copy of 03_attention.ipynb, draft.ipynb" in cat["reason"] and "none was guessed" in cat["reason"]


def test_a_failed_submission_is_graded_again_when_its_folder_changes(first):
    submissions, out, _ = first
    folder = submissions / "cat" / ASSIGNMENT
    (folder / "draft.ipynb").unlink()
    proc = _grade(submissions, out)
    assert "grading the other 1" in proc.stdout, proc.stdout
    cat = _rows(out)["cat"]
    assert (cat["status"], cat["score"]) == ("graded", cat["max_score"]), cat
    assert "Copy of 03_attention.ipynb was graded as" in cat["reason"]
    again = _grade(submissions, out)
    assert "graded 0 submissions" in again.stdout, "nothing changed: nothing graded"


def test_one_student_and_missing_rows(first, tmp_path):
    from nbgrader.api import Gradebook

    submissions, out, _ = first
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        gb.add_student("dee")                   # in the class (e.g. `nbgrader db student import`), no hand-in
    shutil.copy(SOLUTION, submissions / "ann" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    proc = _grade(submissions, out, "--student", "ann", "--regrade")
    assert "graded 1 submissions" in proc.stdout, proc.stdout
    rows = _rows(out)
    assert set(rows) == {"ann", "bob", "cat", "dee"}
    assert (rows["dee"]["status"], float(rows["dee"]["score"])) == ("missing", 0.0)
    assert rows["dee"]["max_score"] == rows["ann"]["max_score"] == "12"
    assert "bob" not in proc.stdout and "cat/" not in proc.stdout and "dee" not in proc.stdout, \
        "the summary lists only what this run concerns"
    bad = subprocess.run([sys.executable, "-m", "grader", "grade", str(submissions), "--out", str(tmp_path / "o"),
                          "--student", "zed"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "--student must name a folder of SUBMISSIONS; got 'zed'" in bad.stderr


def test_a_due_date_set_in_the_repository_is_found_and_a_missing_one_is_said(tmp_path):
    """README step 3 runs nbgrader in the repository: `nbgrader db assignment add --duedate` writes the
    gradebook next to nbgrader_config.py, not OUT's. The grader takes it from there (and says so)."""
    from datetime import datetime

    from nbgrader.api import Gradebook

    from grader.course import ensure_alembic_on_path

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "nbgrader_config.py", repo / "nbgrader_config.py")
    submissions = tmp_path / "submitted"
    folder = _hand_in(submissions, "ann", {f"{ASSIGNMENT}.ipynb": SOLUTION})
    (folder / "timestamp.txt").write_text("2026-03-03 12:00:00.000000 UTC")   # two days and 2 hours late
    quiet = _grade(submissions, tmp_path / "out1", "--config", str(repo / "nbgrader_config.py"))
    assert f"{ASSIGNMENT} has no due date, so no submission of it is late" in quiet.stderr
    assert float(_rows(tmp_path / "out1")["ann"]["late_penalty"]) == 0
    ensure_alembic_on_path()     # nbgrader makes a new gradebook with alembic
    with Gradebook(f"sqlite:///{repo / 'gradebook.db'}") as gb:
        gb.update_or_create_assignment(ASSIGNMENT, duedate=datetime(2026, 3, 1, 10, 0))
    proc = _grade(submissions, tmp_path / "out2", "--config", str(repo / "nbgrader_config.py"))
    assert f"the due date of {ASSIGNMENT} (2026-03-01 10:00 UTC) is taken from {repo / 'gradebook.db'}" in proc.stderr
    ann = _rows(tmp_path / "out2")["ann"]
    assert float(ann["late_penalty"]) == pytest.approx(0.3 * float(ann["score"])), ann   # 10% per day or part
    with Gradebook(f"sqlite:///{tmp_path / 'out2' / 'gradebook.db'}") as gb:
        assert gb.find_assignment(ASSIGNMENT).duedate == datetime(2026, 3, 1, 10, 0), "kept in OUT's gradebook"


def test_final_score_is_the_graded_score_with_manual_grades_less_the_late_penalty(tmp_path):
    """grades.csv's final_score is what the feedback page and the exports show: nbgrader's score, with a manual
    grade an instructor set in formgrader, less the late penalty. A due date set after grading and a manual grade
    are picked up by running the same command again: nothing is regraded, the penalty is applied and the page is
    made again, and every output agrees."""
    from datetime import datetime

    from nbgrader.api import Gradebook

    from grader.course import ensure_alembic_on_path

    submissions, out = tmp_path / "submitted", tmp_path / "out"
    folder = _hand_in(submissions, "ann", {f"{ASSIGNMENT}.ipynb": SOLUTION})
    (folder / "timestamp.txt").write_text("2026-03-03 12:00:00.000000 UTC")   # two days and 2 hours late
    _grade(submissions, out)
    ensure_alembic_on_path()
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        gb.update_or_create_assignment(ASSIGNMENT, duedate=datetime(2026, 3, 1, 10, 0))
    again = _grade(submissions, out)
    assert "resuming: 1 of 1 submissions are in the gradebook already" in again.stdout, again.stdout
    assert "1 feedback page(s) made again, without running code" in again.stdout, again.stdout
    ann = _rows(out)["ann"]
    score, penalty = float(ann["score"]), float(ann["late_penalty"])
    assert penalty > 0 and float(ann["final_score"]) == pytest.approx(score - penalty), ann
    assert _page_score(out) == pytest.approx(score - penalty)
    page = html_text((out / "feedback" / "ann" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())
    assert f"Late submission penalty (Score: -{round(penalty, 2):g})" in page.replace(".0)", ")"), page[:600]
    assert "made again" not in _grade(submissions, out).stdout, "a page is made again only when its scores change"
    assert _exported(out, tmp_path) == {fmt: float(ann["final_score"]) for fmt in ("csv", "canvas", "moodle", "nbgrader")}
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        grade = next(g for g in gb.find_submission(ASSIGNMENT, "ann").notebooks[0].grades if g.max_score > 0)
        grade.manual_score = 0.0
        gb.db.commit()
        manual = gb.find_submission(ASSIGNMENT, "ann").score
        expected = manual - min(manual, round(manual * 0.3, 2))   # the penalty (3 days' 10%) of the score now
    _grade(submissions, out)
    ann = _rows(out)["ann"]
    assert float(ann["score"]) == score, "the autograded score stays"
    assert float(ann["final_score"]) == pytest.approx(expected), ann
    assert expected < score - penalty, "the manual grade counts"
    assert _page_score(out) == pytest.approx(expected), "the page shows the manual grade"
    _grade(submissions, out, "--regrade")
    assert _page_score(out) == pytest.approx(expected), "and keeps showing it after a regrade"
    assert _exported(out, tmp_path) == {fmt: pytest.approx(expected) for fmt in ("csv", "canvas", "moodle", "nbgrader")}


def _page_score(out: Path) -> float:
    """The total on ann's feedback page: nbgrader's "03_attention (Score: X / Y)" heading."""
    import re

    page = html_text((out / "feedback" / "ann" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())
    return float(re.search(rf"{ASSIGNMENT} \(Score: ([0-9.]+) / ", page).group(1))


def _exported(out: Path, tmp_path: Path) -> dict[str, float]:
    """ann's score in each LMS export of `python -m grader export` and in `nbgrader export`."""
    got = {}
    for fmt in ("csv", "canvas", "moodle"):
        to = tmp_path / f"{fmt}.csv"
        proc = subprocess.run([sys.executable, "-m", "grader", "export", str(out), "--format", fmt, "--to", str(to)],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr
        with open(to, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
        column = rows[0].index(ASSIGNMENT)
        (ann,) = [r for r in rows[1:] if "ann" in r[:5]]
        got[fmt] = float(ann[column])
    to = tmp_path / "nbgrader.csv"
    subprocess.run([sys.executable, "-m", "nbgrader", "export", f"--db=sqlite:///{out / 'gradebook.db'}", f"--to={to}"],
                   check=True, capture_output=True, cwd=tmp_path, timeout=120)
    with open(to, newline="") as f:
        got["nbgrader"] = next(float(r["score"]) for r in csv.DictReader(f) if r["student_id"] == "ann")
    return got
