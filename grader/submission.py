"""What is graded in a submitted notebook, decided from the instructor's source and never from the submission.

The instructor's notebook (OUT/source/<assignment>/<name>.ipynb) says which items are graded, their test
cells and their points (`Assignment`). A submitted notebook only contributes code: `code_cells` lists the
cells that run in the sandbox, in the student's order, where
  - test cells are dropped (found by the source's grade_ids and by their text, so a duplicated, renamed
    or re-flagged test cell is still a test cell and never runs);
  - locked instructor cells (the imports) run as the source has them, and are put back when deleted;
  - solution cells are found by grade_id (the item's name) and run as the student wrote them;
  - any other cell the student added runs as it is.
Reading never raises for a broken file: `read_notebook` returns the notebook or a reason; `find_notebook`
finds a notebook saved under another name ("03_attention (1).ipynb").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from grader.feedback import HIDDEN_MARKERS, split_hidden

MAX_NOTEBOOK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class GradedItem:
    """One graded function or class: its solution cell (grade_id = the item's name) and its test cell."""

    name: str
    test_id: str
    points: float


@dataclass
class SourceNotebook:
    """The trusted facts about one instructor notebook."""

    name: str
    notebook: nbformat.NotebookNode
    items: list[GradedItem] = field(default_factory=list)
    locked: dict[str, str] = field(default_factory=dict)      # grade_id -> source of a locked non-test code cell
    tests: dict[str, str] = field(default_factory=dict)       # test grade_id -> full source

    @property
    def max_score(self) -> float:
        return float(sum(item.points for item in self.items))


def _nbgrader(cell: nbformat.NotebookNode) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return meta if isinstance(meta, dict) else {}


def load_source(path: Path) -> SourceNotebook:
    """The graded items of an instructor notebook: each solution cell followed by its test cell."""
    nb = nbformat.read(path, as_version=4)
    source = SourceNotebook(path.stem, nb)
    solution: str | None = None
    for cell in nb.cells:
        meta = _nbgrader(cell)
        if cell.cell_type != "code" or not meta.get("grade_id"):
            continue
        if meta.get("solution"):
            solution = meta["grade_id"]
        elif meta.get("grade"):
            if solution is None:
                raise ValueError(f"{path}: test cell {meta['grade_id']} has no solution cell before it")
            source.items.append(GradedItem(solution, meta["grade_id"], float(meta.get("points", 0))))
            source.tests[meta["grade_id"]] = cell.source
            solution = None
        elif meta.get("locked"):
            source.locked[meta["grade_id"]] = cell.source
    return source


def find_notebook(folder: Path, name: str, others: set[str]) -> tuple[Path, str]:
    """(the file to grade as the source notebook `name` in `folder`, a note for the instructor or "").

    Normally <name>.ipynb. An LMS download or a second save names it otherwise ("03_attention (1).ipynb",
    "Copy of 03_attention.ipynb"): when <name>.ipynb is missing and the folder holds exactly one other notebook
    (not one of `others`, the assignment's other notebooks), that one is graded, with a note. With several,
    none is guessed: the note lists them."""
    expected = folder / f"{name}.ipynb"
    if expected.exists():
        return expected, ""
    strays = sorted(p for p in folder.glob("*.ipynb") if p.is_file() and not p.name.startswith(".")
                    and p.stem not in others)
    if len(strays) == 1:
        return strays[0], f"{strays[0].name} was graded as {name}.ipynb (the only notebook in the folder)"
    if strays:
        listed = ", ".join(p.name for p in strays[:5]) + (f" and {len(strays) - 5} more" if len(strays) > 5 else "")
        return expected, (f"the folder has {len(strays)} other notebooks ({listed}) and none was guessed: rename "
                          f"the one to grade to {name}.ipynb")
    return expected, ""


def read_notebook(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """(notebook in format 4, "") or (None, why it cannot be read). Format 3 notebooks are converted."""
    if not path.is_file():
        return None, f"{path.name} was not submitted"
    size = path.stat().st_size
    if size > MAX_NOTEBOOK_BYTES:
        return None, f"{path.name} is {size / 2**20:.0f} MiB, more than the {MAX_NOTEBOOK_BYTES // 2**20} MiB a notebook may be"
    raw = path.read_bytes()
    if not raw.strip():
        return None, f"{path.name} is empty"
    try:
        data = json.loads(raw.decode("utf-8", errors="replace"))
        nb = nbformat.reads(json.dumps(data), as_version=4)
    except Exception as err:  # JSONDecodeError, NotJSONError, ValidationError, KeyError on odd structures...
        return None, f"{path.name} is not a readable notebook ({type(err).__name__}: {str(err)[:200]})"
    if not isinstance(nb.get("cells"), list):
        return None, f"{path.name} has no list of cells"
    return nb, ""


def _text(cell: nbformat.NotebookNode) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


@dataclass
class Cell:
    """A cell to run in the sandbox. id: the grade_id (with #2, #3 for repeats) or "cell N"."""

    id: str
    source: str
    solution_of: str | None = None    # the graded item whose solution cell this is
    written_by_student: bool = True


def code_cells(source: SourceNotebook, submitted: nbformat.NotebookNode) -> tuple[list[Cell], list[str]]:
    """The cells to run, in order, and notes for the feedback (deleted or edited cells)."""
    items = {item.name for item in source.items}
    test_texts = {t.strip() for full in source.tests.values()
                  for t in (full, split_hidden(full, *HIDDEN_MARKERS)[0]) if t.strip()}
    cells: list[Cell] = []
    notes: list[str] = []
    seen: dict[str, int] = {}
    for index, cell in enumerate(submitted.cells):
        if cell.get("cell_type") != "code":
            continue
        grade_id = _nbgrader(cell).get("grade_id")
        grade_id = grade_id if isinstance(grade_id, str) else None
        text = _text(cell)
        if grade_id in source.tests or text.strip() in test_texts:
            continue
        if grade_id in source.locked:
            if seen.get(grade_id):
                continue
            if text != source.locked[grade_id]:
                notes.append(f"the locked cell {grade_id} was edited (it ran as released)")
            seen[grade_id] = 1
            cells.append(Cell(grade_id, source.locked[grade_id], written_by_student=False))
            continue
        if grade_id in items:
            seen[grade_id] = seen.get(grade_id, 0) + 1
            cell_id = grade_id if seen[grade_id] == 1 else f"{grade_id}#{seen[grade_id]}"
            cells.append(Cell(cell_id, text, solution_of=grade_id))
            continue
        cells.append(Cell(f"cell {index + 1}", text))
    for position, (grade_id, text) in enumerate(source.locked.items()):
        if grade_id not in seen:   # deleted: put it back, the imports first
            notes.append(f"the locked cell {grade_id} was deleted (it ran as released)")
            cells.insert(_restore_at(source, grade_id, cells), Cell(grade_id, text, written_by_student=False))
    for item in source.items:
        if item.name not in seen:
            notes.append(f"the solution cell {item.name} is missing")
    return cells, notes


def _restore_at(source: SourceNotebook, grade_id: str, cells: list[Cell]) -> int:
    """Where a deleted locked cell goes: before the first solution cell that follows it in the source."""
    order = [_nbgrader(c).get("grade_id") for c in source.notebook.cells]
    later = set(order[order.index(grade_id) + 1:])
    return next((i for i, c in enumerate(cells) if c.solution_of in later or c.id in later), len(cells))
