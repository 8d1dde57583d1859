"""The sandboxed runner: one submission (a student's notebooks for one assignment) -> a graded `Result`.

For each notebook of the assignment (the instructor's source says which items it grades and for how
many points; the submission's metadata is never believed):
  1. make the cases in this process, from seeds drawn for this grading run (the student never sees them);
  2. run the student's code cells, then each item on its cases, in the sandbox (grader.execution);
  3. here, where student code cannot reach: look for forbidden shortcuts in the student's source,
     compare each item's outputs with the reference, split its points over its groups of cases, and
     name the likely mistake (grader.checks.compare.grade);
  4. write the feedback notebook (the instructor's notebook with the student's solution cells and a
     report under each test cell), record the scores in this worker's gradebook through nbgrader's API,
     and let nbgrader's GenerateFeedback turn it into the HTML page for the student.
A submission that cannot be read at all scores 0 with the reason in grades.csv and on its feedback page.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import torch

from grader.checks import ITEMS
from grader.checks.cases import make_cases
from grader.checks.compare import grade
from grader.checks.report import parts_note
from grader.checks.shortcuts import EVASIONS, find_shortcut, shortcut_message
from grader.course import ensure_alembic_on_path, nbgrader_config, new_folder, replace_dir, sqlite_url
from grader.execution import Execution, execute, memory_note
from grader.feedback import failure_page
from grader.refresh import make_pages
from grader.records import CellGrade, ItemScore, Job, Result
from grader.sandbox.limits import Limits
from grader.submission import Cell, SourceNotebook, code_cells, find_notebook, load_source, read_notebook

SEEDS_PER_ITEM = 2


def _round(points: float) -> float:
    return round(points + 1e-9, 2)


class SandboxRunner:
    """Grades in a private course directory under `out`/.work (one per worker process).

    out: the prepared course (grader.course.prepare_course); template: its template gradebook;
    config_file: the course's nbgrader_config.py; limits: what a submission may use; isolate: False only
    for the instructor's explicit --no-sandbox; seed: the grading run's secret seed for the cases; substitute:
    an item's parts run as their references while it is graded (False: the instructor's --no-substitute).
    """

    def __init__(self, out: Path, template: Path, config_file: Path | None, limits: Limits,
                 isolate: bool, seed: int, substitute: bool = True) -> None:
        self.out = Path(out).resolve()
        self.template = Path(template).resolve()
        self.config_file = config_file
        self.limits = limits
        self.isolate = isolate
        self.seed = seed
        self.substitute = substitute
        self._cases: dict[str, list] = {}

    @property
    def mode(self) -> str:
        return "bwrap" if self.isolate else "none (--no-sandbox)"

    # -- the pieces ----------------------------------------------------------------------------------
    def _workspace(self) -> Path:
        """This worker process's private course, beside the template (in OUT/.work or a shard's folder there)."""
        ws = self.template.parent / f"worker-{os.getpid()}"
        if not (ws / "gradebook.db").exists():
            ws.mkdir(parents=True, exist_ok=True)
            if not (ws / "source").exists():
                (ws / "source").symlink_to(self.out / "source", target_is_directory=True)
            shutil.copyfile(self.template, ws / "gradebook.db")
        return ws

    def _sources(self, assignment_id: str) -> list[SourceNotebook]:
        return [load_source(p) for p in sorted((self.out / "source" / assignment_id).glob("*.ipynb"))]

    def cases(self, name: str) -> list:
        """The cases of one item for this grading run: SEEDS_PER_ITEM seeds derived from the run's seed."""
        if name not in self._cases:
            cuda = torch.cuda.is_available()
            seeds = [int.from_bytes(hashlib.sha256(f"{self.seed}:{name}:{k}".encode()).digest()[:4], "big") >> 1
                     for k in range(SEEDS_PER_ITEM)]
            self._cases[name] = [case for seed in seeds for case in make_cases(ITEMS[name], seed, cuda=cuda)]
        return self._cases[name]

    # -- grading -------------------------------------------------------------------------------------
    def run(self, job: Job) -> Result:
        start = time.perf_counter()
        try:
            result = self._run(job)
        except Exception as err:   # a broken submission is a result, never a crash of the grader
            result = self.failure(job, f"{type(err).__name__}: {err}")
        result.seconds = time.perf_counter() - start
        return result

    def _run(self, job: Job) -> Result:
        ws = self._workspace()
        for step in ("autograded", "feedback"):   # OUT's copies stay until the new ones replace them (replace_dir)
            stale = ws / step / job.student_id / job.assignment_id
            if stale.exists():
                shutil.rmtree(stale)
        result = Result(job.student_id, job.assignment_id, "graded", sandbox=self.mode)
        notes: list[str] = []
        readable = 0
        sources = self._sources(job.assignment_id)
        for source in sources:
            path, found = find_notebook(job.directory, source.name, {s.name for s in sources})
            submitted, why = read_notebook(path)
            notes += [note for note in (why, found) if note]
            if submitted is None:
                scores = [ItemScore(i.name, i.test_id, 0.0, i.points, f"0 of {i.points:g} points: {why}.") for i in source.items]
                cells: list[Cell] = []
            else:
                readable += 1
                cells, cell_notes = code_cells(source, submitted)
                notes += cell_notes
                scores = self._grade_notebook(source, cells, notes)
            for item_score in scores:
                result.grades.append(CellGrade(source.name, item_score.test_id, item_score.score, item_score.points))
                result.comments[(source.name, item_score.name)] = item_score.message
            self._write_feedback_notebook(ws, job, source, cells, scores)
        if readable == 0:
            return self.failure(job, "; ".join(notes) or "no notebook of the assignment was submitted")
        result.score = _round(sum(g.auto_score or 0.0 for g in result.grades))
        result.max_score = float(sum(g.max_score for g in result.grades))
        result.reason = "; ".join(dict.fromkeys(notes))
        self._feedback(ws, job, result)
        return result

    def _grade_notebook(self, source: SourceNotebook, cells: list[Cell], notes: list[str]) -> list[ItemScore]:
        present = {c.solution_of for c in cells if c.solution_of}
        runnable = [i.name for i in source.items if i.name in present]
        cases = {name: self.cases(name) for name in runnable}
        execution = execute(cells, runnable, cases, self.limits, self.isolate,
                            import_transformers=any("transformers" in c.source for c in cells),
                            substitute=self.substitute)
        for cell_id, error in execution.cell_errors.items():
            if cell_id in execution.stopped or error.startswith("ShortcutError"):
                notes.append(f"{cell_id}: {error}")
        static = _static_shortcuts(cells, [i.name for i in source.items])
        scores = []
        for graded in source.items:
            item, points = ITEMS[graded.name], graded.points
            if graded.name not in present:
                why = f"the solution cell `{graded.name}` is missing from your notebook, so there is nothing to grade"
            elif graded.name in static:
                why = shortcut_message(item, static[graded.name])
            elif graded.name in execution.failures:
                why = memory_note(execution.failures[graded.name], self.limits)
            else:
                why = None
            if why is not None:
                scores.append(ItemScore(graded.name, graded.test_id, 0.0, points, f"{graded.name}: 0 of {points:g} points. {why}"))
                continue
            verdict = grade(item, cases[graded.name], execution.outcomes[graded.name])
            score = _round(points * verdict.fraction)
            message = verdict.message
            cell_error = _cell_error(execution, cells, graded.name)
            if cell_error and verdict.fraction < 1:
                message += f"\nThe cell `{graded.name}` {cell_error}"
            message = memory_note(message, self.limits)
            scores.append(ItemScore(graded.name, graded.test_id, score, points, f"{score:g} of {points:g} points. {message}"))
        return _name_wrong_parts(scores, cells, execution) if self.substitute else scores

    # -- feedback ------------------------------------------------------------------------------------
    def _write_feedback_notebook(self, ws: Path, job: Job, source: SourceNotebook, cells: list[Cell],
                                 scores: list[ItemScore]) -> None:
        """The instructor's notebook with the student's solution cells and a report under each test cell."""
        nb = copy.deepcopy(source.notebook)
        written = {c.solution_of: c.source for c in reversed(cells) if c.solution_of}
        reports = {s.test_id: s.message for s in scores}
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if cell.cell_type != "code":
                continue
            cell.outputs, cell.execution_count = [], None
            if meta.get("solution"):
                cell.source = written.get(meta.get("grade_id"), "# (this cell is missing from your submission)")
            elif meta.get("grade_id") in reports:
                cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=reports[meta["grade_id"]] + "\n")]
        dest = ws / "autograded" / job.student_id / job.assignment_id
        dest.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dest / f"{source.name}.ipynb")

    def _feedback(self, ws: Path, job: Job, result: Result) -> None:
        """Record the scores in this worker's gradebook, run nbgrader's GenerateFeedback, move both into OUT."""
        from nbgrader.api import Gradebook

        from grader.gradebook import late_penalty_plugin, record

        ensure_alembic_on_path()
        cfg = nbgrader_config(ws, sqlite_url(ws / "gradebook.db"), self.config_file)
        result.timestamp = job.timestamp
        with Gradebook(sqlite_url(ws / "gradebook.db")) as gb:   # the feedback page shows these scores and penalty
            record(gb, result, late_penalty_plugin(cfg))
            result.late_penalty = gb.find_submission(job.assignment_id, job.student_id).late_submission_penalty or 0.0
        make_pages(ws, sqlite_url(ws / "gradebook.db"), self.config_file, job.student_id, job.assignment_id)
        for step in ("autograded", "feedback"):
            src = ws / step / job.student_id / job.assignment_id
            if src.exists():
                replace_dir(src, self.out / step / job.student_id / job.assignment_id)

    def _max_score(self, assignment_id: str) -> float:
        return float(sum(s.max_score for s in self._sources(assignment_id)))

    def failure(self, job: Job, reason: str) -> Result:
        """The result (and the feedback page) of a submission that could not be graded at all."""
        result = Result(job.student_id, job.assignment_id, "failed", reason, 0.0, self._max_score(job.assignment_id),
                        timestamp=job.timestamp, sandbox=self.mode)
        stale = self.out / "autograded" / job.student_id / job.assignment_id
        if stale.exists():
            shutil.rmtree(stale)
        pages = new_folder(self.template.parent, "failed-")
        page = failure_page(job.student_id, job.assignment_id, result.reason, result.max_score)
        for source in self._sources(job.assignment_id):
            (pages / f"{source.name}.html").write_text(page)
        replace_dir(pages, self.out / "feedback" / job.student_id / job.assignment_id)
        return result


def _name_wrong_parts(scores: list[ItemScore], cells: list[Cell], execution: Execution) -> list[ItemScore]:
    """Each item graded with its parts substituted, whose solution cell calls a part of the student's that lost
    points (the part's solution cell ran without an error: the notebook defines it), says so: its own score did not
    depend on that part."""
    lost = {s.name for s in scores if s.score < s.points}
    source = {c.solution_of: c.source for c in cells if c.solution_of}
    named = []
    for s in scores:
        wrong = [part.name for part in ITEMS[s.name].builds_on
                 if part.name in lost and part.name in source and _cell_error(execution, cells, part.name) is None
                 and re.search(rf"\b{re.escape(part.name)}\s*\(", source.get(s.name, ""))]
        named.append(dataclasses.replace(s, message=s.message + "".join(f"\n{parts_note(s.name, w)}" for w in wrong)))
    return named


def _cell_error(execution: Execution, cells: list[Cell], name: str) -> str | None:
    """How the solution cell of `name` went wrong ("raised ValueError at line 3: ...", "did not finish: ..."),
    or None."""
    return next((("did not finish: " if c.id in execution.stopped else "raised ") + execution.cell_errors[c.id]
                 for c in cells if c.solution_of == name and c.id in execution.cell_errors), None)


def _imports(cell: Cell) -> str:
    """The import statements of a cell (they give later cells' names their meaning). A locked cell's imports
    of the course's checks are the instructor's, not a way around them."""
    try:
        tree = ast.parse(cell.source)
    except (SyntaxError, ValueError):
        return ""
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                     and (cell.written_by_student or not _imports_grader(n)))


def _imports_grader(node: ast.Import | ast.ImportFrom) -> bool:
    modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    return any(m == "grader" or m.startswith("grader.") for m in modules)


def _static_shortcuts(cells: list[Cell], items: list[str]) -> dict[str, str]:
    """item -> the forbidden name (or way around the checks) its code refers to, read from the source.

    An item's own solution cells are read whole (with every cell's imports, for aliases). A way around
    the checks (importlib, sys.modules, exec, ...) anywhere in code the student wrote counts for every
    item. Calls hidden elsewhere are caught at run time by the trip-wires in the sandbox.
    """
    imports = "\n".join(_imports(c) for c in cells)
    evasion = next((found for c in cells if c.written_by_student
                    and (found := find_shortcut(c.source, ())) in EVASIONS), None)
    found: dict[str, str] = {}
    for name in items:
        if evasion is not None:
            found[name] = evasion
            continue
        own = "\n".join(c.source for c in cells if c.solution_of == name)
        hit = find_shortcut(imports + "\n" + own, ITEMS[name].forbidden) if own else None
        if hit is not None:
            found[name] = hit
    return found
