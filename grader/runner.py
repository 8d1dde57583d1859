"""Runners: turn one submission (a student's notebooks for one assignment) into a graded `Result`.

`Runner` is the seam where isolation goes. `NbgraderRunner` runs nbgrader's autograde and feedback in
the calling process, in a private course directory, and nbgrader starts a fresh Jupyter kernel (a child
process) for the student's code. A sandboxed runner implements the same `run(job) -> Result` and does
the execution somewhere the student cannot reach the grader (see the package docstring).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import nbformat

from grader.course import ensure_alembic_on_path, nbgrader_config, sqlite_url
from grader.feedback import HIDDEN_MARKERS, failure_page, split_hidden


@dataclass(frozen=True)
class Job:
    """One submission: SUBMISSIONS/<student_id>/<assignment_id>/ holding the assignment's notebooks."""

    student_id: str
    assignment_id: str
    directory: Path


@dataclass(frozen=True)
class CellGrade:
    """The autograded score of one graded cell (nbgrader `Grade`)."""

    notebook: str
    grade_id: str
    auto_score: float | None
    max_score: float
    needs_manual_grade: bool


@dataclass
class Result:
    """What grading one submission produced. status: "graded" or "failed"; a failed one scores 0."""

    student_id: str
    assignment_id: str
    status: str
    reason: str = ""
    score: float = 0.0
    max_score: float = 0.0
    grades: list[CellGrade] = field(default_factory=list)
    comments: dict[tuple[str, str], str] = field(default_factory=dict)
    timestamp: str | None = None
    seconds: float = 0.0


class Runner(Protocol):
    """Grades one submission. Called in a worker process; must not raise for a broken submission."""

    def run(self, job: Job) -> Result: ...

    def failure(self, job: Job, reason: str) -> Result:
        """The result (and the feedback page) of a submission that could not be graded at all."""
        ...


class _Capture(logging.Handler):
    """Keeps nbgrader's warning and error messages for one job."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _error_summary(messages: list[str]) -> str:
    """The most telling line of nbgrader's error log: the exception at the end of a logged traceback."""
    for message in messages:
        if message.startswith("Traceback"):
            lines = [line for line in message.strip().splitlines() if line.strip()]
            return lines[-1].strip()
    return messages[0] if messages else "nbgrader autograde failed without a message"


def _grade_cells(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    return {
        cell.metadata["nbgrader"]["grade_id"]: cell
        for cell in nb.cells
        if cell.metadata.get("nbgrader", {}).get("grade_id")
    }


class NbgraderRunner:
    """Grades with nbgrader in a private course directory under `out`/.work (one per worker process).

    out: the prepared course (grader.course.prepare_course); template: its template gradebook.
    config_file: the course's nbgrader_config.py; timeout: seconds per cell (None: the config's).
    """

    def __init__(self, out: Path, template: Path, config_file: Path | None, timeout: int | None = None) -> None:
        self.out = Path(out).resolve()
        self.template = Path(template).resolve()
        self.config_file = config_file
        self.timeout = timeout

    # -- the private course of this process -------------------------------------------------------
    def _workspace(self) -> Path:
        ws = self.out / ".work" / f"worker-{os.getpid()}"
        if not (ws / "gradebook.db").exists():
            ws.mkdir(parents=True, exist_ok=True)
            if not (ws / "source").exists():
                (ws / "source").symlink_to(self.out / "source", target_is_directory=True)
            shutil.copyfile(self.template, ws / "gradebook.db")
        return ws

    def _notebooks(self, assignment_id: str) -> list[str]:
        return sorted(p.stem for p in (self.out / "source" / assignment_id).glob("*.ipynb"))

    # -- checks nbgrader does not report in words ------------------------------------------------------
    def _inspect(self, job: Job) -> list[str]:
        """Notes on a submission before it runs; raises ValueError when no notebook can be read."""
        notes, readable = [], 0
        for name in self._notebooks(job.assignment_id):
            path = job.directory / f"{name}.ipynb"
            if not path.exists():
                notes.append(f"missing notebook {name}.ipynb (scores 0)")
                continue
            try:
                submitted = nbformat.read(path, as_version=4)
            except Exception as err:  # nbformat raises several types (NotJSONError, ValidationError, ...)
                raise ValueError(f"{name}.ipynb is not a readable notebook ({type(err).__name__}: {err})") from err
            readable += 1
            source = _grade_cells(nbformat.read(self.out / "source" / job.assignment_id / f"{name}.ipynb", 4))
            mine = _grade_cells(submitted)
            for grade_id, cell in source.items():
                meta = cell.metadata["nbgrader"]
                if grade_id not in mine:
                    notes.append(f"cell {grade_id} was deleted (restored from the source)")
                    continue
                theirs = mine[grade_id]
                if meta.get("points") != theirs.metadata["nbgrader"].get("points") and meta.get("grade"):
                    notes.append(f"the points of cell {grade_id} were changed (restored from the source)")
                if meta.get("locked"):
                    visible, _ = split_hidden(cell.source, *HIDDEN_MARKERS)
                    if theirs.source not in (cell.source, visible):
                        notes.append(f"locked cell {grade_id} was edited (restored from the source)")
        if readable == 0:
            raise ValueError("no notebook of the assignment was submitted")
        return notes

    @staticmethod
    def _run_notes(autograded: Path) -> list[str]:
        """Timeouts and errors in the student's own cells, read from the executed notebook."""
        notes = []
        for path in sorted(autograded.glob("*.ipynb")):
            for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
                meta = cell.metadata.get("nbgrader", {})
                name = meta.get("grade_id", f"{path.stem} cell {index}")
                for output in cell.get("outputs", []):
                    if output.output_type != "error":
                        continue
                    if output.ename == "CellTimeoutError":
                        notes.append(f"{name} timed out")
                    elif output.ename == "NotImplementedError":   # the stub is still there
                        notes.append(f"{name}: not implemented")
                    elif output.ename != "KeyboardInterrupt" and not meta.get("grade"):
                        # an error in the student's own cell; a failing test is a lost point, not a note
                        notes.append(f"error in {name}: {output.ename}: {output.evalue}".strip().rstrip(":"))
        return notes

    # -- grading ---------------------------------------------------------------------------------------
    def run(self, job: Job) -> Result:
        start = time.perf_counter()
        result = Result(job.student_id, job.assignment_id, status="failed")
        try:
            notes = self._inspect(job)
            ws = self._workspace()
            messages = self._autograde(ws, job)
            autograded = ws / "autograded" / job.student_id / job.assignment_id
            if not autograded.exists():
                raise RuntimeError(f"nbgrader could not grade it: {_error_summary(messages)}")
            notes += self._run_notes(autograded)
            self._collect(ws, job, result)
            result.status = "graded"
            result.reason = "; ".join(notes)
        except Exception as err:   # a broken submission is a result, never a crash of the grader
            result = self.failure(job, str(err) or type(err).__name__)
        result.seconds = time.perf_counter() - start
        return result

    def _autograde(self, ws: Path, job: Job) -> list[str]:
        """nbgrader autograde + generate_feedback for one submission; returns the warnings/errors logged."""
        from nbgrader.converters import Autograde, GenerateFeedback
        from nbgrader.coursedir import CourseDirectory

        ensure_alembic_on_path()
        for step in ("submitted", "autograded", "feedback"):
            stale = ws / step / job.student_id / job.assignment_id
            if stale.exists():
                shutil.rmtree(stale)
        shutil.copytree(job.directory, ws / "submitted" / job.student_id / job.assignment_id)
        cfg = nbgrader_config(ws, sqlite_url(ws / "gradebook.db"), self.config_file, self.timeout)
        capture = _Capture()
        log = logging.getLogger(f"grader.nbgrader.{os.getpid()}")
        log.propagate = False
        log.setLevel(logging.INFO)
        log.addHandler(capture)
        try:
            for converter_class in (Autograde, GenerateFeedback):
                coursedir = CourseDirectory(config=cfg, log=log)
                coursedir.assignment_id = job.assignment_id
                coursedir.student_id = job.student_id
                converter = converter_class(coursedir=coursedir, config=cfg, log=log)
                converter.force = True
                try:
                    converter.start()
                except Exception:   # nbgrader logged why; the caller reads it
                    break
        finally:
            log.removeHandler(capture)
        return capture.messages

    def _collect(self, ws: Path, job: Job, result: Result) -> None:
        """Read the grades from the worker gradebook and move autograded/ and feedback/ into OUT."""
        from nbgrader.api import Gradebook

        with Gradebook(sqlite_url(ws / "gradebook.db")) as gb:
            submission = gb.find_submission(job.assignment_id, job.student_id)
            result.score, result.max_score = float(submission.score), float(submission.max_score)
            result.timestamp = submission.timestamp.isoformat() if submission.timestamp else None
            for nb in submission.notebooks:
                for grade in nb.grades:
                    result.grades.append(CellGrade(
                        nb.name, grade.name, grade.auto_score, float(grade.max_score), bool(grade.needs_manual_grade)))
                for comment in nb.comments:
                    if comment.auto_comment:
                        result.comments[(nb.name, comment.name)] = comment.auto_comment
        for step in ("autograded", "feedback"):
            src = ws / step / job.student_id / job.assignment_id
            dest = self.out / step / job.student_id / job.assignment_id
            if dest.exists():
                shutil.rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.exists():
                shutil.move(str(src), str(dest))
        if not (self.out / "feedback" / job.student_id / job.assignment_id).exists():
            raise RuntimeError("nbgrader generate_feedback produced no feedback")

    def _max_score(self, assignment_id: str) -> float:
        from nbgrader.api import Gradebook

        with Gradebook(sqlite_url(self.template)) as gb:
            return float(gb.find_assignment(assignment_id).max_score)

    def failure(self, job: Job, reason: str) -> Result:
        result = Result(job.student_id, job.assignment_id, "failed", reason, 0.0, self._max_score(job.assignment_id))
        for step in ("autograded", "feedback"):
            stale = self.out / step / job.student_id / job.assignment_id
            if stale.exists():
                shutil.rmtree(stale)
        dest = self.out / "feedback" / job.student_id / job.assignment_id
        dest.mkdir(parents=True)
        page = failure_page(job.student_id, job.assignment_id, result.reason, result.max_score)
        for name in self._notebooks(job.assignment_id):
            (dest / f"{name}.html").write_text(page)
        return result
