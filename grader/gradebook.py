"""The main gradebook and grades.csv.

Each finished submission is stored in one database transaction (`record`): nbgrader's rows (student,
submission, notebooks, grades, comments, late penalty) and the grader's own row in `grader_results`
(status, reason, seconds, sandbox), so a run killed at any moment leaves every submission either fully
recorded or absent. Several grading processes (shards, grader.cli) may write to one gradebook at once:
a unique-constraint race (two writers creating the same student) or a serialization failure rolls the
transaction back and it is tried again. grades.csv is written from the database (`write_csv`), so it
lists the submissions every shard recorded, not only the ones this process graded.
"""

from __future__ import annotations

import csv
import json
import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path

from nbgrader.api import (Assignment, Comment, Grade, Gradebook, MissingEntry, Student, SubmittedAssignment,
                         SubmittedNotebook)
from nbgrader.plugins import LateSubmissionPlugin
from nbgrader.utils import parse_utc
from sqlalchemy import Column, Float, MetaData, String, Table, Text, UniqueConstraint, and_, delete, select
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from traitlets import Float as FloatTrait

from grader.records import Result, final_score

CSV_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "reason", "seconds", "sandbox",
               "late_penalty", "final_score"]
RETRIES = 8

# The grader's own table beside nbgrader's: what nbgrader has no column for. nbgrader ignores it.
_METADATA = MetaData()
RESULTS = Table(
    "grader_results", _METADATA,
    Column("student_id", String(128), nullable=False),
    Column("assignment", String(128), nullable=False),
    Column("status", String(16), nullable=False),       # "graded" or "failed"
    Column("reason", Text, nullable=False, default=""),
    Column("score", Float, nullable=False),
    Column("max_score", Float, nullable=False),
    Column("seconds", Float, nullable=False),
    Column("sandbox", String(64), nullable=False),
    Column("timestamp", String(64)),                     # the graded submission's timestamp.txt, ISO, UTC
    Column("graded_at", String(64), nullable=False),
    UniqueConstraint("student_id", "assignment", name="grader_results_submission"),
)
# What each feedback page shows (page_signature), so that a page whose scores changed since it was made (a manual
# grade in formgrader, a due date set or moved) is made again without running the student's code (grader.refresh).
PAGES = Table(
    "grader_pages", _METADATA,
    Column("student_id", String(128), nullable=False),
    Column("assignment", String(128), nullable=False),
    Column("shown", Text, nullable=False),
    UniqueConstraint("student_id", "assignment", name="grader_pages_submission"),
)


class LatePenaltyPerDay(LateSubmissionPlugin):
    """nbgrader late-submission plugin: `percent_per_day` of the notebook's score for each day or part
    of a day after the due date (10% -> 1 minute late costs 10%, 25 hours late 20%), at most the score.

    Configured in nbgrader_config.py (c.AssignLatePenalties.plugin_class); used by `python -m grader
    grade` and by plain `nbgrader autograde`. An assignment without a due date is never late.
    """

    percent_per_day = FloatTrait(10.0, help="percent of the score lost per started day late").tag(config=True)

    def late_submission_penalty(self, student_id: str, score: float, total_seconds_late: float) -> float | None:
        if total_seconds_late <= 0:
            return None
        days = -(-total_seconds_late // 86400)   # started days
        return min(score, round(score * self.percent_per_day / 100 * days, 2))


def late_penalty_plugin(config) -> LateSubmissionPlugin:
    """The plugin nbgrader's AssignLatePenalties would use with this traitlets config."""
    from nbgrader.preprocessors import AssignLatePenalties

    preprocessor = AssignLatePenalties(config=config)
    preprocessor.init_plugin()
    return preprocessor.plugin_inst


def create_results_table(engine) -> None:
    """Create grader_results when missing (call it where a single writer prepares the gradebook)."""
    _METADATA.create_all(engine, checkfirst=True)


def record(gb: Gradebook, result: Result, late: LateSubmissionPlugin | None = None) -> None:
    """Store one result in `gb` in one transaction, as nbgrader autograde would have; retried on a race.

    A failed submission is recorded with every grade set to 0, the way nbgrader scores a missing notebook.
    `late`: the late-submission plugin; with it, a submission whose timestamp is past the assignment's due
    date gets each notebook's late_submission_penalty (nbgrader's column), clipped to [0, score].
    """
    if result.status not in ("graded", "failed"):
        return
    for attempt in range(RETRIES):
        try:
            _write(gb, result, late)
            gb.db.commit()
            return
        except (IntegrityError, OperationalError, DBAPIError) as err:
            gb.db.rollback()
            if attempt == RETRIES - 1 or not _retryable(err):
                raise
            time.sleep(random.uniform(0.05, 0.2) * 2 ** attempt)


def _retryable(err: DBAPIError) -> bool:
    """A unique-constraint race, a deadlock, a serialization failure or a locked SQLite file."""
    if isinstance(err, IntegrityError):
        return True
    code = getattr(getattr(err, "orig", None), "sqlstate", None) or getattr(getattr(err, "orig", None), "pgcode", None)
    return code in ("40001", "40P01") or "database is locked" in str(err)


def _write(gb: Gradebook, result: Result, late: LateSubmissionPlugin | None) -> None:
    db = gb.db
    if db.get(Student, result.student_id) is None:
        db.add(Student(id=result.student_id))
        db.flush()   # a concurrent writer's student makes this raise IntegrityError: rolled back and retried
    submission = _submission(gb, result)
    submission.timestamp = parse_utc(result.timestamp) if result.timestamp else None
    scores = {(c.notebook, c.grade_id): c for c in result.grades}
    for notebook in submission.notebooks:
        for grade in notebook.grades:
            if result.status == "graded":
                cell = scores.get((notebook.notebook.name, grade.cell.name))
                if cell is None:
                    continue
                grade.auto_score, grade.needs_manual_grade = cell.auto_score, cell.needs_manual_grade
            else:
                grade.auto_score, grade.needs_manual_grade = 0.0, False
        for comment in notebook.comments:
            text = result.comments.get((notebook.notebook.name, comment.cell.name))
            if text is not None:
                comment.auto_comment = text
    db.flush()
    shown = result_signature(result)   # the page the worker made: its scores and its penalty, before they change here
    result.late_penalty = apply_late_penalty(submission, late)
    key = and_(PAGES.c.student_id == result.student_id, PAGES.c.assignment == result.assignment_id)
    db.execute(delete(PAGES).where(key))
    if shown is not None:
        db.execute(PAGES.insert().values(student_id=result.student_id, assignment=result.assignment_id, shown=shown))
    db.execute(delete(RESULTS).where(and_(RESULTS.c.student_id == result.student_id,
                                          RESULTS.c.assignment == result.assignment_id)))
    db.execute(RESULTS.insert().values(
        student_id=result.student_id, assignment=result.assignment_id, status=result.status, reason=result.reason,
        score=result.score, max_score=result.max_score, seconds=round(result.seconds, 3), sandbox=result.sandbox,
        timestamp=_iso(submission.timestamp), graded_at=datetime.utcnow().isoformat(timespec="seconds")))


def apply_late_penalty(submission: SubmittedAssignment, late: LateSubmissionPlugin | None) -> float:
    """Set each notebook's late_submission_penalty from the assignment's due date as it is now and the
    notebook's score (a manual grade where one was set), clipped to [0, score]; the submission's total."""
    seconds_late = submission.total_seconds_late
    for notebook in submission.notebooks:
        notebook.late_submission_penalty = None
        if late is not None and seconds_late > 0:
            score = sum((g.manual_score if g.manual_score is not None else g.auto_score) or 0.0 for g in notebook.grades)
            penalty = late.late_submission_penalty(submission.student.id, score, seconds_late)
            if penalty is not None:
                notebook.late_submission_penalty = min(max(penalty, 0.0), score)
    return sum(nb.late_submission_penalty or 0.0 for nb in submission.notebooks)


def _signature(grades: list[tuple[str, str, float]], penalty: float) -> str:
    return json.dumps({"grades": sorted([nb, cell, round(float(score), 6)] for nb, cell, score in grades),
                       "penalty": round(float(penalty), 6)})


def result_signature(result: Result) -> str | None:
    """What the feedback page of a graded result shows: its autograded scores and the penalty the worker
    applied (None for a failure, whose page shows no scores)."""
    if result.status != "graded":
        return None
    return _signature([(c.notebook, c.grade_id, c.auto_score or 0.0) for c in result.grades], result.late_penalty)


def page_signature(submission: SubmittedAssignment) -> str:
    """What a feedback page made from the gradebook now would show: each grade's score (manual where set) and
    the late penalty."""
    grades = [(nb.notebook.name, g.cell.name, g.score or 0.0) for nb in submission.notebooks for g in nb.grades]
    return _signature(grades, sum(nb.late_submission_penalty or 0.0 for nb in submission.notebooks))


def _submission(gb: Gradebook, result: Result) -> SubmittedAssignment:
    """The student's submission of the assignment, created (not committed) with nbgrader's structure when
    missing: a SubmittedNotebook per notebook, a Grade per grade cell, a Comment per solution cell (as
    nbgrader's Gradebook.add_submission, which commits on its own)."""
    try:
        return gb.find_submission(result.assignment_id, result.student_id)
    except MissingEntry:
        pass
    assignment, student = gb.find_assignment(result.assignment_id), gb.db.get(Student, result.student_id)
    # No autoflush while the rows are built: a flush before add() would meet the half-built submission
    # through the student's and assignment's relationships, and SQLAlchemy would warn (add() below stores it).
    with gb.db.no_autoflush:
        submission = SubmittedAssignment(assignment=assignment, student=student)
        for notebook in assignment.notebooks:
            nb = SubmittedNotebook(notebook=notebook, assignment=submission)
            for cell in notebook.grade_cells:
                Grade(cell_id=cell.id, notebook=nb)
            for cell in notebook.solution_cells:
                Comment(cell_id=cell.id, notebook=nb)
            for cell in notebook.task_cells:
                Comment(cell_id=cell.id, notebook=nb)
                Grade(cell_id=cell.id, notebook=nb)
        gb.db.add(submission)
    gb.db.flush()   # a concurrent writer of the same submission makes this raise IntegrityError: retried
    return submission


def _iso(timestamp: datetime | None) -> str | None:
    return timestamp.isoformat() if timestamp is not None else None


def recorded(gb: Gradebook) -> dict[tuple[str, str], str | None]:
    """(student_id, assignment) -> the timestamp (ISO, UTC) of the submission recorded for it."""
    rows = gb.db.execute(select(RESULTS.c.student_id, RESULTS.c.assignment, RESULTS.c.timestamp)).all()
    gb.db.rollback()   # end the read transaction
    return {(s, a): t for s, a, t in rows}


def failed_at(gb: Gradebook) -> dict[tuple[str, str], datetime]:
    """(student_id, assignment) -> when its recorded result, a failure, was graded (UTC, naive): a failed
    submission whose files changed since is graded again (see changed_since)."""
    rows = gb.db.execute(select(RESULTS.c.student_id, RESULTS.c.assignment, RESULTS.c.graded_at)
                         .where(RESULTS.c.status == "failed")).all()
    gb.db.rollback()
    return {(s, a): datetime.fromisoformat(t) for s, a, t in rows}


def changed_since(folder: Path, when: datetime | None, most: int = 1000) -> bool:
    """Whether `folder` or a file in it (links not followed, at most `most` entries looked at) changed after
    `when` (UTC, naive); a rename counts, as it changes the folder. False when `when` is None."""
    if when is None:
        return False
    since = when.replace(tzinfo=timezone.utc).timestamp()
    try:
        if folder.lstat().st_mtime > since:
            return True
        for k, entry in enumerate(os.scandir(folder)):
            if k >= most or entry.stat(follow_symlinks=False).st_mtime > since:
                return k < most
    except OSError:
        return False
    return False


def stored_results(gb: Gradebook) -> dict[tuple[str, str], Result]:
    """Every recorded submission as a Result (grades not filled in), with its late penalty and its final score:
    nbgrader's score for it (a manual grade where an instructor set one in formgrader, else the autograded one)
    less the penalty, never below 0, as `python -m grader export` and nbgrader's own export compute it."""
    rows = gb.db.execute(select(RESULTS)).mappings().all()
    nbgrader = {(student, assignment): (score, penalty) for student, assignment, score, penalty in gb.db.execute(
        select(SubmittedAssignment.student_id, Assignment.name, SubmittedAssignment.score,
               SubmittedAssignment.late_submission_penalty)
        .join(Assignment, Assignment.id == SubmittedAssignment.assignment_id))}
    gb.db.rollback()
    out = {}
    for row in rows:
        key = (row["student_id"], row["assignment"])
        score, penalty = nbgrader.get(key, (None, None))
        final = None if score is None else final_score(score, penalty)
        out[key] = Result(*key, row["status"], row["reason"], row["score"], row["max_score"], timestamp=row["timestamp"],
                          seconds=row["seconds"], sandbox=row["sandbox"], late_penalty=float(penalty or 0.0),
                          final=final)
    return out


def _final(r: Result) -> str:
    """The final_score cell: the gradebook's final score where it holds one, else the score less the penalty."""
    return f"{r.final if r.final is not None else final_score(r.score, r.late_penalty):g}"


def write_csv(path: Path, results: list[Result]) -> None:
    """grades.csv, one row per submission, sorted by student then assignment; written to a temporary file
    and renamed, so a reader (or a run killed meanwhile) never sees half a file. Every cell goes through
    grader.inert.csv_cell: a student id or reason that starts like a formula is not one."""
    from grader.inert import csv_cell

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in sorted(results, key=lambda r: (r.student_id, r.assignment_id)):
            writer.writerow([csv_cell(x) for x in (
                r.student_id, r.assignment_id, f"{r.score:g}", f"{r.max_score:g}", r.status, r.reason,
                f"{r.seconds:.1f}", r.sandbox, f"{r.late_penalty:g}", _final(r))])
    os.replace(tmp, path)
