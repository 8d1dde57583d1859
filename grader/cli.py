"""`python -m grader grade SUBMISSIONS --out OUT [--workers N] [--db-url URL] [--shard K/N] [--regrade] ...`

Each submission is recorded in the gradebook as soon as it is graded, so a run that is killed (even with
kill -9) and started again grades only the submissions it has not recorded, and those resubmitted since
(another timestamp.txt); --regrade grades everything again. --shard K/N grades the K-th of N parts of the
class (by student), so N processes, on one machine or N, grade one class into one shared gradebook.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, Callable

from tqdm import tqdm

from grader.course import (DEFAULT_CONFIG, DEFAULT_SOURCE, course_lock, ensure_alembic_on_path, prepare_course,
                           remove_leftovers, sqlite_url)
from grader.inert import terminal_text
from grader.sandbox import HOW_TO_FIX, Limits, SandboxUnavailable, probe

if TYPE_CHECKING:   # grader.runner imports torch: the main process imports it only once its workers are starting
    from grader.records import Job, Result
    from grader.runner import SandboxRunner

MAX_ATTEMPTS = 2   # a submission whose worker process died is tried once more, then recorded as failed
# The grading worker's own work on one submission (read, compare, diagnose, write feedback) besides the sandbox's
# wall clock: seconds at most (a correct 03_attention takes about 1 s), and address space at most (a worker is
# ~0.7 GiB after its imports; a submission's host-side data is bounded by grader.sandbox.wire to 64 MiB frames).
HOST_SECONDS = 300.0
WORKER_MEMORY = 4 * 2**30


def discover(submissions: Path, known: set[str]) -> tuple[list[Job], list[Result]]:
    """Jobs for SUBMISSIONS/<student_id>/<assignment_id>/, and "skipped" results for unknown assignments.

    A job's timestamp is its timestamp.txt (what `python -m grader collect` writes from the exchange's record),
    as ISO in UTC; None without one (a hand-in with no time: never late). A timestamp.txt that cannot be read as
    a time is never taken as on time: the submission is not graded but listed as "needs review", with what the
    file says (collect writes why there), until someone writes its time.
    """
    from grader.records import Job, Result

    jobs, skipped = [], []
    for student in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for assignment in sorted(p for p in student.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if assignment.name in known:
                try:
                    when = submission_time(assignment / "timestamp.txt")
                except ValueError as err:
                    skipped.append(Result(student.name, assignment.name, "needs review",
                                          reason=f"the submission time is unknown, so it is not graded (neither on "
                                                 f"time nor late): its timestamp.txt is not a time: {err}"))
                    continue
                jobs.append(Job(student.name, assignment.name, assignment.resolve(), when))
            else:
                skipped.append(Result(student.name, assignment.name, "skipped",
                                      reason=f"no assignment {assignment.name!r} in the course source"))
    return jobs, skipped


def submission_time(stamp: Path) -> str | None:
    """The time in a submission's timestamp.txt as ISO in UTC; None when there is none. Raises ValueError with
    what it says (its first line, printable) when it is there but is no time: a link, no plain file, text that
    is not a time."""
    from nbgrader.utils import parse_utc

    if not os.path.lexists(stamp):
        return None
    try:
        with open(os.open(stamp, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            if not S_ISREG(os.fstat(f.fileno()).st_mode):
                raise OSError
            text = f.read(1000).decode("utf-8", "replace").strip()
    except OSError:
        raise ValueError("(a link, or no readable file)") from None
    try:
        return parse_utc(text).isoformat()
    except (ValueError, OverflowError, TypeError, LookupError):   # dateutil's errors, a time near year 1 or 9999
        raise ValueError(terminal_text(text.splitlines()[0] if text else "(nothing)", 300)) from None


def course_assignments(source: Path) -> set[str]:
    """The assignments of the course: the folders of `source` that hold a notebook (none if it is missing)."""
    return {p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb"))} if source.is_dir() else set()


def in_shard(student_id: str, shard: tuple[int, int] | None) -> bool:
    """Whether the student's submissions belong to shard (K, N), 1 <= K <= N (None: the whole class).

    By student id, through SHA-256 (the same on every machine and Python, unlike hash()): all of a
    student's submissions go to one shard, so two shards never create the same student, a student's
    feedback folder has one writer, and a student's new assignment lands in the shard that has the rest.
    """
    if shard is None:
        return True
    k, n = shard
    return int.from_bytes(hashlib.sha256(student_id.encode()).digest()[:8], "big") % n == k - 1


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N) with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be K/N with whole numbers, e.g. 1/4; got {text!r}") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 1 <= K <= N; got {text!r}")
    return k, n


def remove_killed_runs_leftovers(out: Path, work: Path, shard: tuple[int, int] | None) -> None:
    """What a killed run of this shard left: its workers' courses and failure pages in `work`, and the
    half-replaced folders of its students in OUT/autograded and OUT/feedback (this shard is their only writer)."""
    for stale in [*work.glob("worker-*"), *work.glob("failed-*")] if work.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)
    for step in ("autograded", "feedback"):
        for student in (out / step).iterdir() if (out / step).is_dir() else ():
            if in_shard(student.name, shard):
                remove_leftovers(student)


def _init_worker(log_file: str, threads: int, parent: int) -> None:
    """Set up a worker process: its kernels get `threads` CPU threads each (the exercises' tensors are small;
    N workers with all cores each would only fight over them), and its stdout/stderr (and the kernels'
    chatter) go to a log file, away from the progress bar. It is killed when the main process dies (even
    by kill -9), so a killed run leaves no worker behind writing into OUT while the next run grades. Its
    address space is bounded by WORKER_MEMORY (a MemoryError there is the submission's failure, not the run's).
    It ignores SIGINT: a terminal's Ctrl-C reaches every process of its group, and what it stops is the main
    process's to decide (`grade` ends, and its workers with it; `watch` finishes the submission in flight)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:   # the main process died before the line above
        os._exit(1)
    signal.signal(signal.SIGINT, _no_action)   # a terminal's Ctrl-C is the main process's to act on
    if not any(Path("/dev").glob("nvidia*")):   # CUDA reserves far more address space than it uses: no bound there
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]    # the soft limit only: the sandbox sets its own
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY if hard == resource.RLIM_INFINITY
                                                else min(WORKER_MEMORY, hard), hard))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import grader.runner  # noqa: F401  (torch, the checks, nbgrader: seconds that overlap the course's set-up)
    import nbgrader.converters  # noqa: F401


def _no_action(signum: int, frame) -> None:
    """A grading worker's SIGINT handler. Not SIG_IGN, which the sandbox it starts would inherit through exec."""


def start_pool(workers: int, log_file: Path) -> ProcessPoolExecutor:
    """`workers` grading processes, started now: they import what they need while the caller goes on."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(str(log_file), threads, os.getpid()))
    for _ in range(workers):   # the executor starts a process per task while none is idle
        pool.submit(int)
    return pool


class TookTooLong(Exception):
    """A submission's grading went past its wall clock (job_seconds) and its worker process was killed."""


def _guarded(runner: SandboxRunner, job: Job, seconds: float | None) -> Result:
    """`runner.run(job)` in a worker, killed by the kernel (SIGALRM, default action: no Python code can catch
    it or hold it off, not even a C loop that holds the GIL) when it takes longer than `seconds`."""
    if seconds is not None:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return runner.run(job)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_pool(runner: SandboxRunner, jobs: list[Job], pool: ProcessPoolExecutor, workers: int,
              done: Callable[[Result], None], job_seconds: float | None = None) -> list[tuple[Job, BaseException]]:
    """Run jobs in `pool` (shut down at the end), never more jobs in flight than workers, so that a worker
    that dies takes down only the jobs it and its peers held. Returns those jobs with the error: TookTooLong
    for a job whose worker was killed at its wall clock of `job_seconds`."""
    broken: list[tuple[Job, BaseException]] = []
    queue = list(jobs)
    dead = False   # a worker died before it took a job (killed while it started): the rest go to a new pool
    with pool:
        running: dict = {}
        while queue or running:
            while queue and len(running) < workers and not broken and not dead:
                try:
                    future = pool.submit(_guarded, runner, queue[0], job_seconds)
                except BrokenProcessPool:
                    dead = True
                    break
                running[future] = (queue.pop(0), time.monotonic())
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job, started = running.pop(future)
                try:
                    result = future.result()
                except Exception as err:   # the worker process died (BrokenProcessPool) or failed to pickle
                    if job_seconds is not None and time.monotonic() - started >= job_seconds:
                        err = TookTooLong(f"grading it took more than {job_seconds:g} s, and its grading process "
                                          f"was stopped")
                    broken.append((job, err))
                else:
                    done(result)   # recording it may fail (the database is gone): that stops the run
        broken += [(job, RuntimeError("not started")) for job in queue]
    return broken


BAR_FORMAT = ("{desc}: {n_fmt}/{total_fmt} submissions |{bar:20}| {percentage:3.0f}% "
              "[{elapsed} elapsed, {remaining} left, {rate_fmt}]{postfix}")


def grade_jobs(runner: SandboxRunner, jobs: list[Job], workers: int, log_file: Path, progress: bool = True,
               pool: ProcessPoolExecutor | None = None,
               on_result: Callable[[Result], None] | None = None, job_seconds: float | None = None) -> list[Result]:
    """Run `runner.run` on every job in `workers` separate processes, with a progress bar (the count, the
    rate and the time left).

    Results come back to this process as they finish and go to `on_result` at once (the caller records
    them). When a worker process dies, the pool is replaced and grading goes on; each job the dead pool
    held is tried once more on its own, and recorded as failed (with the reason) if its worker dies again.
    A job that takes longer than `job_seconds` (None: no limit) has its worker killed and is recorded as
    failed at once (its peers in that pool are tried again). The rest of the class is graded as usual.
    """
    results: list[Result] = []
    with tqdm(total=len(jobs), unit="submission", desc="grading", disable=not progress, file=sys.stderr,
              bar_format=BAR_FORMAT) as bar:
        def done(result: Result) -> None:
            if on_result is not None:
                on_result(result)
            results.append(result)
            bar.set_postfix_str(terminal_text(f"{result.student_id}/{result.assignment_id}", 60), refresh=False)
            bar.update()

        pending = list(jobs)
        suspects: list[Job] = []
        while pending:                      # until a pool finishes without losing a worker
            broken = _run_pool(runner, pending, pool or start_pool(workers, log_file), workers, done, job_seconds)
            pool = None
            for job, err in broken:
                if isinstance(err, TookTooLong):
                    done(runner.failure(job, str(err)))
            suspects += [job for job, err in broken if str(err) != "not started" and not isinstance(err, TookTooLong)]
            pending = [job for job, err in broken if str(err) == "not started"]
        for job in suspects:                # each once more, alone
            for _, err in _run_pool(runner, [job], start_pool(1, log_file), 1, done, job_seconds):
                done(runner.failure(job, str(err) if isinstance(err, TookTooLong) else
                                    f"the grading process died twice ({type(err).__name__}: {err})"))
    return results


@dataclass
class Run:
    """What `grade` did. rows: every submission of this shard (of the class without --shard) as the
    gradebook has it, plus "skipped" (unknown assignment) and "pending" (not recorded yet) ones;
    graded: the results of this run; already: how many were recorded before and not graded again; remade: the
    submissions (student, assignment) whose feedback page was made again (grader.refresh)."""

    rows: list[Result] = field(default_factory=list)
    graded: list[Result] = field(default_factory=list)
    already: int = 0
    remade: list[tuple[str, str]] = field(default_factory=list)


def grade(submissions: Path, out: Path, workers: int = 1, db_url: str | None = None, source: Path = DEFAULT_SOURCE,
          config_file: Path | None = DEFAULT_CONFIG, limits: Limits = Limits(), isolate: bool = True,
          seed: int | None = None, assignments: list[str] | None = None, progress: bool = True,
          shard: tuple[int, int] | None = None, regrade: bool = False, students: list[str] | None = None,
          on_result: Callable[[Result], None] | None = None, substitute: bool | None = None) -> Run:
    """Grade the submissions under `submissions` into the course directory `out`; see `main`.

    Only the submissions of `shard` (see in_shard), and of those only the ones the gradebook has no result
    for or has with another timestamp (a resubmission), unless `regrade`. Each result is committed to the
    gradebook as it comes. OUT/grades.csv is then written from the gradebook for the whole class (a
    submission no shard has recorded yet is "pending"); a shard also writes OUT/grades-K-of-N.csv with its
    own submissions. `assignments` and `students` choose what this run grades (grades.csv stays the whole class).
    A recorded failure is graded again when its folder changed since (a notebook renamed or handed in again).
    Every student the gradebook or SUBMISSIONS knows gets a "missing" row for each assignment handed in by
    someone but not by them. `on_result` is called with each result once it is committed (grader.watch hands its
    feedback back there; what it raises stops the run, and grades.csv is then not rewritten).
    `substitute` (None: as OUT was graded before, else True): an item that calls the student's own parts is graded
    with the parts' references in their place (grading_policy); PolicyChanged when it differs from OUT's without
    `regrade`. Raises SandboxUnavailable (with the fix) when `isolate` and bubblewrap cannot start here.
    """
    from nbgrader.api import Gradebook

    from grader.course import nbgrader_config

    submissions, out, source = Path(submissions).resolve(), Path(out).resolve(), Path(source).resolve()
    log_file = Path(tempfile.mkstemp(prefix="grader-workers-", suffix=".log")[1])  # into OUT/.work at the end
    pool = start_pool(workers, log_file)   # the workers start while the sandbox is probed and the course prepared
    if isolate:
        try:
            notice = probe(limits)
            if notice:
                print(f"python -m grader: {notice}", file=sys.stderr, flush=True)
        except SandboxUnavailable:
            pool.shutdown(cancel_futures=True)
            log_file.unlink(missing_ok=True)
            raise
    substitute = grading_policy(out, substitute, regrade)   # after the probe: nothing in OUT without a sandbox
    ensure_alembic_on_path()
    course = course_assignments(source)
    everyone, skipped = discover(submissions, course)          # the class, for grades.csv
    chosen = [job for job in everyone if (not assignments or job.assignment_id in assignments)
              and (not students or job.student_id in students)]
    mine = [job for job in chosen if in_shard(job.student_id, shard)]
    db_url = db_url or sqlite_url(out / "gradebook.db")
    work = out / ".work" / (f"shard-{shard[0]}-of-{shard[1]}" if shard else "")
    remove_killed_runs_leftovers(out, work, shard)
    template = prepare_course(out, source, sorted({job.assignment_id for job in chosen}), db_url, config_file, work)
    from grader.gradebook import (changed_since, failed_at, late_penalty_plugin, record, recorded,  # imports torch
                                  stored_results, write_csv)
    from grader.records import Result
    from grader.refresh import refresh
    from grader.runner import SandboxRunner

    late = late_penalty_plugin(nbgrader_config(out, db_url, config_file))
    seed = secrets.randbits(63) if seed is None else seed
    runner = SandboxRunner(out, template, config_file, limits, isolate, seed, substitute)
    run = Run()
    with Gradebook(db_url) as gb:
        done, failed = ({}, {}) if regrade else (recorded(gb), failed_at(gb))
        todo = [job for job in mine if (job.student_id, job.assignment_id) not in done
                or done[(job.student_id, job.assignment_id)] != job.timestamp
                or changed_since(job.directory, failed.get((job.student_id, job.assignment_id)))]
        run.already = len(mine) - len(todo)
        if run.already:
            print(f"resuming: {run.already} of {len(mine)} submissions are in the gradebook already; grading the "
                  f"other {len(todo)} (--regrade grades them all)", flush=True)
        notebooks = max([len(list((source / a).glob("*.ipynb"))) for a in {j.assignment_id for j in todo}] or [1])

        def recorded_then(result: Result) -> None:
            record(gb, result, late)
            if on_result is not None:
                on_result(result)
        try:
            run.graded = grade_jobs(runner, todo, workers, log_file, progress, pool, on_result=recorded_then,
                                    job_seconds=notebooks * limits.submission_seconds + HOST_SECONDS)
        finally:
            shutil.move(str(log_file), str(work / f"workers-{os.getpid()}.log"))

    def row(key: tuple[str, str]) -> Result:
        return stored.get(key) or Result(*key, "pending", reason="not recorded yet (by another shard, or by a run "
                                                                  "that stopped: run the command again)")
    # Shards take turns here, so the last one to write grades.csv has read every other shard's commits.
    with course_lock(out, db_url), Gradebook(db_url) as gb:
        run.remade = refresh(gb, out, db_url, config_file, [(j.student_id, j.assignment_id) for j in mine], late)
        stored = stored_results(gb)
        handed = {(j.student_id, j.assignment_id) for j in everyone} | {
            (r.student_id, r.assignment_id) for r in skipped if r.status != "skipped"}
        missing = missing_rows(handed, {s.id for s in gb.students}, source)
        write_csv(out / "grades.csv", [row((j.student_id, j.assignment_id)) for j in everyone] + skipped + missing)
    concerned = [r for r in [row((j.student_id, j.assignment_id)) for j in chosen] + skipped + missing
                 if (not assignments or r.assignment_id in assignments) and (not students or r.student_id in students)]
    run.rows = [r for r in concerned if in_shard(r.student_id, shard)]
    if shard:
        write_csv(out / f"grades-{shard[0]}-of-{shard[1]}.csv", run.rows)
    return run


POLICY_FILE = "grading-policy.json"   # in OUT: how its grades were made, for every later run into it


class PolicyChanged(ValueError):
    """A run asked for another grading policy than the one OUT's grades were made with (and no --regrade)."""


def grading_policy(out: Path, substitute: bool | None, regrade: bool) -> bool:
    """Whether items are graded with the reference parts substituted (default True), as recorded in
    OUT/grading-policy.json: a resumed run grades as the first did; another choice needs --regrade (or OUT's
    grades would mix both policies). Records the choice."""
    path = out / POLICY_FILE
    recorded = json.loads(path.read_text()).get("substitute_parts") if path.exists() else None
    if substitute is None:
        substitute = True if recorded is None else bool(recorded)
    elif recorded is not None and bool(recorded) != substitute and not regrade:
        raise PolicyChanged(f"{out} was graded {'with' if recorded else 'without'} the reference parts substituted "
                            f"(--{'' if recorded else 'no-'}substitute); add --regrade to grade every submission "
                            f"{'with' if substitute else 'without'} them, or leave the option out")
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{POLICY_FILE}.{os.getpid()}"
    partial.write_text(json.dumps({"substitute_parts": substitute}) + "\n")
    partial.replace(path)   # shards writing at once each leave a whole file
    return substitute


def missing_rows(handed: set[tuple[str, str]], known: set[str], source: Path) -> list[Result]:
    """A "missing" result (0 points) for each student of `known` or of `handed` ((student, assignment) pairs of
    the submissions found) and each assignment someone handed in that the student did not."""
    from grader.records import Result
    from grader.submission import load_source

    assignments = sorted({a for _, a in handed})
    points = {a: sum(load_source(p).max_score for p in sorted((source / a).glob("*.ipynb"))) for a in assignments}
    people = sorted(known | {s for s, _ in handed})
    return [Result(s, a, "missing", "no submission", 0.0, points[a]) for s in people for a in assignments
            if (s, a) not in handed]


def summary(run: Run, seconds: float, out: Path) -> str:
    """The closing lines: counts, then every submission not graded normally, with its reason, and every graded
    one the grader noted something about (a limit hit, a locked cell edited, a shortcut, tampering). Student
    ids (folder names) and reasons (which quote exceptions) are shown through grader.inert.terminal_text."""
    t = terminal_text
    bad = [r for r in run.rows if r.status != "graded"]
    noted = [r for r in run.rows if r.status == "graded" and r.reason]
    lines = [f"graded {len(run.graded)} submissions in {seconds:.1f} s"
             + (f" ({run.already} were in the gradebook already)" if run.already else "")
             + f"; {len(run.rows)} in all, {len(bad)} not graded normally, {len(noted)} graded with a note; "
               f"grades: {out / 'grades.csv'}, feedback: {out / 'feedback'}"]
    if run.remade:
        shown = ", ".join(f"{t(s)}/{t(a)}" for s, a in run.remade[:10]) + (f" and {len(run.remade) - 10} more" if len(run.remade) > 10 else "")
        lines.append(f"{len(run.remade)} feedback page(s) made again, without running code (a manual grade or a due "
                     f"date changed since): {shown}")
    if bad:
        lines.append("not graded normally:")
        lines += [f"  {t(r.student_id)}/{t(r.assignment_id)}: {r.status}: {t(r.reason or '(no reason given)')}"
                  for r in sorted(bad, key=lambda r: (r.status, r.student_id, r.assignment_id))]
    if noted:
        lines.append("graded, with a note worth a look:")
        lines += [f"  {t(r.student_id)}/{t(r.assignment_id)}: {r.score:g} of {r.max_score:g}: {t(r.reason)}"
                  for r in sorted(noted, key=lambda r: (r.student_id, r.assignment_id))]
    return "\n".join(lines)


LIMIT_OPTIONS = ("timeout", "submission_timeout", "memory")


def add_grading_options(p: argparse.ArgumentParser) -> None:
    """The options `grade` and `watch` share: where the gradebook and the course are, and the sandbox's limits."""
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the gradebook (default: OUT/gradebook.db)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="instructor notebooks (default: solutions/)")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="nbgrader_config.py with the course settings")
    p.add_argument("--timeout", type=float, default=Limits.cell_seconds,
                   help=f"wall-clock seconds per cell and per graded item (default {Limits.cell_seconds:g})")
    p.add_argument("--submission-timeout", type=float, default=Limits.submission_seconds,
                   help=f"wall-clock seconds per notebook, restarts included (default {Limits.submission_seconds:g})")
    p.add_argument("--memory", type=float, default=Limits.memory / 2**30,
                   help=f"GiB of memory per notebook (default {Limits.memory / 2**30:g})")


def not_positive(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """'--name must be positive; got x' for each of `names` (attribute names) that is not above 0."""
    return [f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}"
            for name in names if getattr(args, name) <= 0]


def limits_from(args: argparse.Namespace) -> Limits:
    """The sandbox's limits from add_grading_options's --memory (GiB), --timeout and --submission-timeout."""
    return Limits(memory=int(args.memory * 2**30), cell_seconds=args.timeout, submission_seconds=args.submission_timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grader", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    g = commands.add_parser(
        "grade", help="autograde a class, student code in a sandbox",
        description="Autograde SUBMISSIONS/<student_id>/<assignment_id>/<assignment_id>.ipynb into OUT: "
                    "OUT/grades.csv, OUT/feedback/<student_id>/<assignment_id>/*.html, the gradebook. Student code "
                    "runs in a bubblewrap sandbox; the comparison with the reference runs outside it.")
    g.add_argument("submissions", type=Path, help="directory in nbgrader's submitted layout")
    g.add_argument("--out", type=Path, required=True, help="output course directory (created if needed)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel grading processes")
    add_grading_options(g)
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the hidden cases (default: a new secret one per run; give one only to reproduce a run)")
    g.add_argument("--no-sandbox", action="store_true",
                   help="run student code WITHOUT isolation (only for code you trust; recorded in grades.csv)")
    g.add_argument("--assignment", action="append", help="grade only this assignment (repeatable)")
    g.add_argument("--student", action="append", help="grade only this student's submissions (repeatable)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--shard", type=parse_shard, default=None, metavar="K/N",
                   help="grade only the K-th of N parts of the class (by student id); run K = 1..N at once, "
                        "e.g. as a Slurm job array, into one --db-url gradebook")
    g.add_argument("--regrade", action="store_true",
                   help="grade every submission again (default: only those not in the gradebook yet, or resubmitted)")
    g.add_argument("--substitute", action=argparse.BooleanOptionalAction, default=None,
                   help="grade an item that calls the student's own parts (self_attention calls "
                        "scaled_dot_product_attention) with the reference parts in their place, so that one bug "
                        "costs once (default: as OUT was graded before, else on; recorded in OUT/" + POLICY_FILE + ")")
    from grader import collect, edition, export, release, report, similarity, watch   # each adds its command, run()
    for module in (collect, edition, export, release, report, similarity, watch):
        module.add_command(commands)
    args = parser.parse_args(argv)
    if args.command != "grade":
        return args.run(args)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1; got {args.workers}")
    if not args.submissions.is_dir():
        parser.error(f"SUBMISSIONS must be a directory; got {args.submissions}")
    if args.assignment:
        unknown = sorted(set(args.assignment) - course_assignments(args.source))
        if unknown:
            parser.error(f"--assignment must name an assignment in {args.source}; got {', '.join(unknown)}")
    for student in args.student or []:
        if not (args.submissions / student).is_dir():
            parser.error(f"--student must name a folder of SUBMISSIONS; got {student!r} (no {args.submissions / student})")
    for problem in not_positive(args, LIMIT_OPTIONS):
        parser.error(problem)
    limits = limits_from(args)
    start = time.perf_counter()
    try:
        run = grade(args.submissions, args.out, args.workers, args.db_url, args.source, args.config, limits,
                    not args.no_sandbox, args.seed, args.assignment, not args.no_progress, args.shard, args.regrade,
                    args.student, substitute=args.substitute)
    except PolicyChanged as err:
        print(f"python -m grader: {err}", file=sys.stderr)
        return 2
    except SandboxUnavailable as err:
        print(f"python -m grader: cannot start the sandbox: {err}\n{HOW_TO_FIX}", file=sys.stderr)
        return 2
    print(summary(run, time.perf_counter() - start, args.out))
    return 0
