"""The main gradebook and grades.csv: one writer (the main process) merges the workers' results."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from nbgrader.api import Gradebook
from sqlalchemy.exc import SAWarning

from grader.runner import Result

CSV_COLUMNS = ["student_id", "assignment", "score", "max_score", "status", "reason", "seconds", "sandbox"]


def record(gb: Gradebook, result: Result) -> None:
    """Store one result in the main gradebook, as nbgrader autograde would have.

    A failed submission is recorded with every grade set to 0, the way nbgrader scores a missing notebook.
    """
    if result.status not in ("graded", "failed"):
        return
    gb.update_or_create_student(result.student_id)
    extra = {"timestamp": result.timestamp} if result.timestamp else {}
    with warnings.catch_warnings():   # nbgrader 0.9 builds new submissions in a way SQLAlchemy 2 warns about
        warnings.simplefilter("ignore", SAWarning)
        submission = gb.update_or_create_submission(result.assignment_id, result.student_id, **extra)
    if result.status == "graded":
        for cell in result.grades:
            grade = gb.find_grade(cell.grade_id, cell.notebook, result.assignment_id, result.student_id)
            grade.auto_score = cell.auto_score
            grade.needs_manual_grade = cell.needs_manual_grade
        for (notebook, name), text in result.comments.items():
            gb.find_comment(name, notebook, result.assignment_id, result.student_id).auto_comment = text
    else:
        for notebook in submission.notebooks:
            for grade in notebook.grades:
                grade.auto_score = 0.0
                grade.needs_manual_grade = False
    gb.db.commit()


def write_csv(path: Path, results: list[Result]) -> None:
    """OUT/grades.csv, one row per submission, sorted by student then assignment."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in sorted(results, key=lambda r: (r.student_id, r.assignment_id)):
            writer.writerow([r.student_id, r.assignment_id, f"{r.score:g}", f"{r.max_score:g}",
                             r.status, r.reason, f"{r.seconds:.1f}", r.sandbox])
