"""`python -m grader similarity OUT-or-SUBMISSIONS --to REPORT_DIR`: solutions that look copied, for the instructor.

A report only: it reads notebooks and writes REPORT_DIR/similarity.csv and REPORT_DIR/similarity.html; it never
touches a grade. It lists two kinds of finding, per graded item (a solution cell, found by its nbgrader grade_id
with grader.submission.code_cells, never by what a student wrote elsewhere):
  - pair       two students' solutions of the same item share at least --threshold (default 0.8) of the
               fingerprints of the smaller one;
  - reference  at least --reference-threshold (default 0.8) of a student's fingerprints occur in the reference
               implementation: the function or class the item's check compares against, with the private
               helpers it calls (inspect.getsource). That is transformer_ref, which the book shows, except for
               greedy_decode, masked_lm_loss and unpatchify, whose references are in grader.checks, which
               ships with the course package;
  - solution   the same against the instructor's solution cell (--solutions, default solutions/: what a student
               who cloned the instructor's repository has).
A fingerprint found in more than --max-holders (default 10, like MOSS's -m) solutions of the same item is set
aside as what everyone writes (in a class of 300, the three textbook lines of dot_product_attention), for pairs
only: against published code (the reference, the solutions) every fingerprint counts, so that 18 copies of the
instructor's solution are 18 findings, not 18 holders of common code. Solutions with fewer than
--min-fingerprints (default 10) fingerprints left after the stub (and, for pairs, the common ones) are removed
are too short to judge (a one-line `return scaled_dot_product_attention(x @ W_q, ...)`) and are counted, not
flagged. A flag is a reason to read the two solutions side by side, not a verdict.

How code is compared:
 1. normalise (Python's ast): drop comments, docstrings and type annotations; name each function's parameters
    by position (a0, a1, ...), every other variable it assigns `v`, helper functions the student defined `f`,
    import aliases by the module's name; sort each run of consecutive simple statements (assignments,
    expression statements) by their text. Renamed variables and reordered independent lines then give the same
    text; the calls (torch.einsum vs @, softmax vs exp) and the structure stay. A cell that does not parse is
    tokenised as it is, names other than keywords read as `v`.
 2. fingerprint with copydetect's winnowing (PyPI, MIT; the algorithm of Stanford's MOSS: Schleimer, Wilkerson
    and Aiken 2003): of the hashes of every k-gram of tokens (k = 5), it keeps the smallest in each window of 4,
    so any common run of 8 tokens or more is found, whatever surrounds it, and a pair is scored by the share of
    fingerprints it has in common. copydetect's own tokenizer (pygments) maps every name, `torch` and `softmax`
    included, to one letter, which makes independent short solutions look alike, and its k-gram hash is Python's
    salted hash() (scores would change from run to run); so it gets the normalised tokens, hashed here.
 3. the boilerplate, every k-gram of the released stub (the exercise's solution cell: the `def` line, its
    docstring, `raise NotImplementedError()`), is removed from every solution before comparing.

Input: OUT (a `grade --out` directory: its autograded/<student>/<assignment>/ notebooks) or SUBMISSIONS
(<student>/<assignment>/<notebook>.ipynb). --release (default exercises/) holds the released notebooks, which
say which cells are solution cells and what their stubs are.
"""

from __future__ import annotations

import argparse
import ast
import csv
import hashlib
import html
import inspect
import io
import keyword
import sys
import tokenize
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RELEASE = REPO_ROOT / "exercises"
DEFAULT_SOLUTIONS = REPO_ROOT / "solutions"
K = 5          # tokens per k-gram: shorter common runs are noise
WINDOW = 4     # winnowing window: every common run of K + WINDOW - 1 = 8 tokens is found
THRESHOLD = 0.8
REFERENCE_THRESHOLD = 0.8
MIN_FINGERPRINTS = 10
MAX_HOLDERS = 10   # MOSS's -m: a passage in more solutions than this is what everyone writes, not copying
CSV_COLUMNS = ["kind", "assignment", "item", "student_a", "student_b", "similarity", "shared", "fingerprints_a",
               "fingerprints_b"]


# ------------------------------------------------------------------------------------------------ normalising

_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)


class _Canonical(ast.NodeTransformer):
    """Rename what a student may rename (see the module docstring, step 1); keep what they call."""

    def __init__(self, helpers: set[str], aliases: dict[str, str], top_level: set[str]):
        self.helpers, self.aliases = helpers, aliases
        self.scopes: list[dict[str, str]] = [{name: "v" for name in top_level}]

    def _name(self, name: str) -> str:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        if name in self.helpers:
            return "f"
        return self.aliases.get(name, name)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> ast.AST:
        a = node.args
        params = (a.posonlyargs + a.args + ([a.vararg] if a.vararg else []) + a.kwonlyargs
                  + ([a.kwarg] if a.kwarg else []))
        scope = {p.arg: f"a{i}" for i, p in enumerate(params)}
        body = node.body if isinstance(node.body, list) else [node.body]
        for sub in body:
            for n in ast.walk(sub):
                if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)) and n.id not in scope:
                    scope[n.id] = "v"
                elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name not in scope:
                    scope[n.name] = "f"
        for p in params:
            p.arg, p.annotation = scope[p.arg], None
        self.scopes.append(scope)
        node.args.defaults = [self.visit(d) for d in a.defaults]
        node.args.kw_defaults = [self.visit(d) if d is not None else None for d in a.kw_defaults]
        if isinstance(node, ast.Lambda):
            node.body = self.visit(node.body)
        else:
            node.returns, node.decorator_list = None, [self.visit(d) for d in node.decorator_list]
            node.body = _clean_body([self.visit(s) for s in node.body])
        self.scopes.pop()
        if not isinstance(node, ast.Lambda) and (node.name in self.helpers or self._name(node.name) == "f"):
            node.name = "f"
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.generic_visit(node)
        node.body = _clean_body(node.body)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = self._name(node.id)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        value = self.visit(node.value) if node.value is not None else ast.Constant(None)
        return ast.copy_location(ast.Assign([self.visit(node.target)], value), node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        return ast.Constant("S") if isinstance(node.value, str) else node

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return ast.Constant("S")


def _clean_body(body: list[ast.stmt]) -> list[ast.stmt]:
    """A block without docstrings or other bare strings, its runs of simple statements sorted by their text."""
    kept = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                    and isinstance(s.value.value, str))]
    out: list[ast.stmt] = []
    run: list[ast.stmt] = []
    for s in kept + [None]:
        if s is not None and isinstance(s, _SIMPLE):
            run.append(s)
            continue
        out += sorted(run, key=ast.unparse)
        run = []
        if s is not None:
            out.append(s)
    return out or [ast.Pass()]


def normalise(code: str) -> list[str]:
    """The tokens of `code` after step 1 of the module docstring (a list of strings, no layout). Code that does
    not parse, or nests too deeply for Python's parser or for a walk of its tree (a student's `1+1+...+1` of 50,000
    terms), is tokenised as it is."""
    try:
        return _normalised(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError, MemoryError):   # MemoryError: the parser's "too deep"
        return _raw_tokens(code)


def _normalised(tree: ast.Module) -> list[str]:
    helpers = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    aliases = {}
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for alias in n.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
    top_level = {t.id for s in tree.body if isinstance(s, _SIMPLE + (ast.For, ast.With))
                 for t in ast.walk(s) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    # the graded item's own name is fixed by the stub; only other functions are helpers
    tree = _Canonical(helpers - _defined_first(tree), aliases, top_level).visit(tree)
    tree.body = _clean_body(tree.body)
    return _raw_tokens(ast.unparse(tree), rename=False)


def _defined_first(tree: ast.Module) -> set[str]:
    """The name of the first function or class of a cell: the graded item (the stub's `def`)."""
    first = next((n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))), None)
    return {first.name} if first is not None else set()


def _raw_tokens(code: str, rename: bool = True) -> list[str]:
    """Python tokens without comments and layout; strings read as S, and (rename) names other than keywords
    as v: the fallback for a cell that does not parse."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    tokens = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type in skip:
                continue
            if tok.type == tokenize.STRING:
                tokens.append("S")
            elif tok.type == tokenize.NAME and rename and not keyword.iskeyword(tok.string):
                tokens.append("v")
            elif tok.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
                tokens.append(tokenize.tok_name[tok.type])
            else:
                tokens.append(tok.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass   # keep the tokens read so far
    return tokens


# ------------------------------------------------------------------------------------------------ fingerprints

class Fingerprinter:
    """Token lists -> fingerprints: the k-gram hashes that copydetect's winnowing keeps (step 2).

    The k-grams are hashed here with BLAKE2b, not by copydetect's `hashed_kgrams`, which uses Python's `hash()`:
    salted per process, it would make the kept fingerprints, and so the scores, change from run to run.
    """

    def __init__(self, k: int = K, window: int = WINDOW):
        self.k, self.window = k, window

    def all_kgrams(self, tokens: list[str]) -> list[int]:
        """The hash of every k-gram, in order (52 bits: exact in the float buffer of copydetect's winnowing)."""
        return [int.from_bytes(hashlib.blake2b("\x1f".join(tokens[i:i + self.k]).encode(), digest_size=8).digest(),
                               "big") >> 12 for i in range(len(tokens) - self.k + 1)]

    def fingerprints(self, tokens: list[str], boilerplate: set[int] = frozenset()) -> set[int]:
        """The winnowed hashes of `tokens`, less those of the boilerplate."""
        import numpy as np
        from copydetect.utils import winnow

        hashes = self.all_kgrams(tokens)
        if not hashes:
            return set()
        kept, _ = winnow(np.array(hashes, dtype=np.int64), self.window)
        return {int(h) for h in kept} - boilerplate


# ------------------------------------------------------------------------------------------------ the solutions

@dataclass
class Solution:
    student: str
    assignment: str
    item: str
    code: str
    fingerprints: set[int]


@dataclass
class Finding:
    kind: str            # "pair", "reference" or "solution"
    assignment: str
    item: str
    student_a: str
    student_b: str       # the other student, the reference's dotted name, or the solution notebook
    similarity: float
    shared: int
    fingerprints_a: int
    fingerprints_b: int
    code_a: str
    code_b: str

    def row(self) -> list[str]:
        return [self.kind, self.assignment, self.item, self.student_a, self.student_b, f"{self.similarity:.2f}",
                str(self.shared), str(self.fingerprints_a), str(self.fingerprints_b)]


def submission_root(path: Path) -> Path:
    """OUT/autograded when `path` is a grading run's OUT, else `path` itself (SUBMISSIONS)."""
    return path / "autograded" if (path / "autograded").is_dir() else path


def solution_cells(release: Path, root: Path, assignments: list[str] | None = None) -> dict[tuple[str, str], dict]:
    """(assignment, item) -> {"stub": text, "students": {student: code}} for every notebook under `root`."""
    from grader.submission import code_cells, load_source, read_notebook

    found: dict[tuple[str, str], dict] = {}
    students = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for assignment_dir in sorted(p for p in release.iterdir() if p.is_dir()):
        assignment = assignment_dir.name
        if assignments and assignment not in assignments:
            continue
        for released in sorted(assignment_dir.glob("*.ipynb")):
            source = load_source(released)
            stubs = {c.metadata.nbgrader.grade_id: c.source for c in source.notebook.cells
                     if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
            for item in source.items:
                found[(assignment, item.name)] = {"stub": stubs.get(item.name, ""), "students": {}}
            for student in students:
                nb, _ = read_notebook(student / assignment / released.name)
                if nb is None:
                    continue
                cells, _ = code_cells(source, nb)
                for item in source.items:
                    code = "\n\n".join(c.source for c in cells if c.solution_of == item.name)
                    if code:
                        found[(assignment, item.name)]["students"][student.name] = code
    return found


def reference_source(item_name: str) -> tuple[str, str] | None:
    """(dotted name, source) of the reference the item's check compares against, with the private helpers of
    its package that it calls by name; None for an unknown item or a reference without source."""
    from grader.checks import ITEMS

    item = ITEMS.get(item_name)
    if item is None:
        return None
    try:
        ref = item.reference()
        source = inspect.getsource(ref)
    except (TypeError, OSError, AttributeError, ImportError):
        return None
    module = sys.modules[ref.__module__]
    package = ref.__module__.split(".")[0]
    parts = [source]
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Name) and n.id.startswith("_"):
            helper = getattr(module, n.id, None)
            if callable(helper) and getattr(helper, "__module__", "").split(".")[0] == package:
                try:
                    parts.append(inspect.getsource(helper))
                except (TypeError, OSError):
                    pass
    return f"{ref.__module__}.{ref.__qualname__}", "\n\n".join(dict.fromkeys(parts))


def instructor_solutions(folder: Path | None) -> dict[tuple[str, str], tuple[str, str]]:
    """(assignment, item) -> (the notebook's path as a name, the code of its solution cell) for every instructor
    notebook folder/<assignment>/*.ipynb ({} without the folder)."""
    from grader.submission import load_source

    found: dict[tuple[str, str], tuple[str, str]] = {}
    if folder is None or not folder.is_dir():
        return found
    for path in sorted(folder.glob("*/*.ipynb")):
        source = load_source(path)
        cells = {c.metadata.nbgrader.grade_id: c.source for c in source.notebook.cells
                 if c.get("metadata", {}).get("nbgrader", {}).get("solution")}
        for item in source.items:
            if cells.get(item.name):
                found[(path.parent.name, item.name)] = (f"{path.parent.name}/{path.name}", cells[item.name])
    return found


def published(assignment: str, item: str, solutions: dict) -> list[tuple[str, str, str]]:
    """(kind, name, code) of the published code a solution of `item` may be a copy of: the reference and the
    instructor's solution."""
    found = []
    ref = reference_source(item)
    if ref is not None:
        found.append(("reference", *ref))
    if (assignment, item) in solutions:
        found.append(("solution", *solutions[(assignment, item)]))
    return found


def compare(release: Path, root: Path, threshold: float = THRESHOLD, reference_threshold: float = REFERENCE_THRESHOLD,
            min_fingerprints: int = MIN_FINGERPRINTS, max_holders: int = MAX_HOLDERS,
            assignments: list[str] | None = None,
            solutions: Path | None = DEFAULT_SOLUTIONS) -> tuple[list[Finding], dict[str, int]]:
    """The findings (most similar first) and counts: items, solutions judged, too short to judge, and common
    fingerprints (held by more than `max_holders` solutions of an item) set aside."""
    fp = Fingerprinter()
    findings: list[Finding] = []
    counts = {"items": 0, "solutions": 0, "too_short": 0, "common": 0}
    instructor = instructor_solutions(solutions)
    for (assignment, item), data in sorted(solution_cells(release, root, assignments).items()):
        counts["items"] += 1
        boilerplate = set(fp.all_kgrams(normalise(data["stub"]))) if data["stub"] else set()
        all_prints = {student: fp.fingerprints(normalise(code), boilerplate)
                      for student, code in sorted(data["students"].items())}
        holders = Counter(h for prints in all_prints.values() for h in prints)
        common = {h for h, n in holders.items() if n > max_holders}
        counts["common"] += len(common)
        solutions = []
        for student, code in sorted(data["students"].items()):
            prints = all_prints[student] - common
            if len(prints) < min_fingerprints:
                counts["too_short"] += bool(all_prints[student])
                continue
            solutions.append(Solution(student, assignment, item, code, prints))
        counts["solutions"] += len(solutions)
        findings += _pairs(solutions, threshold)
        judged = {student: prints for student, prints in all_prints.items() if len(prints) >= min_fingerprints}
        for kind, name, code in published(assignment, item, instructor):
            pub_prints = fp.fingerprints(normalise(code), boilerplate)
            for student, prints in judged.items():
                shared = len(prints & pub_prints)
                if shared / len(prints) >= reference_threshold:
                    findings.append(Finding(kind, assignment, item, student, name, shared / len(prints), shared,
                                            len(prints), len(pub_prints), data["students"][student], code))
    findings.sort(key=lambda f: (-f.similarity, f.assignment, f.item, f.student_a, f.student_b))
    return findings, counts


def _pairs(solutions: list[Solution], threshold: float) -> list[Finding]:
    """Pairs sharing at least `threshold` of the smaller one's fingerprints (an inverted index: only pairs that
    share a fingerprint are looked at)."""
    holders: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(solutions):
        for h in s.fingerprints:
            holders[h].append(i)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for members in holders.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                shared[(members[x], members[y])] += 1
    out = []
    for (i, j), n in shared.items():
        a, b = solutions[i], solutions[j]
        similarity = n / min(len(a.fingerprints), len(b.fingerprints))
        if similarity >= threshold:
            out.append(Finding("pair", a.assignment, a.item, a.student, b.student, similarity, n,
                               len(a.fingerprints), len(b.fingerprints), a.code, b.code))
    return out


# ------------------------------------------------------------------------------------------------ the report

def write_report(findings: list[Finding], counts: dict[str, int], to: Path, settings: dict[str, float]) -> None:
    """REPORT_DIR/similarity.csv (one row per finding) and REPORT_DIR/similarity.html (the code side by side)."""
    to.mkdir(parents=True, exist_ok=True)
    with open(to / "similarity.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(x.row() for x in findings)
    e = html.escape
    parts = [
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Similarity report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:4px 8px;vertical-align:top}pre{margin:0;font-size:12px;white-space:pre-wrap}"
        ".code{width:50%}</style></head><body>",
        "<h1>Similarity report</h1>",
        "<p>A report for the instructor; no grade was changed. A flag means: read these solutions side by side. "
        "Independent students do write alike code for short, standard functions, and the reference is what the "
        "book shows.</p>",
        f"<p>{counts['items']} graded items, {counts['solutions']} solutions compared, {counts['too_short']} too short "
        f"to judge (fewer than {settings['min_fingerprints']:g} fingerprints); {counts['common']} fingerprints found "
        f"in more than {settings['max_holders']:g} solutions of an item set aside as common. "
        "Flagged: pairs sharing at least "
        f"{settings['threshold']:.0%} of the smaller solution's fingerprints; solutions with at least "
        f"{settings['reference_threshold']:.0%} of their fingerprints in the reference or in the instructor's "
        "solution (every fingerprint counted: published code is never common).</p>",
        f"<h2>{len(findings)} finding(s)</h2>",
    ]
    if findings:
        parts.append("<table><tr><th>kind</th><th>item</th><th>similarity</th><th class=code>A</th>"
                     "<th class=code>B</th></tr>")
        for x in findings:
            parts.append(f"<tr><td>{e(x.kind)}</td><td>{e(x.assignment)}<br>{e(x.item)}</td>"
                         f"<td>{x.similarity:.0%}<br>({x.shared} of {min(x.fingerprints_a, x.fingerprints_b)})</td>"
                         f"<td><b>{e(x.student_a)}</b><pre>{e(x.code_a)}</pre></td>"
                         f"<td><b>{e(x.student_b)}</b><pre>{e(x.code_b)}</pre></td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    (to / "similarity.html").write_text("\n".join(parts))


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `similarity` on the `python -m grader` command line."""
    p = commands.add_parser("similarity", help="report solutions that look copied (never changes a grade)",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="OUT of a grading run, or SUBMISSIONS/<student>/<assignment>/")
    p.add_argument("--to", type=Path, required=True, help="report folder: similarity.csv and similarity.html")
    p.add_argument("--release", type=Path, default=DEFAULT_RELEASE,
                   help="released notebooks, for the solution cells and their stubs (default: exercises/)")
    p.add_argument("--solutions", type=Path, default=None,
                   help="the instructor's notebooks, <assignment>/<notebook>.ipynb: a solution like one of them is "
                        "flagged (default: solutions/; OUT/source for a grading run's OUT)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help="flag a pair sharing this fraction of the smaller solution's fingerprints "
                        f"(default {THRESHOLD})")
    p.add_argument("--reference-threshold", type=float, default=REFERENCE_THRESHOLD,
                   help="flag a solution with this fraction of its fingerprints in the reference "
                        f"(default {REFERENCE_THRESHOLD})")
    p.add_argument("--min-fingerprints", type=int, default=MIN_FINGERPRINTS,
                   help=f"solutions with fewer fingerprints are too short to judge (default {MIN_FINGERPRINTS})")
    p.add_argument("--max-holders", type=int, default=MAX_HOLDERS,
                   help="set aside fingerprints found in more solutions of an item than this: what everyone writes "
                        f"(default {MAX_HOLDERS}, like MOSS's -m)")
    p.add_argument("--assignment", action="append", help="only this assignment (repeatable)")
    p.set_defaults(run=run)


def _instructor_folder(path: Path) -> Path:
    """A grading run's copy of the instructor's notebooks (OUT/source) when `path` is one, else solutions/."""
    return path / "source" if (path / "source").is_dir() else DEFAULT_SOLUTIONS


def run(args: argparse.Namespace) -> int:
    for name in ("threshold", "reference_threshold"):
        if not 0 < getattr(args, name) <= 1:
            print(f"python -m grader similarity: --{name.replace('_', '-')} must be in (0, 1]; got "
                  f"{getattr(args, name)}", file=sys.stderr)
            return 2
    for name in ("min_fingerprints", "max_holders"):
        if getattr(args, name) < 1:
            print(f"python -m grader similarity: --{name.replace('_', '-')} must be at least 1; got "
                  f"{getattr(args, name)}", file=sys.stderr)
            return 2
    for what, path in (("the submissions", args.path), ("--release", args.release)):
        if not path.is_dir():
            print(f"python -m grader similarity: {what} must be a directory; got {path}", file=sys.stderr)
            return 2
    findings, counts = compare(args.release, submission_root(args.path), args.threshold, args.reference_threshold,
                               args.min_fingerprints, args.max_holders, args.assignment,
                               args.solutions or _instructor_folder(args.path))
    write_report(findings, counts, args.to, vars(args))
    kinds = Counter(f.kind for f in findings)
    print(f"{kinds['pair']} similar pair(s), {kinds['reference']} solution(s) like the reference, "
          f"{kinds['solution']} like the instructor's solution, in {counts['solutions']} solutions of "
          f"{counts['items']} items; report: {args.to / 'similarity.html'}")
    return 0
