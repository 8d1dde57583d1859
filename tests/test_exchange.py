"""Submitting, the way the README says: nbgrader's exchange, end to end, then `python -m grader grade`.

The instructor (the repository's nbgrader_config.py, run from the repository root) generates and releases
03_attention into a temporary exchange directory; two students, each with a HOME and a working folder of
their own and the student settings in grader/lab/ (what `make lab` uses), fetch it, fill it in and submit it; the
instructor collects and grades the class. Both students are this OS user: nbgrader names a submission
after `--student=ID` when it is given (CourseDirectory.student_id), otherwise after the login name, so
`--student` stands for the two logins a real course would have. The instructor's commands add
`--CourseDirectory.root` and `--CourseDirectory.db_url` only to keep this test's course out of the
repository, and `--Exchange.root` for the temporary exchange (a course uses nbgrader's default).

Also here: the package a student installs with pip ships the checks and the reference, never solutions/.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "03_attention"
COURSE = "transformer-course"     # CourseDirectory.course_id in nbgrader_config.py and grader/lab/nbgrader_config.py
SOLUTION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION\n?", re.S)
STUB = re.compile(r"^[ \t]*# YOUR CODE HERE\n[ \t]*raise NotImplementedError\(\)", re.M)


def _nbgrader(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JUPYTER_", "NBGRADER_")) and k != "HOME"}
    # As in an activated virtual environment: nbgrader runs `alembic` from PATH to set up its gradebook.
    env.update(HOME=str(home), OMP_NUM_THREADS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    return env


def _source() -> list[nbformat.NotebookNode]:
    return nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4).cells


def _solutions() -> dict[str, str]:
    """grade_id -> the solution's body (the text between the markers, as a student would write it)."""
    return {c.metadata.nbgrader["grade_id"]: SOLUTION.search(c.source).group(1).rstrip()
            for c in _source() if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}


def _points() -> dict[str, float]:
    """item -> its points, from the instructor's test cells (test_<item>)."""
    return {c.metadata.nbgrader["grade_id"].removeprefix("test_"): c.metadata.nbgrader["points"]
            for c in _source() if c.metadata.get("nbgrader", {}).get("grade")}


def _fill_in(path: Path, bodies: dict[str, str]) -> None:
    """Replace each solution cell's stub with the given body, as a student editing the fetched notebook."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in bodies:
            cell.source, n = STUB.subn(lambda _: bodies[grade_id], cell.source)
            assert n == 1, f"{grade_id}: the released cell has no stub"
    nbformat.write(nb, path)


@pytest.mark.slow
@pytest.mark.xdist_group("exchange")
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap for python -m grader (`make sandbox`)")
def test_release_fetch_submit_collect_grade(tmp_path):
    course, exchange = tmp_path / "course", tmp_path / "exchange"
    for folder in ("solutions", "exercises"):   # the course as committed
        shutil.copytree(ROOT / folder / ASSIGNMENT, course / folder / ASSIGNMENT)
    instructor = _clean_env(tmp_path / "instructor")
    here = [f"--CourseDirectory.root={course}", f"--CourseDirectory.db_url=sqlite:///{course / 'gradebook.db'}"]
    exchange_opt = [f"--Exchange.root={exchange}"]

    # Instructor: generate the student version (recorded in the gradebook) and release it.
    _nbgrader(["generate_assignment", ASSIGNMENT, "--force", *here], ROOT, instructor)
    _nbgrader(["release_assignment", ASSIGNMENT, *here, *exchange_opt], ROOT, instructor)
    assert (exchange / COURSE / "outbound" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").exists()

    # Students: alice writes every function right; bob's dot_product_attention takes the softmax down the
    # columns (dim=-2), the catalogued mistake softmax_axis, and the rest is right.
    right = _solutions()
    wrong = dict(right, dot_product_attention=right["dot_product_attention"].replace("dim=-1", "dim=-2"))
    assert wrong["dot_product_attention"] != right["dot_product_attention"]
    for student, bodies in (("alice", right), ("bob", wrong)):
        work = tmp_path / student / "work"
        work.mkdir(parents=True)
        env = _clean_env(tmp_path / student / "home")
        env.update(JUPYTER_CONFIG_PATH=str(ROOT / "grader" / "lab"), NBGRADER_EXCHANGE=str(exchange))
        listed = _nbgrader(["list"], work, env)
        assert f"{COURSE} {ASSIGNMENT}" in listed.stdout + listed.stderr
        _nbgrader(["fetch_assignment", ASSIGNMENT], work, env)
        notebook = work / COURSE / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"   # grader/lab/: Exchange.path_includes_course
        _fill_in(notebook, bodies)
        _nbgrader(["submit", ASSIGNMENT, f"--student={student}"], work, env)
    assert len(list((exchange / COURSE / "inbound").iterdir())) == 2

    # Instructor: collect into <course>/submitted, then grade.
    _nbgrader(["collect", ASSIGNMENT, *here, *exchange_opt], ROOT, instructor)
    for student in ("alice", "bob"):
        assert (course / "submitted" / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").exists()
    out = tmp_path / "graded"
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(course / "submitted"), "--out", str(out),
                           "--workers", "1", "--no-progress"],
                          cwd=ROOT, env=instructor, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    with open(out / "grades.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"alice", "bob"}
    points = _points()
    assert set(points) == {"dot_product_attention", "scaled_dot_product_attention", "self_attention"}
    total = sum(points.values())
    assert float(rows["alice"]["max_score"]) == float(rows["bob"]["max_score"]) == total
    assert float(rows["alice"]["score"]) == total, rows["alice"]
    assert float(rows["bob"]["score"]) == total - points["dot_product_attention"], rows["bob"]

    from nbgrader.api import Gradebook

    with Gradebook("sqlite:///" + str(out / "gradebook.db")) as gb:
        for item, most in points.items():
            bob = gb.find_grade(f"test_{item}", ASSIGNMENT, ASSIGNMENT, "bob").score
            assert bob == (0 if item == "dot_product_attention" else most), (item, bob)
    # The catalogued mistake's message reaches bob.
    from grader.checks import ITEMS
    from grader.feedback import html_text

    (mistake,) = [m for m in ITEMS["dot_product_attention"].mistakes if m.key == "softmax_axis"]
    feedback = html_text((out / "feedback" / "bob" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())
    assert " ".join(mistake.says.split()) in " ".join(feedback.split())


def test_the_package_a_student_installs_has_the_checks_and_the_reference_never_solutions(tmp_path):
    """`pip install` of this repository (the README's one line) installs a wheel built like this one.

    Built from a copy of the checkout (a build in place would leave build/ and *.egg-info behind)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "_build", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--wheel-dir", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"transformer_ref", "grader"}, packages
    for module in ("grader/checks/__init__.py", "grader/checks/attention.py", "transformer_ref/attention.py"):
        assert module in names
    assert not [n for n in names if "solution" in n.lower() or n.endswith(".ipynb")]
