"""`python -m grader release OUT --to DIR [--zip]` or `--exchange DIR`: every student's feedback pages, handed back.

The grader writes the pages to OUT/feedback/<student_id>/<assignment_id>/<notebook>.html (hidden tests redacted,
grader.feedback). `release` gathers them per student:
    DIR/<student_id>/<assignment_id>/<notebook>.html           (default: a folder per student)
    DIR/<student_id>.zip  holding <assignment_id>/<notebook>.html  (--zip: one file per student to upload or mail)
Only the pages are copied, never the autograded notebooks (they hold the instructor's test cells). Each file is
written under a temporary name and renamed, so an interrupted release never leaves half a zip. --student
(repeatable) releases only those students.

--exchange DIR (with --course, and --submissions, the folder `python -m grader collect` filled) hands the pages
back through nbgrader's exchange instead, where `nbgrader fetch_feedback` (the Assignments panel's *Fetch
Feedback*) finds them: nbgrader's submit gives every submission a random submission_secret.txt, keeps a copy in
the student's own cache, and fetch_feedback looks for <exchange>/<course>/feedback/<md5(secret + notebook
name)>.html. nbgrader's `release_feedback` reads that secret from OUT/feedback, where `grade` keeps only pages;
here it is read from the collected submission (`hand_back`), under these rules:
  * the secret is the student's file, used for nothing but the name of their own page: it must be a plain
    file (never a link) of hex digits, as nbgrader writes it;
  * it belongs to the graded submission only when the collected folder's timestamp.txt (the exchange's time,
    which collect writes) is the time the gradebook recorded for the grade: a submission collected again since
    it was graded is not handed back until it is graded;
  * no page goes where another submission's would: when two submissions of an assignment give the same name
    (a copied secret), neither is handed back;
  * the feedback folder is the instructor's, 0711 as nbgrader makes it (students find their page by its name
    and cannot list the others'); the pages are 0644 and replaced by a rename.
A submission without what this needs (handed in another way, collected before it was graded again, a secret
that is not one) is listed with the reason, never guessed; `--to` hands those back.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import stat
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from grader.collect import NO_FOLLOW, CollectError, default_course_and_exchange, open_course_dir
from grader.course import new_folder
from grader.inert import terminal_text

SECRET = re.compile(r"[0-9a-f]{32,256}")   # nbgrader's submit writes secrets.token_hex(64)
PAGE_MODE, FEEDBACK_MODE = 0o644, 0o711    # as nbgrader's release_feedback: pages found by name, never listed


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


@dataclass
class HandBack:
    """What hand_back did. released: (student_id, assignment_id) -> the names its pages have in the exchange's
    feedback folder; listed: one line per submission not handed back, with the reason."""

    released: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)


def hand_back(out: Path, submissions: Path, exchange: Path, course: str, graded: dict[tuple[str, str], str | None],
              students: list[str] | None = None) -> HandBack:
    """Put the feedback pages of the `graded` submissions where `nbgrader fetch_feedback` finds them; see the module.

    graded: (student_id, assignment_id) -> the submission time the gradebook recorded with its grade (ISO, UTC;
    grader.gradebook.recorded). submissions: where `python -m grader collect` put them. A page handed back
    before and unchanged since (same size and time) is not written again. Raises CollectError when the
    exchange's course or feedback folder is not the instructor's (nothing is written then).
    """
    from grader.cli import submission_time

    out, submissions = Path(out), Path(submissions)
    done = HandBack()
    names, by_name = _exchange_names(out, submissions, sorted({a for _, a in graded}))
    todo: list[tuple[tuple[str, str], list[tuple[Path, str]]]] = []
    for key, when in sorted(graded.items()):
        student, assignment = key
        if students and student not in students:
            continue
        pages = sorted(p for p in (out / "feedback" / student / assignment).glob("*.html") if not p.name.startswith("."))
        found = names.get(key)
        try:
            again = found is not None and submission_time(submissions / student / assignment / "timestamp.txt") != when
        except ValueError:
            again = True
        shared = sorted({k for name in found.values() for k in by_name[name]} - {key}) if isinstance(found, dict) else []
        why = ("it has no feedback page in OUT/feedback" if not pages else
               f"it is not in {submissions} (collected another way?)" if found is None else
               found if isinstance(found, str) else
               "it was collected again after it was graded: grade it, then hand it back" if again else
               f"its submission_secret.txt gives its page the name of {', '.join(f'{s}/{a}' for s, a in shared)}'s "
               f"(a copied secret): neither is handed back through the exchange" if shared else None)
        if why is not None:
            done.listed.append(f"{terminal_text(student)}/{terminal_text(assignment)}: {why}")
            continue
        todo.append((key, [(page, found[page.stem]) for page in pages if page.stem in found]))
    if todo:
        folder = _feedback_folder(Path(exchange), course)
        try:
            for key, pairs in todo:
                for page, name in pairs:
                    _put(folder, page, name)
                done.released[key] = [name for _, name in pairs]
        finally:
            os.close(folder)
    return done


def _exchange_names(out: Path, submissions: Path, assignments: list[str]
                    ) -> tuple[dict[tuple[str, str], dict[str, str] | str], dict[str, list[tuple[str, str]]]]:
    """For every collected submission of `assignments`: (student, assignment) -> {notebook: the name of its page
    in the exchange} or why it has none; and each such name -> the submissions that give it (two: a copied secret).

    The name is nbgrader's notebook_hash of the submission's secret and the name of the notebook the student
    submitted (fetch_feedback hashes the names in the student's cache): the graded one, as grader.submission
    finds it ("03_attention (1).ipynb" graded as 03_attention)."""
    from nbgrader.utils import notebook_hash

    from grader.submission import find_notebook

    names: dict[tuple[str, str], dict[str, str] | str] = {}
    by_name: dict[str, list[tuple[str, str]]] = {}
    students = sorted(p for p in submissions.iterdir() if p.is_dir()) if submissions.is_dir() else []
    for assignment in assignments:
        notebooks = sorted(p.stem for p in (out / "source" / assignment).glob("*.ipynb"))
        for student in students:
            folder, key = student / assignment, (student.name, assignment)
            if not folder.is_dir():
                continue
            try:
                secret = _read_secret(folder / "submission_secret.txt")
            except ValueError as err:
                names[key] = str(err)
                continue
            names[key] = {nb: notebook_hash(secret=secret, notebook_id=find_notebook(folder, nb, set(notebooks))[0].stem)
                          + ".html" for nb in notebooks}
            for name in names[key].values():
                by_name.setdefault(name, []).append(key)
    return names, by_name


def _read_secret(path: Path) -> str:
    """The submission_secret.txt that nbgrader's submit wrote, exactly as its fetch_feedback reads it; ValueError
    (why not) for none, a link or other non-file, or text that is not hex digits."""
    try:
        fd = os.open(path, NO_FOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ValueError("it has no submission_secret.txt (it did not come through nbgrader's exchange): hand it "
                         "back with --to") from None
    except OSError as err:
        raise ValueError(f"its submission_secret.txt cannot be opened ({err.strerror}; a link is refused)") from None
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("its submission_secret.txt is not a file")
        text = f.read(257).decode("ascii", "replace")
    if not SECRET.fullmatch(text):
        raise ValueError("its submission_secret.txt is not one that nbgrader's submit writes (32 to 256 hex digits)")
    return text


def _feedback_folder(exchange: Path, course: str) -> int:
    """<exchange>/<course>/feedback opened (made if missing), the instructor's, with mode 0711 (the group bits
    kept, for nbgrader's groupshared courses): anyone may open a page whose name they know, no one else list or
    write. Raises CollectError when it is a link or someone else's, or its mode is wrong and it is not ours."""
    try:
        root = os.open(exchange, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CollectError(f"cannot open the exchange {exchange} ({err.strerror})") from None
    try:
        course_fd = open_course_dir(root, course, str(exchange / course))
    finally:
        os.close(root)
    where = exchange / course / "feedback"
    try:
        try:
            os.mkdir("feedback", FEEDBACK_MODE, dir_fd=course_fd)
            made = True
        except FileExistsError:
            made = False
        fd = open_course_dir(course_fd, "feedback", str(where))
    finally:
        os.close(course_fd)
    st = os.fstat(fd)
    wanted = FEEDBACK_MODE if made else (stat.S_IMODE(st.st_mode) & 0o7770) | (FEEDBACK_MODE & 0o007)
    if stat.S_IMODE(st.st_mode) != wanted:
        if st.st_uid != os.geteuid():
            os.close(fd)
            raise CollectError(f"{where} has mode {stat.S_IMODE(st.st_mode):o}: others must be able to open it and "
                               f"never list or write it (chmod o=x {where})")
        os.fchmod(fd, wanted)
    return fd


def _put(folder: int, page: Path, name: str) -> None:
    """Copy `page` to `name` in the open folder: 0644, by a rename (a reader sees the old page or the new one), with
    the page's time, so an unchanged page is not written again."""
    src = page.stat()
    try:
        there = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if stat.S_ISREG(there.st_mode) and (there.st_size, there.st_mtime_ns) == (src.st_size, src.st_mtime_ns):
            return
    except FileNotFoundError:
        pass
    tmp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PAGE_MODE, dir_fd=folder)
    try:
        with open(fd, "wb") as f, open(page, "rb") as data:
            shutil.copyfileobj(data, f)
            os.fchmod(f.fileno(), PAGE_MODE)   # whatever the umask (a service's may be 077)
            f.flush()
            os.utime(f.fileno(), ns=(src.st_atime_ns, src.st_mtime_ns))
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=folder)
        except OSError:
            pass
        raise


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `release` on the `python -m grader` command line."""
    course, exchange = default_course_and_exchange()
    p = commands.add_parser("release", help="hand back each student's feedback pages: a folder or a zip each, or "
                                            "through nbgrader's exchange (Fetch Feedback)",
                            description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the course directory that `grade --out` wrote")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", type=Path, help="where to write one folder (or zip) per student")
    where.add_argument("--exchange", type=Path, nargs="?", const=Path(exchange), metavar="DIR",
                       help=f"hand back through nbgrader's exchange, for `nbgrader fetch_feedback` (default DIR: "
                            f"{exchange}); for submissions collected with `python -m grader collect`")
    p.add_argument("--zip", action="store_true", help="one DIR/<student_id>.zip per student instead of folders")
    p.add_argument("--student", action="append", help="release only this student (repeatable)")
    p.add_argument("--course", default=course, help=f"with --exchange: nbgrader's course id (default: {course})")
    p.add_argument("--submissions", type=Path, default=Path("submitted"),
                   help="with --exchange: the folder `python -m grader collect --to` filled (default: submitted)")
    p.add_argument("--db-url", default=None, help="with --exchange: the gradebook (default: OUT/gradebook.db)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.exchange is not None:
        return _run_exchange(args)
    try:
        written = release(args.out, args.to, args.zip, args.student)
    except FileNotFoundError as err:
        print(f"python -m grader release: {err}", file=sys.stderr)
        return 1
    print(f"released the feedback of {len(written)} student(s) to {args.to}" + (" (one zip each)" if args.zip else ""))
    return 0


def _run_exchange(args: argparse.Namespace) -> int:
    from nbgrader.api import Gradebook

    from grader.course import gradebook_of
    from grader.gradebook import recorded

    if args.zip:
        print("python -m grader release: --zip is for --to; the exchange takes the pages themselves", file=sys.stderr)
        return 2
    if not args.course:
        print("python -m grader release: --exchange needs --course (no course_id in nbgrader_config.py)", file=sys.stderr)
        return 2
    db_url = gradebook_of("release", args.out, args.db_url, None)
    if db_url is None:
        return 2
    with Gradebook(db_url) as gb:
        graded = recorded(gb)
    try:
        done = hand_back(args.out, args.submissions, args.exchange, args.course, graded, args.student)
    except CollectError as err:
        print(f"python -m grader release: {err}", file=sys.stderr)
        return 2
    print(f"handed back the feedback of {len(done.released)} submission(s) through {args.exchange / args.course / 'feedback'}"
          f" (nbgrader fetch_feedback)")
    if done.listed:
        print(f"not handed back ({len(done.listed)}):")
        print("\n".join(f"  {line}" for line in done.listed))
    return 0
