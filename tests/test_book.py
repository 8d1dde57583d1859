"""The book: it builds with warnings as errors, each chapter has the required parts, every
chapter links its exercise notebook near the top and at the end (download, Binder, JupyterHub,
from _config.yml's repository), and every cited key is in references.bib.

The build goes into _build/html of the repository (the same place and command as `make book`),
so `make book` afterwards reuses the execution cache and vice versa. It runs once per test
process (`build_book()` caches its result); tests/test_browser.py reuses it. All book tests
share one xdist group so they run on one worker: `pytest -n 2 --dist loadgroup`.
"""

from __future__ import annotations

import ast
import fcntl
import functools
import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CACHE = ROOT / "_build" / ".jupyter_cache"
BIB = ROOT / "book" / "references.bib"

BOOK_COMMAND = ["build", ".", "--warningiserror", "--keep-going", "--builder", "html"]
"""The arguments of `make book` after the jupyter-book executable."""

EXERCISE_OF_CHAPTER = {
    "book/01_history": "01_history",
    "book/02_positional_encoding": "02_positional_encoding",
    "book/03_self_attention": "03_attention",
    "book/04_multi_head": "04_multi_head",
    "book/05_masking": "05_masking",
    "book/06_add_norm": "06_add_norm",
    "book/07_transformer": "07_transformer",
    "book/08_bert": "08_bert",
    "book/09_vit": "09_vit",
    "book/10_warmup": "10_warmup",
    "book/12_attention_at_scale": "11_attention_at_scale",
}
"""Each numbered chapter and the id of its exercise notebook exercises/<id>/<id>.ipynb."""

CHAPTERS_WITHOUT_EXERCISE = ("book/11_beyond",)
"""The numbered chapters that have no exercise notebook (and so no exercise box)."""

CHAPTER_SECONDS_LIMIT = 180.0
"""Fail if one chapter takes longer than this to execute. The budget is 60-90 s on a 2-core CPU;
the limit leaves room for a machine that runs other tests at the same time."""

pytestmark = [pytest.mark.xdist_group("book")]


def toc_files() -> list[str]:
    """Document names (without suffix) in _toc.yml, root first, in reading order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [entry["file"] for entry in part["chapters"]]
    return files


def chapter_files() -> list[str]:
    """The numbered chapters (book/NN_name) listed in the toc."""
    return [f for f in toc_files() if re.fullmatch(r"book/\d\d_\w+", f)]


def source(doc: str) -> str:
    return (ROOT / f"{doc}.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class BookBuild:
    returncode: int
    log: str
    seconds: float
    html: Path

    def warnings(self) -> list[str]:
        return [line for line in self.log.splitlines() if re.search(r"\bWARNING\b|\bERROR\b", line)
                and "IPKernelApp" not in line]  # the kernel's own start-up notice is not Sphinx's


@functools.cache
def build_book() -> BookBuild:
    """Run `jupyter-book build . --warningiserror --keep-going --builder html` once per process."""
    exe = Path(sys.executable).with_name("jupyter-book")
    command = [str(exe) if exe.exists() else shutil.which("jupyter-book") or "jupyter-book", *BOOK_COMMAND]
    (ROOT / "_build").mkdir(exist_ok=True)
    # Two builds at once in one _build (two test processes, or `make book` while the tests run) race
    # on creating the execution cache's database and fail; the second waits here for the first.
    with open(ROOT / "_build" / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
        seconds = time.perf_counter() - start
        log = done.stdout + done.stderr
        (ROOT / "_build" / "book-build.log").write_text(log)
    return BookBuild(done.returncode, log, seconds, HTML)


def execution_seconds() -> dict[str, float]:
    """Execution time of the latest cached run of each chapter, from myst-nb's jupyter cache."""
    from jupyter_cache import get_cache

    latest: dict[str, tuple] = {}
    for record in get_cache(str(CACHE)).list_cache_records():
        if not Path(record.uri).is_relative_to(ROOT):
            continue  # a cache copied from another checkout
        doc = Path(record.uri).relative_to(ROOT).with_suffix("").as_posix()
        if doc not in latest or record.created > latest[doc][0]:
            latest[doc] = (record.created, record.data.get("execution_seconds", float("nan")))
    return {doc: seconds for doc, (_, seconds) in latest.items()}


# ------------------------------------------------------------------------------------------------
# Checks on the sources (fast; need no build)
# ------------------------------------------------------------------------------------------------

def test_toc_files_exist():
    missing = [f"{doc}.md" for doc in toc_files() if not (ROOT / f"{doc}.md").is_file()]
    assert not missing, f"_toc.yml lists pages that do not exist: {missing}"


def test_toc_has_every_numbered_chapter():
    expected = sorted([*EXERCISE_OF_CHAPTER, *CHAPTERS_WITHOUT_EXERCISE])   # book/NN_...: in chapter order
    assert chapter_files() == expected, (f"_toc.yml must list the chapters in this order: {expected}; "
                                         f"got {chapter_files()}")


EXERCISE_BOX = re.compile(r"^(?::::|```)\{exercise\}[ \t]+(\S+)[ \t]*$", re.M)
"""The `{exercise} <id>` directive of book/_ext/exercise_box.py (colon or backtick fence)."""

TOP_LINES = 40
"""The box near the top must start within this many lines of the chapter's title."""


def exercise_boxes(text: str) -> list[tuple[int, str]]:
    """(line number, exercise id) of every exercise box in a chapter's source."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in EXERCISE_BOX.finditer(text)]


def line_of(text: str, pattern: str, end: bool = False) -> int | None:
    """Line number (from 1) where the first match of pattern starts (or ends, with end=True)."""
    m = re.search(pattern, text, re.M)
    return text.count("\n", 0, m.end() if end else m.start()) + 1 if m else None


@pytest.mark.parametrize("doc", list(EXERCISE_OF_CHAPTER))
def test_chapter_links_its_exercise_at_the_top_and_the_end(doc):
    """The exercise box comes right after the learning goals (before the first section) and again
    in the "Exercises" section, both for the chapter's own exercise, whose notebook exists."""
    path = ROOT / f"{doc}.md"
    if not path.is_file():
        pytest.fail(f"{doc}.md does not exist")
    text, ex = source(doc), EXERCISE_OF_CHAPTER[doc]
    boxes = exercise_boxes(text)
    wanted = f":::{{exercise}} {ex}\n:::"
    assert boxes, f"{doc}.md has no exercise box; put {wanted!r} right after the learning goals"
    wrong = [(line, i) for line, i in boxes if i != ex]
    assert not wrong, f"{doc}.md: exercise boxes for another exercise than {ex} at (line, id) {wrong}"

    title, goals_end = line_of(text, r"^# "), line_of(text, r"Learning goals[^\n]*\n(?:.*\n)*?:::[ \t]*$", end=True)
    first_section = line_of(text, r"^## ")
    top = boxes[0][0]
    assert goals_end and top > goals_end, f"{doc}.md: the first exercise box (line {top}) must follow the learning goals"
    assert top < first_section, (f"{doc}.md: the first exercise box (line {top}) must come before the first "
                                 f"section (line {first_section}), right after the learning goals")
    assert top - title <= TOP_LINES, f"{doc}.md: the first exercise box is {top - title} lines below the title"

    exercises, references = line_of(text, r"^## Exercises\s*$"), line_of(text, r"^## References\s*$")
    assert exercises and any(exercises < line < (references or 10**9) for line, _ in boxes), (
        f"{doc}.md: the 'Exercises' section needs the box too ({wanted!r} with :how-to:)")
    notebook = ROOT / "exercises" / ex / f"{ex}.ipynb"
    assert notebook.is_file(), f"{doc}.md links exercise {ex}, but {notebook.relative_to(ROOT)} does not exist"


@pytest.mark.parametrize("doc", CHAPTERS_WITHOUT_EXERCISE)
def test_chapter_without_exercise_has_no_box(doc):
    extra = [d for d in chapter_files() if d not in EXERCISE_OF_CHAPTER]
    assert extra == list(CHAPTERS_WITHOUT_EXERCISE), f"chapters without an exercise: {extra}"
    boxes = exercise_boxes(source(doc))
    assert not boxes, f"{doc}.md has no exercise notebook to link, but has exercise boxes at (line, id) {boxes}"


def test_exercise_box_pattern_can_fail():
    text = "# T\n:::{exercise} 03_attention\n:::\n```{exercise} 04_multi_head\n```\n{exercise}`x`"
    assert exercise_boxes(text) == [(2, "03_attention"), (4, "04_multi_head")]
    assert exercise_boxes("{download}`03_attention.ipynb <../exercises/03_attention/03_attention.ipynb>`") == []


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def expected_launch_urls(ex: str) -> dict[str, str]:
    """Binder and JupyterHub (nbgitpuller) links to exercises/<ex>/<ex>.ipynb, written out from
    _config.yml's repository and launch_buttons independently of book/_ext/exercise_box.py."""
    cfg = config()
    repo_url = cfg["repository"]["url"].rstrip("/")
    org, repo = repo_url.removeprefix("https://github.com/").split("/")
    branch = cfg["repository"]["branch"]
    book_dir = cfg["repository"].get("path_to_book", "").strip("/")
    path = "/".join(p for p in (book_dir, f"exercises/{ex}/{ex}.ipynb") if p)
    launch = cfg["launch_buttons"]
    assert launch["notebook_interface"] == "jupyterlab"
    return {
        "Binder": f"{launch['binderhub_url'].rstrip('/')}/v2/gh/{org}/{repo}/{branch}?labpath={path}",
        "JupyterHub": (f"{launch['jupyterhub_url'].rstrip('/')}/hub/user-redirect/git-pull?"
                       f"repo={repo_url.replace('://', '%3A//')}&urlpath=lab/tree/{repo}/{path}&branch={branch}"),
    }


def test_launch_urls_are_built_from_the_config():
    """The expected links name the configured repository and the exercise's notebook."""
    urls = expected_launch_urls("03_attention")
    repo_url = config()["repository"]["url"]
    assert urls["Binder"].startswith(config()["launch_buttons"]["binderhub_url"])
    assert urls["Binder"].endswith("?labpath=exercises/03_attention/03_attention.ipynb")
    assert "/v2/gh/" + repo_url.removeprefix("https://github.com/") + "/" in urls["Binder"]
    from urllib.parse import parse_qs, urlparse

    query = parse_qs(urlparse(urls["JupyterHub"]).query)
    assert query == {"repo": [repo_url], "branch": [config()["repository"]["branch"]],
                     "urlpath": [f"lab/tree/{repo_url.rsplit('/', 1)[1]}/exercises/03_attention/03_attention.ipynb"]}


class _ExerciseBoxes(HTMLParser):
    """Collect the hrefs of the links inside each `div.exercise-box` of a built page."""

    def __init__(self):
        super().__init__()
        self.boxes: list[list[dict[str, str]]] = []
        self._depth = 0   # nesting depth of <div> inside the current box; 0 = outside any box

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            if self._depth:
                self._depth += 1
            elif "exercise-box" in (attrs.get("class") or "").split():
                self._depth = 1
                self.boxes.append([])
        elif tag == "a" and self._depth:
            self.boxes[-1].append(attrs)

    def handle_endtag(self, tag):
        if tag == "div" and self._depth:
            self._depth -= 1


def built_exercise_boxes(doc: str) -> list[list[dict[str, str]]]:
    parser = _ExerciseBoxes()
    parser.feed((HTML / f"{doc}.html").read_text(encoding="utf-8"))
    return parser.boxes


@pytest.mark.slow
@pytest.mark.parametrize("doc", list(EXERCISE_OF_CHAPTER))
def test_built_exercise_boxes_link_download_binder_and_jupyterhub(doc):
    """Each chapter page has two exercise boxes; each offers the notebook as a download (a copy
    of exercises/<id>/<id>.ipynb inside the site) and the Binder and JupyterHub links that open
    that notebook from the configured repository."""
    build = build_book()
    if build.returncode != 0:
        pytest.skip("the build failed; see test_book_builds_with_warnings_as_errors")
    ex = EXERCISE_OF_CHAPTER[doc]
    boxes = built_exercise_boxes(doc)
    assert len(boxes) == 2, f"{doc}.html: expected 2 exercise boxes (top and end), found {len(boxes)}"
    notebook = ROOT / "exercises" / ex / f"{ex}.ipynb"
    for links in boxes:
        downloads = [a["href"] for a in links if "download" in (a.get("class") or "").split()]
        assert len(downloads) == 1, f"{doc}.html: an exercise box needs one download link; links: {links}"
        copy = (HTML / doc).parent / downloads[0]
        assert copy.resolve().is_relative_to(HTML) and copy.name == f"{ex}.ipynb", downloads[0]
        assert copy.is_file() and copy.read_bytes() == notebook.read_bytes(), (
            f"{doc}.html: the download link {downloads[0]} is not a copy of {notebook.relative_to(ROOT)}")
        launch = {a.get("href") for a in links if "exercise-launch" in (a.get("class") or "").split()}
        assert launch == set(expected_launch_urls(ex).values()), f"{doc}.html: launch links {launch}"


def bib_entries() -> dict[str, dict[str, str]]:
    """key -> fields of every entry in references.bib, parsed with pybtex (the bibtex extension's parser)."""
    from pybtex.database import parse_file

    data = parse_file(str(BIB), bib_format="bibtex")
    return {key: {**{k.lower(): v for k, v in entry.fields.items()},
                  "author": " and ".join(str(p) for p in entry.persons.get("author", []))}
            for key, entry in data.entries.items()}


def cited_keys(text: str) -> set[str]:
    keys = set()
    for group in re.findall(r"\{cite(?::\w+)?\}`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    return keys


def test_bibliography_entries_are_complete():
    entries = bib_entries()
    assert len(entries) >= 25, f"references.bib should hold the primary sources; found {len(entries)} entries"
    incomplete = {key: [f for f in ("author", "title", "year") if not fields.get(f)]
                  for key, fields in entries.items()}
    incomplete = {k: v for k, v in incomplete.items() if v}
    assert not incomplete, f"entries missing fields: {incomplete}"
    no_link = [key for key, fields in entries.items() if not (fields.get("url") or fields.get("doi"))]
    assert not no_link, f"every entry needs a url or doi so readers can find it: {no_link}"


def glossary_terms() -> set[str]:
    """The terms book/glossary.md defines (an unindented line followed by an indented definition), lower case."""
    return {t.lower() for t in re.findall(r"^(\w[^\n]*)\n  \S", source("book/glossary"), re.M)}


def linked_terms(text: str) -> set[str]:
    """Targets of {term}`name` and {term}`label <name>` roles, lower case (Sphinx matches terms so)."""
    roles = re.finditer(r"\{term\}`([^`<]+?)\s*(?:<([^`>]+)>)?`", text)
    return {(m.group(2) or m.group(1)).strip().lower() for m in roles}


def test_every_glossary_term_is_linked_from_a_chapter():
    """The glossary says chapters link each term where it first appears: none is left unlinked."""
    terms = glossary_terms()
    linked = set().union(*(linked_terms(source(doc)) for doc in chapter_files()))
    assert len(terms) > 20 and not terms - linked, f"glossary terms no chapter links: {sorted(terms - linked)}"
    assert linked_terms("{term}`keys <key>` and {term}`Self-attention`") == {"key", "self-attention"}


def test_every_cited_key_exists():
    entries = bib_entries()
    pages = [doc for doc in toc_files() if (ROOT / f"{doc}.md").is_file()]
    unknown = {doc: sorted(cited_keys(source(doc)) - set(entries)) for doc in pages}
    unknown = {doc: keys for doc, keys in unknown.items() if keys}
    assert not unknown, f"cited keys missing from book/references.bib: {unknown}"
    for doc in chapter_files():
        if (ROOT / f"{doc}.md").is_file():
            assert cited_keys(source(doc)), f"{doc}.md cites no reference"


def test_cited_keys_parser_can_fail():
    assert cited_keys("see {cite:p}`a2019x, b2020y` and {cite:t}`c2021z`") == {"a2019x", "b2020y", "c2021z"}
    assert "nokey2099" not in bib_entries()


FIGURE_PATTERNS = (r"^\s+figure:\s*$", r"^```\{figure\}", r"^:::\{figure\}", r"\{glue:figure\}")


@pytest.mark.parametrize("doc", [*EXERCISE_OF_CHAPTER, *CHAPTERS_WITHOUT_EXERCISE])
def test_chapter_has_the_required_parts(doc):
    if not (ROOT / f"{doc}.md").is_file():
        pytest.fail(f"{doc}.md does not exist")
    text = source(doc)
    assert text.startswith("---\njupytext:"), f"{doc}.md must start with the jupytext MyST notebook header"
    assert "name: python3" in text.split("---")[1], f"{doc}.md: the kernelspec must be python3"
    for heading in ("## Summary", "## Exercises", "## References"):
        assert re.search(rf"^{re.escape(heading)}\s*$", text, re.M), f"{doc}.md has no '{heading}' section"
    assert "Learning goals" in text, f"{doc}.md has no learning goals"
    assert re.search(r"\$\$ \(eq-[\w-]+\)", text), f"{doc}.md has no numbered equation ($$ ... $$ (eq-label))"
    assert "transformer_ref" in text, f"{doc}.md does not use transformer_ref"
    figures = sum(len(re.findall(p, text, re.M)) for p in FIGURE_PATTERNS)
    assert figures >= 2, f"{doc}.md must have at least two numbered figures; found {figures}"
    assert re.search(r":class: (warning|caution)", text), f"{doc}.md has no pitfall admonition"


# ------------------------------------------------------------------------------------------------
# Exercise answers are folded
# ------------------------------------------------------------------------------------------------

def exercise_items() -> set[str]:
    """The graded items of every exercise: the grade_id of each solution cell (the function's or
    class's name, STYLE.md)."""
    items = set()
    for notebook in sorted((ROOT / "solutions").glob("*/*.ipynb")):
        for cell in json.loads(notebook.read_text(encoding="utf-8"))["cells"]:
            grading = cell.get("metadata", {}).get("nbgrader", {})
            if grading.get("solution"):
                items.add(grading["grade_id"])
    return items


@dataclass(frozen=True)
class Definition:
    qualname: str  # "f", "C" or "C.method"
    first: int  # line numbers in its file, from 1, both included
    last: int
    calls: frozenset[str]  # the names it calls (f(...), self.f(...), module.f(...))


def definitions(path: Path) -> list[Definition]:
    """Top-level functions and classes of a transformer_ref module, and the methods of its classes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def called(node: ast.AST) -> frozenset[str]:
        names = set()
        for call in ast.walk(node):
            if isinstance(call, ast.Call):
                f = call.func
                names.add(f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else "")
        return frozenset(names - {""})

    found = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            found.append(Definition(node.name, first, node.end_lineno, called(node)))
        if isinstance(node, ast.ClassDef):
            found += [Definition(f"{node.name}.{m.name}", min([m.lineno] + [d.lineno for d in m.decorator_list]),
                                 m.end_lineno, called(m))
                      for m in node.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return found


def answer_names(items: set[str]) -> set[str]:
    """Names whose code gives an exercise item away: the items themselves (functions, classes, methods)
    and the private helpers an item's code calls (`_warmup_then_decay` is the body of warmup_linear_lr),
    except the argument checks (`_check_*`), which give nothing away."""
    defs = [d for path in sorted((ROOT / "transformer_ref").glob("*.py")) for d in definitions(path)]
    answers = set(items)
    for d in defs:
        if set(d.qualname.split(".")) & items:
            answers |= {name for name in d.calls if name.startswith("_") and not name.startswith("_check")
                        and not name.startswith("__")}
    return answers


def fences_around(text: str) -> list[list[tuple[str, str]]]:
    """For every line of a MyST page, the colon fences (:::{name}) it sits inside, outermost first, as
    (directive name, its option and body text up to that line)."""
    stack: list[tuple[int, str, list[str]]] = []
    around = []
    for line in text.splitlines():
        opening = re.match(r"^(:{3,})\{([\w-]+)\}", line)
        closing = re.match(r"^(:{3,})\s*$", line)
        if closing and stack and len(closing.group(1)) == stack[-1][0]:
            stack.pop()
        around.append([(name, "\n".join(body)) for _, name, body in stack])
        for _, _, body in stack:
            body.append(line)
        if opening:
            stack.append((len(opening.group(1)), opening.group(2), []))
    return around


def folded(fences: list[tuple[str, str]]) -> bool:
    """Inside a dropdown (:::{dropdown} or an admonition with :class: dropdown) whose text asks the
    reader to try the exercise first."""
    return any((name == "dropdown" or (name == "admonition" and re.search(r"^:class:.*\bdropdown\b", body, re.M)))
               and re.search(r"\bexercises?\b", body, re.I) and re.search(r"\bfirst\b", body, re.I)
               for name, body in fences)


def shown_answers(text: str, answers: set[str], doc: str = "book/x") -> list[tuple[int, str]]:
    """(line, what) for every piece of an exercise answer a page shows in the open: a literalinclude of
    transformer_ref (by :pyobject:, by :lines:, or the whole file) that covers an answer, or an
    inspect.getsource of one in a code cell, outside a folded dropdown."""
    around, lines, shown = fences_around(text), text.splitlines(), []
    for m in re.finditer(r"^`{3,}\{literalinclude\}\s*(\S+)[^\n]*\n((?::[^\n]*\n)*)", text, re.M):
        line = text.count("\n", 0, m.start())
        target = (ROOT / doc).parent / m.group(1)
        if folded(around[line]) or target.resolve().parent != (ROOT / "transformer_ref").resolve():
            continue
        options = dict(re.findall(r"^:([\w-]+):[ \t]*(.*)$", m.group(2), re.M))
        defs = definitions(target)
        if "pyobject" in options:
            covered = [d for d in defs if d.qualname == options["pyobject"].strip()]
        else:  # :lines: 3-9,12 or, without it, the whole file (start-after/end-before counted as the whole file)
            wanted = set()
            for part in options.get("lines", f"1-{len(target.read_text().splitlines())}").split(","):
                a, _, b = part.strip().partition("-")
                wanted |= set(range(int(a), int(b or a) + 1))
            covered = [d for d in defs if wanted & set(range(d.first, d.last + 1))]
        shown += [(line + 1, d.qualname) for d in covered if set(d.qualname.split(".")) & answers]
    for i, code in enumerate(lines):
        for name in re.findall(r"getsource\(\s*([\w.]+)\s*\)", code):
            if set(name.split(".")) & answers and not folded(around[i]):
                shown.append((i + 1, name))
    return sorted(set(shown))


def test_exercise_answers_are_folded():
    """No page shows the code of an exercise item (or of a helper that is its body) in the open: it sits
    in a dropdown that suggests doing the exercise first (issue 18, "Also")."""
    items = exercise_items()
    assert {"decoder_self_attention_mask", "greedy_decode", "MultiHeadAttention"} <= items
    answers = answer_names(items)
    assert "_warmup_then_decay" in answers and "_check_split_heads" not in answers
    open_answers = {doc: shown_answers(source(doc), answers, doc) for doc in chapter_files()}
    open_answers = {doc: shown for doc, shown in open_answers.items() if shown}
    assert not open_answers, ("exercise answers shown in the open (line, object); put each in a "
                              f":::{{dropdown}} that says to try the exercise first: {open_answers}")


def test_folded_answer_check_can_fail():
    answers = answer_names({"greedy_decode", "warmup_linear_lr"})
    include = "```{literalinclude} ../transformer_ref/model.py\n:language: python\n:pyobject: Transformer.greedy_decode\n```\n"
    assert shown_answers(include, answers) == [(1, "Transformer.greedy_decode")]
    hint = "Exercise 7 asks you to write it: try it there first.\n\n"
    assert shown_answers(f":::{{dropdown}} Show the code\n{hint}{include}:::\n", answers) == []
    assert shown_answers(f":::{{admonition}} Code\n:class: dropdown\n{hint}{include}:::\n", answers) == []
    # folded without the line about the exercise, or in a box that is not a dropdown: still open
    assert shown_answers(f":::{{dropdown}} Show the code\n{include}:::\n", answers) == [(2, "Transformer.greedy_decode")]
    assert shown_answers(f":::{{note}}\n{hint}{include}:::\n", answers) == [(4, "Transformer.greedy_decode")]
    # a dropdown closed before the include does not fold it
    assert shown_answers(f":::{{dropdown}} Code\n{hint}:::\n\n{include}", answers) == [(6, "Transformer.greedy_decode")]
    # the same code by other routes: a helper that is the item's body, a :lines: range, the whole file,
    # inspect.getsource in a code cell
    helper = include.replace("model.py", "schedules.py").replace("Transformer.greedy_decode", "_warmup_then_decay")
    assert shown_answers(helper, answers) == [(1, "_warmup_then_decay")]
    first, last = next((d.first, d.last) for d in definitions(ROOT / "transformer_ref" / "schedules.py")
                       if d.qualname == "warmup_linear_lr")
    by_lines = f"```{{literalinclude}} ../transformer_ref/schedules.py\n:lines: {first}-{last}\n```\n"
    assert shown_answers(by_lines, answers) == [(1, "warmup_linear_lr")]
    whole = "```{literalinclude} ../transformer_ref/schedules.py\n```\n"
    assert {what for _, what in shown_answers(whole, answers)} == {"warmup_linear_lr", "_warmup_then_decay"}
    assert shown_answers("```{code-cell} ipython3\nprint(inspect.getsource(Transformer.greedy_decode))\n```\n",
                         answers) == [(2, "Transformer.greedy_decode")]
    # code that is not an answer stays in the open
    assert shown_answers(include.replace("greedy_decode", "encode"), answers) == []


# ------------------------------------------------------------------------------------------------
# The build (slow)
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_book_builds_with_warnings_as_errors():
    build = build_book()
    tail = "\n".join(build.log.splitlines()[-40:])
    assert build.returncode == 0, f"jupyter-book build failed (exit {build.returncode}); end of the log:\n{tail}"
    assert not build.warnings(), "the build printed warnings:\n" + "\n".join(build.warnings())
    for doc in toc_files():
        assert (build.html / f"{doc}.html").is_file(), f"{doc}.html was not built"
    assert (build.html / "index.html").is_file()
    print(f"book built in {build.seconds:.1f} s")


@pytest.mark.slow
def test_chapters_execute_within_budget():
    build = build_book()
    if build.returncode != 0:
        pytest.skip("the build failed; see test_book_builds_with_warnings_as_errors")
    times = execution_seconds()
    print("execution seconds per chapter:", {d: round(s, 1) for d, s in sorted(times.items())})
    missing = [doc for doc in chapter_files() if doc not in times]
    assert not missing, f"no executed notebook in the cache for {missing}"
    slow = {doc: round(times[doc], 1) for doc in chapter_files() if times[doc] > CHAPTER_SECONDS_LIMIT}
    assert not slow, f"chapters executing longer than {CHAPTER_SECONDS_LIMIT} s: {slow}"


@pytest.mark.slow
def test_only_toc_pages_are_built():
    build = build_book()
    if build.returncode != 0:
        pytest.skip("the build failed; see test_book_builds_with_warnings_as_errors")
    pages = {p.relative_to(build.html).with_suffix("").as_posix() for p in build.html.rglob("*.html")
             if not p.relative_to(build.html).parts[0].startswith("_")}   # _static, _sources: assets
    stray = pages - set(toc_files()) - {"index", "search", "genindex"}
    assert not stray, f"pages built that are not in _toc.yml (README, solutions, ...): {sorted(stray)}"



@pytest.mark.slow
def test_the_site_root_has_a_favicon():
    """The root index.html is a bare redirect with no icon link: browsers then ask for /favicon.ico."""
    build = build_book()
    if build.returncode != 0:
        pytest.skip("the build failed; see test_book_builds_with_warnings_as_errors")
    assert (build.html / "favicon.ico").read_bytes()[:4] == b"\x00\x00\x01\x00", "favicon.ico is not an icon file"


@pytest.mark.slow
@pytest.mark.parametrize("doc", chapter_files())
def test_downloadable_notebook_has_the_outputs_the_page_shows(doc):
    """The page's download button offers _sources/<doc>.ipynb: it has outputs in as many code cells
    as the page shows outputs for (a cached rebuild once wrote it without; book/_ext/cached_outputs.py)."""
    import nbformat
    from bs4 import BeautifulSoup

    build = build_book()
    if build.returncode != 0:
        pytest.skip("the build failed; see test_book_builds_with_warnings_as_errors")
    page = BeautifulSoup((build.html / f"{doc}.html").read_text(encoding="utf-8"), "html.parser")
    shown = len(page.select("div.cell div.cell_output"))
    notebook = nbformat.read(build.html / "_sources" / f"{doc}.ipynb", as_version=4)
    kept = sum(1 for cell in notebook.cells if cell.cell_type == "code" and cell.get("outputs"))
    assert shown > 0 and kept == shown, f"{doc}: the page shows {shown} cells' outputs, the download has {kept}"


# ------------------------------------------------------------------------------------------------
# The shared plotting helpers the chapters use (transformer_ref/viz.py)
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def viz():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from transformer_ref import viz

    yield viz
    plt.close("all")


def test_attention_heatmap_draws_the_weights(viz):
    g = torch.Generator().manual_seed(0)
    weights = torch.softmax(torch.randn(3, 5, generator=g), -1)
    ax = viz.attention_heatmap(weights, query_labels=list("abc"), key_labels=list("vwxyz"))
    image = ax.images[0]
    torch.testing.assert_close(torch.as_tensor(image.get_array().data), weights.double())
    assert image.get_clim() == (0.0, 1.0)
    assert ax.get_xlabel() == "key position" and ax.get_ylabel() == "query position"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]


def test_matrix_heatmap_centered_is_symmetric(viz):
    ax = viz.matrix_heatmap(torch.tensor([[-1.0, 3.0], [0.5, 2.0]]), centered=True, xlabel="x", ylabel="y")
    assert ax.images[0].get_clim() == (-3.0, 3.0)
    assert ax.figure.get_size_inches()[0] <= viz.MAX_WIDTH


def test_attention_grid_one_panel_per_head(viz):
    weights = torch.softmax(torch.randn(5, 4, 4), -1)
    fig = viz.attention_grid(weights, ncols=3)
    panels = [ax for ax in fig.axes if ax.images]
    assert len(panels) == 5 and panels[4].get_title() == "head 4"
    assert fig.get_size_inches()[0] <= viz.MAX_WIDTH


def test_plot_curves_accepts_y_or_xy(viz):
    ax = viz.plot_curves({"y only": [3.0, 2.0, 1.0], "x and y": ([1, 10, 100], torch.tensor([1.0, 2.0, 3.0]))},
                         xlabel="step", ylabel="loss", logx=True)
    first, second = ax.get_lines()
    assert list(first.get_xdata()) == [0, 1, 2] and list(second.get_xdata()) == [1, 10, 100]
    assert ax.get_xscale() == "log" and ax.get_legend() is not None


def test_plot_curves_labels_powers_of_two_on_a_log_axis(viz):
    ax = viz.plot_curves({"depth": ([2, 4, 8, 16], [1.0, 2.0, 3.0, 4.0])}, xlabel="layers", ylabel="norm", logx=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "8", "16"]
    ax = viz.plot_curves({"T": (2 ** np.arange(4, 15), np.ones(11))}, xlabel="T", ylabel="ms", logx=True)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["16", "64", "256", "1024", "4096", "16384"]
    ax = viz.plot_curves({"n": ([1, 10, 100], [1.0, 2.0, 3.0])}, xlabel="n", ylabel="y", logx=True)
    assert type(ax.xaxis.get_major_formatter()).__name__ == "LogFormatterSciNotation"   # not powers of two: as is


@pytest.mark.parametrize("call, message", [
    (lambda v: v.attention_heatmap(torch.ones(2, 2, 2)), "weights must be a 2-D matrix"),
    (lambda v: v.attention_grid(torch.ones(2, 2)), "weights must have shape (H, T_q, T_k)"),
    (lambda v: v.attention_heatmap(torch.ones(2, 3), key_labels=["a"]), "key_labels must have one label per key (column) (3)"),
    (lambda v: v.plot_curves({}, xlabel="x", ylabel="y"), "curves must contain at least one"),
    (lambda v: v.plot_curves({"c": ([1, 2], [1, 2, 3])}, xlabel="x", ylabel="y"), "x and y of equal length"),
    (lambda v: v.matrix_heatmap("not a matrix"), "matrix must be a tensor, an array"),
])
def test_viz_rejects_bad_input_with_a_clear_message(viz, call, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        call(viz)
