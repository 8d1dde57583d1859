"""What a student sees: every released notebook, run in a Jupyter kernel as a student runs it.

One kernel per assignment (exercises/<id>/<id>.ipynb): the imports cell, then for every graded item and every
catalogued mistake (grader.checks.ITEMS[...].mistakes, renamed to the item's name) the mistake's definition and
the item's visible test cell. The output must name the mistake (its `says` text), fit in six lines of at most
80 characters (what `nbgrader validate` keeps) and show no frame of the checking package; the correct
solution's test cell prints one line, its pass line with the item's points. The summary cell (the notebook's
last) lists every item's status and points, in a kernel. Also the Jupyter state traps (a test cell run before its definition, a
definition cell with a syntax error after a good one, a kernel restart) and wrong return types and arity.
The kernel tests are marked slow (about 40 s with two workers); the notebooks' chapter links are checked fast.
"""

from __future__ import annotations

import functools
import inspect
import re
import textwrap
from pathlib import Path

import nbformat
import pytest
import yaml

import grader.checks as gc
from grader.checks.points import POINTS

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENTS = sorted(gc.ASSIGNMENTS)
MAX_LINES, WIDTH = 6, 80


class Kernel:
    """A Jupyter kernel in the assignment's folder; run(code) -> (text the student sees, whether it raised)."""

    def __init__(self, cwd: Path):
        from jupyter_client.manager import start_new_kernel
        self.km, self.kc = start_new_kernel(kernel_name="python3", cwd=str(cwd))

    def run(self, code: str) -> tuple[str, bool]:
        chunks: list[str] = []

        def hook(msg):
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                chunks.append(content["text"])
            elif kind == "error":
                chunks.append("\n".join(content["traceback"]) + "\n")
            elif kind in ("execute_result", "display_data"):
                chunks.append(content["data"].get("text/plain", "") + "\n")
        reply = self.kc.execute_interactive(code, output_hook=hook, timeout=300)
        return "".join(chunks), reply["content"]["status"] == "error"

    def close(self):
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


def cells(path: Path) -> dict[str, str]:
    """The notebook's code cells by nbgrader grade_id."""
    nb = nbformat.read(path, as_version=4)
    return {c.metadata["nbgrader"]["grade_id"]: c.source for c in nb.cells
            if c.cell_type == "code" and "nbgrader" in c.metadata}


def given(path: Path) -> list[str]:
    """The code cells a student runs but does not write or grade: the imports and any given helpers."""
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and not c.metadata["nbgrader"].get("solution")
            and not c.metadata["nbgrader"].get("grade")]


def solution(source: str) -> str:
    """A solution cell without its nbgrader markers: what a student who got it right wrote."""
    return "\n".join(line for line in source.splitlines() if "### BEGIN SOLUTION" not in line
                     and "### END SOLUTION" not in line)


def as_student_wrote_it(item_name: str, impl) -> str:
    """The source of a catalogued mistake, renamed to the item's name (a partial becomes one)."""
    if isinstance(impl, functools.partial):
        inner = as_student_wrote_it("_mistake", impl.func)
        keywords = ", ".join(f"{k}={getattr(v, '__name__', None) or repr(v)}" for k, v in impl.keywords.items())
        return f"{inner}\n\nimport functools\n{item_name} = functools.partial(_mistake, {keywords})\n"
    source = textwrap.dedent(inspect.getsource(impl))
    return re.sub(rf"\b{re.escape(impl.__name__)}\b", item_name, source)


def flat(text: str) -> str:
    return " ".join(text.split())


def assert_short(output: str, context: str):
    lines = output.strip("\n").splitlines()
    assert 1 <= len(lines) <= MAX_LINES, f"{context}: {len(lines)} lines\n{output}"
    assert all(len(line) <= WIDTH for line in lines), f"{context}: a line over {WIDTH} characters\n{output}"
    assert "Traceback" not in output and "grader/checks" not in output, f"{context}: a traceback\n{output}"


@pytest.fixture(scope="module", params=ASSIGNMENTS)
def student(request):
    assignment = request.param
    folder = ROOT / "exercises" / assignment
    kernel = Kernel(folder)
    try:
        yield assignment, cells(folder / f"{assignment}.ipynb"), kernel
    finally:
        kernel.close()


@pytest.mark.slow
def test_every_mistake_is_named_in_six_lines_and_the_solution_prints_its_pass_line(student):
    assignment, released, kernel = student
    answers = cells(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    module = gc.MODULES[assignment]
    names = gc.ASSIGNMENTS[assignment]
    for source in given(ROOT / "exercises" / assignment / f"{assignment}.ipynb"):
        output, raised = kernel.run(source)
        assert not raised, output

    # A test cell run before its function is defined says which cell to run.
    first = names[0]
    output, raised = kernel.run(released[f"test_{first}"])
    assert raised and f"run the cell that defines `{first}` first" in flat(output), output
    assert_short(output, "test cell before its definition")

    # The mistakes' helpers (attend, softmax_rows, ...) as the student's own helpers would be.
    output, raised = kernel.run(f"import {module} as _m\nglobals().update({{k: v for k, v in vars(_m).items() "
                                f"if not k.startswith('__') and k not in {list(names)!r}}})")
    assert not raised, output
    failures = []
    for name in names:
        test_cell = released[f"test_{name}"]
        assert test_cell.count(f"check_{name}(") == 1 and "assert" not in test_cell, test_cell
        for mistake in gc.ITEMS[name].mistakes:
            output, raised = kernel.run(as_student_wrote_it(name, mistake.impl))
            assert not raised, output
            output, raised = kernel.run(test_cell)
            context = f"{name}: mistake {mistake.key!r}"
            if not (raised and flat(f"Likely mistake: {mistake.says}") in flat(output)):
                failures.append(f"{context} is not named:\n{output}")
                continue
            assert_short(output, context)
        output, raised = kernel.run(solution(answers[name]))
        assert not raised, output
        output, raised = kernel.run(test_cell)
        assert not raised and pass_line(name).fullmatch(output), f"{name}: the solution's test cell says\n{output}"
    assert not failures, "\n\n".join(failures)

    # A definition cell with a syntax error after a good one: the test cell says the definition is stale.
    last = names[-1]
    header = next(line for line in solution(answers[last]).splitlines()
                  if line.startswith(("def ", "class ")))
    output, raised = kernel.run(f"{header}\n    return x +* 1\n")
    assert raised and "SyntaxError" in output
    output, raised = kernel.run(released[f"test_{last}"])
    assert raised and "raised SyntaxError the last time you ran it" in flat(output), output
    assert_short(output, "stale definition")
    kernel.run(solution(answers[last]))
    output, raised = kernel.run(released[f"test_{last}"])
    assert not raised and pass_line(last).fullmatch(output), output


def pass_line(name: str) -> re.Pattern:
    """The one line a passing visible test cell prints."""
    points = next(p for items in POINTS.values() for n, p in items.items() if n == name)
    return re.compile(rf"{re.escape(name)}: right on all \d+ visible cases \({points} points?\)\n")


@pytest.mark.slow
def test_a_released_notebook_in_a_kernel_prints_pass_lines_and_its_summary():
    assignment = "05_masking"
    released = cells(ROOT / "exercises" / assignment / f"{assignment}.ipynb")
    answers = cells(ROOT / "solutions" / assignment / f"{assignment}.ipynb")
    kernel = Kernel(ROOT / "exercises" / assignment)
    try:
        assert not kernel.run(released["imports"])[1]
        for name in gc.ASSIGNMENTS[assignment]:            # the released stubs, run as they are
            assert not kernel.run(released[name])[1]
        output, raised = kernel.run(released["summary"])
        assert not raised, output
        for name in gc.ASSIGNMENTS[assignment]:
            assert re.search(rf"^  {name} +not done +0 / {POINTS[assignment][name]}$", output, re.M), output
        assert re.search(r"^  total +0 of 3 right +0 / 11$", output, re.M), output

        assert not kernel.run(solution(answers["causal_mask"]))[1]
        output, raised = kernel.run(released["test_causal_mask"])
        assert not raised and pass_line("causal_mask").fullmatch(output), output
        output, _ = kernel.run(released["summary"])
        assert re.search(r"^  causal_mask +right +4 / 4$", output, re.M) \
            and re.search(r"^  total +1 of 3 right +4 / 11$", output, re.M), output

        # An edit of the cell that raised keeps the old definition: the summary does not count it as the new one.
        assert kernel.run("def causal_mask(T_q, T_k=None, device=None):\n    return +* 1\n")[1]
        output, _ = kernel.run(released["summary"])
        assert re.search(r"^  causal_mask +old definition \(its cell raised\) +0 / 4$", output, re.M), output
    finally:
        kernel.close()


@pytest.fixture(scope="module")
def attention_kernel():
    kernel = Kernel(ROOT / "exercises" / "03_attention")
    yield cells(ROOT / "exercises" / "03_attention" / "03_attention.ipynb"), kernel
    kernel.close()


WRONG = {
    "numpy": ("def scaled_dot_product_attention(q, k, v, mask=None):\n"
              "    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), -1)\n"
              "    return (w @ v).numpy(), w.numpy()\n",
              "output: expected a torch.Tensor of shape (2, 3, 6); got ndarray (numpy) of shape (2, 3, 6)"),
    "output only": ("def scaled_dot_product_attention(q, k, v, mask=None):\n"
                    "    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), -1)\n"
                    "    return w @ v\n",
                    "should return a tuple (output, weights); it returned a tensor of shape (2, 3, 6)"),
    "no mask argument": ("def scaled_dot_product_attention(q, k, v):\n"
                         "    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), -1)\n"
                         "    return w @ v, w\n",
                         "cannot be called with 3 positional arguments, mask: got an unexpected keyword "
                         "argument 'mask'"),
    "in place": ("def scaled_dot_product_attention(q, k, v, mask=None):\n"
                 "    q /= math.sqrt(q.size(-1))\n"
                 "    return torch.softmax(q @ k.transpose(-2, -1), -1) @ v, None\n",
                 "changed its input q in place"),
    "float64": ("def scaled_dot_product_attention(q, k, v, mask=None):\n"
                "    q, k, v = q.double(), k.double(), v.double()\n"
                "    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.size(-1)), -1)\n"
                "    return w @ v, w\n",
                "output: expected dtype torch.float32, got torch.float64"),
    "not a function": ("scaled_dot_product_attention = 'todo'\n",
                       "check_scaled_dot_product_attention checks your function scaled_dot_product_attention; "
                       "it was given str 'todo'."),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(WRONG))
def test_wrong_types_arity_dtype_and_in_place_get_their_own_line(attention_kernel, case):
    released, kernel = attention_kernel
    assert not kernel.run(released["imports"])[1]
    source, expected = WRONG[case]
    assert not kernel.run(source)[1]
    output, raised = kernel.run(released["test_scaled_dot_product_attention"])
    assert raised and expected in flat(output), output
    assert_short(output, case)


@pytest.mark.slow
def test_after_a_kernel_restart_the_student_is_told_to_run_from_the_top(attention_kernel):
    released, kernel = attention_kernel
    kernel.run("%reset -f")
    answers = cells(ROOT / "solutions" / "03_attention" / "03_attention.ipynb")
    assert not kernel.run(solution(answers["scaled_dot_product_attention"]))[1]   # defined, but no `torch`
    output, raised = kernel.run(released["test_scaled_dot_product_attention"])
    assert raised and "NameError" in output and "run the imports cell at the top first" in flat(output), output
    assert_short(output, "kernel restart")
    output, raised = kernel.run("torch.zeros(1)")
    assert raised and "the kernel has forgotten the imports" in flat(output), output
    assert_short(output, "torch after a restart")


def website() -> str:
    """The published site's address, from _config.yml as the launch buttons get theirs: html.baseurl, or
    else the GitHub Pages address of `repository.url` (https://<owner>.github.io/<name>/)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    base = str((config.get("html") or {}).get("baseurl") or "")
    if not base:
        owner, name = config["repository"]["url"].rstrip("/").split("/")[-2:]
        base = f"https://{owner}.github.io/{name}/"
    return base.rstrip("/") + "/"


@pytest.mark.parametrize("folder", ["solutions", "exercises"])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_notebook_links_to_its_rendered_chapter(folder, assignment):
    intro = nbformat.read(ROOT / folder / assignment / f"{assignment}.ipynb", as_version=4).cells[0].source
    links = re.findall(r"\]\(([^)]+)\)", intro)
    chapter = [url for url in links if "/book/" in url]
    assert chapter, f"{assignment}: no link to its chapter in\n{intro}"
    for url in chapter:
        assert not url.endswith(".md"), f"{assignment} links to the chapter's source {url}"
        page = url.removeprefix(website())
        assert page != url and re.fullmatch(r"book/\w+\.html", page), f"{url} is not a page of {website()}"
        assert (ROOT / page).with_suffix(".md").is_file(), f"{url}: no chapter {page}"
