"""exercises/ is what `make exercises` (nbgrader generate_assignment) makes of solutions/, and gives nothing away."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from traitlets.config import Config, PyFileConfigLoader

from grader.feedback import secret_lines

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
ASSIGNMENTS = sorted(p.name for p in SOLUTIONS.iterdir() if (p / f"{p.name}.ipynb").is_file())
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def _read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _comparable(nb: nbformat.NotebookNode) -> list[tuple]:
    """What must match between a committed and a regenerated exercise: cell kinds, sources, nbgrader metadata."""
    return [(c.cell_type, c.source, dict(c.metadata.get("nbgrader", {}))) for c in nb.cells]


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """exercises/ regenerated into a temporary directory with the course's nbgrader_config.py, in-process."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    dest = tmp_path_factory.mktemp("exercises")
    cfg = Config()
    cfg.merge(PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config())
    cfg.CourseDirectory.release_directory = str(dest)     # absolute: nbgrader writes here, not to exercises/
    cfg.GenerateAssignment.no_database = True               # = --no-db, as in the Makefile
    cfg.SaveCells.enabled = False
    for assignment in ASSIGNMENTS:
        coursedir = CourseDirectory(config=cfg)
        coursedir.assignment_id = assignment
        converter = GenerateAssignment(coursedir=coursedir, config=cfg)
        converter.force = True
        converter.start()
    return dest


def test_config_points_nbgrader_at_solutions_and_exercises():
    cfg = PyFileConfigLoader("nbgrader_config.py", path=str(ROOT)).load_config()
    assert cfg.CourseDirectory.source_directory == "solutions"
    assert cfg.CourseDirectory.release_directory == "exercises"
    assert Path(cfg.CourseDirectory.root) == ROOT
    assert 10 <= cfg.ExecutePreprocessor.timeout <= 300
    assert "grader.feedback.RedactHiddenTests" in cfg.GenerateFeedback.preprocessors


def test_every_solution_has_an_exercise_and_nothing_else():
    released = sorted(p.name for p in EXERCISES.iterdir() if p.is_dir())
    assert released == ASSIGNMENTS, "run `make exercises` after adding or removing a solution notebook"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercise_is_in_sync_with_its_solution(regenerated, assignment):
    committed = EXERCISES / assignment / f"{assignment}.ipynb"
    assert committed.exists(), "run `make exercises`"
    fresh = _read(regenerated / assignment / f"{assignment}.ipynb")
    assert _comparable(_read(committed)) == _comparable(fresh), \
        f"exercises/{assignment} is out of date with solutions/{assignment}: run `make exercises`"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercise_has_no_solution_code_and_no_hidden_tests(assignment):
    path = EXERCISES / assignment / f"{assignment}.ipynb"
    text = path.read_text()
    for marker in MARKERS:
        assert marker not in text, f"{path.relative_to(ROOT)} contains {marker!r}"
    source = _read(SOLUTIONS / assignment / f"{assignment}.ipynb")
    secrets = secret_lines(source, "BEGIN SOLUTION", "END SOLUTION") | secret_lines(
        source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
    assert secrets, "a solution notebook should have solution code and hidden tests to protect"
    cells = "\n".join(line.strip() for cell in _read(path).cells for line in cell.source.split("\n"))
    leaked = sorted(line for line in secrets if line in cells.split("\n"))
    assert not leaked, f"{path.relative_to(ROOT)} shows: {leaked[:5]}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_exercise_is_a_blank_nbgrader_assignment(assignment):
    nb = _read(EXERCISES / assignment / f"{assignment}.ipynb")
    meta = [c.metadata.get("nbgrader", {}) for c in nb.cells]
    solutions = [c for c, m in zip(nb.cells, meta) if m.get("solution")]
    tests = [m for m in meta if m.get("grade")]
    assert len(solutions) >= 2 and sum(m["points"] for m in tests) >= 10
    assert all("raise NotImplementedError()" in c.source for c in solutions if c.cell_type == "code")
    assert all(m.get("locked") for m in tests), "test cells must be read-only for students"
    assert all(c.get("outputs", []) == [] for c in nb.cells), "released notebooks carry no outputs"
