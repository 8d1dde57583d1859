"""Every instructor notebook runs top to bottom, hidden tests included, under nbval (lax mode).

One pytest subprocess per notebook: nbval runs a notebook's cells as separate items in one
kernel, so they must stay together (and off the xdist workers' item queue).
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "solutions").glob("*/*.ipynb"))


def test_there_is_a_solution_notebook_per_assignment():
    assert len(NOTEBOOKS) >= 10, [p.name for p in NOTEBOOKS]
    for nb in NOTEBOOKS:
        assert nb.stem == nb.parent.name, f"{nb} must be solutions/<id>/<id>.ipynb"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_solution_notebook_runs_with_nbval(notebook: Path):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", str(notebook.relative_to(ROOT))],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{notebook.name} failed under nbval:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
