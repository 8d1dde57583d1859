"""Progress signals (issue 16, item 6): a passing test cell prints one line with its points, and the last cell
of every notebook lists which items pass (grader.checks.summary). Fast tests call the checks directly; the
kernel test runs a released notebook as a student does; `nbgrader validate` still passes on a solution; the
summary cell checks nothing where the grading sandbox runs it (no IPython). The pass line and the summary in a
kernel: tests/test_student_feedback.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch

import grader.checks as gc
from grader.checks.cases import on_meta
from grader.checks.masking import check_causal_mask
from grader.checks.points import POINTS
from grader.checks.summary import progress, summary, table

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(gc.ASSIGNMENTS)


def _cells(path: Path) -> list[nbformat.NotebookNode]:
    return nbformat.read(path, as_version=4).cells


def _nbgrader(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def _solution(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


def _namespace(assignment: str) -> dict:
    """What a student who got everything right has in their kernel: the solution's non-test cells, run."""
    namespace: dict = {"__name__": "__main__"}
    for cell in _cells(ROOT / "solutions" / assignment / f"{assignment}.ipynb"):
        meta = _nbgrader(cell)
        if cell.cell_type == "code" and not meta.get("grade") and meta.get("grade_id") != "summary":
            exec(compile(_solution(cell.source), assignment, "exec"), namespace)   # noqa: S102
    return namespace


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_points_table_is_the_notebooks_metadata(assignment):
    tests = {_nbgrader(c)["grade_id"]: _nbgrader(c)["points"]
             for c in _cells(ROOT / "solutions" / assignment / f"{assignment}.ipynb") if _nbgrader(c).get("grade")}
    assert {f"test_{name}": points for name, points in POINTS[assignment].items()} == tests, \
        "grader/checks/points.py must give every item the points of its test cell"
    assert tuple(POINTS[assignment]) == gc.ASSIGNMENTS[assignment]


def _right_causal_mask(T_q, T_k=None, device=None):
    T_k = T_q if T_k is None else T_k
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q)


def test_a_passing_check_prints_one_line_with_its_cases_and_points(capsys):
    check_causal_mask(_right_causal_mask)
    printed = capsys.readouterr().out
    n = len(gc.ITEMS["causal_mask"].cases(torch.Generator().manual_seed(0), 0))
    assert printed == f"causal_mask: right on all {n} visible cases (4 points)\n"
    check_causal_mask(_right_causal_mask, seeds=range(1, 4))   # as the hidden tests call it
    assert re.fullmatch(r"causal_mask: right on all \d+ cases of seeds 1-3 \(4 points\)\n", capsys.readouterr().out)


def test_a_failing_check_prints_no_pass_line(capsys):
    with pytest.raises(AssertionError):
        check_causal_mask(lambda T_q, T_k=None, device=None: ~_right_causal_mask(T_q, T_k, device))
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_summary_of_a_solution_is_all_right(assignment):
    rows = progress(assignment, _namespace(assignment))
    assert [(r.name, r.status, r.points) for r in rows] == \
        [(name, "right", points) for name, points in POINTS[assignment].items()]
    text = table(assignment, rows)
    total = sum(POINTS[assignment].values())
    n = len(rows)
    assert re.search(rf"^  total +{n} of {n} right +{total} / {total}$", text, re.M) and "Validate" in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text


def test_the_summary_tells_wrong_raising_missing_and_unfinished_items_apart():
    namespace = {"torch": torch,
                 "causal_mask": lambda T_q, T_k=None, device=None: ~_right_causal_mask(T_q, T_k, device),
                 "padding_mask": lambda tokens, pad_id: (tokens != pad_id).unsqueeze(1) if tokens.size(0) > 2
                 else tokens.nonexistent}
    rows = {r.name: r for r in progress("05_masking", namespace)}
    cases = gc.ITEMS["causal_mask"].cases(torch.Generator().manual_seed(0), 0)
    valued = sum(not on_meta(c) for c in cases)   # a meta case checks the device, shape and dtype: right here
    assert rows["causal_mask"].status == f"{valued} of {len(cases)} cases wrong" and not rows["causal_mask"].right
    n_pad = len(gc.ITEMS["padding_mask"].cases(torch.Generator().manual_seed(0), 0))
    assert rows["padding_mask"].status.startswith("raises on ") and f"of {n_pad} cases" in rows["padding_mask"].status
    assert rows["decoder_self_attention_mask"].status == "not defined (run its cell)"

    def unfinished(tokens, pad_id):
        raise NotImplementedError()
    namespace["decoder_self_attention_mask"] = unfinished
    namespace["causal_mask"] = "todo"
    rows = {r.name: r for r in progress("05_masking", namespace)}
    assert rows["decoder_self_attention_mask"].status == "not done"
    assert rows["causal_mask"].status == "not a function"
    text = table("05_masking", list(rows.values()))
    assert re.search(r"^  total +0 of 3 right +0 / 11$", text, re.M) and "Hidden tests" in text, text


def test_the_summary_swallows_what_the_submission_prints(capsys):
    def causal_mask(T_q, T_k=None, device=None):
        print("debugging", T_q)
        return _right_causal_mask(T_q, T_k, device)
    (row, *_) = progress("05_masking", {"causal_mask": causal_mask})
    assert row.right and capsys.readouterr().out == ""


def test_outside_ipython_the_summary_checks_nothing(capsys, monkeypatch):
    """The grading sandbox runs the locked summary cell without IPython: it must not call the references
    (the sandbox's trip-wires are on them) and prints one line that goes nowhere."""
    monkeypatch.setattr("grader.checks.summary.progress", lambda *a: pytest.fail("summary ran the checks"))
    summary("05_masking")
    assert capsys.readouterr().out.count("\n") == 1


@pytest.mark.parametrize("folder", ["solutions", "exercises"])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_last_cell_is_the_summary_and_is_not_graded(folder, assignment):
    last = _cells(ROOT / folder / assignment / f"{assignment}.ipynb")[-1]
    meta = _nbgrader(last)
    assert last.cell_type == "code" and meta.get("grade_id") == "summary"
    assert meta.get("locked") and not meta.get("grade") and not meta.get("solution") and "points" not in meta
    assert f'summary("{assignment}")' in last.source and "check_" not in last.source


@pytest.mark.slow
def test_nbgrader_validate_passes_on_a_solution_with_its_summary_cell(tmp_path):
    notebook = tmp_path / "05_masking.ipynb"
    notebook.write_bytes((ROOT / "solutions" / "05_masking" / "05_masking.ipynb").read_bytes())
    result = subprocess.run([str(Path(sys.executable).with_name("nbgrader")), "validate", str(notebook)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "Success! Your notebook passes all the tests." in result.stdout, \
        result.stdout[-3000:] + result.stderr[-2000:]
