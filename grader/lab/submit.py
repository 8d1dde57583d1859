"""Submit from a student's JupyterLab without handing in the blank notebook by accident.

`make lab` opens exercises/, where the student works; the Assignments panel's *Fetch* puts a fresh copy of the
released notebooks in <course>/<assignment>/ beside it, and *Submit* hands in that folder. Straight after Fetch
it holds the notebooks exactly as released. SafeSubmit (``c.ExchangeFactory.submit`` in grader/lab/
nbgrader_config.py, so the panel and `nbgrader submit` both use it) refuses such a submission when another copy
of the same notebook, under the folder JupyterLab serves, has work in it, and says where that copy is and what
to do. A notebook counts as the released one when the text of every cell is the released text (running it and
saving outputs is not work); a copy is "of the same notebook" when it has the file name and the nbgrader cells
(grade_id) of the released one and is not the instructor's source (solutions/<assignment>/, which a clone of
the course repository has beside exercises/). A blank submission with no worked copy anywhere goes through as nbgrader's does.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from nbgrader.exchange import ExchangeError
from nbgrader.exchange.default.submit import ExchangeSubmit
from nbgrader.utils import find_all_notebooks
from traitlets import Int

MAX_NOTEBOOK_BYTES = 32 * 2**20
SOURCE_MARK = "### BEGIN SOLUTION"   # in the instructor's source notebook (solutions/), never in a student's copy


class SafeSubmit(ExchangeSubmit):
    """nbgrader's submit, but not of notebooks unchanged since release while a worked copy exists."""

    search_depth = Int(3, help="How many folders deep under the served folder to look for worked copies.").tag(
        config=True)
    search_limit = Int(5000, help="At most this many folders are looked at.").tag(config=True)

    def start(self):
        """Refuse before anything is copied; raised from here, the panel's dialog shows a two-frame traceback
        over the message (its lines kept short, so that it needs no scrolling)."""
        self.init_src()
        self.init_release()
        blank = [name for name in find_all_notebooks(self.release_path) if self._unchanged(name)]
        if blank and len(blank) == len(find_all_notebooks(self.release_path)):
            for name in blank:
                worked = self._worked_copy(name)
                if worked is not None:
                    message = self._refusal(name, worked)
                    self.log.fatal(message)
                    raise ExchangeError("\n" + textwrap.fill(message, 72, break_on_hyphens=False,
                                                              break_long_words=False))
        return super().start()

    def _unchanged(self, name: str) -> bool:
        """The notebook `name` to submit has every cell's text as released (or cannot be read: nbgrader decides)."""
        released, submitted = _cells(Path(self.release_path, name)), _cells(Path(self.src_path, name))
        return released is not None and submitted is not None and _texts(submitted) == _texts(released)

    def _worked_copy(self, name: str) -> Path | None:
        """Another copy of the released notebook `name` under the served folder, with cells changed since release."""
        released = _cells(Path(self.release_path, name))
        ids = _grade_ids(released)
        source = Path(self.src_path).resolve()
        for path in _files_named(Path(self.assignment_dir), Path(name).name, self.search_depth, self.search_limit):
            if source in path.resolve().parents:
                continue
            cells = _cells(path)
            if cells is not None and _grade_ids(cells) == ids and _texts(cells) != _texts(released) \
                    and not any(SOURCE_MARK in text for _, text in _texts(cells)):
                return path
        return None

    def _refusal(self, name: str, worked: Path) -> str:
        here = os.path.relpath(self.src_path, self.assignment_dir)
        there = os.path.relpath(worked, self.assignment_dir)
        return (f"Not submitted: {here}/{name} is the notebook exactly as released (nothing written in it), and "
                f"your work is in {there}. Copy {there} into {here}/ (replacing the blank {Path(name).name}), "
                f"then press Submit again.")


def _cells(path: Path) -> list[dict] | None:
    """A notebook's cells, or None when it is missing, too large or not a notebook."""
    try:
        if path.stat().st_size > MAX_NOTEBOOK_BYTES:
            return None
        nb = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    return [c for c in cells if isinstance(c, dict)] if isinstance(cells, list) else None


def _texts(cells: list[dict]) -> list[tuple[str, str]]:
    def text(cell: dict) -> str:
        source = cell.get("source", "")
        return "".join(source) if isinstance(source, list) else str(source)
    return [(str(cell.get("cell_type")), text(cell).strip()) for cell in cells]


def _grade_ids(cells: list[dict] | None) -> list[str]:
    return [str(c.get("metadata", {}).get("nbgrader", {}).get("grade_id")) for c in cells or []
            if isinstance(c.get("metadata"), dict) and isinstance(c["metadata"].get("nbgrader"), dict)]


def _files_named(root: Path, filename: str, depth: int, limit: int) -> list[Path]:
    """Files called `filename` up to `depth` folders below `root` (hidden folders skipped), breadth first."""
    found, level, seen = [], [root], 0
    for _ in range(depth + 1):
        below = []
        for folder in level:
            seen += 1
            if seen > limit:
                return found
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    below.append(Path(entry.path))
                elif entry.name == filename and entry.is_file(follow_symlinks=False):
                    found.append(Path(entry.path))
        level = below
    return found
