"""Student text made inert for the place it is shown: a spreadsheet cell, a terminal line, a Markdown comment, a page.

Everything a submission controls (its folder name, which is the student id; exception text; outputs; cell ids)
reaches a CSV file, the instructor's terminal and the student's feedback page. Each writer calls one of these:
  csv_cell        OWASP's CSV-injection rule: a cell a spreadsheet would read as a formula gets a leading '
  terminal_text   control characters shown escaped (\\x1b, \\u202e), cut to a bounded length
  markdown_code   text that nbgrader's template renders as Markdown, as a fenced code block (escaped, no math)
  inert_page      a final pass over a produced HTML page: below <body>, only a fixed set of plain tags and
                  attributes, no script, style, frame, form, SVG/MathML, event handler or non-web URL
"""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

# ------------------------------------------------------------------------------------------------ CSV cells

# OWASP "CSV Injection": = + - @ tab and carriage return start a formula; spreadsheets skip leading blanks and
# read the full-width forms (U+FF1D =, U+FF0B +, U+FF0D -, U+FF20 @) and the minus sign U+2212 like them.
_FORMULA_START = set("=+-@\t\r\n") | set("\uff1d\uff0b\uff0d\uff20\u2212\ufe62\ufe63\ufe66")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: object) -> str:
    """`value` as a CSV cell no spreadsheet evaluates: numbers stay numbers ("-1.5" is left as it is),
    text whose first non-blank character starts a formula gets a leading single quote."""
    text = "" if value is None else str(value)
    if _NUMBER.fullmatch(text):
        return text
    stripped = text.lstrip(" \u00a0\u3000\ufeff")
    if stripped and (stripped[0] in _FORMULA_START or text[:1] in _FORMULA_START):
        return "'" + text
    return text


# ------------------------------------------------------------------------------------------------ terminal

MAX_TERMINAL = 300   # characters of one student-derived field on a terminal line

# Characters a terminal acts on or that reorder what it shows: C0 controls (ESC, BEL, backspace, \r, \n ...),
# DEL, C1 controls (U+0080-U+009F: CSI, OSC ...), bidi embeddings/overrides/isolates, and the rest of Unicode's
# format (Cf), line/paragraph separator (Zl, Zp) and unassigned/private categories.
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"}


def _escape_char(ch: str) -> str:
    if unicodedata.category(ch) not in _UNSAFE_CATEGORIES:
        return ch
    n = ord(ch)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def terminal_text(value: object, limit: int = MAX_TERMINAL) -> str:
    """`value` safe to print on a terminal: no character a terminal would act on (shown as \\x1b, \\u202e),
    at most `limit` characters of the original (then " ... (N more characters)")."""
    text = "" if value is None else str(value)
    cut = len(text) - limit
    shown = "".join(_escape_char(ch) for ch in text[:limit])
    return shown + (f" ... ({cut} more characters)" if cut > 0 else "")


# ------------------------------------------------------------------------------------------------ Markdown

def markdown_code(text: str) -> str:
    """`text` as a Markdown fenced code block: a Markdown renderer escapes its HTML and makes no links, and
    MathJax skips <pre>/<code>. The fence is longer than any run of backticks in `text`, so it cannot close
    early; control characters other than newline and tab are shown escaped."""
    text = "".join(ch if ch in "\n\t" else _escape_char(ch) for ch in str(text))
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


# ------------------------------------------------------------------------------------------------ HTML pages

# Below <body>, a page keeps only these tags; what nbconvert's templates and Markdown produce for a notebook.
SAFE_TAGS = frozenset("""a abbr b blockquote br caption center cite code col colgroup dd del details dfn div dl dt em
    figcaption figure h1 h2 h3 h4 h5 h6 hr i img ins kbd label li mark ol p pre q s samp small span strong sub
    summary sup table tbody td tfoot th thead tr tt u ul var wbr section article header footer main nav input
    body""".split())
# These go with everything inside them: the parser hands over their content as raw text (code or styles), as a
# browser does. Every other tag outside SAFE_TAGS (svg, math, iframe, object, template, ...) is dropped alone and
# its content parsed and filtered like the rest, so that an unclosed one cannot take the rest of the page along.
DROP_WITH_CONTENT = frozenset({"script", "style"})
SAFE_ATTRIBUTES = frozenset("""id class name href src alt title colspan rowspan align valign width height start
    type checked disabled lang role open""".split())
URL_ATTRIBUTES = frozenset({"href", "src"})
_WEB_SCHEMES = ("http", "https", "mailto")
_IMAGE_DATA = re.compile(r"data:image/(png|jpeg|gif|webp);", re.I)
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


def _safe_url(tag: str, name: str, value: str) -> bool:
    """A relative URL, a fragment, an http(s)/mailto one, or a raster data: image in <img src>."""
    plain = re.sub(r"[\x00-\x20\x7f]+", "", value)   # browsers ignore these inside a scheme
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):", plain)
    if scheme is None:
        return True
    if scheme.group(1).lower() in _WEB_SCHEMES:
        return True
    return tag == "img" and name == "src" and bool(_IMAGE_DATA.match(plain))


class _InertPage(HTMLParser):
    """Copies the head as it is (nbgrader's and nbconvert's template); rewrites the body from its parse."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.out: list[str] = []
        self.in_body = False
        self.dropping: list[str] = []   # the open elements whose content is being dropped
        self.removed = 0

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], closed: bool) -> None:
        if not self.in_body:
            if tag == "body":
                self.in_body = True
            else:
                self.out.append(self.get_starttag_text())
                return
        if self.dropping:
            if tag == self.dropping[-1] and not closed and tag not in _VOID:
                self.dropping.append(tag)
            return
        if tag in DROP_WITH_CONTENT:
            self.removed += 1
            if not closed and tag not in _VOID:
                self.dropping.append(tag)
            return
        if tag not in SAFE_TAGS:
            self.removed += 1
            return
        kept = []
        for name, value in attrs:
            value = value or ""
            if name not in SAFE_ATTRIBUTES or (name in URL_ATTRIBUTES and not _safe_url(tag, name, value)):
                self.removed += 1
                continue
            kept.append(f' {name}="{html.escape(value, quote=True)}"')
        self.out.append(f"<{tag}{''.join(kept)}{' /' if closed else ''}>")

    def handle_starttag(self, tag, attrs):
        self._start(tag, attrs, closed=False)

    def handle_startendtag(self, tag, attrs):
        self._start(tag, attrs, closed=True)

    def handle_endtag(self, tag):
        if not self.in_body:
            self.out.append(f"</{tag}>")
            return
        if self.dropping:
            if tag == self.dropping[-1]:
                self.dropping.pop()
            return
        if tag in SAFE_TAGS or tag == "html":
            self.out.append(f"</{tag}>")

    def handle_data(self, data):
        if not self.in_body:
            self.out.append(data)
        elif not self.dropping:
            self.out.append(html.escape(data, quote=False))

    def handle_entityref(self, name):
        if not self.dropping:
            self.out.append(f"&{name};" if name in html.entities.name2codepoint or not self.in_body
                            else f"&amp;{name};")

    def handle_charref(self, name):
        if not self.dropping:
            self.out.append(f"&#{name};")

    def handle_comment(self, data):
        if not self.in_body:
            self.out.append(f"<!--{data}-->")

    def handle_decl(self, decl):
        if not self.in_body:
            self.out.append(f"<!{decl}>")

    def handle_pi(self, data):
        if not self.in_body:
            self.out.append(f"<?{data}>")

    def unknown_decl(self, data):
        if not self.in_body:
            self.out.append(f"<![{data}]>")


def inert_page(page: str) -> tuple[str, int]:
    """(the page with an inert body, how many tags and attributes were removed).

    The head (everything before the first <body>) is the template's own and is kept as it is: that is where
    nbgrader's template puts its styles and MathJax. Student text only ever appears in the body, which is
    rebuilt from its parse with SAFE_TAGS and SAFE_ATTRIBUTES only, text and attribute values re-escaped.
    """
    parser = _InertPage()
    parser.feed(page)
    parser.close()
    return "".join(parser.out), parser.removed
