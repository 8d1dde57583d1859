"""`python -m grader similarity`: among independent correct solutions, exactly the planted copies are flagged.

The class: the released 03_attention notebook, solved by seven students. Each solution is checked first with the
item's own check (so the independent ones are correct, and different: einsum, scaling q first, float64 and exp
by hand, an additive mask), then:
  - eve copied ana's scaled_dot_product_attention, renamed every variable, reordered the independent lines and
    added comments;
  - gus copied ben's dot_product_attention with other names;
  - fay pasted the reference from transformer_ref (what the book shows), argument checks left out;
  - ana and ben wrote the same one-line self_attention, which everyone writes: too short to judge.
About 6 s (the checks of each solution, and one CLI run that imports torch).
"""

from __future__ import annotations

import copy
import csv
import inspect
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import torch

from grader import similarity
from grader.checks import attention
from transformer_ref import attention as ref_attention

ROOT = Path(__file__).resolve().parents[1]
ASSIGNMENT = "03_attention"
STUB_BODY = "    # YOUR CODE HERE\n    raise NotImplementedError()"

SDPA = {
    "ana": """
    d_k = q.shape[-1]
    keys_t = k.transpose(-2, -1)
    scale = d_k ** 0.5
    scores = (q / scale) @ keys_t
    if mask is not None:
        scores = scores.masked_fill(mask.logical_not(), -torch.inf)
    weights = torch.softmax(scores, -1)
    weights = torch.where(torch.isnan(weights), torch.zeros_like(weights), weights)
    return weights @ v, weights""",
    "eve": """
    # transpose the keys first
    kt = k.transpose(-2, -1)
    dim = q.shape[-1]
    s = dim ** 0.5
    logits = (q / s) @ kt  # the scaled scores
    if mask is not None:
        logits = logits.masked_fill(mask.logical_not(), -torch.inf)  # masked keys
    attn = torch.softmax(logits, -1)
    attn = torch.where(torch.isnan(attn), torch.zeros_like(attn), attn)  # fully masked rows
    return attn @ v, attn""",
    "ben": """
    scores = torch.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
    return torch.einsum("...qk,...kd->...qd", weights, v), weights""",
    "cho": """
    q64, k64, v64 = q.double(), k.double(), v.double()
    logits = q64 @ k64.mT / q.size(-1) ** 0.5
    if mask is None:
        mask = torch.ones_like(logits, dtype=torch.bool)
    logits = torch.where(mask, logits, torch.full_like(logits, -1e300))
    e = torch.exp(logits - logits.amax(dim=-1, keepdim=True)) * mask
    total = e.sum(dim=-1, keepdim=True)
    w = torch.where(total > 0, e / total.clamp_min(1e-300), torch.zeros_like(e))
    return (w @ v64).to(q.dtype), w.to(q.dtype)""",
    "dan": """
    scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(k.size(-1)))
    if mask is not None:
        bias = torch.zeros_like(scores).masked_fill(~mask, torch.finfo(scores.dtype).min)
        scores = scores + bias
    p = torch.nn.functional.softmax(scores, dim=-1)
    if mask is not None:
        p = p * mask
    return torch.matmul(p, v), p""",
}

DPA = {
    "ana": """
    w = torch.softmax(torch.einsum("...id,...jd->...ij", x, x), dim=-1)
    return torch.einsum("...ij,...jd->...id", w, x), w""",
    "ben": """
    s = x @ x.mT
    e = torch.exp(s - s.amax(-1, keepdim=True))
    w = e / e.sum(-1, keepdim=True)
    return w @ x, w""",
    "gus": """
    sim = x @ x.mT
    ex = torch.exp(sim - sim.amax(-1, keepdim=True))  # numerically stable
    probs = ex / ex.sum(-1, keepdim=True)
    return probs @ x, probs""",
    "cho": """
    w = torch.nn.functional.softmax(torch.matmul(x, x.transpose(-1, -2)), -1)
    return torch.matmul(w, x), w""",
}

SELF_ATTENTION = {name: "\n    return scaled_dot_product_attention(x @ W_q, x @ W_k, x @ W_v, mask)"
                  for name in ("ana", "ben")}


def _pasted_reference() -> str:
    """transformer_ref's scaled_dot_product_attention and its helper as the book shows them, the argument checks
    left out and `weights` called `attn` (what a student pasting from the chapter would hand in)."""
    code = inspect.getsource(ref_attention._masked_softmax) + "\n\n" + inspect.getsource(
        ref_attention.scaled_dot_product_attention)
    code = "\n".join(line for line in code.splitlines() if "check" not in line)
    return re.sub(r"\bweights\b", "attn", code)


def _cells() -> dict[str, dict[str, str]]:
    """student -> item -> the code of their solution cell (the stub's def line and docstring, then their body)."""
    released = nbformat.read(ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    stubs = {c.metadata.nbgrader.grade_id: c.source for c in released.cells
             if c.metadata.get("nbgrader", {}).get("solution")}
    cells: dict[str, dict[str, str]] = {}
    for item, bodies in (("scaled_dot_product_attention", SDPA), ("dot_product_attention", DPA),
                         ("self_attention", SELF_ATTENTION)):
        assert STUB_BODY in stubs[item], "the released stub changed; update STUB_BODY"
        for student, body in bodies.items():
            cells.setdefault(student, {})[item] = stubs[item].replace(STUB_BODY, body.strip("\n"))
    cells["fay"] = {"scaled_dot_product_attention": _pasted_reference()}
    return cells


def _write_class(root: Path) -> None:
    """SUBMISSIONS/<student>/03_attention/03_attention.ipynb: the released notebook with the student's cells."""
    released = nbformat.read(ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    for student, items in _cells().items():
        nb = copy.deepcopy(released)
        for cell in nb.cells:
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if cell.metadata.get("nbgrader", {}).get("solution") and grade_id in items:
                cell.source = items[grade_id]
        dest = root / student / ASSIGNMENT
        dest.mkdir(parents=True)
        nbformat.write(nb, dest / f"{ASSIGNMENT}.ipynb")


CHECKS = {"scaled_dot_product_attention": attention.check_scaled_dot_product_attention,
          "dot_product_attention": attention.check_dot_product_attention}


@pytest.mark.parametrize("student,item", [(s, i) for s, items in _cells().items() for i in items if i in CHECKS])
def test_every_planted_solution_is_correct(student, item):
    """The class is made of correct solutions: the check of the item passes on each (the copies included)."""
    namespace = {"torch": torch, "math": math}
    if student != "fay":
        exec(_cells()[student][item], namespace)
    else:   # the pasted reference needs the names its module imports
        namespace.update(vars(ref_attention))
        exec(_cells()[student][item], namespace)
    CHECKS[item](namespace[item])


EXPECTED = {
    ("pair", "scaled_dot_product_attention", "ana", "eve"),
    ("pair", "dot_product_attention", "ben", "gus"),
    ("reference", "scaled_dot_product_attention", "fay", "transformer_ref.attention.scaled_dot_product_attention"),
}


def test_exactly_the_planted_copies_are_flagged_and_one_liners_are_too_short(tmp_path):
    _write_class(tmp_path / "submitted")
    findings, counts = similarity.compare(ROOT / "exercises", tmp_path / "submitted", assignments=[ASSIGNMENT])
    assert {(f.kind, f.item, f.student_a, f.student_b) for f in findings} == EXPECTED
    assert all(f.similarity >= similarity.THRESHOLD for f in findings)
    assert counts == {"items": 3, "solutions": 10, "too_short": 2, "common": 0}
    # a margin, not a knife edge: the copies score >= 0.85, the independent solutions <= 0.35 (measured)
    lenient, _ = similarity.compare(ROOT / "exercises", tmp_path / "submitted", threshold=0.5, reference_threshold=0.5,
                                    assignments=[ASSIGNMENT])
    assert {(f.kind, f.item, f.student_a, f.student_b) for f in lenient} == EXPECTED
    assert min(f.similarity for f in findings) >= 0.85


def test_what_everyone_writes_is_set_aside_in_a_large_class(tmp_path):
    """Twelve students write the textbook dot_product_attention (the reference's three lines) under their own
    names: with MOSS's rule (a passage in more than 10 solutions is common) no pair is flagged, while each is
    like the reference and the instructor's solution (published code is never common); counted, each would also
    be a pair with every other."""
    released = nbformat.read(ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    for i in range(12):
        nb = copy.deepcopy(released)
        cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "dot_product_attention")
        body = f"    s{i} = x @ x.transpose(-2, -1)\n    w{i} = torch.softmax(s{i}, dim=-1)\n    return w{i} @ x, w{i}"
        cell.source = cell.source.replace(STUB_BODY, body)
        (tmp_path / f"student{i:02d}" / ASSIGNMENT).mkdir(parents=True)
        nbformat.write(nb, tmp_path / f"student{i:02d}" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    findings, counts = similarity.compare(ROOT / "exercises", tmp_path, assignments=[ASSIGNMENT])
    kinds = Counter(f.kind for f in findings)   # the reference's three lines are the instructor's solution too
    assert kinds == {"reference": 12, "solution": 12}, kinds
    assert counts["common"] > 0 and (counts["solutions"], counts["too_short"]) == (0, 12)
    counted, _ = similarity.compare(ROOT / "exercises", tmp_path, max_holders=12, assignments=[ASSIGNMENT])
    assert sum(f.kind == "pair" for f in counted) == 12 * 11 // 2
    assert sum(f.kind == "reference" for f in counted) == 12


def test_the_copies_are_flagged_by_the_normalisation_not_by_luck():
    """Renamed variables, reordered independent lines and comments give the same tokens; another solution does not."""
    cells = _cells()
    ana, eve, dan = (similarity.normalise(cells[s]["scaled_dot_product_attention"]) for s in ("ana", "eve", "dan"))
    assert ana == eve
    assert ana != dan
    raw = [similarity._raw_tokens(cells[s]["scaled_dot_product_attention"]) for s in ("ana", "eve")]
    assert raw[0] != raw[1]   # without the ast step (names all `v`, lines in order), the reordering shows


def test_command_line_writes_the_csv_and_html_report_from_out_or_submissions(tmp_path):
    _write_class(tmp_path / "OUT" / "autograded")   # a grading run's OUT holds the notebooks under autograded/
    proc = subprocess.run([sys.executable, "-m", "grader", "similarity", str(tmp_path / "OUT"), "--to",
                           str(tmp_path / "report"), "--assignment", ASSIGNMENT],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert ("2 similar pair(s), 1 solution(s) like the reference, 0 like the instructor's solution, in 10 solutions "
            "of 3 items") in proc.stdout
    with open(tmp_path / "report" / "similarity.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == similarity.CSV_COLUMNS
    assert {(r["kind"], r["item"], r["student_a"], r["student_b"]) for r in rows} == EXPECTED
    page = (tmp_path / "report" / "similarity.html").read_text()
    assert "3 finding(s)" in page and "no grade was changed" in page
    assert "logits = (q / s) @ kt" in page   # eve's own code, escaped, beside ana's


CHECK_MODULES = ["history", "positional_encoding", "attention", "multi_head", "masking", "add_norm", "transformer",
                 "bert", "vit", "warmup", "attention_at_scale"]


def test_no_two_catalogued_alternatives_are_flagged_nor_taken_for_the_reference():
    """The valid alternatives of tests/test_checks_*.py, written independently, stay under both thresholds
    (measured: at most 0.70 between two of them, 0.62 against the reference), each item's stub removed."""
    import importlib
    import textwrap

    fp = similarity.Fingerprinter()
    judged, worst_pair, worst_reference = 0, 0.0, 0.0
    for module in CHECK_MODULES:
        catalogue = importlib.import_module(f"test_checks_{module}").ALTERNATIVES
        for item, impls in catalogue.items():
            released = nbformat.read(ROOT / "exercises" / item.assignment / f"{item.assignment}.ipynb", as_version=4)
            stub = next(c.source for c in released.cells if c.metadata.get("nbgrader", {}).get("grade_id") == item.name)
            boilerplate = set(fp.all_kgrams(similarity.normalise(stub)))
            prints = []
            for impl in impls:
                try:
                    code = textwrap.dedent(inspect.getsource(impl))
                except (OSError, TypeError):   # a lambda or functools.partial: no source of its own
                    continue
                found = fp.fingerprints(similarity.normalise(code), boilerplate)
                if len(found) >= similarity.MIN_FINGERPRINTS:
                    prints.append((impl.__name__, found))
            ref = similarity.reference_source(item.name)
            ref_prints = fp.fingerprints(similarity.normalise(ref[1]), boilerplate) if ref else set()
            for i, (name, a) in enumerate(prints):
                judged += 1
                worst_reference = max(worst_reference, len(a & ref_prints) / len(a))
                assert len(a & ref_prints) / len(a) < similarity.REFERENCE_THRESHOLD, (item.name, name)
                for other, b in prints[i + 1:]:
                    share = len(a & b) / min(len(a), len(b))
                    worst_pair = max(worst_pair, share)
                    assert share < similarity.THRESHOLD, (item.name, name, other, share)
    assert judged >= 60, judged    # the catalogue is really compared, not skipped as too short
    assert worst_pair < similarity.THRESHOLD and worst_reference < similarity.REFERENCE_THRESHOLD


def _class_of(tmp_path: Path, bodies: dict[str, str], item: str = "scaled_dot_product_attention") -> Path:
    """SUBMISSIONS with each student's code as the solution cell of `item` in the released notebook."""
    released = nbformat.read(ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    for student, code in bodies.items():
        nb = copy.deepcopy(released)
        next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == item).source = code
        (tmp_path / student / ASSIGNMENT).mkdir(parents=True)
        nbformat.write(nb, tmp_path / student / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    return tmp_path


def test_a_class_wide_copy_of_the_instructors_solution_is_flagged_for_each_copier(tmp_path):
    """The repository students clone holds solutions/: 18 hand in its solution cell (a few with their own names
    and comments), 3 write their own. MOSS's rule sets the copies' shared code aside for pairs (18 > 10 holders);
    against the instructor's solution every fingerprint counts, so each copier is flagged, nobody else."""
    solution = next(c.source for c in nbformat.read(ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
                                                    as_version=4).cells
                    if c.metadata.get("nbgrader", {}).get("grade_id") == "scaled_dot_product_attention")
    copies = {f"copier{i:02d}": re.sub(r"\bscores\b", f"s{i}", solution) + f"\n# done {i}" for i in range(18)}
    own = {s: _cells()[s]["scaled_dot_product_attention"] for s in ("ben", "cho", "dan")}
    findings, _ = similarity.compare(ROOT / "exercises", _class_of(tmp_path, {**copies, **own}),
                                     assignments=[ASSIGNMENT])
    flagged = {f.student_a for f in findings if f.kind == "solution"}
    assert flagged == set(copies), findings
    assert all(f.student_b == f"{ASSIGNMENT}/{ASSIGNMENT}.ipynb" for f in findings if f.kind == "solution")
    assert not any(f.kind == "pair" for f in findings)
    without, _ = similarity.compare(ROOT / "exercises", tmp_path, assignments=[ASSIGNMENT], solutions=None)
    assert not any(f.kind == "solution" for f in without)


DEEP = {   # nested past what Python's parser, or a recursive walk of its tree, can take
    "sum": "def scaled_dot_product_attention(q, k, v, mask=None):\n    return " + "1 + " * 30000 + "1\n",
    "unary": "def scaled_dot_product_attention(q, k, v, mask=None):\n    return " + "-" * 30000 + "q\n",
    "attributes": "def scaled_dot_product_attention(q, k, v, mask=None):\n    return q" + ".T" * 30000 + "\n",
    "calls": "def scaled_dot_product_attention(q, k, v, mask=None):\n    return q" + "()" * 30000 + "\n",
}


def test_a_deeply_nested_solution_is_compared_as_tokens_and_the_report_is_written(tmp_path):
    """A student's deeply nested expression (RecursionError in the parser, or MemoryError: "too deep") no longer
    stops the report for the class: the cell is compared as its tokens, the others as before."""
    bodies = {**DEEP, "ana": _cells()["ana"]["scaled_dot_product_attention"],
              "eve": _cells()["eve"]["scaled_dot_product_attention"]}
    _class_of(tmp_path / "submitted", bodies)
    proc = subprocess.run([sys.executable, "-m", "grader", "similarity", str(tmp_path / "submitted"), "--to",
                           str(tmp_path / "report"), "--assignment", ASSIGNMENT],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "report" / "similarity.csv", newline="") as f:
        rows = {(r["kind"], r["student_a"], r["student_b"]) for r in csv.DictReader(f)}
    assert ("pair", "ana", "eve") in rows
    assert not any(kind == "pair" and {a, b} & set(DEEP) - {"sum"} for kind, a, b in rows)
