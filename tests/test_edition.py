"""`python -m grader edition`: the student edition holds the released notebooks, the book and the package, and
never an answer: no solutions/, no hidden tests, no line of an instructor solution elsewhere in the tree.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_edition.py
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader import edition

ROOT = Path(__file__).resolve().parents[1]
URL = "https://github.com/example/transformer-course-student"


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    to = tmp_path_factory.mktemp("edition") / "student"
    proc = subprocess.run([sys.executable, "-m", "grader", "edition", "--to", str(to), "--repository-url", URL],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    return to, proc


def test_the_edition_has_the_released_notebooks_and_no_solutions(written):
    to, proc = written
    assert proc.returncode == 0, proc.stderr
    assert "student edition:" in proc.stdout and URL in proc.stdout
    for folder in ("solutions", "tests", "benchmarks", ".ci"):
        assert not (to / folder).exists(), folder
    released = sorted(p.relative_to(ROOT) for p in (ROOT / "exercises").glob("*/*.ipynb"))
    assert released and sorted(p.relative_to(to) for p in (to / "exercises").glob("*/*.ipynb")) == released
    assert all(filecmp.cmp(ROOT / p, to / p, shallow=False) for p in released)
    for p in released:
        text = (to / p).read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text, p
    assert f"url: {URL}" in (to / "_config.yml").read_text()   # the launch buttons open the edition
    for needed in ("book", "transformer_ref", "grader/checks", "_toc.yml", "requirements.txt", "Makefile"):
        assert (to / needed).exists(), needed


def test_a_released_notebook_imports_in_the_edition(written):
    """The student's first cell (the imports) runs against the edition's own package and checks."""
    to, _ = written
    nb = nbformat.read(to / "exercises" / "05_masking" / "05_masking.ipynb", as_version=4)
    imports = next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "imports")
    proc = subprocess.run([sys.executable, "-c", imports + "\nimport grader, transformer_ref\n"
                           "print(grader.__file__, transformer_ref.__file__)"],
                          capture_output=True, text=True, cwd=to, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(to), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(to / "grader" / "__init__.py"), str(to / "transformer_ref" / "__init__.py")]


def _course(tmp_path: Path) -> Path:
    """A small course tree (not a git checkout): one solution notebook, its release and a README."""
    root = tmp_path / "course"
    for folder in ("solutions", "exercises"):
        (root / folder / "03_attention").mkdir(parents=True)
        shutil.copy(ROOT / folder / "03_attention" / "03_attention.ipynb", root / folder / "03_attention")
    shutil.copy(ROOT / "_config.yml", root / "_config.yml")
    (root / "README.md").write_text("# The course\n")
    return root


def _a_solution_line() -> str:
    nb = nbformat.read(ROOT / "solutions" / "03_attention" / "03_attention.ipynb", as_version=4)
    source = next(c.source for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "self_attention")
    block = source.split("BEGIN SOLUTION")[1].split("END SOLUTION")[0]
    return max(block.splitlines(), key=len)


@pytest.mark.parametrize("plant", ["copied_notebook", "answer_in_notes", "hidden_tests_in_exercises"])
def test_an_answer_kept_elsewhere_stops_the_edition(tmp_path, plant):
    root = _course(tmp_path)
    if plant == "copied_notebook":   # the instructor's notebook saved into the released folder
        shutil.copy(root / "solutions" / "03_attention" / "03_attention.ipynb", root / "exercises" / "03_attention" /
                    "03_attention-Copy1.ipynb")
        culprit = "exercises/03_attention/03_attention-Copy1.ipynb"
    elif plant == "answer_in_notes":   # a line of the answer, re-indented, in some other file
        (root / "notes").mkdir()
        (root / "notes" / "draft.py").write_text("def f():\n        " + _a_solution_line().strip() + "\n")
        culprit = "notes/draft.py"
    else:
        nb = nbformat.read(root / "exercises" / "03_attention" / "03_attention.ipynb", as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\nassert True\n### END HIDDEN TESTS"))
        nbformat.write(nb, root / "exercises" / "03_attention" / "03_attention.ipynb")
        culprit = "exercises/03_attention/03_attention.ipynb"
    with pytest.raises(ValueError, match=culprit):
        edition.write_edition(root, tmp_path / "student")
    assert not (tmp_path / "student").exists() and not list(tmp_path.glob(".student-*")), "nothing half written"


def test_a_clean_course_tree_is_written_without_its_solutions(tmp_path):
    root = _course(tmp_path)
    files = edition.write_edition(root, tmp_path / "student", URL)
    assert sorted(files) == ["README.md", "_config.yml", "exercises/03_attention/03_attention.ipynb"]
    assert f"url: {URL}" in (tmp_path / "student" / "_config.yml").read_text()
