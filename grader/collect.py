"""`python -m grader collect ASSIGNMENT [--exchange DIR] [--course ID] [--to submitted]`: nbgrader's exchange -> SUBMISSIONS.

It replaces `nbgrader collect`, which believes what students put in the exchange: it follows a symbolic link
in a submission (a link to the instructor's solution is collected, graded and returned as the student's), it
collects a folder named after another student as theirs with only a warning, and one folder name it cannot
parse stops it for the whole class.

The layout (nbgrader/exchange/default/submit.py): `nbgrader submit`, run as the student, copies the assignment
to <exchange>/<course>/inbound/<student_id>+<assignment>+<timestamp>+<random>/ (without +<random> when
ExchangeSubmit.add_random_string is off) and writes its own timestamp.txt there; the inbound folder is
writable by everyone, so anyone can put any folder there. Here, for each student:
  * a folder counts as theirs only when its owner (st_uid) is the user whose login is the student id in its
    name; any other is listed under "needs review" and collected for no one;
  * their newest folder is the one the kernel changed last (its ctime, which no student can set back);
  * nothing is followed: every entry is opened relative to its folder with O_NOFOLLOW and checked with
    fstat; a symbolic link, a FIFO, a socket, a device, and a file or folder owned by someone else (a hard
    link to the instructor's solution, say) is left out and listed; at most MAX_FILES entries, MAX_BYTES
    bytes and MAX_DEPTH folders deep, or the submission is not collected (listed);
  * its time is the exchange's own record, the time in the folder's name that nbgrader wrote, when the
    kernel agrees: the folder's mtime and the last change (ctime) of everything in it lie within SLACK of
    it. The student's timestamp.txt is never read. A time that cannot be read or does not agree "needs
    review": the submission is collected with a timestamp.txt that says so in words, which `grade` reports
    as status "needs review" and does not grade (never "on time") until someone writes the time there.
Output: TO/<student_id>/<assignment>/, the layout `python -m grader grade TO` reads, with a timestamp.txt
written here in nbgrader's format (UTC).

Owners are matched by login (pwd), as `nbgrader collect`'s own check does. An exchange where every student
is one OS user (a hub that runs all notebooks as `jovyan`) cannot tell students apart by owner: there every
submission needs review, and nbgrader's per-user exchange is the only safe one. The exchange must stay where
students wrote it: a copy or restore resets ctimes, and then every time needs review.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from grader.course import DEFAULT_CONFIG, new_folder, remove_leftovers, replace_dir
from grader.inert import terminal_text

DEFAULT_EXCHANGE = "/usr/local/share/nbgrader/exchange"   # nbgrader's Exchange.root
MAX_FILES = 1000                 # entries in one submission, folders and left-out entries included
MAX_BYTES = 100 * 1000 * 1000    # bytes in one submission (nbgrader's CourseDirectory.max_dir_size, 100000 kB)
MAX_DEPTH = 8                    # folders inside folders
SLACK = timedelta(minutes=2)     # an honest submit writes its folder within seconds of the time in its name
MAX_LISTED = 500                 # "needs review" lines kept (an inbound folder can hold a million forgeries)
STUDENT_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}\Z")   # a login; nbgrader forbids '+' and '*'
NO_FOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
KINDS = {stat.S_IFLNK: "a symbolic link", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
         stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


class CollectError(Exception):
    """The exchange cannot be collected from at all (missing, or not the instructor's): nothing was collected."""


class TooBig(Exception):
    """A submission over MAX_FILES, MAX_BYTES or MAX_DEPTH."""


@dataclass
class Collection:
    """What `collect` did. collected: student id -> the time written to their timestamp.txt (None: needs
    review); review: what an instructor should look at, one line each; more: lines left out of `review`."""

    collected: dict[str, datetime | None] = field(default_factory=dict)
    review: list[str] = field(default_factory=list)
    more: int = 0

    def note(self, line: str) -> None:
        if len(self.review) < MAX_LISTED:
            self.review.append(line)
        else:
            self.more += 1


def login_uid(student_id: str) -> int | None:
    """The uid of the user whose login is `student_id`, or None when there is none."""
    try:
        return pwd.getpwnam(student_id).pw_uid
    except (KeyError, ValueError):
        return None


def owner_name(uid: int) -> str:
    try:
        return terminal_text(pwd.getpwuid(uid).pw_name)
    except KeyError:
        return f"uid {uid}"


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).replace(tzinfo=None)


def _format(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f UTC")   # nbgrader's timestamp_format, in UTC


def open_course_dir(parent: int, name: str, where: str) -> int:
    """A folder of the exchange that the instructor made (release_assignment): never a link, owned by this user
    or root, or else a student (the exchange's root is writable by everyone) could have put it there.
    Raises CollectError."""
    try:
        fd = os.open(name, NO_FOLLOW | os.O_DIRECTORY, dir_fd=parent)
    except OSError as err:
        raise CollectError(f"cannot open {where} ({err.strerror}; a symbolic link is refused)") from None
    owner = os.fstat(fd).st_uid
    if owner not in (0, os.geteuid()):
        os.close(fd)
        raise CollectError(f"{where} belongs to {owner_name(owner)}, not to you or root: someone else made it; "
                           f"check the exchange before collecting")
    return fd


def collect(exchange: Path, course: str, assignment: str, to: Path,
            uid_of: Callable[[str], int | None] = login_uid,
            skip: Callable[[str, str, int], bool] | None = None) -> Collection:
    """Collect the newest submission of `assignment` of every student from the exchange into TO; see the module.

    uid_of: student id -> the uid that must own their folders (default: their login's; tests give their own).
    skip(student id, folder name, its ctime in ns) -> True leaves that student's newest folder alone (`python -m
    grader watch`: collected already, or still being written). The student's submission_secret.txt is copied
    with the rest (grader.release finds the place of their feedback in the exchange with it, and uses it for
    nothing else); timestamp.txt is the exchange's time."""
    to = Path(to)
    inbound_path = Path(exchange) / course / "inbound"
    try:
        root = os.open(exchange, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CollectError(f"cannot open the exchange {exchange} ({err.strerror})") from None
    try:
        course_fd = open_course_dir(root, course, str(Path(exchange) / course))
        try:
            inbound = open_course_dir(course_fd, "inbound", str(inbound_path))
        finally:
            os.close(course_fd)
    finally:
        os.close(root)
    done = Collection()
    try:
        newest = _newest_per_student(inbound, assignment, uid_of, done)
        for student in sorted(s for s in newest if skip is None or not skip(s, newest[s][1], newest[s][0])):
            _collect_one(inbound, newest[student][1], student, uid_of(student), assignment, to, done)
    finally:
        os.close(inbound)
    return done


def _newest_per_student(inbound: int, assignment: str, uid_of: Callable[[str], int | None],
                        done: Collection) -> dict[str, tuple[int, str]]:
    """student id -> (ctime in ns, folder name) of their newest folder of `assignment` that they own."""
    newest: dict[str, tuple[int, str]] = {}
    with os.scandir(inbound) as entries:
        for entry in entries:
            parts = entry.name.rsplit("+", 3)          # as nbgrader's collect: student ids may not hold '+'
            if len(parts) < 3 or parts[1] != assignment:
                continue
            student, name = parts[0], terminal_text(entry.name)
            st = os.stat(entry.name, dir_fd=inbound, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                done.note(f"inbound/{name}: {KINDS.get(stat.S_IFMT(st.st_mode), 'not a folder')}, not a "
                          f"submission: not collected")
                continue
            uid = uid_of(student) if STUDENT_ID.match(student) else None
            if uid is None:
                done.note(f"inbound/{name}: {terminal_text(student)!r} is no user's login here: not collected")
            elif st.st_uid != uid:
                done.note(f"inbound/{name}: made by {owner_name(st.st_uid)}, not by {terminal_text(student)}: "
                          f"not collected as {terminal_text(student)}'s")
            elif (st.st_ctime_ns, entry.name) > newest.get(student, (-1, "")):
                newest[student] = (st.st_ctime_ns, entry.name)
    return newest


def _collect_one(inbound: int, folder: str, student: str, uid: int, assignment: str, to: Path,
                 done: Collection) -> None:
    """Copy one submission folder into TO/<student>/<assignment>/ with the exchange's time in timestamp.txt."""
    left_out: list[str] = []
    try:
        fd = os.open(folder, NO_FOLLOW | os.O_DIRECTORY, dir_fd=inbound)
    except OSError as err:   # replaced by a link or removed since it was listed
        done.note(f"inbound/{terminal_text(folder)}: cannot be opened ({err.strerror}): not collected")
        return
    (to / student).mkdir(parents=True, exist_ok=True)
    remove_leftovers(to / student)
    dest = new_folder(to / student, f".{assignment}.new-")
    try:
        top = os.fstat(fd)
        if top.st_uid != uid:
            raise TooBig(f"made by {owner_name(top.st_uid)}, not by {student}")
        changed = max(top.st_ctime_ns, _copy_tree(fd, dest, uid, student, "", left_out, [0, 0], 0))
    except TooBig as err:
        done.note(f"inbound/{terminal_text(folder)}: {err}: not collected")
        shutil.rmtree(dest, ignore_errors=True)
        return
    finally:
        os.close(fd)
    when, why = _exchange_time(folder.rsplit("+", 3)[2], top, changed)
    (dest / "timestamp.txt").write_text(
        _format(when) + "\n" if when is not None else
        f"needs review: {why}; its content was last changed at {_format(_utc(changed))}. Write the time it was "
        f"submitted here (as {_format(_utc(changed))}) and grade again.\n")
    replace_dir(dest, to / student / assignment)
    done.collected[student] = when
    for entry in left_out:
        done.note(f"{student}: left out {entry}")
    if when is None:
        done.note(f"{student}: the time needs review: {why}")


def _exchange_time(stamp: str, top: os.stat_result, changed_ns: int) -> tuple[datetime | None, str]:
    """(the time in the folder's name, "") when the kernel agrees with it, else (None, why not)."""
    from nbgrader.utils import parse_utc

    try:
        when = parse_utc(stamp)
        earliest, latest = when - SLACK, when + SLACK
    except (ValueError, OverflowError, TypeError, LookupError):   # dateutil's errors; a time near year 1 or 9999
        return None, f"the time in its folder's name, {terminal_text(stamp)!r}, is not a time"
    for what, ns in (("its folder was last modified", top.st_mtime_ns), ("it was last changed", changed_ns)):
        if not earliest <= _utc(ns) <= latest:
            return None, (f"its folder's name says it was submitted at {_format(when)}, but {what} at "
                          f"{_format(_utc(ns))}")
    return when, ""


def _copy_tree(fd: int, dest: Path, uid: int, student: str, rel: str, left_out: list[str], used: list[int],
               depth: int) -> int:
    """Copy the folder open as `fd` into `dest`, following nothing; return the newest ctime (ns) in it.

    used: [entries, bytes] so far in this submission; left_out gets "<path>: why" for each entry not copied."""
    newest = 0
    with os.scandir(fd) as entries:
        for entry in entries:
            used[0] += 1
            if used[0] > MAX_FILES:
                raise TooBig(f"more than {MAX_FILES} files and folders")
            path = f"{rel}{entry.name}"
            st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
            newest = max(newest, st.st_ctime_ns)
            kind = stat.S_IFMT(st.st_mode)
            if kind not in (stat.S_IFDIR, stat.S_IFREG):
                left_out.append(f"{terminal_text(path)}: {KINDS.get(kind, 'not a file')}")
            elif st.st_uid != uid:
                left_out.append(f"{terminal_text(path)}: owned by {owner_name(st.st_uid)}, not by {student}"
                                + (" (a hard link to their file)" if kind == stat.S_IFREG and st.st_nlink > 1 else ""))
            elif kind == stat.S_IFREG and not rel and entry.name == "timestamp.txt":
                continue   # the student's; the exchange's time is written instead
            elif kind == stat.S_IFDIR:
                if depth + 1 >= MAX_DEPTH:
                    raise TooBig(f"folders more than {MAX_DEPTH} deep")
                sub = _open_same(entry.name, fd, st, os.O_DIRECTORY)
                if sub is None:
                    left_out.append(f"{terminal_text(path)}: changed while it was collected")
                    continue
                try:
                    (dest / entry.name).mkdir()
                    newest = max(newest, _copy_tree(sub, dest / entry.name, uid, student, path + "/", left_out,
                                                    used, depth + 1))
                finally:
                    os.close(sub)
            else:
                src = _open_same(entry.name, fd, st, os.O_NONBLOCK | os.O_NOCTTY)
                if src is None:
                    left_out.append(f"{terminal_text(path)}: changed while it was collected")
                    continue
                try:
                    _copy_file(src, dest / entry.name, used)
                finally:
                    os.close(src)
    return newest


def _open_same(name: str, parent: int, seen: os.stat_result, flags: int) -> int | None:
    """`name` opened without following a link, if it is still the entry that lstat saw (same file, same owner)."""
    try:
        fd = os.open(name, NO_FOLLOW | flags, dir_fd=parent)
    except OSError:
        return None
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino, now.st_uid, stat.S_IFMT(now.st_mode)) != \
            (seen.st_dev, seen.st_ino, seen.st_uid, stat.S_IFMT(seen.st_mode)):
        os.close(fd)
        return None
    return fd


def _copy_file(src: int, dest: Path, used: list[int]) -> None:
    with open(dest, "xb") as out:
        while chunk := os.read(src, 1 << 20):
            used[1] += len(chunk)
            if used[1] > MAX_BYTES:
                raise TooBig(f"more than {MAX_BYTES // 10**6} MB")
            out.write(chunk)


def default_course_and_exchange(config_file: Path = DEFAULT_CONFIG) -> tuple[str | None, str]:
    """CourseDirectory.course_id and Exchange.root from the course's nbgrader_config.py (nbgrader's default root)."""
    from traitlets.config import PyFileConfigLoader

    if not Path(config_file).is_file():
        return None, DEFAULT_EXCHANGE
    cfg = PyFileConfigLoader(Path(config_file).name, path=str(Path(config_file).parent)).load_config()
    course = cfg.CourseDirectory.get("course_id") or None
    return course, cfg.Exchange.get("root") or DEFAULT_EXCHANGE


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `collect` on the `python -m grader` command line."""
    course, exchange = default_course_and_exchange()
    p = commands.add_parser(
        "collect", help="collect submissions from nbgrader's exchange safely (instead of nbgrader collect)",
        description=__doc__.split("\n\n")[0] + " Each student's newest folder that they own; no link is followed; "
                    "the time is the exchange's. See grader/collect.py.")
    p.add_argument("assignment", help="the assignment id, e.g. 03_attention")
    p.add_argument("--exchange", type=Path, default=Path(exchange), help=f"nbgrader's Exchange.root (default {exchange})")
    p.add_argument("--course", default=course, required=course is None,
                   help=f"nbgrader's course id (default: {course}, from nbgrader_config.py)")
    p.add_argument("--to", type=Path, default=Path("submitted"),
                   help="where to put <student_id>/<assignment>/ (default: submitted, the SUBMISSIONS of grade)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        done = collect(args.exchange, args.course, args.assignment, args.to)
    except CollectError as err:
        print(f"python -m grader collect: {err}", file=sys.stderr)
        return 2
    on_time = sorted(s for s, when in done.collected.items() if when is not None)
    print(f"collected {len(done.collected)} submissions of {terminal_text(args.assignment)} into {args.to}"
          + (f", {len(done.collected) - len(on_time)} of them with a time that needs review" if len(on_time) <
             len(done.collected) else ""))
    for student in sorted(done.collected):
        when = done.collected[student]
        print(f"  {student}: {_format(when) if when else 'time needs review (timestamp.txt says why)'}")
    if done.review:
        print(f"needs review ({len(done.review) + done.more}):")
        print("\n".join(f"  {line}" for line in done.review))
        if done.more:
            print(f"  ... and {done.more} more")
    return 0
