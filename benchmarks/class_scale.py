"""A whole class graded the way an instructor would: N students x every assignment, sandboxed, into SQLite,
into PostgreSQL, and into PostgreSQL by 2 shards at once.

The class (default 200 students; every student submits every assignment) mixes, per notebook, by a fixed
rotation over students and assignments:
  6 in 10  the instructor's solution;
  2 in 10  a catalogued mistake (grader.checks ITEMS[...].mistakes) in one item's solution cell, written the
           way a student would (renamed to the item, with the check module's helpers it calls as the
           student's own functions);
  1 in 10  a valid alternative: the solution with every local variable renamed (the checks must not care);
  1 in 10  broken: alternately the blank released exercise, a file that is not JSON, or the solution with
           one solution cell deleted.
Each configuration grades the same class into a fresh OUT with `python -m grader grade` (subprocess, the
bubblewrap sandbox, WORKERS worker processes in all: the 2 shards get WORKERS / 2 each), and prints the
wall time, notebooks per minute and the peak memory: the summed RSS of the whole process tree (sampled
every 0.2 s) and the largest single process (getrusage of the waited-for children). The PostgreSQL server
is started here (initdb + pg_ctl in a temporary folder, Unix socket only, as the `postgres` user when run
as root) unless --db-url names one (then each configuration gets a fresh database on it: the URL must
allow CREATE DATABASE).

    python benchmarks/class_scale.py [--students 200] [--workers 2] [--only sqlite,postgres,shards] [--keep DIR]
"""

from __future__ import annotations

import argparse
import ast
import csv
import functools
import glob
import inspect
import os
import pwd
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import psutil

import grader.checks as gc

ROOT = Path(__file__).resolve().parents[1]
SEED = 7


# ------------------------------------------------------------------------------------------------
# The class
# ------------------------------------------------------------------------------------------------

def _read(kind: str, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / kind / assignment / f"{assignment}.ipynb", as_version=4)


def _solution_cell(nb: nbformat.NotebookNode, name: str) -> nbformat.NotebookNode:
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == name
                and c.metadata["nbgrader"].get("solution"))


def _with_helpers(obj, module, seen: set[str]) -> list[str]:
    """The source of `obj` after the sources of the check module's own functions and classes it uses."""
    source = textwrap.dedent(inspect.getsource(obj))
    parts: list[str] = []
    for name in dict.fromkeys(re.findall(r"\b[A-Za-z_]\w*\b", source)):
        helper = vars(module).get(name)
        if name not in seen and (inspect.isfunction(helper) or inspect.isclass(helper)) \
                and getattr(helper, "__module__", None) == module.__name__:
            seen.add(name)
            parts += _with_helpers(helper, module, seen)
    return parts + [source]


def mistake_source(item_name: str, impl) -> str:
    """A catalogued mistake as a student would write it in the item's solution cell."""
    module = sys.modules[gc.MODULES[gc.ITEMS[item_name].assignment]]
    header = "import math\nimport torch\nfrom torch import nn\nimport torch.nn.functional as F\n\n"
    if isinstance(impl, functools.partial):
        seen, given = {impl.func.__name__}, []
        for value in impl.keywords.values():   # functions passed to the partial, as the student's own
            if inspect.isfunction(value) and value.__name__ not in seen:
                seen.add(value.__name__)
                given += _with_helpers(value, module, seen)
        inner = "\n\n".join(given + _with_helpers(impl.func, module, seen))
        inner = re.sub(rf"\b{re.escape(impl.func.__name__)}\b", "_mistake", inner)
        keywords = ", ".join(f"{k}={getattr(v, '__name__', None) or repr(v)}" for k, v in impl.keywords.items())
        return f"{header}{inner}\n\nimport functools\n{item_name} = functools.partial(_mistake, {keywords})\n"
    body = "\n\n".join(_with_helpers(impl, module, {impl.__name__}))
    return header + re.sub(rf"\b{re.escape(impl.__name__)}\b", item_name, body)


class _RenameLocals(ast.NodeTransformer):
    """Renames the variables a function assigns (not its parameters, not attributes): `x` -> `my_x`."""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        params = {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        stored = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        renames = {name: f"my_{name}" for name in stored - params}
        for n in ast.walk(node):
            if isinstance(n, ast.Name) and n.id in renames:
                n.id = renames[n.id]
        return node


def alternative(nb: nbformat.NotebookNode, assignment: str) -> nbformat.NotebookNode:
    for name in gc.ASSIGNMENTS[assignment]:
        cell = _solution_cell(nb, name)
        cell.source = ast.unparse(_RenameLocals().visit(ast.parse(cell.source)))
    return nb


def submission(k: int, a: int, assignment: str):
    """The notebook (or raw text) student k submits for the a-th assignment."""
    kind = (3 * k + a) % 10
    if kind < 6:
        return _read("solutions", assignment)
    if kind < 8:
        mistakes = [(name, m) for name in gc.ASSIGNMENTS[assignment] for m in gc.ITEMS[name].mistakes]
        name, mistake = mistakes[(k + a) % len(mistakes)]
        nb = _read("solutions", assignment)
        _solution_cell(nb, name).source = mistake_source(name, mistake.impl)
        return nb
    if kind == 8:
        return alternative(_read("solutions", assignment), assignment)
    broken = (k + a) % 3
    if broken == 0:
        return _read("exercises", assignment)
    if broken == 1:
        return '{"cells": [{"cell_type": "code", "source": "oops'
    nb = _read("solutions", assignment)
    nb.cells.remove(_solution_cell(nb, gc.ASSIGNMENTS[assignment][-1]))
    return nb


def make_class(students: int, dest: Path) -> int:
    assignments = sorted(gc.ASSIGNMENTS)
    for k in range(students):
        for a, assignment in enumerate(assignments):
            folder = dest / f"student{k:03d}" / assignment
            folder.mkdir(parents=True)
            nb = submission(k, a, assignment)
            path = folder / f"{assignment}.ipynb"
            path.write_text(nb) if isinstance(nb, str) else nbformat.write(nb, path)
    return students * len(assignments)


# ------------------------------------------------------------------------------------------------
# PostgreSQL
# ------------------------------------------------------------------------------------------------

class Postgres:
    """A throw-away server: initdb + pg_ctl in a temporary folder, on a Unix socket only."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
        initdb = found[-1] if found else shutil.which("initdb")
        if not initdb:
            raise SystemExit("PostgreSQL is not installed: `make postgres` (apt-get install postgresql), "
                             "or give --db-url, or --only sqlite")
        self.bindir = Path(initdb).resolve().parent
        self.base = Path(tempfile.mkdtemp(prefix="class-scale-pg-"))
        self.data, self.socket = self.base / "data", self.base / "socket"
        self.socket.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:   # initdb refuses root
            pw = pwd.getpwnam("postgres")
            for path in (self.base, self.socket):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self.as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
        self._run("initdb", "-D", str(self.data), "--auth=trust", "--username=postgres", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "start", "-o",
                  f"-c listen_addresses='' -c unix_socket_directories='{self.socket}'")
        self.url = f"postgresql://postgres@/postgres?host={self.socket}"

    def _run(self, tool: str, *argv: str) -> None:
        subprocess.run([*self.as_user, str(self.bindir / tool), *argv], check=True, capture_output=True,
                       cwd=self.base)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


def new_database(server_url: str, name: str) -> str:
    """CREATE DATABASE name on the server of `server_url`; the new database's URL."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            c.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------

def run_measured(commands: list[list[str]]) -> tuple[float, int, list[str]]:
    """Run the commands at once; (wall seconds, peak summed RSS of all their process trees, outputs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = [tempfile.TemporaryFile(mode="w+") for _ in commands]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, text=True)
             for cmd, log in zip(commands, logs)]
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for p in procs:
                try:
                    tree = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for q in tree:
                    try:
                        total += q.memory_info().rss
                    except psutil.NoSuchProcess:
                        pass
            peak[0] = max(peak[0], total)
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
    for code, cmd, output in zip(codes, commands, outputs):
        if code != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({code}):\n{output[-3000:]}")
    return seconds, peak[0], outputs


def _grades(path: Path) -> list[tuple[str, ...]]:
    """grades.csv's rows less the timings."""
    with open(path, newline="") as f:
        return sorted(tuple(v for k, v in row.items() if k != "seconds") for row in csv.DictReader(f))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=200, help="students in the class (each submits every assignment)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="grading processes in all")
    parser.add_argument("--only", default="sqlite,postgres,shards", help="configurations to run, comma-separated")
    parser.add_argument("--db-url", default=None, help="a PostgreSQL server to use instead of starting one")
    parser.add_argument("--keep", type=Path, default=None, help="keep the class and the graded OUTs here")
    args = parser.parse_args()
    if args.students < 1 or args.workers < 1:
        parser.error(f"--students and --workers must be at least 1; got {args.students} and {args.workers}")
    only = args.only.split(",")
    unknown = set(only) - {"sqlite", "postgres", "shards"}
    if unknown:
        parser.error(f"--only takes sqlite, postgres, shards; got {sorted(unknown)}")

    base = args.keep or Path(tempfile.mkdtemp(prefix="class-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    submissions = base / "submitted"
    shutil.rmtree(submissions, ignore_errors=True)
    notebooks = make_class(args.students, submissions)
    print(f"class: {args.students} students x {len(gc.ASSIGNMENTS)} assignments = {notebooks} notebooks; "
          f"{args.workers} grading processes; {os.cpu_count()} CPU cores", flush=True)

    server = Postgres() if ({"postgres", "shards"} & set(only)) and args.db_url is None else None
    server_url = args.db_url or (server.url if server else None)

    def command(out: Path, workers: int, *extra: str) -> list[str]:
        return [sys.executable, "-m", "grader", "grade", str(submissions), "--out", str(out), "--workers",
                str(workers), "--seed", str(SEED), "--no-progress", *extra]

    rows = []
    try:
        for name in only:
            out = base / name
            shutil.rmtree(out, ignore_errors=True)
            if name == "sqlite":
                cmds = [command(out, args.workers)]
            elif name == "postgres":
                cmds = [command(out, args.workers, "--db-url", new_database(server_url, "class_scale_single"))]
            else:
                url = new_database(server_url, "class_scale_shards")
                cmds = [command(out, max(1, args.workers // 2), "--db-url", url, "--shard", f"{k}/2") for k in (1, 2)]
            seconds, peak, outputs = run_measured(cmds)
            biggest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
            summary = [line for o in outputs for line in o.splitlines() if line.startswith("graded ")]
            rows.append((name, seconds, notebooks / seconds * 60, peak, biggest))
            print(f"{name:>9}: {seconds:7.1f} s  {notebooks / seconds * 60:6.1f} notebooks/min  "
                  f"peak RSS {peak / 2**30:5.2f} GiB (tree)  {biggest / 2**20:6.0f} MiB (largest process)  | "
                  + " | ".join(summary), flush=True)
        grades = {name: _grades(base / name / "grades.csv") for name in only}
        same = all(g == grades[only[0]] for g in grades.values())
        print(f"same grades in every configuration (seed {SEED}): {'yes' if same else 'NO'}")
    finally:
        if server is not None:
            server.stop()
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    if rows:
        per_notebook = min(r[1] for r in rows) / notebooks
        print(f"at this rate a class of 300 students x {len(gc.ASSIGNMENTS)} assignments takes about "
              f"{per_notebook * 300 * len(gc.ASSIGNMENTS) / 60:.0f} minutes on this machine")


if __name__ == "__main__":
    main()
