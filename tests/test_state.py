"""Stale kernel state (issue 16, item 5): a check that was given a definition the notebook no longer shows
says which cell (`In [N]`) and what to run again; a consistent kernel prints only the pass line.

Each test runs a released notebook in a Jupyter kernel as JupyterLab runs it (the kernel's ``__session__`` is
the notebook's path) and saves the notebook as the student's JupyterLab would after their edits (the text of
every cell, the `In [N]` of those that ran). The traps: a cell edited and not run again (a function in 05, a
class in 04, failing and passing), the provided `attention` helper of 04 redefined in a cell since deleted,
redefined below the test cell, or `del`-eted; causal_mask, which 05's decoder_self_attention_mask uses,
redefined in a deleted cell.

Handing in (item 7): the Assignments panel's Submit (nbgrader's AssignmentList manager, run as the panel runs it,
with `make lab`'s grader/lab/ configuration) refuses the freshly fetched blank notebook while the copy under
exercises/ has work, naming that copy; it submits once the work is copied in, and a blank one when there is no
worked copy. The same in Chromium: tests/test_lab.py.

Hints on demand (item 6): every item has two steps (the idea, the concrete step), none holds a line of the
solution's code, every notebook says how to ask, and in a kernel the calls go idea, step, "that was the last".
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

import grader.checks as gc

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES, WIDTH = 6, 80


def _solution(source: str) -> str:
    return "\n".join(line for line in source.splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


class Student:
    """A kernel on a copy of a released notebook, and the notebook as the student's JupyterLab saves it."""

    def __init__(self, tmp_path: Path, assignment: str):
        from jupyter_client.manager import start_new_kernel
        self.path = tmp_path / f"{assignment}.ipynb"
        self.nb = nbformat.read(ROOT / "exercises" / assignment / f"{assignment}.ipynb", as_version=4)
        answers = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
        self.answers = {c.metadata["nbgrader"]["grade_id"]: _solution(c.source) for c in answers.cells
                        if c.cell_type == "code"}
        for cell in self.nb.cells:   # the student has written the solutions
            if cell.cell_type == "code" and cell.metadata["nbgrader"].get("solution"):
                cell.source = self.answers[cell.metadata["nbgrader"]["grade_id"]]
        self.save()
        env = {**os.environ, "JPY_SESSION_NAME": str(self.path)}
        self.km, self.kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env=env)
        self.count = 0

    def cell(self, grade_id: str) -> nbformat.NotebookNode:
        return next(c for c in self.nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)

    def run(self, code: str) -> tuple[str, bool]:
        chunks: list[str] = []

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                chunks.append(content["text"])
            elif kind == "error":
                chunks.append("\n".join(content["traceback"]) + "\n")
        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=300)
        self.count = reply["content"]["execution_count"]
        return "".join(chunks), reply["content"]["status"] == "error"

    def run_cell(self, grade_id: str) -> tuple[str, bool]:
        """Run a cell of the notebook as it is; it shows its `In [N]` from now on."""
        cell = self.cell(grade_id)
        output = self.run(cell.source)
        cell.execution_count = self.count
        return output

    def insert(self, after: str, source: str, run: bool = True) -> nbformat.NotebookNode:
        """A new code cell of the student's below the cell `after` (run at once unless run=False)."""
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.insert(self.nb.cells.index(self.cell(after)) + 1, cell)
        if run:
            assert not self.run(source)[1]
            cell.execution_count = self.count
        return cell

    def save(self):
        """JupyterLab's (auto)save: a moment after the last cell ran, so that the file is newer than every run."""
        time.sleep(0.05)
        nb = copy.deepcopy(self.nb)
        nbformat.write(nb, self.path)

    def run_all(self, *grade_ids: str):
        for grade_id in grade_ids:
            output, raised = self.run_cell(grade_id)
            assert not raised, output

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture
def masking(tmp_path):
    student = Student(tmp_path, "05_masking")
    yield student
    student.close()


@pytest.fixture
def multi_head(tmp_path):
    student = Student(tmp_path, "04_multi_head")
    yield student
    student.close()


def assert_short(output: str):
    lines = output.strip("\n").splitlines()
    assert 1 <= len(lines) <= MAX_LINES, f"{len(lines)} lines\n{output}"
    assert all(len(line) <= WIDTH for line in lines), f"a line over {WIDTH} characters\n{output}"
    assert "Traceback" not in output and "grader/checks" not in output, output


def flat(text: str) -> str:
    return " ".join(text.split())


def pass_line(name: str) -> str:
    return rf"{re.escape(name)}: right on all \d+ visible cases \(\d+ points?\)\n"


WRONG_CAUSAL = ("def causal_mask(T_q, T_k=None, device=None):\n"
                "    T_k = T_q if T_k is None else T_k\n"
                "    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).triu(1)\n")


@pytest.mark.slow
def test_a_consistent_kernel_says_nothing_but_the_pass_lines(masking):
    masking.run_all("imports", "causal_mask", "padding_mask", "decoder_self_attention_mask")
    masking.save()
    for name in ("causal_mask", "padding_mask", "decoder_self_attention_mask"):
        output, raised = masking.run_cell(f"test_{name}")
        assert not raised and re.fullmatch(pass_line(name), output), output
    # The same cell run twice, a cell of the student's that defines nothing, a notebook not yet saved: silent.
    masking.run_all("causal_mask")
    masking.insert("causal_mask", "x = causal_mask(3)")
    output, raised = masking.run_cell("test_decoder_self_attention_mask")
    assert not raised and re.fullmatch(pass_line("decoder_self_attention_mask"), output), output


@pytest.mark.slow
@pytest.mark.parametrize("assignment", sorted(gc.ASSIGNMENTS))
def test_every_notebook_run_and_saved_in_order_prints_only_pass_lines(tmp_path, assignment):
    """Silence on a consistent kernel, for every item of every assignment (functions, classes, the helpers)."""
    student = Student(tmp_path, assignment)
    try:
        for cell in student.nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id", "")
            if cell.cell_type == "code" and not grade_id.startswith("test_") and grade_id != "summary":
                student.run_all(grade_id)
        student.save()
        for name in gc.ASSIGNMENTS[assignment]:
            output, raised = student.run_cell(f"test_{name}")
            assert not raised and re.fullmatch(pass_line(name), output), output
        output, raised = student.run_cell("summary")
        n = len(gc.ASSIGNMENTS[assignment])
        assert not raised and f"{n} of {n} right" in output and "stale" not in output, output
    finally:
        student.close()


def test_whatever_the_kernel_holds_the_state_check_does_not_raise(tmp_path, monkeypatch):
    """A corrupt or odd saved notebook, a shell without IPython's internals: no message, no exception."""
    from grader.checks import state

    class Shell:
        def __init__(self, path):
            self.user_ns = {"__session__": str(path)}
            self.execution_count = 3

        @property
        def compile(self):
            raise RuntimeError("no compiler")

    for content in ("{not json", "[]", '{"cells": 7}', '{"cells": [{"cell_type": "code", "source": 5}]}'):
        path = tmp_path / "n.ipynb"
        path.write_text(content)
        monkeypatch.setattr(state.notebook, "_shell", lambda path=path: Shell(path))
        assert state.stale("causal_mask", lambda T_q: None) is None
    monkeypatch.setattr(state.notebook, "_shell", lambda: Shell(tmp_path))   # a folder, not a notebook
    assert state.stale("causal_mask", type("X", (), {})) is None


DECORATED_CAUSAL = '''\
class _Mark:
    pass


@torch.no_grad()
def _lower(T_q, T_k, device):
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(T_k - T_q)


def causal_mask(T_q, T_k=None, device=None):
    _Mark()
    return _lower(T_q, T_q if T_k is None else T_k, device)
'''


@pytest.mark.slow
def test_helpers_of_the_students_own_decorated_or_without_methods_are_no_alarm(masking):
    masking.cell("causal_mask").source = DECORATED_CAUSAL
    masking.run_all("imports", "causal_mask")
    masking.save()
    output, raised = masking.run_cell("test_causal_mask")
    assert not raised and re.fullmatch(pass_line("causal_mask"), output), output
    masking.cell("causal_mask").source = DECORATED_CAUSAL.replace("tril(T_k - T_q)", "tril()")   # edited: named
    masking.save()
    output, raised = masking.run_cell("test_causal_mask")
    assert "has been edited since" in flat(output), output


@pytest.mark.slow
def test_a_function_edited_and_not_run_again_is_named_with_its_cell(masking):
    masking.run_all("imports", "causal_mask")
    defined_in = masking.count
    masking.cell("causal_mask").source = WRONG_CAUSAL          # edited, not run: the kernel's still passes
    masking.save()
    output, raised = masking.run_cell("test_causal_mask")
    assert not raised and re.match(pass_line("causal_mask"), output), output
    assert f"In [{defined_in}]" in output and "edited since" in flat(output) and "Run it again" in flat(output)
    assert_short(output)

    masking.cell("causal_mask").source = WRONG_CAUSAL          # now the kernel holds the wrong one ...
    masking.run_all("causal_mask")
    defined_in = masking.count
    masking.cell("causal_mask").source = masking.answers["causal_mask"]   # ... and the cell shows the fix
    masking.save()
    output, raised = masking.run_cell("test_causal_mask")
    assert raised, output
    first, *rest = output.strip().splitlines()
    assert first.startswith("The `causal_mask` in your kernel is the one In [") and f"In [{defined_in}]" in first
    assert "edited since" in flat(output) and "On that old definition: causal_mask " in flat(output)
    assert_short(output)

    masking.run_all("causal_mask")                              # run again: silent, and right
    masking.save()
    output, raised = masking.run_cell("test_causal_mask")
    assert not raised and re.fullmatch(pass_line("causal_mask"), output), output


@pytest.mark.slow
def test_a_function_the_tested_one_uses_redefined_in_a_deleted_cell_is_named(masking):
    masking.run_all("imports", "causal_mask", "padding_mask", "decoder_self_attention_mask")
    helper = masking.cell("causal_mask").execution_count
    scratch = masking.insert("padding_mask", WRONG_CAUSAL)     # tried out in a cell of its own ...
    masking.nb.cells.remove(scratch)                            # ... and deleted
    masking.save()
    output, raised = masking.run_cell("test_decoder_self_attention_mask")
    text = flat(output)   # it passes on the reference causal_mask (parts are substituted); the stale part is said
    assert not raised, output
    assert (f"decoder_self_attention_mask uses `causal_mask`. The `causal_mask` in your kernel is the one "
            f"In [{scratch.execution_count}] defined, a cell that is no longer in the notebook") in text, output
    assert f"Run In [{helper}] again, then this cell" in text, output
    assert_short(output)


WRONG_ATTENTION = ("def attention(q, k, v, mask=None):\n"
                   "    weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)\n"
                   "    return weights @ v, weights\n")


@pytest.mark.slow
def test_the_provided_helper_redefined_then_deleted_below_or_del_is_named(multi_head):
    s = multi_head
    s.run_all("imports", "split_heads", "merge_heads", "attention_helper", "MultiHeadAttention")
    helper = s.cell("attention_helper").execution_count
    scratch = s.insert("attention_helper", WRONG_ATTENTION)
    s.nb.cells.remove(scratch)
    s.save()
    output, raised = s.run_cell("test_MultiHeadAttention")
    assert raised, output
    text = flat(output)
    assert text.startswith(f"MultiHeadAttention uses `attention`. The `attention` in your kernel is the one "
                           f"In [{scratch.execution_count}] defined, a cell that is no longer in the notebook"), output
    assert f"Run In [{helper}] again, then this cell." in text, output
    assert_short(output)

    below = s.insert("test_MultiHeadAttention", WRONG_ATTENTION)   # redefined below the test cell
    s.save()
    output, raised = s.run_cell("test_MultiHeadAttention")
    assert raised and f"In [{below.execution_count}] defined, a cell below this one" in flat(output), output
    assert f"Run In [{helper}] again" in flat(output), output

    s.nb.cells.remove(below)
    assert not s.run("del attention")[1]
    s.save()
    output, raised = s.run_cell("test_MultiHeadAttention")
    assert raised and flat(output).startswith("MultiHeadAttention uses `attention`, which your kernel does not "
                                              f"have (deleted, or its cell not run). Run In [{helper}], then this "
                                              "cell."), output
    assert_short(output)

    assert "Until then: MultiHeadAttention " in flat(output), output

    scratch = s.insert("attention_helper", "from torch.nn.functional import scaled_dot_product_attention as attention")
    s.nb.cells.remove(scratch)                                  # rebound to something no cell defines, deleted
    s.save()
    output, raised = s.run_cell("test_MultiHeadAttention")
    assert raised and re.match(
        r"MultiHeadAttention uses `attention`: the one in your kernel is torch\.[\w.]*scaled_dot_product_attention, "
        rf"not the function In \[{helper}\] defines\. Run In \[{helper}\] again, then this cell\.", flat(output)), output
    assert_short(output)

    s.run_all("attention_helper")
    s.save()
    output, raised = s.run_cell("test_MultiHeadAttention")
    assert not raised and re.fullmatch(pass_line("MultiHeadAttention"), output), output

    position = s.nb.cells.index(s.cell("attention_helper"))   # the provided cell itself deleted after it ran
    provided = s.nb.cells.pop(position)
    s.save()
    output, raised = s.run_cell("test_MultiHeadAttention")
    assert not raised and re.match(pass_line("MultiHeadAttention"), output), output
    assert f"The `attention` in your kernel is the one In [{provided.execution_count}] defined, a cell that is no " \
           "longer in the notebook" in flat(output) and "the notebook defines no `attention` before this cell" \
           in flat(output), output
    assert_short(output)


@pytest.mark.slow
def test_a_class_edited_and_not_run_again_is_named_and_the_summary_says_so(multi_head):
    s = multi_head
    s.run_all("imports", "split_heads", "merge_heads", "attention_helper", "MultiHeadAttention")
    defined_in = s.count
    s.cell("MultiHeadAttention").source = s.answers["MultiHeadAttention"].replace(
        "self.W_o(merge_heads(heads))", "merge_heads(heads)")   # edited in forward, not run
    s.save()
    output, raised = s.run_cell("test_MultiHeadAttention")
    assert not raised and re.match(pass_line("MultiHeadAttention"), output), output
    assert f"The `MultiHeadAttention` in your kernel is the one In [{defined_in}] defined, but that cell has " \
           "been edited since" in flat(output), output
    assert_short(output)
    output, raised = s.run_cell("summary")
    assert not raised and re.search(rf"^  MultiHeadAttention +stale, run In \[{defined_in}\] again +0 / \d+$",
                                    output, re.M), output


# ---------------------------------------------------------------- hints on demand

def _solution_lines(assignment: str) -> dict[str, list[str]]:
    """Each solution cell's code between its markers, line by line, comments and spaces removed."""
    nb = nbformat.read(ROOT / "solutions" / assignment / f"{assignment}.ipynb", as_version=4)
    out = {}
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution"):
            body = re.findall(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", cell.source, re.S)
            out[meta["grade_id"]] = [_squeeze(line.split("  #")[0]) for chunk in body for line in chunk.splitlines()]
    return out


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _solution_code_in(hint: str, lines: list[str], shortest: int = 10) -> list[str]:
    """The solution's lines (of at least `shortest` characters without spaces) that the hint spells out."""
    squeezed = _squeeze(hint)
    return [line for line in lines if len(line) >= shortest and line in squeezed]


@pytest.mark.parametrize("assignment", sorted(gc.ASSIGNMENTS))
def test_every_item_has_the_idea_then_the_step_and_no_line_of_its_solution(assignment):
    solutions = _solution_lines(assignment)
    for name in gc.ASSIGNMENTS[assignment]:
        hints = gc.ITEMS[name].hints
        assert len(hints) == 2 and all(h.strip() for h in hints) and hints[0] != hints[1], name
        assert all(len(h) <= 400 for h in hints), f"{name}: a hint over 400 characters (it should fit a glance)"
        for h in hints:
            assert not _solution_code_in(h, solutions[name]), f"{name}'s hint spells out its solution: {h}"


def test_the_comparison_finds_a_solution_line_however_it_is_spaced():
    lines = _solution_lines("10_warmup")["warmup_linear_lr"]
    assert _solution_code_in("During the warmup: return  base_lr*step / warmup_steps .", lines)
    assert not _solution_code_in(gc.ITEMS["warmup_linear_lr"].hints[1], lines)


@pytest.mark.parametrize("folder", ["solutions", "exercises"])
@pytest.mark.parametrize("assignment", sorted(gc.ASSIGNMENTS))
def test_every_notebook_says_how_to_ask_for_a_hint(folder, assignment):
    intro = nbformat.read(ROOT / folder / assignment / f"{assignment}.ipynb", as_version=4).cells[0].source
    asked = re.findall(r'`hint\("(\w+)"\)`', intro)
    assert "`from grader.checks.hints import hint`" in intro and asked, intro
    assert all(name in gc.ASSIGNMENTS[assignment] for name in asked), asked


@pytest.mark.slow
def test_hints_in_a_kernel_go_idea_then_step_then_say_it_was_the_last(masking):
    idea, step = gc.ITEMS["causal_mask"].hints
    assert not masking.run("from grader.checks.hints import hint")[1]
    outputs = []
    for call in ('hint("causal_mask")', "hint(causal_mask)", 'hint("causal_mask")'):
        if call == "hint(causal_mask)":
            masking.run_all("imports", "causal_mask")   # asked about by the function itself
        output, raised = masking.run(call)
        assert not raised, output
        assert all(len(line) <= WIDTH for line in output.splitlines()), output
        outputs.append(flat(output))
    assert outputs[0].startswith("Hint 1 of 2 for causal_mask (the idea): ") and flat(idea) in outputs[0]
    assert step not in outputs[0] and 'Run hint("causal_mask") again' in outputs[0]
    assert outputs[1].startswith("Hint 2 of 2 for causal_mask (the concrete step): ") and flat(step) in outputs[1]
    assert outputs[2].startswith("That was the last hint for causal_mask") and flat(step) in outputs[2]
    output, raised = masking.run('hint("causal_msk")')
    assert not raised and 'Did you mean hint("causal_mask")?' in flat(output), output
    output, raised = masking.run('hint("padding_mask")')   # counted per item
    assert not raised and flat(output).startswith("Hint 1 of 2 for padding_mask"), output


# ---------------------------------------------------------------- handing in

PANEL = """
import json, sys
from nbgrader.server_extensions.assignment_list.handlers import AssignmentList
manager = AssignmentList()
manager.root_dir = sys.argv[1]
for step in sys.argv[2:]:
    do = manager.fetch_assignment if step == "fetch" else manager.submit_assignment
    print(json.dumps(do("transformer-course", "05_masking")))
"""


def _panel(served: Path, exchange: Path, *steps: str) -> list[dict]:
    """What the Assignments panel's buttons do on the server, with `make lab`'s configuration."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "NBGRADER_"))},
           "JUPYTER_CONFIG_PATH": str(ROOT / "grader" / "lab"), "NBGRADER_EXCHANGE": str(exchange),
           "NBGRADER_COURSE": "transformer-course", "JUPYTER_DATA_DIR": str(served.parent / "data")}
    done = subprocess.run([sys.executable, "-c", PANEL, str(served), *steps], env=env, capture_output=True,
                          text=True, timeout=300, cwd=served)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture
def released(tmp_path):
    """A served folder like `make lab`'s (05_masking/ with the student's work) and an exchange with 05 released."""
    served, exchange = tmp_path / "exercises", tmp_path / "exchange"
    shutil.copytree(ROOT / "exercises" / "05_masking", served / "05_masking")
    shutil.copytree(ROOT / "exercises" / "05_masking", exchange / "transformer-course" / "outbound" / "05_masking")
    (exchange / "transformer-course" / "inbound").mkdir()
    return served, exchange


def _write_work(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "causal_mask")
    cell.source = cell.source.replace("raise NotImplementedError()", "return torch.ones(T_q, T_q).tril().bool()")
    nbformat.write(nb, path)


def _submissions(exchange: Path) -> list[Path]:
    return sorted((exchange / "transformer-course" / "inbound").iterdir())


def test_submit_straight_after_fetch_is_refused_and_names_the_worked_copy(released):
    served, exchange = released
    _write_work(served / "05_masking" / "05_masking.ipynb")
    fetched, submitted = _panel(served, exchange, "fetch", "submit")
    assert fetched["success"], fetched
    assert not submitted["success"] and not _submissions(exchange)
    message = " ".join(submitted["value"].split("ExchangeError:")[-1].split())
    assert "Not submitted: transformer-course/05_masking/05_masking.ipynb is the notebook exactly as released" \
        in message and "your work is in 05_masking/05_masking.ipynb" in message, submitted["value"][-2000:]
    assert "then press Submit again" in message

    # Running the blank copy (outputs, execution counts) is not work: still refused.
    blank = served / "transformer-course" / "05_masking" / "05_masking.ipynb"
    nb = nbformat.read(blank, as_version=4)
    nb.cells[1].execution_count, nb.cells[1].outputs = 1, [nbformat.v4.new_output("stream", text="ok\n")]
    nbformat.write(nb, blank)
    (submitted,) = _panel(served, exchange, "submit")
    assert not submitted["success"] and not _submissions(exchange)

    # As the message says: the worked copy copied in, then Submit.
    shutil.copy(served / "05_masking" / "05_masking.ipynb", blank)
    (submitted,) = _panel(served, exchange, "submit")
    assert submitted["success"], submitted
    (submission,) = _submissions(exchange)
    assert "return torch.ones(T_q, T_q).tril().bool()" in (submission / "05_masking.ipynb").read_text()


def test_the_command_line_submit_refuses_too(released):
    served, exchange = released
    _write_work(served / "05_masking" / "05_masking.ipynb")
    assert _panel(served, exchange, "fetch")[0]["success"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "NBGRADER_"))},
           "JUPYTER_CONFIG_PATH": str(ROOT / "grader" / "lab"), "NBGRADER_EXCHANGE": str(exchange),
           "JUPYTER_DATA_DIR": str(served.parent / "data")}
    done = subprocess.run([str(Path(sys.executable).with_name("nbgrader")), "submit", "05_masking"], cwd=served,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and not _submissions(exchange), done.stdout + done.stderr
    assert "your work is in 05_masking/05_masking.ipynb" in " ".join(done.stderr.split()), done.stderr[-2000:]


def test_a_blank_notebook_with_no_worked_copy_or_work_in_the_fetched_copy_is_submitted(released):
    served, exchange = released
    instructor = served / "solutions" / "05_masking"       # a clone's solutions/ is no one's work
    shutil.copytree(ROOT / "solutions" / "05_masking", instructor)
    fetched, submitted = _panel(served, exchange, "fetch", "submit")    # nothing written anywhere: as nbgrader
    assert fetched["success"] and submitted["success"], submitted
    _write_work(served / "05_masking" / "05_masking.ipynb")
    _write_work(served / "transformer-course" / "05_masking" / "05_masking.ipynb")   # work in both: theirs to say
    (submitted,) = _panel(served, exchange, "submit")
    assert submitted["success"] and len(_submissions(exchange)) == 2, submitted
