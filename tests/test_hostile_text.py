"""`python -m grader grade` and `export` on a class of 03_attention whose text is built to act where it is
shown: script and event handlers in exception messages (quoted by the item reports on the feedback pages),
Markdown and math that would make links, spreadsheet formulas and terminal escape sequences in student ids
(folder names) and in what a broken notebook makes the reader quote.

Host-side checks: the command exits 0 with a row per student; every feedback page, opened in headless
Chromium, runs no student script or handler (each payload would set `window.__pwned` or the title) and its
body has no script element, handler or javascript: URL; no cell of grades.csv or of an LMS export is a
formula; the terminal output has no control character but newlines.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_hostile_text.py
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from test_inert import body_problems
from test_sandbox_attacks import ASSIGNMENT, ROOT, Context, edited, grade, raw, submit

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("hostile_text")]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# Each payload, if it ran, would set window.__pwned (or the page's title) to its own name.
HTML_PAYLOAD = ('<script>window.__pwned="script"</script><img src=x onerror="window.__pwned=\'img\'">'
                '<svg onload="window.__pwned=\'svg\'"></svg><details open ontoggle="window.__pwned=\'details\'">'
                '<iframe srcdoc="<script>parent.__pwned=1</script>"></iframe><style>*{display:none}</style>')
MARKDOWN_PAYLOAD = ('[full marks](javascript:window.__pwned="link") ```\n</code></pre><script>document.title="pwned"'
                    '</script>\n``` $\\href{javascript:window.__pwned="math"}{x}$ <a href="&#106;avascript:'
                    'window.__pwned=1">y</a>')


def _raising(message: str) -> str:
    """A scaled_dot_product_attention that raises with `message`: the item report quotes it."""
    return f"def scaled_dot_product_attention(q, k, v, mask=None):\n    raise ValueError({message!r})\n"


CLASS = {
    "html_in_exception": edited("scaled_dot_product_attention", source=_raising(HTML_PAYLOAD)),
    "markdown_in_exception": edited("scaled_dot_product_attention", source=_raising(MARKDOWN_PAYLOAD)),
    "html_in_output": edited("dot_product_attention", after=(
        "from IPython.display import HTML, display\n"
        f"display(HTML({HTML_PAYLOAD!r}))\nprint({MARKDOWN_PAYLOAD!r})")),
    "=HYPERLINK(\"evil.example\",\"full marks\")": edited("dot_product_attention"),
    "@SUM(1+1)": edited("dot_product_attention"),
    "-2+3": edited("dot_product_attention"),
    "esc\x1b]52;c;cHduZWQ=\x07\x1b[2K\x1b[1Aid": raw("not a notebook"),   # failed: named in the summary
    "bidi\u202etxt.exe": raw(""),
    "broken_notebook": raw('{"nbformat": "=HYPERLINK(\\"http://evil\\") \\u001b[2J\\u001b]0;pwned\\u0007", '
                           '"cells": []}'),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile-text")
    ctx = Context(base / "submitted", base / "graded", "unused", 9)
    submit(ctx.submissions, CLASS, ctx)
    proc = grade(ctx.submissions, ctx.out, workers=2)
    return ctx.out, proc


def _control(text: str) -> list[str]:
    """The characters of `text` a terminal would act on (everything in Cc, Cf, Zl, Zp but newline)."""
    return sorted({repr(ch) for ch in text if ch != "\n" and unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"}})


def _formulas(path: Path) -> list[str]:
    """Cells of a CSV file a spreadsheet would evaluate (OWASP: = + - @ tab CR, after blanks), numbers aside."""
    found = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f):
            for value in row:
                text = value.lstrip(" \u00a0")
                try:
                    float(value)
                    continue
                except ValueError:
                    pass
                if text[:1] in ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\u2212"):
                    found.append(value)
    return found


def test_the_checkers_can_fail(tmp_path):
    (tmp_path / "x.csv").write_text("a,=1+1,-2,@x\n")
    assert _formulas(tmp_path / "x.csv") == ["=1+1", "@x"]
    assert set(_control("ok\x1b[2K\u202e\n")) == {repr("\x1b"), repr("\u202e")}


def test_every_student_has_a_row_and_a_page(graded):
    out, proc = graded
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "grades.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CLASS), rows
    assert len(list((out / "feedback").rglob("*.html"))) == len(CLASS)


def test_the_exceptions_are_quoted_as_text(graded):
    out, _ = graded
    page = (out / "feedback" / "html_in_exception" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    assert "&lt;script&gt;window.__pwned" in page, "the student still sees what their code raised"


def test_no_csv_cell_is_a_formula(graded, tmp_path):
    out, _ = graded
    assert not _formulas(out / "grades.csv")
    for fmt in ("csv", "canvas", "moodle"):
        to = tmp_path / f"{fmt}.csv"
        proc = subprocess.run([sys.executable, "-m", "grader", "export", str(out), "--format", fmt, "--to", str(to),
                               "--raw"], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        for written in [to, *tmp_path.glob(f"{fmt}.submitted.csv")]:
            assert not _formulas(written), (fmt, written.read_text()[:2000])


def test_the_terminal_gets_no_control_character(graded):
    _, proc = graded
    assert not _control(proc.stdout + proc.stderr), (proc.stdout + proc.stderr)[-3000:]
    assert "esc\\x1b]52;c;cHduZWQ=\\x07" in proc.stdout, "the id is shown, escaped"
    assert "bidi\\u202etxt.exe" in proc.stdout


@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                    reason="needs Debian's chromium and chromium-driver (`make browser`)")
def test_no_student_script_runs_in_any_page(graded, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    out, _ = graded
    pages = sorted((out / "feedback").rglob("*.html"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    ran = {}
    try:
        driver.set_page_load_timeout(60)
        for page in pages:
            driver.get(page.as_uri())
            seen = driver.execute_script("return [window.__pwned || null, document.title, "
                                         "document.querySelectorAll('body script, [onerror], [onload]').length]")
            if seen[0] is not None or "pwned" in seen[1] or seen[2]:
                ran[str(page.relative_to(out))] = seen
    finally:
        driver.quit()
    assert not ran, ran
    for page in pages:
        assert not body_problems(page.read_text(encoding="utf-8")), page
