"""What a student sees: hidden tests are redacted from the nbgrader feedback, failures get a page of their own.

The feedback notebook the grader writes (grader.runner) is the instructor's notebook with the student's
solution cells and the grader's report under each test cell; its test cells still hold the hidden tests.
The `RedactHiddenTests` preprocessor, registered for `GenerateFeedback` (grader.course and
nbgrader_config.py), removes them: the hidden region of each test cell, and every traceback frame that
would quote it (for notebooks autograded by plain `nbgrader autograde`, whose test cells ran). What is
left is the visible tests and the report, which names the likely mistake ("your weights equal
softmax(QK^T) without dividing by sqrt(d_k)").

What a student wrote is inert on every page (grader.inert): `InertComments`, also registered for
`GenerateFeedback`, turns each cell's comment (the item report, which quotes the student's exception text)
into a fenced code block before nbgrader's template renders it as Markdown, and `inert_pages` passes every
page the grader writes through `inert_page`, which leaves no script, handler, frame, form or non-web URL in
the body, whatever got there.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from html.parser import HTMLParser

from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from traitlets import Bool, Integer, Unicode

from grader.inert import inert_page, markdown_code

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HIDDEN_MARKERS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")   # nbgrader's defaults, as in nbgrader_config.py


def strip_ansi(text: str) -> str:
    """`text` without terminal colour codes (IPython colours its tracebacks)."""
    return _ANSI.sub("", text)


def split_hidden(source: str, begin: str, end: str) -> tuple[str, list[str]]:
    """Split a cell source into (the source without hidden regions, the hidden lines).

    Lines holding the `begin`/`end` markers belong to neither part. Raises ValueError on an unclosed
    or nested region, like nbgrader's ClearHiddenTests.
    """
    kept: list[str] = []
    hidden: list[str] = []
    inside = False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise ValueError(f"nested {begin!r} marker in a test cell")
            inside = True
        elif end in line:
            inside = False
        elif inside:
            hidden.append(line)
        else:
            kept.append(line)
    if inside:
        raise ValueError(f"{begin!r} without a matching {end!r} in a test cell")
    return "\n".join(kept), hidden


def secret_lines(nb: NotebookNode, begin: str, end: str, min_length: int = 8) -> set[str]:
    """The lines of `nb` between `begin` and `end` markers that a released or feedback page must not show.

    Lines are stripped; short ones (< min_length) and ones that also occur outside the marked regions
    (e.g. `return output, weights` in a docstring example) are left out, as they prove nothing.
    """
    inside, outside = set(), set()
    for cell in nb.cells:
        if begin not in cell.source:
            outside.update(line.strip() for line in cell.source.split("\n"))
            continue
        kept, hidden = split_hidden(cell.source, begin, end)
        outside.update(line.strip() for line in kept.split("\n"))
        inside.update(line.strip() for line in hidden)
    return {line for line in inside - outside if len(line) >= min_length}


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script") and self._skip > 0

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_text(page: str) -> str:
    """The text a reader of an HTML page sees (tags, styles and scripts removed, entities decoded).

    Syntax highlighting splits code into many <span>s; this puts each line back together.
    """
    parser = _Text()
    parser.feed(page)
    return "".join(parser.parts)


class RedactHiddenTests(Preprocessor):
    """Remove hidden test code from code cells and from the tracebacks those cells produced.

    For a cell with a hidden region: the region goes from the source; in its error outputs, a traceback
    frame is dropped when it belongs to the cell itself (IPython heads it `Cell In[<execution_count>]`)
    or quotes any hidden line of at least `min_quoted_length` characters. What remains is the frames in
    the student's own cells and libraries, and the final `ErrorType: message` line.
    """

    enabled = Bool(True, help="On by default: nbconvert skips preprocessors that are not enabled.").tag(config=True)
    begin_test_delimeter = Unicode(HIDDEN_MARKERS[0], help="Marks the start of hidden tests.").tag(config=True)
    end_test_delimeter = Unicode(HIDDEN_MARKERS[1], help="Marks the end of hidden tests.").tag(config=True)
    min_quoted_length = Integer(
        8, help="Hidden lines shorter than this (after stripping) are too generic to look for in tracebacks."
    ).tag(config=True)

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        if cell.cell_type != "code" or self.begin_test_delimeter not in cell.source:
            return cell, resources
        cell.source, hidden = split_hidden(cell.source, self.begin_test_delimeter, self.end_test_delimeter)
        quoted = [line.strip() for line in hidden if len(line.strip()) >= self.min_quoted_length]
        own_frame = f"Cell In[{cell.get('execution_count')}]"
        for output in cell.get("outputs", []):
            if output.output_type != "error":
                continue
            frames = output.get("traceback", [])
            kept = []
            for i, frame in enumerate(frames):
                plain = strip_ansi(frame)
                last = i == len(frames) - 1   # the `ErrorType: message` line
                if not last and (plain.lstrip().startswith(own_frame) or any(q in plain for q in quoted)):
                    continue
                kept.append(frame)
            output.traceback = kept
        return cell, resources


class InertComments(Preprocessor):
    """Each cell's nbgrader comment (GetGrades copies it from the gradebook: the grader's item report, or an
    instructor's manual comment) as a fenced code block, so that the template's `markdown2html` shows it as
    text: no HTML, no links, no math from a student's exception message. Register it after GetGrades."""

    enabled = Bool(True, help="On by default: nbconvert skips preprocessors that are not enabled.").tag(config=True)

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("comment"):
            meta["comment"] = markdown_code(meta["comment"])
        return cell, resources


def inert_pages(folder: Path) -> int:
    """Pass every HTML page under `folder` through grader.inert.inert_page (in place); how many tags and
    attributes were removed in all (0 for pages nbgrader and the grader produced from escaped text)."""
    removed = 0
    for page in sorted(Path(folder).rglob("*.html")):
        text, n = inert_page(page.read_text(encoding="utf-8"))
        page.write_text(text, encoding="utf-8")
        removed += n
    return removed


def failure_page(student_id: str, assignment_id: str, reason: str, max_score: float) -> str:
    """A small HTML feedback page for a submission nbgrader could not grade (it scores 0)."""
    s, a, r = (html.escape(x) for x in (student_id, assignment_id, reason))
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{a}: feedback for {s}</title></head><body>\n"
        f"<h1>{a}</h1>\n<p>Student: {s}</p>\n"
        f"<p><strong>Score: 0 / {max_score:g}</strong>. Your submission could not be graded:</p>\n"
        f"<pre>{r}</pre>\n"
        "<p>Download a fresh copy of the exercise, copy your solutions into it, run all cells "
        "and validate before submitting again.</p>\n</body></html>\n"
    )
    return inert_page(page)[0]
