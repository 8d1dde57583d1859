"""`python -m grader report OUT --to DIR`: the class at a glance, from the gradebook that `grade --out OUT` wrote.

DIR/report.html is one self-contained page (plots inline, readable on a phone), and the same numbers are in
four CSV files:
    assignments.csv  per assignment (scope "class") and, when the roster has a `section` column, per section
                     (scope "section"): students, submissions, graded, failed to grade, missing, the mean,
                     median, lowest and highest final score, how many are below the threshold, and the
                     histogram of final scores the page plots ("[lo,hi):count ...").
    items.csv        per graded item: mean, zeros, full marks, facility, discrimination, failures (submissions
                     that lost points on it), how many of them a known mistake explains, and how many not.
    mistakes.csv     per item and catalogued mistake (grader/checks/<assignment>.py): how many students made
                     it and their share of the graded submissions; 0 for the ones nobody made.
    students.csv     one row per student and assignment that needs a look: "missing" (in the class, no
                     submission), "failed to grade" (with the grader's reason) or "below" (final score under
                     --below of the maximum, 0.5 by default).

Whose numbers: final scores, as `nbgrader export` computes them: each test cell's score (the manual score
where an instructor set one in formgrader, else the autograded one, plus extra credit), summed, minus the late
penalty. A submission that failed to grade (a broken file) scores 0 and is counted in the distribution; the
item statistics and the mistakes are over the graded submissions only, because a submission that could not
be read says nothing about an item (and its comments may be an older submission's). Item statistics use the
item scores, before the late penalty, which belongs to the notebook, not to an item.

Item statistics as Moodle's quiz statistics define them ("Quiz statistics calculations", MoodleDocs), with
one graded item as a question and one assignment as the quiz:
    facility        F_i = mean(x_i) / max(x_i): the mean score as a fraction of the item's points
                    (Moodle shows 100 F_i).
    discrimination  D_i = r(x_i, X_i), the Pearson correlation between the item's score x_i and the rest of
                    the assignment X_i (the total minus this item), over the graded submissions (Moodle shows
                    100 D_i); empty when either has no spread (every student scored the same).

The class: the roster (--roster, the CSV `python -m grader export` takes; see grader/export.py), or else
nbgrader's Student table (`nbgrader db student import`, and every student the grader recorded). Graded
students who are not in the roster are counted in the statistics and named on the page.

A named mistake is read from the report the grader stored as the comment on the item's solution cell: its
first "Likely mistake: ..." line, counted when its text is word for word the `says` of one of that item's
catalogued mistakes, and only when it comes before the first line that quotes the student's own code or
exception (a comment is student-influenced text: it is read at most MAX_COMMENT_CHARS long).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import math
import os
import statistics
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from grader.inert import csv_cell

MAX_COMMENT_CHARS = 4000     # what is read of one comment (the grader's reports fit in a few hundred)
MAX_REASON_CHARS = 200       # of a failed submission's reason, in students.csv and on the page
LIKELY = "Likely mistake: "
MAX_BINS = 30
CSV_FILES = ("assignments.csv", "items.csv", "mistakes.csv", "students.csv")


class ReportError(Exception):
    """A problem with the input (gradebook, OUT, roster) that the user must fix; the message says what."""


# ---------------------------------------------------------------------------------------------- the numbers

def facility(scores: list[float], points: float) -> float | None:
    """Moodle's facility index as a fraction: the mean score over the item's points (None without either)."""
    return statistics.fmean(scores) / points if scores and points > 0 else None


def discrimination(item: list[float], rest: list[float]) -> float | None:
    """Moodle's discrimination index as a correlation in [-1, 1]: Pearson's r between each student's score on
    the item and on the rest of the test (total minus the item). None for fewer than two students or when
    either has no spread (r is undefined)."""
    n = len(item)
    if n != len(rest):
        raise ValueError(f"item and rest must have one score per student; got {n} and {len(rest)}")
    if n < 2:
        return None
    mx, my = statistics.fmean(item), statistics.fmean(rest)
    sxy = sum((x - mx) * (y - my) for x, y in zip(item, rest))
    sxx = sum((x - mx) ** 2 for x in item)
    syy = sum((y - my) ** 2 for y in rest)
    if sxx <= 1e-12 or syy <= 1e-12:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def named_mistake(comment: str | None, item: str, catalogue: dict[str, str]) -> str | None:
    """The key of the catalogued mistake the grader's report names (`catalogue`: says -> key), or None.

    The first "Likely mistake:" line decides, and only one that comes before the grader starts quoting the
    student (an exception after "<item> does not run yet", a cell's error after "The cell `"): what a student
    raised or printed cannot name a mistake for them.
    """
    if not comment:
        return None
    quotes_student = (f"{item} does not run yet", "The cell `")
    for line in comment[:MAX_COMMENT_CHARS].splitlines():
        if line.startswith(quotes_student):
            return None
        if line.startswith(LIKELY):
            return catalogue.get(line[len(LIKELY):].strip())
    return None


def histogram(scores: list[float], top: float) -> list[tuple[float, float, int]]:
    """(low, high, count) for equal bins over [0, top] (top: the maximum score, or a higher score with extra
    credit): one point wide up to MAX_BINS points, else MAX_BINS bins. The last bin holds `top` (full marks)."""
    top = max([top, *scores]) if scores else top
    if top <= 0:
        return [(0.0, 0.0, len(scores))]
    bins = min(MAX_BINS, max(1, math.ceil(top - 1e-9)))
    width = top / bins
    counts = [0] * bins
    for s in scores:
        counts[min(bins - 1, max(0, int(s / width + 1e-9)))] += 1
    return [(k * width, (k + 1) * width, c) for k, c in enumerate(counts)]


# ---------------------------------------------------------------------------------------------- the gradebook

@dataclass(frozen=True)
class ItemInfo:
    """One graded item of an assignment, from the instructor's source (OUT/source) and the gradebook."""

    notebook: str
    name: str            # the solution cell's grade_id (the function's name): its comment holds the report
    test_id: str         # the test cell's grade_id: its grade holds the score
    points: float
    catalogue: tuple[tuple[str, str], ...] = ()   # (key, says) of its known mistakes, in catalogue order


@dataclass
class Submission:
    """One student's recorded submission of one assignment."""

    student_id: str
    assignment: str
    status: str                                   # "graded" or "failed"
    reason: str = ""
    items: dict[str, float] = field(default_factory=dict)       # item name -> score (manual where set)
    mistakes: dict[str, str | None] = field(default_factory=dict)   # item name -> named mistake, for lost points
    penalty: float = 0.0

    @property
    def raw(self) -> float:
        return sum(self.items.values())

    @property
    def final(self) -> float:
        return self.raw - self.penalty


@dataclass
class Person:
    student_id: str
    name: str = ""
    section: str = ""


@dataclass
class ClassData:
    """Everything the report needs, read once from the gradebook."""

    assignments: dict[str, list[ItemInfo]]        # sorted by name; items in notebook order
    submissions: dict[tuple[str, str], Submission]
    people: dict[str, Person]                     # the class (roster or Student table)
    from_roster: bool
    unrostered: list[str] = field(default_factory=list)

    def max_score(self, assignment: str) -> float:
        return float(sum(i.points for i in self.assignments[assignment]))

    @property
    def sections(self) -> list[str]:
        return sorted({p.section for p in self.people.values() if p.section}) if self.from_roster else []


def _items_of(source: Path, assignment: str) -> list[ItemInfo]:
    """The graded items of an assignment from the instructor's notebooks in OUT/source (what the grader
    graded), each with the catalogue of its known mistakes (grader.checks)."""
    from grader.checks import ITEMS
    from grader.submission import load_source

    folder = source / assignment
    notebooks = sorted(folder.glob("*.ipynb")) if folder.is_dir() else []
    if not notebooks:
        raise ReportError(f"no instructor notebook in {folder}; give the OUT that `python -m grader grade` wrote")
    items = []
    for path in notebooks:
        for graded in load_source(path).items:
            known = ITEMS.get(graded.name)
            catalogue = tuple((m.key, m.says) for m in known.mistakes) if known is not None else ()
            items.append(ItemInfo(path.stem, graded.name, graded.test_id, graded.points, catalogue))
    return items


def read_class(db_url: str, out: Path, roster: Path | None = None, progress: bool = False) -> ClassData:
    """Read the gradebook at `db_url` (scores, late penalties, the grader's status and comments), the items
    from OUT/source and the class from `roster` or nbgrader's Student table. Raises ReportError."""
    from nbgrader.api import (Assignment, Comment, Grade, GradeCell, Gradebook, Notebook, SolutionCell, Student,
                              SubmittedAssignment, SubmittedNotebook)
    from sqlalchemy import func, inspect, select
    from tqdm import tqdm

    from grader.gradebook import RESULTS

    if db_url.startswith("sqlite:///") and not Path(db_url[len("sqlite:///"):]).is_file():
        raise ReportError(f"no gradebook at {db_url} (nbgrader would create an empty one)")
    with Gradebook(db_url) as gb:
        db = gb.db
        names = sorted(db.scalars(select(Assignment.name)).all())
        if not names:
            raise ReportError(f"the gradebook at {db_url} has no assignments; grade the class into it first")
        submitted = (select(SubmittedAssignment.student_id, Assignment.name, Notebook.name)
                     .join(Assignment, SubmittedAssignment.assignment_id == Assignment.id)
                     .join(SubmittedNotebook, SubmittedNotebook.assignment_id == SubmittedAssignment.id)
                     .join(Notebook, SubmittedNotebook.notebook_id == Notebook.id))
        grades = db.execute(submitted.add_columns(GradeCell.name, Grade.score)
                            .join(Grade, Grade.notebook_id == SubmittedNotebook.id)
                            .join(GradeCell, Grade.cell_id == GradeCell.id)).all()
        penalties = db.execute(submitted.add_columns(SubmittedNotebook.late_submission_penalty)).all()
        assignments = {a: _items_of(out / "source", a) for a in names}
        by_test = {(a, i.notebook, i.test_id): i for a, items in assignments.items() for i in items}
        by_name = {(a, i.notebook, i.name): i for a, items in assignments.items() for i in items}
        subs: dict[tuple[str, str], Submission] = {}
        for student, a, _, _ in penalties:
            subs[(student, a)] = Submission(student, a, "graded")
        for student, a, nb, test_id, score in grades:
            item = by_test.get((a, nb, test_id))
            if item is not None:
                subs[(student, a)].items[item.name] = float(score or 0.0)
        for student, a, _, penalty in penalties:
            subs[(student, a)].penalty += float(penalty or 0.0)
        if inspect(db.get_bind()).has_table(RESULTS.name):   # absent when plain `nbgrader autograde` graded
            for student, a, status, reason in db.execute(
                    select(RESULTS.c.student_id, RESULTS.c.assignment, RESULTS.c.status,
                           func.substr(RESULTS.c.reason, 1, MAX_REASON_CHARS))):
                if (student, a) in subs:
                    subs[(student, a)].status, subs[(student, a)].reason = status, reason or ""
        for key in [k for k, s in subs.items() if s.status not in ("graded", "failed")]:
            del subs[key]                                  # a "missing" row of the grader's: no submission
        catalogues = {(a, i.name): {says: key for key, says in reversed(i.catalogue)}
                      for a, items in assignments.items() for i in items}
        n_comments = db.scalar(select(func.count(Comment.id)).where(Comment.auto_comment.is_not(None)))
        comments = db.execute(submitted.add_columns(SolutionCell.name,
                                                    func.substr(Comment.auto_comment, 1, MAX_COMMENT_CHARS))
                              .join(Comment, Comment.notebook_id == SubmittedNotebook.id)
                              .join(SolutionCell, Comment.cell_id == SolutionCell.id)
                              .where(Comment.auto_comment.is_not(None))
                              .execution_options(yield_per=1000))
        for student, a, nb, name, text in tqdm(comments, total=n_comments, unit="comment", desc="reading reports",
                                              disable=not progress, file=sys.stderr):
            item, sub = by_name.get((a, nb, name)), subs.get((student, a))
            if item is None or sub is None or sub.status != "graded" or sub.items.get(name, 0.0) >= item.points:
                continue
            sub.mistakes[name] = named_mistake(text, name, catalogues[(a, name)])
        students = {s.id: Person(s.id, " ".join(p for p in (s.first_name, s.last_name) if p))
                    for s in db.scalars(select(Student))}
        db.rollback()
    graded_ids = {student for student, _ in subs}
    if roster is not None:
        from grader.export import ExportError, read_roster
        try:
            people = {p.student_id: Person(p.student_id, p.name, p.section) for p in read_roster(roster)}
        except ExportError as err:
            raise ReportError(str(err)) from None
        unrostered = sorted(graded_ids - set(people))
    else:
        people, unrostered = students, []
    return ClassData(assignments, subs, people, roster is not None, unrostered)


# ---------------------------------------------------------------------------------------------- the tables

def _n(x: float | None, digits: int = 2) -> str:
    """A number for a CSV cell: rounded, no trailing zeros; empty for None."""
    if x is None:
        return ""
    text = f"{round(x, digits):.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _text(value: str, limit: int = MAX_REASON_CHARS) -> str:
    """Student-influenced text for a CSV cell: one line, capped, and never read as a spreadsheet formula."""
    value = " ".join(str(value).split())[:limit]
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def _histogram_text(bins: list[tuple[float, float, int]]) -> str:
    """"[0,1):2 [1,2):0 ... [11,12]:5": the bins of a histogram and their counts (the last bin is closed)."""
    return " ".join(f"[{_n(lo)},{_n(hi)}{']' if k == len(bins) - 1 else ')'}:{c}" for k, (lo, hi, c) in enumerate(bins))


@dataclass
class Tables:
    """The rows of the four CSV files (header first); the page shows the same numbers."""

    assignments: list[list[str]]
    items: list[list[str]]
    mistakes: list[list[str]]
    students: list[list[str]]


def tables(data: ClassData, below: float = 0.5) -> Tables:
    """The report's numbers, as rows of the CSV files."""
    a_rows = [["scope", "section", "assignment", "max_score", "students", "submissions", "graded", "failed_to_grade",
               "missing", "mean", "median", "min", "max", "below", "late", "histogram"]]
    i_rows = [["assignment", "notebook", "item", "test_id", "points", "graded", "mean", "zeros", "full_marks",
               "facility", "discrimination", "failures", "explained", "unexplained"]]
    m_rows = [["assignment", "item", "mistake", "students", "share", "graded", "says"]]
    s_rows = [["student_id", "name", "section", "assignment", "status", "final_score", "max_score", "late_penalty",
               "reason"]]
    everyone = sorted(set(data.people) | {s for s, _ in data.submissions})
    for a, items in data.assignments.items():
        top = data.max_score(a)
        scopes = [("class", "", everyone)] + [("section", sec, [p for p in everyone if p in data.people
                                                                and data.people[p].section == sec])
                                               for sec in data.sections]
        for scope, section, group in scopes:
            subs = [data.submissions[(s, a)] for s in group if (s, a) in data.submissions]
            finals = [s.final for s in subs]
            missing = [s for s in group if (s, a) not in data.submissions and s in data.people]
            a_rows.append([scope, section, a, _n(top), str(len(group)), str(len(subs)),
                           str(sum(s.status == "graded" for s in subs)), str(sum(s.status == "failed" for s in subs)),
                           str(len(missing)), _n(statistics.fmean(finals) if finals else None),
                           _n(statistics.median(finals) if finals else None), _n(min(finals, default=None)),
                           _n(max(finals, default=None)), str(sum(f < below * top for f in finals)),
                           str(sum(s.penalty > 0 for s in subs)),
                           _histogram_text(histogram(finals, top))])
        graded = [s for s in (data.submissions.get((p, a)) for p in everyone) if s is not None and s.status == "graded"]
        for item in items:
            x = [s.items.get(item.name, 0.0) for s in graded]
            rest = [s.raw - s.items.get(item.name, 0.0) for s in graded]
            lost = [s for s in graded if s.items.get(item.name, 0.0) < item.points]
            named = Counter(s.mistakes.get(item.name) for s in lost)
            explained = sum(c for key, c in named.items() if key is not None)
            i_rows.append([a, item.notebook, item.name, item.test_id, _n(item.points), str(len(graded)),
                           _n(statistics.fmean(x) if x else None, 3), str(sum(v <= 1e-9 for v in x)),
                           str(sum(v >= item.points for v in x)), _n(facility(x, item.points), 3),
                           _n(discrimination(x, rest), 3), str(len(lost)), str(explained),
                           str(len(lost) - explained)])
            for key, says in item.catalogue:
                m_rows.append([a, item.name, key, str(named.get(key, 0)),
                               _n(named.get(key, 0) / len(graded) if graded else None, 3), str(len(graded)), says])
        for student in everyone:
            person = data.people.get(student, Person(student))
            sub = data.submissions.get((student, a))
            if sub is None and student in data.people:
                s_rows.append([student, person.name, person.section, a, "missing", "", _n(top), "", ""])
            elif sub is not None and sub.status == "failed":
                s_rows.append([student, person.name, person.section, a, "failed to grade", _n(sub.final), _n(top),
                               _n(sub.penalty), _text(sub.reason)])
            elif sub is not None and sub.final < below * top:
                s_rows.append([student, person.name, person.section, a, "below", _n(sub.final), _n(top),
                               _n(sub.penalty), ""])
    s_rows[1:] = sorted(s_rows[1:], key=lambda r: (r[0], r[3]))
    return Tables(a_rows, i_rows, m_rows, s_rows)


# ---------------------------------------------------------------------------------------------- the page

def _png(fig) -> str:
    """A matplotlib Figure as a data: URL (the page needs no other file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _histogram_figure(bins: list[tuple[float, float, int]], mean: float, median: float, top: float,
                      threshold: float) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.bar([lo for lo, _, _ in bins], [c for _, _, c in bins], width=[hi - lo for lo, hi, _ in bins],
           align="edge", color="#4c72b0", edgecolor="white")
    ax.axvline(mean, color="#dd8452", linewidth=2, label=f"mean {mean:.2f}")
    ax.axvline(median, color="#55a868", linewidth=2, linestyle="--", label=f"median {median:.2f}")
    ax.axvline(threshold, color="#c44e52", linewidth=1, linestyle=":", label=f"threshold {threshold:.2f}")
    ax.set_xlim(0, max(top, bins[-1][1]))
    ax.set_xlabel(f"final score (of {top:g} points)")
    ax.set_ylabel("submissions")
    ax.yaxis.get_major_locator().set_params(integer=True)
    fig.legend(loc="outside upper center", ncols=3, fontsize="small", frameon=False)
    return _png(fig)


def _mistakes_figure(bars: list[tuple[str, float]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 0.45 * len(bars) + 0.9), layout="constrained")
    ax = fig.subplots()
    ax.barh(range(len(bars)), [share * 100 for _, share in bars], color="#8172b3")
    ax.set_yticks(range(len(bars)), [label for label, _ in bars], parse_math=False)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the graded submissions (%)")
    return _png(fig)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:60rem;padding:0 1rem 3rem;
line-height:1.45;color:#222}
h1{font-size:1.6rem}h2{font-size:1.3rem;border-top:1px solid #ddd;padding-top:1rem;margin-top:2rem}
h3{font-size:1.05rem}img{max-width:100%;height:auto}.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}th,td{padding:.25rem .5rem;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#555;font-size:.9rem}ul.m{margin:.25rem 0 .75rem}ul.m li{margin:.15rem 0}.says{color:#555;font-size:.85rem}
"""


def _dicts(table: list[list[str]]) -> list[dict[str, str]]:
    """A CSV table's rows as {column: value}."""
    return [dict(zip(table[0], row)) for row in table[1:]]


def _columns(rows: list[dict[str, str]], shown: dict[str, str], numeric: set[str]) -> str:
    """An HTML table of some columns of `rows` (shown: column -> heading); every cell escaped."""
    def td(key: str, value: str) -> str:
        return f"<td{' class=n' if key in numeric else ''}>{html.escape(value)}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in shown.values())
    body = "".join("<tr>" + "".join(td(k, r[k]) for k in shown) + "</tr>" for r in rows)
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _pct(x: str) -> str:
    return f"{float(x) * 100:.0f}%" if x else "–"


def _label(key: str) -> str:
    return key.replace("_", " ")


def page(data: ClassData, t: Tables, below: float, source: str) -> str:
    """The HTML page: per assignment the distribution, the items and the mistakes; then who needs a look."""
    e = html.escape
    failed = sum(s.status == "failed" for s in data.submissions.values())
    who = "the roster" if data.from_roster else "nbgrader's Student table"
    parts = [f"<h1>Class report</h1><p class=note>From {e(source)}, "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. The class is {e(who)}: "
             f"{len(data.people)} students. The same numbers are in {', '.join(CSV_FILES)} beside this page.</p>",
             f"<p><b>Scores are final</b>: the gradebook's score (manual grades included) minus nbgrader's late "
             f"penalty, as <code>nbgrader export</code> has them. <b>{failed} submission"
             f"{'' if failed == 1 else 's'} failed to grade</b> (they score 0, are counted in the distributions, "
             f"and are left out of the item statistics and mistakes).</p>"]
    if data.unrostered:
        parts.append(f"<p class=note>Graded but not in the roster ({len(data.unrostered)}), counted in the "
                     f"statistics: {e(', '.join(data.unrostered))}.</p>")
    assignments, items, mistakes = _dicts(t.assignments), _dicts(t.items), _dicts(t.mistakes)
    for a in data.assignments:
        row = next(r for r in assignments if r["scope"] == "class" and r["assignment"] == a)
        top = float(row["max_score"])
        parts.append(f'<h2 id="{e(a)}">{e(a)}</h2>'
                     f"<p>{row['submissions']} submissions of {row['students']} students: {row['graded']} graded, "
                     f"{row['failed_to_grade']} failed to grade, {row['missing']} missing. Mean "
                     f"<b>{row['mean'] or '–'}</b>, median <b>{row['median'] or '–'}</b> of {row['max_score']} "
                     f"points; {row['below']} below {below:.0%} of the maximum; {row['late']} late.</p>")
        finals = [s.final for s in data.submissions.values() if s.assignment == a]
        if finals:
            figure = _histogram_figure(histogram(finals, top), statistics.fmean(finals), statistics.median(finals),
                                       top, below * top)
            parts.append(f'<img src="{figure}" alt="Histogram of the final scores of {e(a)}: {row["submissions"]} '
                         f'submissions, mean {row["mean"]}, median {row["median"]} of {row["max_score"]} points">')
        sections = [r for r in assignments if r["scope"] == "section" and r["assignment"] == a]
        if sections:
            parts.append("<h3>By section</h3>" + _columns(sections, {
                "section": "section", "students": "students", "submissions": "submissions",
                "failed_to_grade": "failed", "missing": "missing", "mean": "mean", "median": "median",
                "below": "below"}, {"students", "submissions", "failed_to_grade", "missing", "mean", "median",
                                    "below"}))
        mine = [{**r, "facility": _pct(r["facility"]), "discrimination": _pct(r["discrimination"])}
                for r in items if r["assignment"] == a]
        parts.append("<h3>Items</h3>" + _columns(mine, {
            "item": "item", "points": "points", "mean": "mean", "zeros": "zeros", "facility": "facility",
            "discrimination": "discrimination", "failures": "lost points", "unexplained": "no known mistake"},
            {"points", "mean", "zeros", "facility", "discrimination", "failures", "unexplained"}))
        bars = []
        for r in mine:
            seen = sorted((m for m in mistakes if m["assignment"] == a and m["item"] == r["item"]
                           and int(m["students"])), key=lambda m: -int(m["students"]))
            lines = [f"<li><b>{e(_label(m['mistake']))}: {_pct(m['share'])}</b> ({m['students']} of {m['graded']}) "
                     f"<span class=says>{e(m['says'])}</span></li>" for m in seen]
            if int(r["unexplained"]):
                lines.append(f"<li>no known mistake explains {r['unexplained']} of the {r['failures']} that lost "
                             f"points</li>")
            if lines:
                parts.append(f"<p><b>{e(r['item'])}</b></p><ul class=m>{''.join(lines)}</ul>")
            bars += [(f"{r['item']}: {_label(m['mistake'])}", float(m["share"])) for m in seen]
        if bars:
            described = "; ".join(f"{label} {share:.0%}" for label, share in bars)
            parts.append(f'<img src="{_mistakes_figure(bars)}" alt="The named mistakes of {e(a)} and their share '
                         f'of the graded submissions: {e(described)}">')
    students = _dicts(t.students)
    parts.append(f"<h2 id=students>Students to look at ({len({r['student_id'] for r in students})})</h2>"
                 f"<p class=note>Missing (in the class, no submission), failed to grade, or below {below:.0%} of "
                 f"the maximum.</p>")
    parts.append(_columns(students, {"student_id": "student", "name": "name", "section": "section",
                                     "assignment": "assignment", "status": "status", "final_score": "final",
                                     "max_score": "of", "reason": "reason"}, {"final_score", "max_score"}))
    parts.append("<h2>How these are computed</h2><p class=note>Facility: the item's mean score over its points. "
                 "Discrimination: the correlation between the item's score and the rest of the assignment (the "
                 "total minus the item), over the graded submissions, as Moodle's quiz statistics define them; "
                 "– where every student scored the same. A mistake is counted when the grader's report on the "
                 "item names it; its share is of the graded submissions.</p>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content=\"width=device-width, initial-scale=1\"><link rel=icon href=\"data:,\">"
            f"<title>Class report</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>")


# ---------------------------------------------------------------------------------------------- writing

def _write(path: Path, write) -> None:
    """Write a file atomically (a reader never sees half of it), with the umask's permissions."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        write(f)
    os.replace(tmp, path)


def report(db_url: str, out: Path, to: Path, roster: Path | None = None, below: float = 0.5,
           progress: bool = False) -> Tables:
    """Write DIR/report.html and the four CSV files; returns their rows. Raises ReportError."""
    if not 0 < below <= 1:
        raise ValueError(f"below must be in (0, 1]; got {below}")
    data = read_class(db_url, Path(out), roster, progress)
    t = tables(data, below)
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(CSV_FILES, (t.assignments, t.items, t.mistakes, t.students)):
        cells = [[csv_cell(x) for x in row] for row in rows]   # grader.inert: no student text as a formula
        _write(to / name, lambda f, cells=cells: csv.writer(f).writerows(cells))
    text = page(data, t, below, db_url.rsplit("@", 1)[-1])   # no password of a database URL on the page
    _write(to / "report.html", lambda f: f.write(text))
    return t


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `report` on the `python -m grader` command line."""
    p = commands.add_parser(
        "report", help="the class at a glance: score distributions, items, named mistakes, who needs a look",
        description=__doc__.split("\n\n")[0] + " Writes DIR/report.html and DIR/{" + ",".join(CSV_FILES) + "}.")
    p.add_argument("out", type=Path, help="the course directory that `grade --out` wrote")
    p.add_argument("--to", type=Path, required=True, help="the folder to write report.html and the CSV files into")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the gradebook (default: OUT/gradebook.db)")
    p.add_argument("--roster", type=Path, default=None,
                   help="the class as a CSV (student_id, and name, section, ...: as `export` takes it); "
                        "default: nbgrader's Student table")
    p.add_argument("--below", type=float, default=0.5,
                   help="list students whose final score is below this fraction of the maximum (default 0.5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from grader.course import gradebook_of

    if not 0 < args.below <= 1:
        print(f"python -m grader report: --below must be a fraction in (0, 1]; got {args.below}", file=sys.stderr)
        return 2
    db_url = gradebook_of("report", args.out, args.db_url, args.roster)
    if db_url is None:
        return 2
    try:
        t = report(db_url, args.out, args.to, args.roster, args.below, progress=not args.no_progress)
    except ReportError as err:
        print(f"python -m grader report: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.to / 'report.html'} and {', '.join(CSV_FILES)} ({len(t.students) - 1} students to look at)")
    return 0
