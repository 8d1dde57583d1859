"""grader.inert: each way of making student text inert, against the forms an attacker would try.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_inert.py
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser

import markdown_it
import pytest

from grader.inert import csv_cell, inert_page, markdown_code, terminal_text

# ------------------------------------------------------------------------------------------------ CSV cells

@pytest.mark.parametrize("text", [
    "=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1+1", "\r=1+1",
    "  =1+1", "\u00a0=1+1", "\uff1d1+1", "\u22121+1", "=", "-", "+",
])
def test_a_formula_prefix_gets_a_quote(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("text", ["-1.5", "0", "12", "+3", "1e-3", "-.5", "alice", "8.4", "", "a=b", "03_attention"])
def test_numbers_and_plain_text_stay_as_they_are(text):
    assert csv_cell(text) == text


def test_csv_cell_of_none_and_numbers():
    assert csv_cell(None) == ""
    assert csv_cell(-2.5) == "-2.5"


# ------------------------------------------------------------------------------------------------ terminal

@pytest.mark.parametrize("text", [
    "\x1b[2K\x1b[1A",                 # erase the line, cursor up: hides the line before
    "\x1b]52;c;cHduZWQ=\x07",         # OSC 52: set the terminal's clipboard
    "\x1b]8;;http://evil\x1b\\x\x1b]8;;\x1b\\",   # OSC 8 hyperlink
    "\x9b2J",                         # C1 CSI
    "ok\rEVIL",                       # carriage return overwrites
    "a\bb\x7f",                       # backspace, DEL
    "abc\u202edcba",                  # right-to-left override
    "x\u2066y\u2069", "\u200bzero", "line\u2028sep",
])
def test_no_character_a_terminal_acts_on(text):
    shown = terminal_text(text)
    assert all(unicodedata.category(ch) not in {"Cc", "Cf", "Zl", "Zp"} for ch in shown), repr(shown)
    assert "\\x" in shown or "\\u" in shown, "what was removed is shown escaped"


def test_terminal_text_is_bounded_and_keeps_plain_text():
    assert terminal_text("alice/03_attention: 8 of 12") == "alice/03_attention: 8 of 12"
    assert terminal_text("é中文") == "é中文"
    long = terminal_text("x" * 10_000, limit=50)
    assert long.startswith("x" * 50) and long.endswith("(9950 more characters)")


# ------------------------------------------------------------------------------------------------ Markdown

MARKDOWN_ATTACKS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "```\n</code></pre><script>alert(1)</script>\n```",
    "````\n<svg onload=alert(1)>",
    "$\\href{javascript:alert(1)}{x}$",
    "<details open ontoggle=alert(1)>",
]


@pytest.mark.parametrize("text", MARKDOWN_ATTACKS)
def test_markdown_code_renders_as_text_only(text):
    rendered = markdown_it.MarkdownIt("commonmark", {"html": True}).render(markdown_code(text))
    assert re.fullmatch(r"<pre><code class=\"language-text\">.*</code></pre>\n", rendered, re.S), rendered
    inner = rendered[len('<pre><code class="language-text">'):-len("</code></pre>\n")]
    assert "<" not in inner, "every < of the text is escaped"


# ------------------------------------------------------------------------------------------------ pages

HEAD = '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><script src="mathjax.js"></script><style>p{}</style></head>'

PAGE_ATTACKS = [
    "<script>alert(1)</script>",
    "<SCRIPT SRC=//evil/x.js></SCRIPT>",
    "<img src=x onerror=alert(1)>",
    "<img src=x OnError='alert(1)'>",
    '<a href="javascript:alert(1)">x</a>',
    '<a href="&#106;avascript:alert(1)">x</a>',
    '<a href=" java\tscript:alert(1)">x</a>',
    '<a href="data:text/html,<script>alert(1)</script>">x</a>',
    '<img src="data:image/svg+xml,<svg onload=alert(1)>">',
    "<svg><script>alert(1)</script></svg>",
    "<svg onload=alert(1)>",
    "<math><mtext><script>alert(1)</script></mtext></math>",
    '<iframe srcdoc="<script>alert(1)</script>"></iframe>',
    '<object data="javascript:alert(1)"></object>',
    '<form action="javascript:alert(1)"><button>go</button></form>',
    '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">',
    '<base href="javascript:alert(1)//">',
    '<div style="background:url(javascript:alert(1))">x</div>',
    '<details open ontoggle=alert(1)>x</details>',
    '<input autofocus onfocus=alert(1)>',
    "<scr<script>ipt>alert(1)</script>",
    "<style>body{display:none}</style>",
    '<template><script>alert(1)</script></template>',
    '<textarea></textarea><script>alert(1)</script>',
    '<noscript><p title="</noscript><img src=x onerror=alert(1)>"></noscript>',
    '<link rel="import" href="//evil">',
]


class _Body(HTMLParser):
    """What a browser could run in a page's body: script elements, event handlers, non-web URLs."""

    def __init__(self):
        super().__init__()
        self.in_body, self.problems = False, []

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.in_body = True
        if not self.in_body:
            return
        if tag in ("script", "iframe", "object", "embed", "svg", "math", "style", "form", "base", "meta", "link"):
            self.problems.append(tag)
        for name, value in attrs:
            plain = re.sub(r"[\x00-\x20]+", "", value or "").lower()
            if name.startswith("on") or name in ("style", "srcdoc", "action", "formaction"):
                self.problems.append(f"{tag} {name}")
            if re.match(r"(javascript|vbscript|data:(?!image/(png|jpeg|gif|webp);))", plain):
                self.problems.append(f"{tag} {name}={value}")


def body_problems(page: str) -> list[str]:
    parser = _Body()
    parser.feed(page)
    return parser.problems


def test_the_page_checker_can_fail():
    assert body_problems(HEAD + "<body>" + PAGE_ATTACKS[2] + "</body></html>")


@pytest.mark.parametrize("attack", PAGE_ATTACKS)
def test_inert_page_leaves_nothing_that_runs(attack):
    page = HEAD + f"<body><div class='report'><p>before</p>{attack}<p>after</p></div></body></html>"
    cleaned, removed = inert_page(page)
    assert not body_problems(cleaned), cleaned
    assert removed > 0, "something was removed"
    assert cleaned.startswith(HEAD), "the template's head is kept"
    if not attack.lower().startswith(("<script", "<style")) or "</" in attack:
        assert "<p>after</p>" in cleaned, "the rest of the page is kept"


def test_inert_page_keeps_what_nbconvert_writes():
    body = ('<body><div class="jp-Cell"><pre><code>x = "&lt;script&gt;"</code></pre>'
            '<img alt="plot" src="data:image/png;base64,iVBORw0KGgo="><a href="#cell-1">link</a>'
            '<table><tr><td colspan="2">8.4 / 12</td></tr></table></div></body></html>')
    cleaned, removed = inert_page(HEAD + body)
    assert removed == 0
    assert cleaned == HEAD + body.replace('alt="plot" src', 'alt="plot" src')
