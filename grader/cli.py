"""`python -m grader grade SUBMISSIONS --out OUT [--workers N] [--db-url URL] ...`"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from grader.course import DEFAULT_CONFIG, DEFAULT_SOURCE, ensure_alembic_on_path, prepare_course, sqlite_url
from grader.runner import Job, NbgraderRunner, Result, Runner

MAX_ATTEMPTS = 2   # a submission whose worker process died is tried once more, then recorded as failed


def discover(submissions: Path, known: set[str]) -> tuple[list[Job], list[Result]]:
    """Jobs for SUBMISSIONS/<student_id>/<assignment_id>/, and "skipped" results for unknown assignments."""
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


def grade_jobs(runner: Runner, jobs: list[Job], workers: int, log_file: Path, progress: bool = True) -> list[Result]:
    """Run `runner.run` on every job in `workers` separate processes, with a progress bar.

    Results come back to this process as they finish. A job whose worker process died (the pool breaks)
    is tried again in a fresh pool, and after MAX_ATTEMPTS recorded as failed.
    """
    results: list[Result] = []
    attempts = {job: 0 for job in jobs}
    pending = list(jobs)
    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with tqdm(total=len(jobs), unit="submission", desc="grading", disable=not progress, file=sys.stderr) as bar:
        while pending:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                     initializer=_init_worker, initargs=(str(log_file), threads)) as pool:
                futures = {pool.submit(runner.run, job): job for job in pending}
                pending = []
                for future in as_completed(futures):
                    job = futures[future]
                    try:
                        result = future.result()
                    except Exception as err:   # the worker process died (BrokenProcessPool) or failed to pickle
                        attempts[job] += 1
                        if attempts[job] < MAX_ATTEMPTS:
                            pending.append(job)
                            continue
                        result = runner.failure(job, f"the grading process died ({type(err).__name__}: {err})")
                    results.append(result)
                    bar.set_postfix_str(f"{result.student_id}/{result.assignment_id}", refresh=False)
                    bar.update()
    return results


def grade(submissions: Path, out: Path, workers: int = 1, db_url: str | None = None, source: Path = DEFAULT_SOURCE,
          config_file: Path | None = DEFAULT_CONFIG, timeout: int | None = None,
          assignments: list[str] | None = None, progress: bool = True) -> list[Result]:
    """Grade every submission under `submissions` into the course directory `out`; see `main`."""
    from nbgrader.api import Gradebook

    from grader.gradebook import record, write_csv

    ensure_alembic_on_path()
    submissions, out, source = Path(submissions).resolve(), Path(out).resolve(), Path(source).resolve()
    known = {p.name for p in source.iterdir() if p.is_dir() and any(p.glob("*.ipynb"))}
    if assignments:
        known &= set(assignments)
    jobs, skipped = discover(submissions, known)
    db_url = db_url or sqlite_url(out / "gradebook.db")
    template = prepare_course(out, source, sorted({job.assignment_id for job in jobs}), db_url, config_file)
    runner = NbgraderRunner(out, template, config_file, timeout)
    results = grade_jobs(runner, jobs, workers, out / ".work" / "workers.log", progress)
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
        "grade", help="autograde a class with nbgrader",
        description="Autograde SUBMISSIONS/<student_id>/<assignment_id>/<assignment_id>.ipynb into OUT: "
                    "OUT/grades.csv, OUT/feedback/<student_id>/<assignment_id>/*.html, the gradebook.")
    g.add_argument("submissions", type=Path, help="directory in nbgrader's submitted layout")
    g.add_argument("--out", type=Path, required=True, help="output course directory (created if needed)")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel grading processes")
    g.add_argument("--db-url", default=None, help="SQLAlchemy URL of the gradebook (default: OUT/gradebook.db)")
    g.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="instructor notebooks (default: solutions/)")
    g.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="nbgrader_config.py with the course settings")
    g.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: from the config)")
    g.add_argument("--assignment", action="append", help="grade only this assignment (repeatable)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be at least 1; got {args.workers}")
    if not args.submissions.is_dir():
        parser.error(f"SUBMISSIONS must be a directory; got {args.submissions}")
    start = time.perf_counter()
    results = grade(args.submissions, args.out, args.workers, args.db_url, args.source, args.config,
                    args.timeout, args.assignment, not args.no_progress)
    failed = sum(r.status != "graded" for r in results)
    print(f"graded {len(results)} submissions ({failed} not graded normally) in {time.perf_counter() - start:.1f} s; "
          f"grades: {args.out / 'grades.csv'}, feedback: {args.out / 'feedback'}")
    return 0
