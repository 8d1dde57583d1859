"""`python -m grader watch --out OUT`: each submission graded as it arrives in nbgrader's exchange, its feedback
handed back there, for the student's *Fetch Feedback*, within a minute.

Every --interval seconds, for each assignment of the course (--assignment: some of them):
  1. collect: each student's newest submission in <exchange>/<course>/inbound that was not collected yet goes
     to SUBMISSIONS (--submissions, collect's --to), by grader.collect's rules (their own folder, no link
     followed, the exchange's time; forgeries listed once under "needs review");
  2. grade: what the gradebook does not hold yet, by grader.cli.grade, as a batch run would (the sandbox,
     OUT/feedback, the gradebook, OUT/grades.csv): a resubmission has a new time and is graded again, a
     recorded submission never is, so a watch started again resumes from the gradebook;
  3. hand back: as each submission is recorded, its pages go where nbgrader fetch_feedback finds them
     (grader.release.hand_back), and one line says student, assignment, score, the seconds its grading took
     and the seconds since it was submitted;
  4. bring up to date: when the instructor changed a final score without grading (a manual grade in
     formgrader, a due date set or moved: gradebook_edits), a grading run with nothing new to grade re-applies
     the penalties and makes the pages concerned again (grader.refresh), and those replace the ones handed back.
A submission that cannot be graded (broken, hostile, too slow) is recorded as failed with its reason, its page
says so, and the loop goes on. An error of the grader itself (an exchange not released yet, a database that is
down) is printed, once per distinct message, and tried again at the next poll; only a sandbox that cannot start
on the first poll stops it (exit 2, with the fix). SIGTERM stops it after the submission being graded is
recorded and handed back; a second signal stops it at once. A terminal's Ctrl-C (SIGINT to every process of
the group: the grading processes ignore it, a sandbox being started does not) stops it as well, at once when
it has to. What was not recorded is graded at the next start, never half: a submission is recorded whole.
README.md ("Feedback minutes after submitting") runs it as a systemd unit or a JupyterHub service.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

from grader.cli import (LIMIT_OPTIONS, add_grading_options, course_assignments, grade, limits_from,
                        not_positive, submission_time)
from grader.collect import CollectError, collect, default_course_and_exchange
from grader.course import DEFAULT_CONFIG, DEFAULT_SOURCE, own_gradebook, sqlite_url
from grader.inert import terminal_text
from grader.release import hand_back
from grader.sandbox import HOW_TO_FIX, Limits, SandboxUnavailable

SLEEP_STEP = 0.2   # seconds: how soon a signal is noticed while waiting for the next poll
MAX_NOTICES = 2000  # distinct notices printed (an inbound folder can be filled with forgeries); then one line says so
SETTLE = 2.0       # seconds a submission folder must be left unchanged before it is collected (submit writes
                   # submission_secret.txt and sets the folder's mode last; a half-written folder waits a poll)


class Stopped(Exception):
    """A signal asked the watch to stop: raised from the result callback, which ends the grading run there."""


class Watch:
    """The loop of `python -m grader watch`; see the module. `say` prints one line (stdout, flushed)."""

    def __init__(self, out: Path, submissions: Path, exchange: Path, course: str, assignments: list[str],
                 workers: int = 1, db_url: str | None = None, source: Path = DEFAULT_SOURCE,
                 config_file: Path | None = DEFAULT_CONFIG, limits: Limits = Limits(), interval: float = 5.0) -> None:
        self.out, self.submissions, self.exchange = Path(out).resolve(), Path(submissions).resolve(), Path(exchange)
        self.course, self.assignments, self.workers, self.db_url = course, assignments, workers, db_url
        self.source, self.config_file, self.limits, self.interval = source, config_file, limits, interval
        self.stdout = sys.stdout
        self.stopping = False
        self.grading = False
        self.seen: dict[tuple[str, str], str] = {}   # (student, assignment) -> the inbound folder collected last
        self.said: set[str] = set()                  # the notices printed already (each is printed once)
        self.to_grade = True                         # the first poll grades whatever SUBMISSIONS holds unrecorded
        self.edits: int | None = None                # gradebook_edits when the last grading run began
        self.ready = False                           # the first grading is done

    # -- output ----------------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        print(line, file=self.stdout, flush=True)

    def notice(self, line: str) -> None:
        """Print `line` unless it was printed before (a forgery in the inbound folder is seen at every poll), and
        at most MAX_NOTICES of them."""
        if line in self.said or len(self.said) > MAX_NOTICES:
            return
        self.said.add(line)
        self.say(line if len(self.said) <= MAX_NOTICES else
                 f"more than {MAX_NOTICES} notices (forgeries in the inbound folder?): the rest are not shown")

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> int:
        """Poll until a signal; 0 after a clean stop, 2 when the sandbox cannot start at the first poll."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        self.submissions.mkdir(parents=True, exist_ok=True)
        try:
            self.say(f"watching {self.exchange / self.course / 'inbound'} for {', '.join(self.assignments)} every "
                     f"{self.interval:g} s; grading into {self.out}; feedback to {self.exchange / self.course / 'feedback'}")
            self.hand_back_recorded()
            first = True
            while not self.stopping:
                try:
                    self.poll()
                except SandboxUnavailable as err:
                    if self.stopping:   # a terminal's Ctrl-C reached the sandbox being started too
                        break
                    if first:
                        print(f"python -m grader watch: cannot start the sandbox: {err}\n{HOW_TO_FIX}", file=sys.stderr)
                        return 2
                    self.notice(f"grading stopped: the sandbox cannot start: {err}; trying again")
                except Stopped:
                    break
                except Exception as err:   # the grader's own trouble (never a submission's): said, then tried again
                    self.notice(f"python -m grader watch: {type(err).__name__}: {terminal_text(str(err), 500)}; "
                                f"trying again every {self.interval:g} s")
                first = False
                self._sleep(self.interval)
            self.say("stopped")
            return 0
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, frame) -> None:
        """Sets the flag the loop and the result callback look at; says so with one unbuffered write (a print here
        could land inside a print of the main flow, which Python's buffered streams refuse)."""
        name = signal.Signals(signum).name
        if self.stopping:
            self._write_now(f"{name} again: stopping now (what was being graded is graded at the next start)")
            os._exit(128 + signum)
        self.stopping = True
        if self.grading:
            self._write_now(f"{name}: stopping once the submission being graded is recorded (send it again to stop "
                            f"at once)")

    def _write_now(self, line: str) -> None:
        try:
            os.write(self.stdout.fileno(), (line + "\n").encode(errors="replace"))
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):   # no file under it (a test's StringIO)
            pass

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(SLEEP_STEP, left))

    def poll(self) -> None:
        """Collect what is new, grade what is not recorded, hand back each result as it is recorded."""
        for assignment in self.assignments:
            try:
                done = collect(self.exchange, self.course, assignment, self.submissions,
                               skip=lambda student, folder, ctime_ns, a=assignment:
                               self._not_now(student, a, folder, ctime_ns))
            except CollectError as err:   # e.g. not released yet: no inbound folder
                self.notice(f"cannot collect {assignment}: {err}")
                continue
            for line in done.review:
                self.notice(f"needs review: {line}")
            self.to_grade |= bool(done.collected)
            if self.stopping:
                raise Stopped
        edits = gradebook_edits(self.db_url or sqlite_url(self.out / "gradebook.db"), own_gradebook(self.config_file))
        if not self.to_grade and edits == self.edits:
            return
        chatter = io.StringIO()
        self.grading = True
        try:
            with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
                run = grade(self.submissions, self.out, self.workers, self.db_url, self.source, self.config_file,
                            self.limits, progress=False, on_result=self._recorded)
            self.to_grade, self.edits = False, edits   # an edit made while it ran is seen at the next poll
            self.hand_back_remade(run)
            if not self.ready:
                self.ready = True
                self.say(f"up to date: {run.already} submission(s) were in the gradebook already, {len(run.graded)} "
                         f"graded at the start; waiting for new ones")
        finally:
            self.grading = False
            for line in chatter.getvalue().splitlines():   # the due-date notes, once; not the "resuming" count
                if line.strip() and not line.startswith("resuming:"):
                    self.notice(line)

    def _not_now(self, student: str, assignment: str, folder: str, ctime_ns: int) -> bool:
        """Whether to leave the inbound `folder`, the student's newest, alone: it changed less than SETTLE seconds
        ago (submit may still be writing it), or it was collected already: by this watch (its name), or, the first
        time this watch sees the student, by an earlier one (SUBMISSIONS holds its time), so that a restart copies
        nothing again (a failed submission whose folder changes is graded again)."""
        from nbgrader.utils import parse_utc

        if time.time_ns() - ctime_ns < SETTLE * 1e9:
            return True
        key = (student, assignment)
        first = key not in self.seen
        if self.seen.get(key) == folder:
            return True
        self.seen[key] = folder   # tried once: a folder that cannot be collected is not copied at every poll
        if not first:
            return False
        try:
            return (submission_time(self.submissions / student / assignment / "timestamp.txt")
                    == parse_utc(folder.rsplit("+", 3)[2]).isoformat())
        except (ValueError, OverflowError, TypeError, LookupError):   # needs review, or no time in the name
            return False

    def _recorded(self, result) -> None:
        """grade()'s callback: hand the recorded submission's feedback back, say so in one line."""
        try:
            back = hand_back(self.out, self.submissions, self.exchange, self.course,
                             {(result.student_id, result.assignment_id): result.timestamp})
            where = ("feedback fetchable" if back.released else
                     f"feedback NOT handed back: {back.listed[0].split(': ', 1)[1]}")
        except Exception as err:   # CollectError (the feedback folder is not ours), a full disk: said, grading goes on
            where = f"feedback NOT handed back: {type(err).__name__}: {terminal_text(str(err), 300)}"
        late = f" ({result.late_penalty:g} off for lateness)" if result.late_penalty else ""
        status = "" if result.status == "graded" else f", {result.status}: {terminal_text(result.reason, 200)}"
        since = ""
        if result.timestamp:
            seconds = (datetime.utcnow() - datetime.fromisoformat(result.timestamp)).total_seconds()
            since = f", {seconds:.1f} s after submitting"
        self.say(f"{terminal_text(result.student_id)}/{terminal_text(result.assignment_id)}: {result.score:g} of "
                 f"{result.max_score:g} points{late}{status}; graded in {result.seconds:.1f} s; {where}{since}")
        if self.stopping:
            raise Stopped

    def hand_back_remade(self, run) -> None:
        """The pages grade() made again without grading (grader.refresh: a manual grade in formgrader, a due date
        set or moved) replace the ones the exchange holds, one line each."""
        stamps = {(r.student_id, r.assignment_id): r.timestamp for r in run.rows}
        try:
            back = hand_back(self.out, self.submissions, self.exchange, self.course,
                             {key: stamps.get(key) for key in run.remade})
        except Exception as err:   # as in _recorded: said, the loop goes on
            self.notice(f"cannot hand back the remade pages: {type(err).__name__}: {terminal_text(str(err), 300)}")
            return
        for student, assignment in back.released:
            self.say(f"feedback page made again: {terminal_text(student)}/{terminal_text(assignment)} (a manual "
                     f"grade or a due date changed its score); the new one is fetchable")
        for line in back.listed:
            self.notice(f"  not handed back: {line}")

    def hand_back_recorded(self) -> None:
        """At the start: hand back what the gradebook holds for the watched assignments and the exchange lacks
        (a watch stopped between recording and handing back, or a batch run)."""
        from nbgrader.api import Gradebook

        from grader.gradebook import recorded

        url = self.db_url or sqlite_url(self.out / "gradebook.db")
        if not self.db_url and not (self.out / "gradebook.db").is_file():
            return
        try:
            with Gradebook(url) as gb:
                graded = {k: t for k, t in recorded(gb).items() if k[1] in self.assignments}
            back = hand_back(self.out, self.submissions, self.exchange, self.course, graded)
        except Exception as err:
            self.notice(f"cannot hand back the earlier grades: {type(err).__name__}: {terminal_text(str(err), 300)}")
            return
        if graded:
            self.say(f"{len(back.released)} earlier grade(s) are in the exchange"
                     + (f"; {len(back.listed)} not:" if back.listed else ""))
            for line in back.listed:
                self.notice(f"  not handed back: {line}")


def gradebook_edits(db_url: str, own: Path) -> int | None:
    """A fingerprint of what changes final scores without grading: the due dates and manual grades (and extra
    credit) in the gradebook at `db_url`, and the instructor's own gradebook `own` (a due date the grading
    gradebook lacks is taken from there) by its time and size. None while `db_url` is a SQLite file not made yet."""
    from sqlalchemy import create_engine, text

    if db_url.startswith("sqlite:///") and not Path(db_url.removeprefix("sqlite:///")).is_file():
        return None
    engine = create_engine(db_url)
    try:
        with engine.connect() as db:
            dues = sorted(map(tuple, db.execute(text("SELECT name, duedate FROM assignment"))))
            manual = sorted(map(tuple, db.execute(text("SELECT id, manual_score, extra_credit FROM grade WHERE "
                                                       "manual_score IS NOT NULL OR extra_credit IS NOT NULL"))))
    finally:
        engine.dispose()
    stat = own.stat() if own.is_file() else None
    return hash((tuple(dues), tuple(manual), stat and (stat.st_mtime_ns, stat.st_size)))


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `watch` on the `python -m grader` command line."""
    course, exchange = default_course_and_exchange()
    p = commands.add_parser(
        "watch", help="grade each submission as it arrives in nbgrader's exchange, hand its feedback back there",
        description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the course directory to grade into (as grade --out)")
    p.add_argument("--submissions", type=Path, default=Path("submitted"),
                   help="where collected submissions go (collect's --to, grade's SUBMISSIONS; default: submitted)")
    p.add_argument("--exchange", type=Path, default=Path(exchange), help=f"nbgrader's Exchange.root (default {exchange})")
    p.add_argument("--course", default=course, required=course is None,
                   help=f"nbgrader's course id (default: {course}, from nbgrader_config.py)")
    p.add_argument("--assignment", action="append", help="watch only this assignment (repeatable; default: all)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between looks at the exchange (default 5)")
    p.add_argument("--workers", type=int, default=1, help="submissions graded at once (default 1)")
    add_grading_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    known = course_assignments(args.source)
    unknown = sorted(set(args.assignment or []) - known)
    problems = ([f"--assignment must name an assignment in {args.source}; got {', '.join(unknown)}"] * bool(unknown)
                + not_positive(args, ("interval", "workers", *LIMIT_OPTIONS)))
    if not known:
        problems.append(f"no assignment in {args.source}")
    if problems:
        print("\n".join(f"python -m grader watch: {p}" for p in problems), file=sys.stderr)
        return 2
    return Watch(args.out, args.submissions, args.exchange, args.course, sorted(args.assignment or known),
                 args.workers, args.db_url, args.source, args.config, limits_from(args), args.interval).run()
