"""`python -m grader report OUT --to DIR`: the class at a glance.

Unit tests on small synthetic tables (no grading): facility and discrimination as Moodle defines them,
against a hand computation; final scores net of the late penalty; which "Likely mistake" lines count;
student-derived text escaped in the page and defused in the CSV files.

End to end (slow): a planted class of 03_attention (built from solutions/03_attention with the helpers of
tests/test_sandbox_attacks.py) is graded by `python -m grader grade`, and the report must count exactly the
planted mistakes, agree with the gradebook on every item, list the students the roster has without a
submission, break the class down by section, and render in headless Chromium with its images.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_report.py
"""

from __future__ import annotations

import csv
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

from grader.report import (MAX_COMMENT_CHARS, ClassData, ItemInfo, Person, Submission, discrimination, facility,
                           named_mistake, page, tables)
from test_browser import CHROMEDRIVER, CHROMIUM, PHONE_HEIGHT, PHONE_WIDTH, alt_text_problem
from test_sandbox_attacks import ASSIGNMENT, ITEMS, POINTS, ROOT, Context, cell, grade, item_scores, raw, solution, submit

# ------------------------------------------------------------------------------------------------
# The numbers, on a table small enough to compute by hand
# ------------------------------------------------------------------------------------------------

# Four students, three items (A of 3 points, B of 2, C of 2). The rest of the test for A is B + C:
#   student  A  B  C   rest of A
#   s1       0  1  0   1
#   s2       1  0  1   1
#   s3       2  2  1   3
#   s4       3  1  2   3
# mean A = 1.5, mean rest = 2; deviations (-1.5, -0.5, 0.5, 1.5) and (-1, -1, 1, 1):
#   sum of products = 1.5 + 0.5 + 0.5 + 1.5 = 4, sum of squares 5 and 4, so r = 4 / sqrt(20) = 2 / sqrt(5).
# Facility of A = 1.5 / 3 = 0.5.
HAND = {"s1": (0, 1, 0), "s2": (1, 0, 1), "s3": (2, 2, 1), "s4": (3, 1, 2)}
HAND_POINTS = {"A": 3.0, "B": 2.0, "C": 2.0}


def hand_class(**changes) -> ClassData:
    items = [ItemInfo("nb", name, f"test_{name}", points, (("wrong", "you did it wrong."),))
             for name, points in HAND_POINTS.items()]
    subs = {(s, "hw"): Submission(s, "hw", "graded", items=dict(zip(HAND_POINTS, map(float, scores))))
            for s, scores in HAND.items()}
    data = ClassData({"hw": items}, subs, {s: Person(s) for s in HAND}, from_roster=False)
    for name, value in changes.items():
        setattr(data, name, value)
    return data


def rows(table: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(table[0], r)) for r in table[1:]]


def test_discrimination_is_the_correlation_with_the_rest_of_the_test():
    assert discrimination([0, 1, 2, 3], [1, 1, 3, 3]) == pytest.approx(2 / math.sqrt(5))
    item = rows(tables(hand_class()).items)[0]
    assert item["item"] == "A"
    assert float(item["discrimination"]) == pytest.approx(2 / math.sqrt(5), abs=5e-4)   # 0.894, rest = total - A
    assert float(item["facility"]) == 0.5 == facility([0, 1, 2, 3], 3.0)
    assert (item["mean"], item["zeros"], item["full_marks"], item["graded"]) == ("1.5", "1", "1", "4")


def test_discrimination_is_undefined_without_spread():
    assert discrimination([2, 2, 2], [0, 1, 3]) is None     # everyone scored the same on the item
    assert discrimination([0, 1, 2], [4, 4, 4]) is None     # ... or on the rest
    assert discrimination([1], [2]) is None
    assert discrimination([0, 1], [1, 0]) == pytest.approx(-1.0)


def test_final_scores_are_net_of_the_late_penalty():
    data = hand_class()
    data.submissions[("s4", "hw")].penalty = 4.0          # 6 points, 4 off for lateness: 2 of 7, below half
    a = rows(tables(data).assignments)[0]
    finals = [1, 2, 5, 2]
    assert (a["mean"], a["median"], a["late"], a["below"]) == (f"{statistics.fmean(finals):g}", "2", "1", "3")
    below = {r["student_id"]: r for r in rows(tables(data).students)}
    assert below["s4"]["final_score"] == "2" and below["s4"]["late_penalty"] == "4"
    item = rows(tables(data).items)[0]                     # item statistics are before the penalty
    assert float(item["discrimination"]) == pytest.approx(2 / math.sqrt(5), abs=5e-4)


CATALOGUE = {"your mask is inverted.": "mask_inverted", "no sqrt(d_k).": "no_scale"}


@pytest.mark.parametrize("comment, expected", [
    ("2 of 5 points. f: right on a; wrong on b.\nf is not right yet on case 2.\nLikely mistake: your mask is "
     "inverted.\noutput: 3 of 4 values differ", "mask_inverted"),
    ("2 of 5 points. f: wrong on b.\nf is not right yet on case 2.\nLikely mistake: something else.\n"
     "Likely mistake: no sqrt(d_k).", None),                                        # the first one decides
    ("0 of 5 points. f: wrong on a and b.\nf does not run yet (case 1).\nValueError: x\n"
     "Likely mistake: no sqrt(d_k).", None),                                        # the student's exception
    ("0 of 5 points. f: wrong on a.\nf is not right yet on case 1.\noutput: ...\nThe cell `f` raised "
     "ValueError: boom\nLikely mistake: no sqrt(d_k).", None),                      # the student's cell error
    ("x" * MAX_COMMENT_CHARS + "\nLikely mistake: no sqrt(d_k).", None),            # past what is read
    (None, None),
])
def test_only_the_graders_own_likely_mistake_line_counts(comment, expected):
    assert named_mistake(comment, "f", CATALOGUE) == expected


def test_student_text_is_escaped_in_the_page_and_defused_in_the_csv():
    hostile = '<img src=x onerror="alert(1)">'
    data = hand_class(people={**{s: Person(s) for s in HAND}, hostile: Person(hostile, hostile, hostile)},
                      from_roster=True)
    data.submissions[(hostile, "hw")] = Submission(hostile, "hw", "failed", reason="=HYPERLINK(\"http://x\")\n" + hostile)
    t = tables(data)
    text = page(data, t, 0.5, "sqlite:///gradebook.db")
    assert hostile not in text and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    failed = next(r for r in rows(t.students) if r["status"] == "failed to grade")
    assert failed["reason"].startswith("'=HYPERLINK") and "\n" not in failed["reason"]


# ------------------------------------------------------------------------------------------------
# A planted class, graded by `python -m grader grade`
# ------------------------------------------------------------------------------------------------

NO_SCALE = '''def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, weights'''
MASK_INVERTED = '''def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, weights'''
DOUBLED = '''def scaled_dot_product_attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return 2 * weights @ v, weights'''                   # wrong, and like no catalogued mistake
# Students whose scaled_dot_product_attention is wrong write self_attention on its own, so that it is right
# whether or not the grader substitutes the reference parts for the parts an item calls.
SELF_ON_ITS_OWN = '''def self_attention(x, W_q, W_k, W_v, mask=None):
    q, k, v = x @ W_q, x @ W_k, x @ W_v
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ v, weights'''
Q_K_SWAPPED = '''def self_attention(x, W_q, W_k, W_v, mask=None):
    return scaled_dot_product_attention(x @ W_k, x @ W_q, x @ W_v, mask)'''


def _with(**sources):
    """A builder: the solution with the solution cells of the given items replaced."""
    def build(ctx: Context) -> nbformat.NotebookNode:
        nb = solution()
        for item, source in sources.items():
            cell(nb, item).source = source
        return nb
    return build


def _blank(ctx: Context) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)


WRONG_SDPA = {"self_attention": SELF_ON_ITS_OWN}
PLANTED = {   # student -> (builder, {item: planted mistake})
    **{f"right{k}": (_with(), {}) for k in range(1, 4)},
    **{f"unscaled{k}": (_with(scaled_dot_product_attention=NO_SCALE, **WRONG_SDPA),
                        {"scaled_dot_product_attention": "no_scale"}) for k in range(1, 4)},
    **{f"inverted{k}": (_with(scaled_dot_product_attention=MASK_INVERTED, **WRONG_SDPA),
                        {"scaled_dot_product_attention": "mask_inverted"}) for k in range(1, 3)},
    **{f"swapped{k}": (_with(self_attention=Q_K_SWAPPED), {"self_attention": "q_k_swapped"}) for k in range(1, 3)},
    "doubled": (_with(scaled_dot_product_attention=DOUBLED, **WRONG_SDPA), {}),
    "blank": (_blank, {}),
    "broken": (raw("this is not a notebook"), {}),
}
GRADED = [s for s in PLANTED if s != "broken"]
UNEXPLAINED = {"dot_product_attention": 1, "scaled_dot_product_attention": 2, "self_attention": 1}  # blank, doubled
ABSENT = ("absent1", "absent2")        # in the roster, no submission
LATE, PENALTY = "right1", 2.0          # a late penalty put into the gradebook after grading


def _section(student: str) -> str:
    return "Tuesday lab" if sorted([*PLANTED, *ABSENT]).index(student) % 2 else "Thursday lab"


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The planted class graded (2 workers), a late penalty set in the gradebook, then the report run with a
    roster that has two students more and a section column."""
    from nbgrader.api import Gradebook

    base = tmp_path_factory.mktemp("report")
    ctx = Context(base / "submitted", base / "graded", "unused", 9)
    submit(ctx.submissions, {s: build for s, (build, _) in PLANTED.items()}, ctx)
    proc = grade(ctx.submissions, ctx.out, workers=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with Gradebook("sqlite:///" + str(ctx.out / "gradebook.db")) as gb:
        gb.find_submission_notebook(ASSIGNMENT, ASSIGNMENT, LATE).late_submission_penalty = PENALTY
        gb.db.commit()
    roster = base / "roster.csv"
    with open(roster, "w", newline="") as f:
        csv.writer(f).writerows([["student_id", "name", "section"]]
                                + [[s, f"Student {s}", _section(s)] for s in [*PLANTED, *ABSENT]])
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "grader", "report", str(ctx.out), "--to", str(base / "report"),
                          "--roster", str(roster), "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stdout + run.stderr
    print(f"\nreport on {len(PLANTED)} submissions: {seconds:.1f} s")
    files = {name: list(csv.DictReader(open(base / "report" / f"{name}.csv", newline="")))
             for name in ("assignments", "items", "mistakes", "students")}
    return ctx.out, base / "report", files



@pytest.mark.slow
@pytest.mark.xdist_group("report")
def test_named_mistakes_are_counted_exactly(reported):
    _, _, files = reported
    planted: dict[tuple[str, str], int] = {}
    for _, mistakes in PLANTED.values():
        for item, key in mistakes.items():
            planted[(item, key)] = planted.get((item, key), 0) + 1
    found = {(r["item"], r["mistake"]): int(r["students"]) for r in files["mistakes"] if r["assignment"] == ASSIGNMENT}
    assert {k: v for k, v in found.items() if v} == planted
    assert set(found) > set(planted)                      # every catalogued mistake has a row, most of them 0
    for r in files["mistakes"]:
        assert float(r["share"]) == pytest.approx(int(r["students"]) / len(GRADED), abs=5e-4)
        assert r["graded"] == str(len(GRADED))
    items = {r["item"]: r for r in files["items"]}
    for item in ITEMS:
        explained = sum(n for (i, _), n in planted.items() if i == item)
        assert (items[item]["explained"], items[item]["unexplained"]) == (str(explained), str(UNEXPLAINED[item]))
        assert int(items[item]["failures"]) == explained + UNEXPLAINED[item]


@pytest.mark.slow
@pytest.mark.xdist_group("report")
def test_item_statistics_match_the_gradebook(reported):
    out, _, files = reported
    scores = item_scores(out, GRADED)                     # from the gradebook, as nbgrader has them
    items = {r["item"]: r for r in files["items"]}
    for k, item in enumerate(ITEMS):
        x = [scores[s][k] for s in GRADED]
        rest = [sum(scores[s]) - scores[s][k] for s in GRADED]
        row = items[item]
        assert row["graded"] == str(len(GRADED))
        assert float(row["mean"]) == pytest.approx(statistics.fmean(x), abs=5e-4)
        assert int(row["zeros"]) == sum(v == 0 for v in x)
        assert float(row["facility"]) == pytest.approx(statistics.fmean(x) / POINTS[item], abs=5e-4)
        assert float(row["discrimination"]) == pytest.approx(statistics.correlation(x, rest), abs=5e-4)


@pytest.mark.slow
@pytest.mark.xdist_group("report")
def test_final_scores_missing_failed_and_sections(reported):
    out, _, files = reported
    scores = item_scores(out, GRADED)
    finals = [sum(scores[s]) - (PENALTY if s == LATE else 0.0) for s in GRADED] + [0.0]   # "broken" scores 0
    whole = next(r for r in files["assignments"] if r["scope"] == "class")
    assert (whole["students"], whole["submissions"], whole["graded"], whole["failed_to_grade"], whole["missing"],
            whole["late"]) == (str(len(PLANTED) + len(ABSENT)), str(len(PLANTED)), str(len(GRADED)), "1", "2", "1")
    assert float(whole["mean"]) == pytest.approx(statistics.fmean(finals), abs=5e-3)
    assert float(whole["median"]) == pytest.approx(statistics.median(finals), abs=5e-3)
    students = {(r["student_id"], r["status"]) for r in files["students"]}
    below = {s for s, f in zip([*GRADED, "broken"], finals) if f < 0.5 * sum(POINTS.values())}
    assert students == ({(s, "missing") for s in ABSENT} | {("broken", "failed to grade")}
                        | {(s, "below") for s in below - {"broken"}})
    assert "blank" in below and LATE not in below
    sections = {r["section"]: r for r in files["assignments"] if r["scope"] == "section"}
    assert set(sections) == {"Tuesday lab", "Thursday lab"}
    assert sum(int(r["students"]) for r in sections.values()) == len(PLANTED) + len(ABSENT)
    assert sum(int(r["missing"]) for r in sections.values()) == 2
    for name, r in sections.items():
        members = [s for s in PLANTED if _section(s) == name]
        assert r["submissions"] == str(len(members))


@pytest.mark.slow
@pytest.mark.xdist_group("report")
@pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                    reason="needs Debian's chromium and chromium-driver; install with `make browser`")
def test_page_renders_in_chromium_with_its_images(reported):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    _, folder, _ = reported
    text = (folder / "report.html").read_text()
    assert "src=\"http" not in text and "<script" not in text      # self-contained: nothing to fetch
    with tempfile.TemporaryDirectory(prefix="report-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.set_window_size(PHONE_WIDTH, PHONE_HEIGHT)
            driver.get((folder / "report.html").as_uri())
            WebDriverWait(driver, 30).until(lambda d: d.execute_script(
                "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
            images = driver.execute_script(
                "return Array.from(document.images).map(i => [i.naturalWidth, i.getAttribute('alt'), i.src.slice(0, 22)])")
            view = driver.execute_script("return [document.documentElement.scrollWidth, "
                                         "document.documentElement.clientWidth, document.body.innerText]")
            console = driver.get_log("browser")
        finally:
            driver.quit()
    assert len(images) == 2                                         # the histogram and the mistakes' bars
    for width, alt, src in images:
        assert width > 0 and src == "data:image/png;base64," and alt_text_problem(alt, src) is None
    assert [e["message"] for e in console if e.get("level") == "SEVERE"] == []
    assert view[0] - view[1] <= 1, f"the page scrolls sideways by {view[0] - view[1]} px on a phone"
    shown = view[2]
    assert "mask inverted: 17%" in shown and "no scale: 25%" in shown and "q k swapped: 17%" in shown
    assert "1 submission failed to grade" in shown and "Scores are final" in shown
    assert all(s in shown for s in ABSENT)
