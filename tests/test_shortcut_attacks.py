"""Shortcuts the source reader cannot see score 0 for their item: the watch inside the sandbox catches them.

The attacks are in tests/shortcut_attacks.py (the ways of issue 15, item 5, and relatives of each). Three
views of each one:

- unwatched, it is right: run as the harness runs it (trip-wires installed) but with no item watched, its
  outputs get full marks, so each test below can fail;
- in the sandbox (grader.execution.execute, which runs no source reader), every case of its item is marked
  a shortcut or tampering;
- through `python -m grader grade`, its item scores 0 while the instructor's solution keeps full marks.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_shortcut_attacks.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from grader.checks import ITEMS
from grader.sandbox.limits import Limits
from shortcut_attacks import ATTACKS, HONEST, MISTAKEN, Attack

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("shortcut_attacks")]

ROOT = Path(__file__).resolve().parents[1]
SEED = 20240611
LIMITS = Limits(cell_seconds=30.0, submission_seconds=120.0)
# What the attack needs that only the old trip-wires had (a closure): unwatched it fails, watched it scores 0.
NEEDS_A_CLOSURE = {"wire_closure_aliased_getattr"}


def notebook(attack: Attack) -> nbformat.NotebookNode:
    """The instructor's solution with the attack's cells after the imports and its item's solution replaced."""
    nb = nbformat.read(ROOT / "solutions" / attack.assignment / f"{attack.assignment}.ipynb", as_version=4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells]
    if attack.solution:
        nb.cells[ids.index(attack.item)].source = attack.solution
    at = ids.index("imports") + 1
    nb.cells[at:at] = [nbformat.v4.new_code_cell(code) for code in attack.cells]
    return nb


def cells_of(attack: Attack) -> list:
    """The cells the grader runs for the attack's notebook (grader.submission.code_cells)."""
    from grader.submission import code_cells, load_source

    source = load_source(ROOT / "solutions" / attack.assignment / f"{attack.assignment}.ipynb")
    return code_cells(source, notebook(attack))[0]


def cases(item: str) -> list:
    from grader.checks.cases import make_cases

    return make_cases(ITEMS[item], SEED)


# ---------------------------------------------------------------- unwatched: each attack computes the answer

UNWATCHED = r'''
import json, os, sys
sys.path.insert(0, "tests")
import test_shortcut_attacks as t
from grader.checks import ASSIGNMENTS, ITEMS
from grader.checks.compare import grade
from grader.checks.run import run_student
from grader.checks.watch import Tripwires
from grader.sandbox.harness import run_cell

results = {}
for name in sys.argv[1:]:
    attack = t.ATTACKS[name]
    read, write = os.pipe()
    if os.fork() == 0:   # one child per attack: an attack changes the process it runs in (reload, ...)
        os.close(read)
        wires = Tripwires(sorted({n for i in ASSIGNMENTS[attack.assignment] for n in ITEMS[i].forbidden}), rebind=True)
        wires.install()
        namespace = {"__name__": "__main__"}
        errors = [e for c in t.cells_of(attack) if (e := run_cell({"id": c.id, "source": c.source}, namespace))]
        item = ITEMS[attack.item]
        cases = t.cases(attack.item)
        outcomes = run_student(item, namespace[attack.item], cases, watch=False)
        os.write(write, json.dumps([grade(item, cases, outcomes).fraction, errors]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        results[name] = json.loads(f.read() or "null")
    os.wait()
print(json.dumps(results))
'''


@pytest.fixture(scope="module")
def unwatched() -> dict:
    proc = subprocess.run([sys.executable, "-c", UNWATCHED, *ATTACKS], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - NEEDS_A_CLOSURE))
def test_unwatched_the_attack_gets_full_marks(unwatched, name):
    fraction, errors = unwatched[name]
    assert fraction >= ATTACKS[name].unwatched, errors


# ---------------------------------------------------------------- in the sandbox: the watch alone catches it

def _execute(attack: Attack):
    from grader.execution import execute

    return execute(cells_of(attack), [attack.item], {attack.item: cases(attack.item)}, LIMITS, isolate=True)


@pytest.fixture(scope="module")
def sandboxed() -> dict:
    """Every attack, then the honest notebooks and two attacks again, one after the other in one worker's zygote:
    each run is a fresh fork, so what one attack changed (a reload, the watch cleared) is not there for the next."""
    results = {name: _execute(attack) for name, attack in ATTACKS.items()}
    results.update({name: _execute(attack) for name, attack in {**HONEST, **MISTAKEN}.items()})
    results.update({f"{name} again": _execute(ATTACKS[name]) for name in ("aten_sdpa_math", "runpy_fresh_copy")})
    return results


@pytest.mark.parametrize("name", [*ATTACKS, "aten_sdpa_math again", "runpy_fresh_copy again"])
def test_in_the_sandbox_every_case_is_caught(sandboxed, name):
    attack = ATTACKS[name.removesuffix(" again")]
    execution = sandboxed[name]
    assert attack.item not in execution.failures, execution.failures
    outcomes = execution.outcomes[attack.item]
    said = [o.shortcut or "" if name not in NEEDS_A_CLOSURE else o.error or "" for o in outcomes]
    assert all(attack.caught in text for text in said), (said, execution.cell_errors)


@pytest.mark.parametrize("name", list(HONEST))
def test_in_the_sandbox_honest_code_is_not_a_shortcut(sandboxed, name):
    from grader.checks.compare import grade

    attack = HONEST[name]
    outcomes = sandboxed[name].outcomes[attack.item]
    assert [o.shortcut for o in outcomes] == [None] * len(outcomes), outcomes[0].shortcut
    assert grade(ITEMS[attack.item], cases(attack.item), outcomes).fraction == 1.0


@pytest.mark.parametrize("name", list(MISTAKEN))
def test_in_the_sandbox_a_mistake_is_left_to_the_checks(sandboxed, name):
    from grader.checks.compare import grade

    attack = MISTAKEN[name]
    outcomes = sandboxed[name].outcomes[attack.item]
    assert [o.shortcut for o in outcomes] == [None] * len(outcomes), outcomes[0].shortcut
    assert grade(ITEMS[attack.item], cases(attack.item), outcomes).fraction < 1.0


# ---------------------------------------------------------------- through `python -m grader grade`

@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> dict[str, dict]:
    """Every attack and honest notebook as a student of its assignment, graded in one run with 2 workers:
    student -> {"row": its grades.csv row, "items": item -> points, "page": its feedback page's text}."""
    import csv

    from nbgrader.api import Gradebook

    from grader.feedback import html_text

    base = tmp_path_factory.mktemp("shortcut-attacks")
    students = {**ATTACKS, **HONEST}
    for student, attack in students.items():
        folder = base / "submitted" / student / attack.assignment
        folder.mkdir(parents=True)
        nbformat.write(notebook(attack), folder / f"{attack.assignment}.ipynb")
    out = base / "graded"
    proc = subprocess.run(
        [sys.executable, "-m", "grader", "grade", str(base / "submitted"), "--out", str(out), "--workers", "2",
         "--no-progress", "--timeout", "30", "--seed", str(SEED)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with open(out / "grades.csv", newline="") as f:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(f)}
    results = {}
    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        for student, attack in students.items():
            items = {grade.name.removeprefix("test_"): grade.score
                     for grade in gb.find_submission_notebook(attack.assignment, attack.assignment, student).grades}
            page = out / "feedback" / student / attack.assignment / f"{attack.assignment}.html"
            results[student] = {"row": rows[(student, attack.assignment)], "items": items,
                                "page": html_text(page.read_text())}
    return results


@pytest.mark.parametrize("name", list(ATTACKS))
def test_graded_the_attacked_item_scores_0(graded, name):
    attack, result = ATTACKS[name], graded[name]
    assert result["items"][attack.item] == 0.0, result["page"][-3000:]
    assert "scores 0" in result["page"], result["page"][-3000:]


@pytest.mark.parametrize("name", list(HONEST))
def test_graded_honest_notebooks_keep_full_marks(graded, name):
    result = graded[name]
    assert float(result["row"]["score"]) == float(result["row"]["max_score"]) > 0, result["page"][-3000:]
