"""The records several modules share: a submission to grade (`Job`) and what grading it produced.

A leaf module: it imports nothing of the package, so the runner, the gradebook, the course and the
command line can all use these without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Job:
    """One submission: SUBMISSIONS/<student_id>/<assignment_id>/ holding the assignment's notebooks."""

    student_id: str
    assignment_id: str
    directory: Path
    timestamp: str | None = None   # the contents of its timestamp.txt (nbgrader's submission time), if any


@dataclass(frozen=True)
class CellGrade:
    """The autograded score of one graded cell (nbgrader `Grade`)."""

    notebook: str
    grade_id: str
    auto_score: float | None
    max_score: float
    needs_manual_grade: bool = False


@dataclass
class Result:
    """What grading one submission produced. status: "graded", "failed" (scores 0) or "skipped"."""

    student_id: str
    assignment_id: str
    status: str
    reason: str = ""
    score: float = 0.0
    max_score: float = 0.0
    grades: list[CellGrade] = field(default_factory=list)
    comments: dict[tuple[str, str], str] = field(default_factory=dict)
    timestamp: str | None = None     # the submission's timestamp.txt (nbgrader's), as written there
    seconds: float = 0.0
    sandbox: str = ""
    late_penalty: float = 0.0        # points off for lateness (nbgrader's late-submission plugin), in the gradebook
    final: float | None = None       # the gradebook's score (a manual grade where one was set) less the penalty, >= 0:
                                     # what the feedback page and the LMS exports show; None before it is recorded


def final_score(score: float | None, late_penalty: float | None) -> float:
    """The one final score every output shows (grades.csv, the exports, nbgrader's own export): nbgrader's score
    for a submission (a manual grade where one was set, else the autograded one) less its late penalty, >= 0."""
    return max(0.0, float(score or 0.0) - float(late_penalty or 0.0))


@dataclass(frozen=True)
class ItemScore:
    """One graded item's points and the report shown under its test cell (and as the comment on its solution cell)."""

    name: str
    test_id: str
    score: float
    points: float
    message: str
