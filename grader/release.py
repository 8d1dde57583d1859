"""`python -m grader release OUT --to DIR [--zip]`: every student's feedback pages, ready to hand back in one step.

The grader writes the pages to OUT/feedback/<student_id>/<assignment_id>/<notebook>.html (hidden tests redacted,
grader.feedback). `release` gathers them per student:
    DIR/<student_id>/<assignment_id>/<notebook>.html           (default: a folder per student)
    DIR/<student_id>.zip  holding <assignment_id>/<notebook>.html  (--zip: one file per student to upload or mail)
Only the pages are copied, never the autograded notebooks (they hold the instructor's test cells). Each file is
written under a temporary name and renamed, so an interrupted release never leaves half a zip. --student
(repeatable) releases only those students.

nbgrader's own `nbgrader release_feedback` is not used: it files each page in the exchange under a hash of the
submission_secret.txt that `nbgrader submit` wrote, next to a timestamp.txt, which exist only for submissions
that went through nbgrader's exchange; `grade` grades submissions from any folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from pathlib import Path

from grader.course import new_folder


def feedback_pages(out: Path) -> dict[str, list[Path]]:
    """student_id -> their feedback pages under OUT/feedback (paths relative to OUT/feedback/<student_id>)."""
    root = Path(out) / "feedback"
    pages: dict[str, list[Path]] = {}
    if not root.is_dir():
        return pages
    for student in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(rel for rel in (p.relative_to(student) for p in student.glob("*/*.html"))
                       if not rel.parts[0].startswith("."))   # not a folder a killed run was replacing
        if found:
            pages[student.name] = found
    return pages


def release(out: Path, to: Path, as_zip: bool = False, students: list[str] | None = None) -> dict[str, Path]:
    """Copy (or zip) each student's feedback pages into `to`; return student_id -> the folder or zip written.

    Raises FileNotFoundError when OUT has no feedback, or when a student named in `students` has none.
    """
    pages = feedback_pages(out)
    if not pages:
        raise FileNotFoundError(f"no feedback pages under {Path(out) / 'feedback'}; run `python -m grader grade` first")
    if students:
        unknown = sorted(set(students) - set(pages))
        if unknown:
            raise FileNotFoundError(f"--student: no feedback for {', '.join(unknown)} under {Path(out) / 'feedback'}")
        pages = {s: pages[s] for s in students}
    to = Path(to)
    to.mkdir(parents=True, exist_ok=True)
    written = {}
    for student, files in pages.items():
        source = Path(out) / "feedback" / student
        if as_zip:
            written[student] = _write_zip(source, files, to / f"{student}.zip")
        else:
            written[student] = _copy_folder(source, files, to / student)
    return written


def _write_zip(source: Path, files: list[Path], dest: Path) -> Path:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as z:   # umask's mode
        for rel in files:
            z.write(source / rel, arcname=rel.as_posix())
    os.replace(tmp, dest)
    return dest


def _copy_folder(source: Path, files: list[Path], dest: Path) -> Path:
    tmp = new_folder(dest.parent, f".{dest.name}.")
    for rel in files:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / rel, tmp / rel)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `release` on the `python -m grader` command line."""
    p = commands.add_parser("release", help="gather each student's feedback pages into a folder or a zip",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the course directory that `grade --out` wrote")
    p.add_argument("--to", type=Path, required=True, help="where to write one folder (or zip) per student")
    p.add_argument("--zip", action="store_true", help="one DIR/<student_id>.zip per student instead of folders")
    p.add_argument("--student", action="append", help="release only this student (repeatable)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        written = release(args.out, args.to, args.zip, args.student)
    except FileNotFoundError as err:
        print(f"python -m grader release: {err}", file=sys.stderr)
        return 1
    print(f"released the feedback of {len(written)} student(s) to {args.to}" + (" (one zip each)" if args.zip else ""))
    return 0
