"""`python -m grader export OUT --format canvas|moodle|csv --to FILE`: the gradebook's scores as a file an LMS imports.

Scores come from nbgrader's gradebook (OUT/gradebook.db, or any SQLAlchemy URL with --db-url): one column per
assignment. The score is the final one, the number the student's feedback page shows: the submission's score (autograded,
or the manual score where an instructor set one in formgrader) less nbgrader's late_submission_penalty, never
below 0, as `nbgrader export` computes it. --raw writes the score before the penalty instead, with each
submission's time (UTC, ISO 8601) for an LMS that applies its own late policy: in a column "<assignment>
(submitted)" after each assignment's (csv, moodle: map it to "Ignore" at import), and for canvas, whose importer
takes every column as an assignment, in FILE's sibling <FILE stem>.submitted.csv (student_id, assignment,
submitted). Every cell goes through grader.inert.csv_cell: a name or id that starts like a formula is not one.
A column is named by the nbgrader assignment id unless --title ASSIGNMENT=TITLE gives the LMS's name (Canvas:
"Title (ID)" names an existing Canvas assignment by its ID, as Canvas's own export does; a new title makes
Canvas create the assignment, with the points of the "Points Possible" row).

Who is who: a roster CSV (--roster) maps nbgrader student ids to LMS identities. Its columns (a header row;
only `student_id` is required, other columns are ignored):
    student_id     the nbgrader id (the JupyterHub user name, the folder name under SUBMISSIONS/)
    name           the student's name, "Last, First" or "First Last"
    canvas_id      Canvas's numeric user ID (Canvas's gradebook export, column "ID")
    sis_user_id    Canvas "SIS User ID"
    sis_login_id   Canvas "SIS Login ID"
    section        Canvas "Section"
    email          Moodle "Email address"
    id_number      Moodle "ID number"
Canvas matches a row by ID, then SIS User ID, then SIS Login ID, then name, so each roster row needs one of these
for --format canvas; Moodle matches by the column chosen at import ("Map from"), so each row needs email or
id_number for --format moodle.

Without a roster, identities come from nbgrader's Student table (`nbgrader db student import`): name from
first/last name, canvas_id from lms_user_id, sis_login_id and id_number from the nbgrader id, email from email.

Every student of the roster (or of the Student table) gets a row; an assignment a student did not submit is an
empty cell (--missing empty, the default: Canvas and Moodle leave the grade unchanged) or 0 (--missing zero).
A graded student who is not in the roster is listed on stderr and the command fails (exit 1) without writing,
unless --allow-unrostered, which writes the file without them and still lists them.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from grader.records import final_score

FORMATS = ("canvas", "moodle", "csv")
ROSTER_COLUMNS = ("student_id", "name", "canvas_id", "sis_user_id", "sis_login_id", "section", "email", "id_number")
# Canvas's gradebook CSV (Instructor Guide, "How do I import grades in the Gradebook?"): the student columns of
# its own export, then one column per assignment. Canvas's importer (canvas-lms lib/gradebook_importer.rb) wants
# row[0] to contain "Student" and row[1] "ID", reads "SIS User ID" and "SIS Login ID" after them and "Section" as
# the last student column; a row whose first cell contains "Points Possible" is not a student: it gives the
# points of assignments the import creates. An empty cell is "no score" and leaves the grade as it is.
CANVAS_COLUMNS = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
CANVAS_POINTS_ROW = "Points Possible"
# Moodle's "Import grades > CSV file": any header; at import the instructor maps one column to a user field
# ("Map from" Email address -> useremail, or ID number -> useridnumber) and each other column to a grade item.
# The names below are those of Moodle's own grade export.
MOODLE_COLUMNS = ["Email address", "ID number"]
CSV_COLUMNS = ["student_id", "name", "email"]


class ExportError(Exception):
    """A problem with the input (roster, gradebook) that the user must fix; the message says what and where."""


@dataclass
class Person:
    """One student as the LMS knows them (the roster's columns)."""

    student_id: str
    name: str = ""
    canvas_id: str = ""
    sis_user_id: str = ""
    sis_login_id: str = ""
    section: str = ""
    email: str = ""
    id_number: str = ""


@dataclass
class Scores:
    """What the gradebook holds: assignments (sorted by name) with their points, and the scores of submissions."""

    assignments: list[str]
    points: dict[str, float]
    scores: dict[tuple[str, str], float]          # (student_id, assignment) -> final score (after the penalty)
    students: dict[str, Person] = field(default_factory=dict)   # nbgrader's Student table
    raw: dict[tuple[str, str], float] = field(default_factory=dict)   # the score before the late penalty
    submitted: dict[tuple[str, str], str] = field(default_factory=dict)   # ISO time in UTC, "" if unknown

    @property
    def graded_students(self) -> set[str]:
        return {student for student, _ in self.scores}


def read_scores(db_url: str) -> Scores:
    """Assignments, their points and every submission's final and raw score and time from nbgrader's gradebook
    at `db_url`. Final = max(0, score - late_submission_penalty), as nbgrader's export plugin computes it; the
    score is nbgrader's (a grade's manual score where there is one, else its autograded score)."""
    from nbgrader.api import Gradebook

    scores, raw, submitted = {}, {}, {}
    with Gradebook(db_url) as gb:
        assignments = sorted(a.name for a in gb.assignments)
        points = {a: float(gb.find_assignment(a).max_score) for a in assignments}
        for a in assignments:
            for sub in gb.assignment_submissions(a):
                key = (sub.student.id, a)
                raw[key] = float(sub.score or 0.0)
                scores[key] = final_score(raw[key], sub.late_submission_penalty)
                submitted[key] = sub.timestamp.isoformat() if sub.timestamp else ""
        students = {s.id: Person(s.id, name=_full_name(s.first_name, s.last_name), canvas_id=s.lms_user_id or "",
                                 sis_login_id=s.id, email=s.email or "", id_number=s.id) for s in gb.students}
    return Scores(assignments, points, scores, students, raw, submitted)


def _full_name(first: str | None, last: str | None) -> str:
    """Canvas's sortable form "Last, First" when both are known."""
    return ", ".join(p for p in (last, first) if p)


def read_roster(path: Path) -> list[Person]:
    """The roster's rows, in file order. Raises ExportError naming the file, row and column of a problem."""
    with open(path, newline="", encoding="utf-8-sig") as f:   # utf-8-sig: spreadsheets often add a BOM
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if "student_id" not in header:
            raise ExportError(f"--roster {path}: the header must have a student_id column (and any of "
                              f"{', '.join(ROSTER_COLUMNS[1:])}); got {header}")
        people, seen = [], {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k}
            person = Person(**{k: row.get(k, "") for k in ROSTER_COLUMNS})
            if not person.student_id:
                raise ExportError(f"--roster {path}, line {line}: student_id is empty")
            if person.student_id in seen:
                raise ExportError(f"--roster {path}, line {line}: student_id {person.student_id!r} is already on "
                                  f"line {seen[person.student_id]}")
            seen[person.student_id] = line
            people.append(person)
    return people


def _check_identities(people: list[Person], fmt: str, where: str) -> None:
    """Every person needs a field the LMS can match them by."""
    needs = {"canvas": ("name", "canvas_id", "sis_user_id", "sis_login_id"), "moodle": ("email", "id_number")}.get(fmt)
    if not needs:
        return
    lacking = [p.student_id for p in people if not any(getattr(p, k) for k in needs)]
    if lacking:
        raise ExportError(f"{where}: for --format {fmt} each student needs one of {', '.join(needs)}; "
                          f"empty for {', '.join(lacking[:10])}{' ...' if len(lacking) > 10 else ''}")


def _number(x: float) -> str:
    """A score as the LMS reads it: at most two decimals (Canvas's own precision), no trailing zeros."""
    text = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def table(scores: Scores, people: list[Person], fmt: str, missing: str = "empty",
          titles: dict[str, str] | None = None, raw: bool = False) -> list[list[str]]:
    """The rows of the export file, header first, one row per person (in the given order), every cell through
    csv_cell. `titles` renames assignment columns (nbgrader id -> the LMS's title); `raw`: scores before the
    late penalty, and (csv, moodle) a "(submitted)" column after each assignment's."""
    from grader.inert import csv_cell

    given = scores.raw if raw else scores.scores
    times = raw and fmt != "canvas"
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    if missing not in ("empty", "zero"):
        raise ValueError(f"missing must be 'empty' or 'zero'; got {missing!r}")
    header = []
    for a in scores.assignments:
        header += [(titles or {}).get(a, a)] + ([f"{a} (submitted)"] if times else [])

    def cells(person: Person) -> list[str]:
        values = []
        for a in scores.assignments:
            score = given.get((person.student_id, a))
            values.append(_number(score) if score is not None else ("0" if missing == "zero" else ""))
            if times:
                values.append(scores.submitted.get((person.student_id, a), ""))
        return values

    if fmt == "canvas":
        rows = [CANVAS_COLUMNS + header,
                [CANVAS_POINTS_ROW] + [""] * (len(CANVAS_COLUMNS) - 1)
                + [_number(scores.points[a]) for a in scores.assignments]]
        rows += [[p.name, p.canvas_id, p.sis_user_id, p.sis_login_id, p.section] + cells(p) for p in people]
    elif fmt == "moodle":
        rows = [MOODLE_COLUMNS + header]
        rows += [[p.email, p.id_number] + cells(p) for p in people]
    else:
        rows = [CSV_COLUMNS + header + ["total"]]
        for p in people:
            total = sum(given.get((p.student_id, a), 0.0) for a in scores.assignments)
            rows.append([p.student_id, p.name, p.email] + cells(p) + [_number(total)])
    return [[csv_cell(x) for x in row] for row in rows]


def _write(rows: list[list[str]], to: Path) -> None:
    """Write `rows` as CSV to `to` through a temporary file and a rename."""
    to.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=to.parent, prefix=f".{to.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    os.replace(tmp, to)


def submitted_path(to: Path) -> Path:
    """Where --raw --format canvas writes the submission times: FILE's sibling <stem>.submitted.csv."""
    return to.with_name(f"{to.stem}.submitted.csv")


def export(db_url: str, fmt: str, to: Path, roster: Path | None = None, missing: str = "empty",
           allow_unrostered: bool = False, titles: dict[str, str] | None = None, raw: bool = False) -> list[str]:
    """Write the export file `to` (atomically) and return the graded students left out (not in the roster).

    Raises ExportError when a graded student is not in the roster (unless `allow_unrostered`) or when the
    roster lacks an identity the format needs; nothing is written then.
    """
    if db_url.startswith("sqlite:///") and not Path(db_url[len("sqlite:///"):]).is_file():
        raise ExportError(f"no gradebook at {db_url} (nbgrader would create an empty one)")
    scores = read_scores(db_url)
    if not scores.assignments:
        raise ExportError(f"the gradebook at {db_url} has no assignments; grade the class into it first")
    if roster is not None:
        people = read_roster(roster)
        where = f"--roster {roster}"
    else:
        people = [scores.students[s] for s in sorted(scores.students)]
        where = "nbgrader's Student table (no --roster)"
    known = {p.student_id for p in people}
    unrostered = sorted(scores.graded_students - known)
    if unrostered and not allow_unrostered:
        raise ExportError(f"{len(unrostered)} graded student(s) are not in {where}: {', '.join(unrostered)}. "
                          "Add them, or pass --allow-unrostered to export without them.")
    _check_identities(people, fmt, where)
    unknown = sorted(set(titles or {}) - set(scores.assignments))
    if unknown:
        raise ExportError(f"--title names assignments the gradebook does not have: {', '.join(unknown)}; "
                          f"it has {', '.join(scores.assignments)}")
    from grader.inert import csv_cell

    to = Path(to)
    _write(table(scores, people, fmt, missing, titles, raw), to)
    if raw and fmt == "canvas":
        times = [["student_id", "assignment", "submitted"]]
        times += [[csv_cell(x) for x in (p.student_id, a, scores.submitted[(p.student_id, a)])]
                  for p in people for a in scores.assignments if (p.student_id, a) in scores.submitted]
        _write(times, submitted_path(to))
    return unrostered


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `export` on the `python -m grader` command line."""
    p = commands.add_parser(
        "export", help="write the gradebook's scores as a Canvas, Moodle or plain CSV file",
        description=__doc__.split("\n\n")[0] + " See grader/export.py for the roster's columns.")
    p.add_argument("out", type=Path, help="the course directory that `grade --out` wrote")
    p.add_argument("--format", required=True, choices=FORMATS, help="canvas, moodle or csv")
    p.add_argument("--to", type=Path, required=True, help="the CSV file to write")
    p.add_argument("--roster", type=Path, default=None,
                   help="CSV mapping nbgrader student ids to LMS identities (student_id, name, canvas_id, "
                        "sis_user_id, sis_login_id, section, email, id_number); default: nbgrader's Student table")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the gradebook (default: OUT/gradebook.db)")
    p.add_argument("--missing", choices=("empty", "zero"), default="empty",
                   help="the cell of an assignment a student did not submit (default: empty, which leaves the "
                        "LMS's grade unchanged)")
    p.add_argument("--title", action="append", default=[], metavar="ASSIGNMENT=TITLE",
                   help="the LMS's name of an assignment's column (repeatable); for Canvas, 'Title (ID)' with the "
                        "ID of an existing Canvas assignment updates that one, as in Canvas's own export")
    p.add_argument("--raw", action="store_true",
                   help="scores before the late penalty, with each submission's time (for an LMS that applies its "
                        "own late policy; canvas: the times go to <FILE stem>.submitted.csv)")
    p.add_argument("--allow-unrostered", action="store_true",
                   help="export even if graded students are missing from the roster (they are listed on stderr)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from grader.course import gradebook_of
    from grader.inert import terminal_text

    db_url = gradebook_of("export", args.out, args.db_url, args.roster)
    if db_url is None:
        return 2
    titles = {}
    for pair in args.title:
        assignment, sep, title = pair.partition("=")
        if not sep or not assignment.strip() or not title.strip():
            print(f"python -m grader export: --title must be ASSIGNMENT=TITLE; got {pair!r}", file=sys.stderr)
            return 2
        titles[assignment.strip()] = title.strip()
    try:
        left_out = export(db_url, args.format, args.to, args.roster, args.missing, args.allow_unrostered, titles,
                          args.raw)
    except ExportError as err:
        print(f"python -m grader export: {terminal_text(err, 2000)}", file=sys.stderr)
        return 1
    if left_out:
        print(f"python -m grader export: left out {len(left_out)} graded student(s) not in the roster: "
              f"{terminal_text(', '.join(left_out), 2000)}", file=sys.stderr)
    print(f"wrote {args.to} ({args.format}, {'raw scores and submission times' if args.raw else 'final scores'})"
          + (f" and {submitted_path(args.to)}" if args.raw and args.format == "canvas" else ""))
    return 0
