"""The environment `make` sets up (.venv, from requirements.txt) gives students JupyterLab with nbgrader."""

from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent   # the environment running the tests: .venv under `make test`
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@functools.lru_cache(maxsize=None)
def _jupyter(*args: str) -> str:
    jupyter = BIN / "jupyter"
    if not jupyter.exists():
        pytest.fail(f"no jupyter in {BIN}: install requirements.txt (make venv)")
    proc = subprocess.run([str(jupyter), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return ANSI.sub("", proc.stdout + proc.stderr)


def test_nbgrader_labextension_is_installed_and_enabled():
    listing = _jupyter("labextension", "list")
    line = next((line for line in listing.splitlines() if "@jupyter/nbgrader" in line), None)
    assert line is not None, f"the nbgrader JupyterLab extension is not installed:\n{listing}"
    assert "enabled" in line and "OK" in line, line


@pytest.mark.parametrize("extension", ["validate_assignment", "assignment_list", "formgrader"])
def test_nbgrader_server_extensions_are_enabled(extension):
    listing = _jupyter("server", "extension", "list")
    name = f"nbgrader.server_extensions.{extension}"
    assert re.search(rf"{re.escape(name)}\s+enabled", listing), f"{name} is not enabled:\n{listing}"
    assert re.search(rf"{re.escape(name)}\s+OK", listing), f"{name} does not load:\n{listing}"
