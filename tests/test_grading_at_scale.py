"""`python -m grader grade` for a large class: a real PostgreSQL gradebook, shards grading at once, runs that
are killed and resumed, resubmissions and late penalties, the progress bar and the closing summary.

One small class (3 students x 2 assignments: solutions, a catalogued mistake, a blank exercise, a broken
file) is graded with one seed into SQLite first (`reference`); every other run is compared with it, grade by
grade and comment by comment. The PostgreSQL server is Debian's (`make postgres`), started by the
`postgres` fixture in a temporary folder, on a Unix socket only, as the `postgres` user when the tests run
as root (initdb refuses root), and stopped at the end.

About 2-3 minutes on a 2-core machine (eight grading runs of at most six notebooks).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q -p no:xdist tests/test_grading_at_scale.py
"""

from __future__ import annotations

import copy
import csv
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import nbformat
import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("grading_at_scale")]

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS, EXERCISES = ROOT / "solutions", ROOT / "exercises"
ATTENTION, MASKING = "03_attention", "05_masking"
SEED = 424242
DUE = datetime(2026, 3, 1, 12, 0, 0)   # naive UTC, as nbgrader stores it


# ------------------------------------------------------------------------------------------------
# The class
# ------------------------------------------------------------------------------------------------

def _read(kind: Path, assignment: str) -> nbformat.NotebookNode:
    return nbformat.read(kind / assignment / f"{assignment}.ipynb", as_version=4)


def _mask_inverted() -> nbformat.NotebookNode:
    """The catalogued mistake "mask_inverted" in scaled_dot_product_attention (partial credit)."""
    nb = _read(SOLUTIONS, ATTENTION)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "scaled_dot_product_attention")
    assert "masked_fill(~mask" in cell.source
    cell.source = cell.source.replace("masked_fill(~mask", "masked_fill(mask")
    return nb


# student -> assignment -> notebook (or raw text for a broken file). ada and bob fall in shard 1/2, cyd in 2/2.
CLASS = {
    "ada": {ATTENTION: lambda: _read(SOLUTIONS, ATTENTION), MASKING: lambda: _read(SOLUTIONS, MASKING)},
    "bob": {ATTENTION: _mask_inverted, MASKING: lambda: _read(EXERCISES, MASKING)},
    "cyd": {ATTENTION: lambda: '{"cells": [ this is not json', MASKING: lambda: _read(SOLUTIONS, MASKING)},
}
SUBMISSIONS = len(CLASS) * 2


def submit(dest: Path, student: str, assignment: str, notebook, timestamp: datetime | None = None) -> None:
    folder = dest / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{assignment}.ipynb"
    tmp = folder / ".tmp.ipynb"
    if isinstance(notebook, str):
        tmp.write_text(notebook)
    else:
        nbformat.write(notebook, tmp)
    os.replace(tmp, path)
    if timestamp is not None:   # what `nbgrader submit` writes
        (folder / "timestamp.txt").write_text(timestamp.strftime("%Y-%m-%d %H:%M:%S.%f UTC"))


def make_class(dest: Path) -> Path:
    for student, work in CLASS.items():
        for assignment, build in work.items():
            submit(dest, student, assignment, build(), DUE - timedelta(hours=1))
    return dest


def grade(submissions: Path, out: Path, *extra: str, workers: int = 2, wait: bool = True):
    cmd = [sys.executable, "-m", "grader", "grade", str(submissions), "--out", str(out), "--workers", str(workers),
           "--seed", str(SEED), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def sqlite(out: Path) -> str:
    return "sqlite:///" + str(out / "gradebook.db")


def snapshot(db_url: str) -> dict:
    """Everything the gradebook says about each submission: every grade and comment, the timestamp, the late
    penalty and the grader's own row (less its timings)."""
    from nbgrader.api import Gradebook, Student, SubmittedAssignment
    from sqlalchemy import select

    from grader.gradebook import RESULTS

    with Gradebook(db_url) as gb:
        state: dict = {}
        for sub in gb.db.query(SubmittedAssignment).all():
            grades = sorted((nb.notebook.name, g.cell.name, g.auto_score, g.manual_score, g.needs_manual_grade,
                             g.max_score) for nb in sub.notebooks for g in nb.grades)
            comments = sorted((nb.notebook.name, c.cell.name, c.auto_comment) for nb in sub.notebooks
                              for c in nb.comments)
            state[(sub.student.id, sub.assignment.name)] = {
                "score": sub.score, "timestamp": sub.timestamp, "penalty": sub.late_submission_penalty,
                "grades": grades, "comments": comments}
        for row in gb.db.execute(select(RESULTS)).mappings():
            state[(row["student_id"], row["assignment"])]["result"] = {
                k: v for k, v in row.items() if k not in ("seconds", "graded_at")}
        state["students"] = sorted(s.id for s in gb.db.query(Student).all())
        return state


def assert_same_gradebook(got: dict, want: dict) -> None:
    """snapshot() states equal, compared submission by submission so that a failure names the one that differs."""
    assert sorted(got, key=str) == sorted(want, key=str)
    for key in want:
        assert got[key] == want[key], key


def row_counts(db_url: str) -> dict[str, int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as c:
            return {t: c.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                    for t in ("student", "submitted_assignment", "submitted_notebook", "grade", "comment",
                              "grader_results")}
    finally:
        engine.dispose()


def csv_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keyed = {(r["student_id"], r["assignment"]): {k: v for k, v in r.items() if k != "seconds"} for r in rows}
    assert len(keyed) == len(rows), f"duplicate rows in {path}"
    return keyed


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scale")


@dataclass
class Reference:
    out: Path
    log: str
    state: dict
    csv: dict


@pytest.fixture(scope="module")
def reference(base) -> Reference:
    """The class graded once, into SQLite, with SEED."""
    submissions, out = make_class(base / "submitted"), base / "sqlite"
    proc = grade(submissions, out)
    return Reference(out, proc.stdout + proc.stderr, snapshot(sqlite(out)), csv_rows(out / "grades.csv"))


# ------------------------------------------------------------------------------------------------
# A PostgreSQL server of the test's own
# ------------------------------------------------------------------------------------------------

def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


class Postgres:
    """initdb + pg_ctl in a temporary folder, listening on a Unix socket in it only (listen_addresses='')."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="grader-pg-"))   # not under pytest's 0700 folder: the server's user reads it
        self.data, self.socket = self.base / "data", self.base / "socket"
        self.socket.mkdir()
        self.as_user: list[str] = []
        if os.geteuid() == 0:                                       # initdb and postgres refuse to run as root
            user = next((u for u in ("postgres", "nobody") if _user_exists(u)), None)
            if user is None:
                pytest.skip("running as root and no 'postgres' or 'nobody' user to run the server as")
            pw = pwd.getpwnam(user)
            for path in (self.base, self.socket):
                os.chown(path, pw.pw_uid, pw.pw_gid)
            self.as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]

    def _run(self, *argv: str) -> None:
        proc = subprocess.run([*self.as_user, *argv], capture_output=True, text=True, cwd=self.base)
        assert proc.returncode == 0, f"{argv[0]} failed:\n{proc.stdout}\n{proc.stderr}"

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "--auth=trust", "--username=postgres",
                  "--encoding=UTF8", "--no-sync")
        options = f"-c listen_addresses='' -c unix_socket_directories='{self.socket}' -c fsync=off -c max_connections=50"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "server.log"),
                  "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                            "stop"], capture_output=True, cwd=self.base)
        shutil.rmtree(self.base, ignore_errors=True)

    def database(self, name: str) -> str:
        """A new, empty database; its SQLAlchemy URL (psycopg over the Unix socket)."""
        import psycopg

        with psycopg.connect(f"host={self.socket} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@/{name}?host={self.socket}"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture(scope="module")
def postgres():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL's initdb is not installed (Debian: `make postgres`, i.e. apt-get install postgresql)")
    server = Postgres(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------
# A real database, and more than one machine
# ------------------------------------------------------------------------------------------------

def test_the_reference_run_grades_the_whole_class_and_summarises_the_failures(reference):
    assert set(reference.csv) == {(s, a) for s in CLASS for a in CLASS[s]}
    status = {key: row["status"] for key, row in reference.csv.items()}
    assert status.pop(("cyd", ATTENTION)) == "failed" and set(status.values()) == {"graded"}
    ada, bob = reference.state[("ada", ATTENTION)], reference.state[("bob", ATTENTION)]
    assert ada["score"] == 12 and 0 < bob["score"] < 12 and reference.state[("bob", MASKING)]["score"] == 0
    # the progress bar: count, time left, rate; the summary: the failed submission and its reason
    assert "6/6 submissions" in reference.log and " left, " in reference.log and "s/submission" in reference.log
    reason = reference.csv[("cyd", ATTENTION)]["reason"]
    assert reason and f"cyd/{ATTENTION}: failed: {reason}" in reference.log
    assert "1 not graded normally" in reference.log


def test_postgresql_gradebook_equals_the_sqlite_one(postgres, reference, base):
    url = postgres.database("single")
    out = base / "postgres"
    grade(base / "submitted", out, "--db-url", url)
    assert_same_gradebook(snapshot(url), reference.state)
    assert csv_rows(out / "grades.csv") == reference.csv
    assert not (out / "gradebook.db").exists(), "the PostgreSQL run wrote a SQLite gradebook"


def test_two_shards_at_once_grade_the_class_into_one_gradebook(postgres, reference, base):
    url = postgres.database("sharded")
    out = base / "sharded"            # one OUT for both, as on a cluster's shared file system
    runs = [grade(base / "submitted", out, "--db-url", url, "--shard", f"{k}/2", "--no-progress", workers=1,
                  wait=False) for k in (1, 2)]
    for proc in runs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert_same_gradebook(snapshot(url), reference.state)
    assert row_counts(url) == row_counts(sqlite(reference.out))
    one, two = csv_rows(out / "grades-1-of-2.csv"), csv_rows(out / "grades-2-of-2.csv")
    assert {s for s, _ in one} == {"ada", "bob"} and {s for s, _ in two} == {"cyd"}
    assert {**one, **two} == reference.csv
    # each shard rewrote grades.csv from the gradebook when it finished: the last one has every row
    assert csv_rows(out / "grades.csv") == reference.csv


def test_concurrent_writers_lose_and_duplicate_no_rows(postgres, reference, base):
    """Eight threads, each with its own connection, record the same new students' results at once (the
    unique-constraint races on the student and the submission): one row each, the last writer's scores."""
    from nbgrader.api import Gradebook

    from grader.course import prepare_course
    from grader.gradebook import record
    from grader.records import CellGrade, Result

    url = postgres.database("races")
    prepare_course(base / "races", SOLUTIONS, [ATTENTION], url, ROOT / "nbgrader_config.py")
    students = [f"s{i:02d}" for i in range(6)]
    barrier, errors = threading.Barrier(8), []

    def writer(k: int) -> None:
        try:
            with Gradebook(url) as gb:
                barrier.wait()
                for student in students:
                    result = Result(student, ATTENTION, "graded", score=3.0, max_score=12.0, seconds=k,
                                    grades=[CellGrade(ATTENTION, "test_dot_product_attention", 3.0, 3.0)])
                    record(gb, result)
        except Exception as err:   # noqa: BLE001  (reported below)
            errors.append(repr(err))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    counts = row_counts(url)
    assert counts["student"] == counts["submitted_assignment"] == counts["grader_results"] == len(students)
    assert counts["grade"] == 3 * len(students)   # one per test cell of 03_attention
    state = snapshot(url)
    for student in students:
        assert state[(student, ATTENTION)]["score"] == 3.0


# ------------------------------------------------------------------------------------------------
# Runs that survive being killed
# ------------------------------------------------------------------------------------------------

def _committed(out: Path) -> int:
    """Results in OUT's gradebook, read without creating the file (the run under test creates it)."""
    path = out / "gradebook.db"
    if not path.exists():
        return 0
    try:
        return row_counts(f"sqlite:///file:{path}?mode=ro&uri=true")["grader_results"]
    except Exception:   # noqa: BLE001  (its table does not exist yet)
        return 0


def _plant_leftovers(out: Path) -> list[Path]:
    """What a kill between the two renames of replace_dir, or inside copy_sources, would leave behind."""
    planted = [out / "feedback" / "ada" / f".{ATTENTION}.old-99999", out / "autograded" / "cyd" / f".{MASKING}.old-1",
               out / "source" / f".{ATTENTION}.new-x1y2" / ATTENTION, out / ".work" / "failed-x1y2"]
    for path in planted:
        path.mkdir(parents=True, exist_ok=True)
        (path / "page.html").write_text("old")
    return planted


def _half_written(out: Path) -> list[str]:
    """Temporary files and folders, and replaced folders not yet removed, outside OUT/.work."""
    return [str(p) for p in out.rglob("*") if ".work" not in p.parts
            and (".tmp" in p.name or ".old-" in p.name or ".new-" in p.name)]


@dataclass
class Resumed:
    out: Path
    submissions: Path
    killed_after: int
    log: str
    state: dict
    csv: dict
    leftovers: list[str]
    half_written: list[str]


@pytest.fixture(scope="module")
def resumed(reference, base) -> Resumed:
    """A run killed with SIGKILL after it committed two submissions, then started again (with what a kill
    between two renames would have left planted first)."""
    submissions = shutil.copytree(base / "submitted", base / "submitted-resume")
    out = base / "resumed"
    proc = grade(submissions, out, workers=1, wait=False)
    deadline = time.monotonic() + 300
    while _committed(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.communicate()[1][-3000:]
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_after = _committed(out)
    _, alive = psutil.wait_procs(children, timeout=30)   # the workers die with the main process
    leftovers = [f"{p.pid} {p.name()}" for p in alive]
    for p in alive:
        p.kill()
    planted = _plant_leftovers(out)
    rerun = grade(submissions, out, workers=1)
    half_written = _half_written(out) + [str(p) for p in planted if p.exists()]
    return Resumed(out, submissions, killed_after, rerun.stdout + rerun.stderr, snapshot(sqlite(out)),
                   csv_rows(out / "grades.csv"), leftovers, half_written)


def test_a_killed_run_resumes_with_the_same_grades(resumed, reference):
    assert 2 <= resumed.killed_after < SUBMISSIONS, resumed.killed_after
    assert not resumed.leftovers, "grading processes outlived the killed run"
    left = SUBMISSIONS - resumed.killed_after
    assert f"resuming: {resumed.killed_after} of {SUBMISSIONS} submissions" in resumed.log, resumed.log[-2000:]
    assert f"graded {left} submissions" in resumed.log and f"{left}/{left} submissions" in resumed.log
    assert_same_gradebook(resumed.state, reference.state)
    assert resumed.csv == reference.csv
    assert row_counts(sqlite(resumed.out)) == row_counts(sqlite(reference.out)), "duplicate or missing rows"
    assert not resumed.half_written, resumed.half_written
    for (student, assignment) in resumed.csv:
        page = resumed.out / "feedback" / student / assignment / f"{assignment}.html"
        assert page.read_text().rstrip().endswith("</html>"), page


@dataclass
class Resubmitted:
    log: str
    state: dict
    csv: dict
    page: str


@pytest.fixture(scope="module")
def resubmitted(resumed) -> Resubmitted:
    """bob resubmits 05_masking, now solved, 30 hours after the due date that is then set in the gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(sqlite(resumed.out)) as gb:
        gb.update_or_create_assignment(MASKING, duedate=DUE)
    submit(resumed.submissions, "bob", MASKING, _read(SOLUTIONS, MASKING), DUE + timedelta(hours=30))
    proc = grade(resumed.submissions, resumed.out, workers=1)
    page = (resumed.out / "feedback" / "bob" / MASKING / f"{MASKING}.html").read_text()
    return Resubmitted(proc.stdout + proc.stderr, snapshot(sqlite(resumed.out)), csv_rows(resumed.out / "grades.csv"),
                       page)


def test_a_resubmission_is_regraded_with_its_late_penalty(resubmitted, reference):
    assert f"resuming: {SUBMISSIONS - 1} of {SUBMISSIONS} submissions" in resubmitted.log
    assert "graded 1 submissions" in resubmitted.log
    bob = resubmitted.state[("bob", MASKING)]
    assert bob["score"] == 11 and bob["timestamp"] == DUE + timedelta(hours=30)
    assert bob["penalty"] == pytest.approx(2.2)   # 10% per started day: 2 days of 11 points
    assert resubmitted.csv[("bob", MASKING)]["late_penalty"] == "2.2"
    assert "Late submission penalty (Score: -2.2)" in resubmitted.page   # nbgrader's feedback template
    # the others, submitted before the due date, keep their grades and no penalty
    for key, state in resubmitted.state.items():
        if key not in (("bob", MASKING), "students"):
            assert state == reference.state[key] and not state["penalty"], key


def test_regrade_grades_everything_again(resubmitted, resumed):
    proc = grade(resumed.submissions, resumed.out, "--regrade", "--assignment", MASKING, workers=2)
    log = proc.stdout + proc.stderr
    assert "resuming" not in log and "graded 3 submissions" in log
    assert_same_gradebook(snapshot(sqlite(resumed.out)), resubmitted.state)
    assert csv_rows(resumed.out / "grades.csv") == resubmitted.csv, "grades.csv lists the whole class"


def test_shard_and_assignment_arguments_are_checked(tmp_path, capsys):
    from grader.cli import in_shard, main

    for bad, says in (("0/2", "1 <= K <= N"), ("3/2", "1 <= K <= N"), ("a/b", "K/N with whole numbers")):
        with pytest.raises(SystemExit):
            main(["grade", str(tmp_path), "--out", str(tmp_path / "o"), "--shard", bad])
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path), "--out", str(tmp_path / "o"), "--assignment", "03_atention"])
    assert "--assignment must name an assignment in" in capsys.readouterr().err
    students = [f"student{i:03d}" for i in range(300)]
    parts = [[s for s in students if in_shard(s, (k, 3))] for k in (1, 2, 3)]
    assert sorted(sum(parts, [])) == students and all(80 < len(p) < 120 for p in parts)
