"""How fast `python -m grader grade` grades a class in its sandbox, next to its peers on the same submissions.

A submission here is one notebook (a student's work on one assignment); every student submits the
solution notebook of every assignment, so every cell runs (a blank exercise would stop early). In one run:

  1. `python -m grader grade` (student code in the bubblewrap sandbox) with 1 worker on N submissions
     (default 20: students round-robin over the assignments, so 2 complete students);
  2. the same with 2 workers;
  3. the same runner without isolation (`--no-sandbox`), 1 worker: what the sandbox itself costs;
  4. with --old-runner REV: `python -m grader grade` as it was at git revision REV (e.g. the runner that
     ran everything in nbgrader's kernel, before the sandbox), 1 worker, from a temporary git worktree;
  5. plain nbgrader on the same submissions in a course directory prepared the same way:
     `nbgrader autograde <assignment>` then `nbgrader generate_feedback <assignment>`, one assignment
     after the other (what an instructor would type; the grader also writes feedback).

It prints one table: wall time, seconds per notebook, notebooks per minute and the ratios, plus the
median time per notebook and per complete submission (all assignments of one student) from run 1.
Goals: sandboxed at least as fast as the old runner, >= 3x plain nbgrader, 2 workers >= 1.7x one.

    python benchmarks/grading_speed.py [--submissions 20] [--old-runner REV] [--source solutions] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from grader.course import DEFAULT_CONFIG, DEFAULT_SOURCE, prepare_course, sqlite_url

PY = sys.executable


def make_class(source: Path, n: int, dest: Path) -> list[tuple[str, str]]:
    """n submissions in nbgrader's submitted layout: student k // A submits assignment k % A (A assignments)."""
    assignments = sorted(p.name for p in source.iterdir() if (p / f"{p.name}.ipynb").is_file())
    made = []
    for k in range(n):
        student, assignment = f"student{k // len(assignments):02d}", assignments[k % len(assignments)]
        (dest / student / assignment).mkdir(parents=True)
        shutil.copy(source / assignment / f"{assignment}.ipynb", dest / student / assignment)
        made.append((student, assignment))
    return made


def run_grader(submissions: Path, out: Path, workers: int, source: Path, extra: tuple[str, ...] = (),
               code: Path | None = None) -> tuple[float, list[dict]]:
    """Grade with `python -m grader grade` (from the checkout `code` when given, e.g. an old revision)."""
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code)
    start = time.perf_counter()
    subprocess.run([PY, "-m", "grader", "grade", str(submissions), "--out", str(out), "--workers", str(workers),
                    "--source", str(source), "--no-progress", *extra], check=True, stdout=subprocess.DEVNULL,
                   env=env, cwd=code or Path.cwd())
    wall = time.perf_counter() - start
    with open(out / "grades.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        if r["status"] != "graded" or r["score"] != r["max_score"]:   # e.g. a kernel that would not start
            print(f"  warning: {r['student_id']}/{r['assignment']} scored {r['score']}/{r['max_score']}: {r['reason']}")
    return wall, rows


def run_plain_nbgrader(submissions: Path, out: Path, source: Path) -> tuple[float, float]:
    """(seconds for autograde, seconds for generate_feedback), assignment after assignment, CLI as typed."""
    assignments = sorted({p.name for p in submissions.glob("*/*") if p.is_dir()})
    prepare_course(out, source, assignments, sqlite_url(out / "gradebook.db"), DEFAULT_CONFIG)
    shutil.copytree(submissions, out / "submitted")
    env = {**os.environ, "PATH": str(Path(PY).parent) + os.pathsep + os.environ.get("PATH", "")}
    times = []
    for step in ("autograde", "generate_feedback"):
        start = time.perf_counter()
        for assignment in assignments:
            subprocess.run([PY, "-m", "nbgrader", step, assignment, "--force", "--log-level=ERROR"],
                           cwd=out, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    graded = len(list((out / "feedback").glob("*/*/*.html")))
    if graded != len(list(submissions.glob("*/*/*.ipynb"))):
        raise SystemExit(f"plain nbgrader wrote {graded} feedback pages")
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=20, help="notebooks to grade (default 20)")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="instructor notebooks")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work here instead of a temp dir")
    parser.add_argument("--old-runner", default=None, metavar="REV",
                        help="also time the grader of this git revision (grading its own solutions/)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="grading-speed-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    made = make_class(args.source.resolve(), args.submissions, work / "submitted")
    n = len(made)
    print(f"{n} submissions ({len({s for s, _ in made})} students, {len({a for _, a in made})} assignments), "
          f"{os.cpu_count()} CPU cores; work in {work}", flush=True)

    results = {}
    for workers in (1, 2):
        print(f"python -m grader grade --workers {workers} ...", flush=True)
        results[workers] = run_grader(work / "submitted", work / f"grader-{workers}", workers, args.source.resolve())
    print("python -m grader grade --no-sandbox --workers 1 ...", flush=True)
    unsandboxed = run_grader(work / "submitted", work / "no-sandbox", 1, args.source.resolve(), ("--no-sandbox",))[0]
    old = None
    if args.old_runner:
        print(f"python -m grader grade at {args.old_runner} --workers 1 ...", flush=True)
        tree = work / "old-runner"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.old_runner], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            made_old = work / "submitted-old"
            make_class(tree / "solutions", args.submissions, made_old)
            old = run_grader(made_old, work / "old", 1, tree / "solutions", code=tree)[0]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=False)
    print("plain sequential nbgrader autograde + generate_feedback ...", flush=True)
    plain_autograde, plain_feedback = run_plain_nbgrader(work / "submitted", work / "plain", args.source.resolve())
    plain = plain_autograde + plain_feedback

    per_notebook = [float(r["seconds"]) for r in results[1][1]]
    per_student: dict[str, float] = defaultdict(float)
    for r in results[1][1]:
        per_student[r["student_id"]] += float(r["seconds"])
    complete = [t for s, t in per_student.items()
                if sum(1 for r in results[1][1] if r["student_id"] == s) == len({a for _, a in made})]

    rows = [
        ("plain nbgrader autograde only", 1, plain_autograde),
        ("plain nbgrader autograde + feedback", 1, plain),
        *([(f"old runner ({args.old_runner})", 1, old)] if old is not None else []),
        ("python -m grader grade --no-sandbox", 1, unsandboxed),
        ("python -m grader grade (sandbox)", 1, results[1][0]),
        ("python -m grader grade (sandbox)", 2, results[2][0]),
    ]
    print(f"\n{'method':<40}{'workers':>8}{'wall s':>9}{'s/notebook':>12}{'notebooks/min':>15}"
          f"{'vs plain+fb':>13}{'vs 1 worker':>13}")
    for name, workers, wall in rows:
        vs_plain = plain / wall
        vs_one = f"{results[1][0] / wall:.2f}x" if name.startswith("python") else "-"
        print(f"{name:<40}{workers:>8}{wall:>9.1f}{wall / n:>12.2f}{60 * n / wall:>15.1f}"
              f"{vs_plain:>12.2f}x{vs_one:>13}")
    print(f"\nmedian time to grade one notebook (1 worker, inside the worker): {statistics.median(per_notebook):.2f} s "
          f"(max {max(per_notebook):.2f} s; goal <= 10 s)")
    if complete:
        print(f"median time to grade one complete submission ({len({a for _, a in made})} assignments, 1 worker): "
              f"{statistics.median(complete):.1f} s over {len(complete)} students")
    print(f"2 workers vs 1: {results[1][0] / results[2][0]:.2f}x (goal >= 1.7x)")
    if args.keep is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
