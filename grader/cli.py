"""`python -m grader grade SUBMISSIONS --out OUT [--workers N] [--db-url URL] ...`"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import shutil
import sys
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from tqdm import tqdm

from grader.course import DEFAULT_CONFIG, DEFAULT_SOURCE, ensure_alembic_on_path, prepare_course, sqlite_url
from grader.sandbox import HOW_TO_FIX, Limits, SandboxUnavailable, probe

if TYPE_CHECKING:   # grader.runner imports torch: the main process imports it only once its workers are starting
    from grader.runner import Job, Result, SandboxRunner

MAX_ATTEMPTS = 2   # a submission whose worker process died is tried once more, then recorded as failed


def discover(submissions: Path, known: set[str]) -> tuple[list[Job], list[Result]]:
    """Jobs for SUBMISSIONS/<student_id>/<assignment_id>/, and "skipped" results for unknown assignments."""
    from grader.runner import Job, Result

    jobs, skipped = [], []
    for student in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for assignment in sorted(p for p in student.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if assignment.name in known:
                jobs.append(Job(student.name, assignment.name, assignment.resolve()))
            else:
                skipped.append(Result(student.name, assignment.name, "skipped",
                                      reason=f"no assignment {assignment.name!r} in the course source"))
    return jobs, skipped


def _init_worker(log_file: str, threads: int) -> None:
    """Set up a worker process: its kernels get `threads` CPU threads each (the exercises' tensors are small;
    N workers with all cores each would only fight over them), and its stdout/stderr (and the kernels'
    chatter) go to a log file, away from the progress bar."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import grader.runner  # noqa: F401  (torch, the checks, nbgrader: seconds that overlap the course's set-up)
    import nbgrader.converters  # noqa: F401


def start_pool(workers: int, log_file: Path) -> ProcessPoolExecutor:
    """`workers` grading processes, started now: they import what they need while the caller goes on."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(str(log_file), threads))
    for _ in range(workers):   # the executor starts a process per task while none is idle
        pool.submit(int)
    return pool


def _run_pool(runner: SandboxRunner, jobs: list[Job], pool: ProcessPoolExecutor, workers: int,
              done: Callable[[Result], None]) -> list[tuple[Job, BaseException]]:
    """Run jobs in `pool` (shut down at the end), never more jobs in flight than workers, so that a worker
    that dies takes down only the jobs it and its peers held. Returns those jobs with the error."""
    broken: list[tuple[Job, BaseException]] = []
    queue = list(jobs)
    with pool:
        running: dict = {}
        while queue or running:
            while queue and len(running) < workers and not broken:
                job = queue.pop(0)
                running[pool.submit(runner.run, job)] = job
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    done(future.result())
                except Exception as err:   # the worker process died (BrokenProcessPool) or failed to pickle
                    broken.append((job, err))
        broken += [(job, RuntimeError("not started")) for job in queue]
    return broken


def grade_jobs(runner: SandboxRunner, jobs: list[Job], workers: int, log_file: Path, progress: bool = True,
               pool: ProcessPoolExecutor | None = None) -> list[Result]:
    """Run `runner.run` on every job in `workers` separate processes, with a progress bar.

    Results come back to this process as they finish. When a worker process dies, the pool is replaced
    and grading goes on; each job the dead pool held is tried once more on its own, and recorded as
    failed (with the reason) if its worker dies again. The rest of the class is graded as usual.
    """
    results: list[Result] = []
    with tqdm(total=len(jobs), unit="submission", desc="grading", disable=not progress, file=sys.stderr) as bar:
        def done(result: Result) -> None:
            results.append(result)
            bar.set_postfix_str(f"{result.student_id}/{result.assignment_id}", refresh=False)
            bar.update()

        pending = list(jobs)
        suspects: list[Job] = []
        while pending:                      # until a pool finishes without losing a worker
            broken = _run_pool(runner, pending, pool or start_pool(workers, log_file), workers, done)
            pool = None
            started = [job for job, err in broken if str(err) != "not started"]
            suspects += started
            pending = [job for job, err in broken if str(err) == "not started"]
        for job in suspects:                # each once more, alone
            for _, err in _run_pool(runner, [job], start_pool(1, log_file), 1, done):
                done(runner.failure(job, f"the grading process died twice ({type(err).__name__}: {err})"))
    return results


def grade(submissions: Path, out: Path, workers: int = 1, db_url: str | None = None, source: Path = DEFAULT_SOURCE,
          config_file: Path | None = DEFAULT_CONFIG, limits: Limits = Limits(), isolate: bool = True,
          seed: int | None = None, assignments: list[str] | None = None, progress: bool = True) -> list[Result]:
    """Grade every submission under `submissions` into the course directory `out`; see `main`.

    Raises SandboxUnavailable (with the fix) when `isolate` and bubblewrap cannot start here.
    """
    from nbgrader.api import Gradebook

    from grader.gradebook import record, write_csv

    submissions, out, source = Path(submissions).resolve(), Path(out).resolve(), Path(source).resolve()
    log_file = Path(tempfile.mkstemp(prefix="grader-workers-", suffix=".log")[1])  # OUT/.work/workers.log at the end
    pool = start_pool(workers, log_file)   # the workers start while the sandbox is probed and the course prepared
    if isolate:
        try:
            probe(limits)
        except SandboxUnavailable:
            pool.shutdown(cancel_futures=True)
            log_file.unlink(missing_ok=True)
            raise
    ensure_alembic_on_path()
    known = {p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb"))}
    if assignments:
        known &= set(assignments)
    jobs, skipped = discover(submissions, known)
    db_url = db_url or sqlite_url(out / "gradebook.db")
    template = prepare_course(out, source, sorted({job.assignment_id for job in jobs}), db_url, config_file)
    seed = secrets.randbits(63) if seed is None else seed
    from grader.runner import SandboxRunner

    runner = SandboxRunner(out, template, config_file, limits, isolate, seed)
    results = grade_jobs(runner, jobs, workers, log_file, progress, pool)
    shutil.move(str(log_file), str(out / ".work" / "workers.log"))
    with Gradebook(db_url) as gb:
        for result in results:
            record(gb, result)
    results += skipped
    write_csv(out / "grades.csv", results)
    return results


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
    g.add_argument("--db-url", default=None, help="SQLAlchemy URL of the gradebook (default: OUT/gradebook.db)")
    g.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="instructor notebooks (default: solutions/)")
    g.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="nbgrader_config.py with the course settings")
    g.add_argument("--timeout", type=float, default=Limits.cell_seconds,
                   help=f"wall-clock seconds per cell and per graded item (default {Limits.cell_seconds:g})")
    g.add_argument("--submission-timeout", type=float, default=Limits.submission_seconds,
                   help=f"wall-clock seconds per notebook, restarts included (default {Limits.submission_seconds:g})")
    g.add_argument("--memory", type=float, default=Limits.memory / 2**30,
                   help=f"GiB of memory per notebook (default {Limits.memory / 2**30:g})")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the hidden cases (default: a new secret one per run; give one only to reproduce a run)")
    g.add_argument("--no-sandbox", action="store_true",
                   help="run student code WITHOUT isolation (only for code you trust; recorded in grades.csv)")
    g.add_argument("--assignment", action="append", help="grade only this assignment (repeatable)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    from grader import export, release, similarity   # after grading: each module adds its command and its run(args)
    for module in (export, release, similarity):
        module.add_command(commands)
    args = parser.parse_args(argv)
    if args.command != "grade":
        return args.run(args)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1; got {args.workers}")
    if not args.submissions.is_dir():
        parser.error(f"SUBMISSIONS must be a directory; got {args.submissions}")
    for name in ("timeout", "submission_timeout", "memory"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive; got {getattr(args, name)}")
    limits = Limits(memory=int(args.memory * 2**30), cell_seconds=args.timeout,
                    submission_seconds=args.submission_timeout)
    start = time.perf_counter()
    try:
        results = grade(args.submissions, args.out, args.workers, args.db_url, args.source, args.config, limits,
                        not args.no_sandbox, args.seed, args.assignment, not args.no_progress)
    except SandboxUnavailable as err:
        print(f"python -m grader: cannot start the sandbox: {err}\n{HOW_TO_FIX}", file=sys.stderr)
        return 2
    failed = sum(r.status != "graded" for r in results)
    print(f"graded {len(results)} submissions ({failed} not graded normally) in {time.perf_counter() - start:.1f} s; "
          f"grades: {args.out / 'grades.csv'}, feedback: {args.out / 'feedback'}")
    return 0
