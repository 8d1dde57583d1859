"""`python -m grader watch` (grader/watch.py) end to end through a real nbgrader exchange, and the hand-back
through the exchange that it uses (`python -m grader release OUT --exchange`, grader/release.py).

The instructor generates and releases 03_attention with nbgrader, as in tests/test_exchange.py, and starts the
watch in the background. Two students submit with nbgrader's own submit and fetch their feedback with its
fetch_feedback (what the Assignments panel's *Fetch Feedback* runs). Their ids are two logins every Debian
system has, `nobody` and `daemon`, because the watch finds a student's uid by login (pwd), as collect does:
nbgrader runs as this user (root, `--student=ID` names the submission) and each inbound folder is then given to
its student's uid with os.lchown, the owner their own submit would leave (tests/test_collect.py does the same).
The exchange sits in a folder everyone may enter, as /usr/local/share/nbgrader/exchange, so that `nobody` itself
can be shown to read its page by name and not to list the others'.

One run (the module fixture) goes through: both submit (nobody right, daemon with the softmax over the wrong
axis) and fetch their scores; daemon forges a submission in nobody's name and resubmits right (regraded, the
new feedback fetched, the forgery graded for no one); nobody submits a broken notebook (recorded as failed,
the watch goes on); nobody resubmits and the watch gets SIGTERM while grading it (it finishes that one, then stops); it
is started again (nothing regraded), a manual grade is set (nobody's page is made again and handed back, nothing
is graded) and it is stopped with a terminal's Ctrl-C. Changing owners
needs root, so it is skipped for other users. The round trip (submit returns -> fetch_feedback finds the page)
is printed (`pytest -s`).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest

from grader.feedback import html_text
from test_collect import _own, _plant, _stamp
from test_exchange import ASSIGNMENT, COURSE, ROOT, _clean_env, _fill_in, _nbgrader, _points, _solutions

STUDENTS = ("nobody", "daemon")
NOTEBOOK = f"{ASSIGNMENT}.ipynb"
ROUND_TRIP = 120   # seconds the test waits for a page (the goal is under 60 on the 2-core machine)


def _uid(login: str) -> int | None:
    try:
        return pwd.getpwnam(login).pw_uid
    except KeyError:
        return None


def _through_the_exchange(test):
    for mark in (pytest.mark.slow, pytest.mark.xdist_group("exchange"),
                 pytest.mark.skipif(os.geteuid() != 0, reason="needs root: students' folders get their own uids"),
                 pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (`make sandbox`)"),
                 pytest.mark.skipif(any(_uid(s) is None for s in STUDENTS), reason="needs the logins nobody and daemon")):
        test = mark(test)
    return test


class Watcher:
    """`python -m grader watch` in the background, its output in a file."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        self.base, self.env, self.log = base, env, base / "watch.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "grader", "watch", "--out", str(self.base / "OUT"),
                 "--submissions", str(self.base / "submitted"), "--exchange", str(self.base / "exchange"),
                 "--course", COURSE, "--assignment", ASSIGNMENT, "--interval", "1"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        """What this start of the watch has printed so far."""
        return self.log.read_bytes()[self.offset:].decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = ROUND_TRIP, count: int = 1) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = list(re.finditer(pattern, self.text(), re.M))
            if len(found) >= count:
                return found[count - 1]
            assert self.proc.poll() is None, f"the watch stopped:\n{self.text()[-4000:]}"
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} after {timeout} s:\n{self.text()[-4000:]}")


class Student:
    """One student's HOME (where nbgrader's submit keeps its copy and secret) and their working folder."""

    def __init__(self, base: Path, login: str) -> None:
        self.login, self.base = login, base
        self.env = _clean_env(base / login / "home")
        self.env.update(JUPYTER_CONFIG_PATH=str(ROOT / "grader" / "lab"), NBGRADER_EXCHANGE=str(base / "exchange"))
        self.work = base / login / "work"
        self.work.mkdir(parents=True)
        _nbgrader(["fetch_assignment", ASSIGNMENT], self.work, self.env)
        self.notebook = self.work / COURSE / ASSIGNMENT / NOTEBOOK

    def submit(self, bodies: dict[str, str] | None = None, raw: bytes | None = None) -> float:
        """Write the notebook (the stubs filled in with `bodies`, or `raw` bytes), submit it; when submit returned."""
        if raw is not None:
            self.notebook.write_bytes(raw)
        else:
            shutil.copyfile(self.base / "released.ipynb", self.notebook)
            _fill_in(self.notebook, bodies)
        inbound = self.base / "exchange" / COURSE / "inbound"
        before = set(inbound.iterdir())
        _nbgrader(["submit", ASSIGNMENT, f"--student={self.login}"], self.work, self.env)
        (new,) = set(inbound.iterdir()) - before
        _own(new, _uid(self.login))
        return time.monotonic()

    def fetch_feedback(self) -> dict[str, str]:
        """nbgrader fetch_feedback, as the Assignments panel runs it: submission time -> the page's text."""
        _nbgrader(["fetch_feedback", ASSIGNMENT, f"--student={self.login}"], self.work, self.env)
        folder = self.work / COURSE / ASSIGNMENT / "feedback"
        return {p.parent.name: html_text(p.read_text()) for p in folder.glob(f"*/{ASSIGNMENT}.html")} \
            if folder.is_dir() else {}


def _score(text: str) -> tuple[float, float]:
    m = re.search(rf"{ASSIGNMENT} \(Score: ([\d.]+) / ([\d.]+)\)", text) or re.search(r"Score: ([\d.]+) / ([\d.]+)", text)
    assert m, text[:2000]
    return float(m.group(1)), float(m.group(2))


def _newest(pages: dict[str, str]) -> str:
    return pages[max(pages)]   # nbgrader's timestamps sort as times


@pytest.fixture(scope="module")
def course():
    """Released 03_attention, a watch running, both students fetched; everything under a folder others may enter."""
    base = Path(tempfile.mkdtemp(prefix="grader-watch-"))
    os.chmod(base, 0o755)
    try:
        for folder in ("solutions", "exercises"):
            shutil.copytree(ROOT / folder / ASSIGNMENT, base / "course" / folder / ASSIGNMENT)
        instructor = _clean_env(base / "instructor")
        here = [f"--CourseDirectory.root={base / 'course'}",
                f"--CourseDirectory.db_url=sqlite:///{base / 'course' / 'gradebook.db'}"]
        _nbgrader(["generate_assignment", ASSIGNMENT, "--force", *here], ROOT, instructor)
        _nbgrader(["release_assignment", ASSIGNMENT, *here, f"--Exchange.root={base / 'exchange'}"], ROOT, instructor)
        shutil.copyfile(base / "exchange" / COURSE / "outbound" / ASSIGNMENT / NOTEBOOK, base / "released.ipynb")
        watcher = Watcher(base, instructor)
        watcher.start()
        students = {login: Student(base, login) for login in STUDENTS}
        yield dict(base=base, watch=watcher, students=students, instructor=instructor)
    finally:
        if "watcher" in locals() and watcher.proc.poll() is None:
            watcher.proc.kill()
            watcher.proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@_through_the_exchange
def test_watch_end_to_end(course):
    watch, nobody, daemon, base = course["watch"], course["students"]["nobody"], course["students"]["daemon"], course["base"]
    points = _points()
    total = sum(points.values())
    right = _solutions()
    wrong = dict(right, dot_product_attention=right["dot_product_attention"].replace("dim=-1", "dim=-2"))
    watch.wait_for(r"^up to date: ")

    # 1. Both submit; each fetches their own score within the round trip.
    times = {}
    for student, bodies in ((nobody, right), (daemon, wrong)):
        submitted = student.submit(bodies)
        watch.wait_for(rf"^{student.login}/{ASSIGNMENT}: .*feedback fetchable")
        pages = student.fetch_feedback()
        times[student.login] = time.monotonic() - submitted
        assert len(pages) == 1, pages
        expected = total if student is nobody else total - points["dot_product_attention"]
        assert _score(_newest(pages)) == (expected, total), student.login
    print("\nround trip (submit returned -> fetch_feedback found the page): "
          + ", ".join(f"{s} {t:.1f} s" for s, t in times.items()))
    assert "softmax" in _newest(daemon.fetch_feedback())

    # The exchange's feedback folder: nobody opens its page by name, and cannot list the folder.
    feedback = base / "exchange" / COURSE / "feedback"
    assert stat.S_IMODE(feedback.stat().st_mode) & 0o007 == 0o001
    (page,) = [p for p in feedback.iterdir() if _score(html_text(p.read_text()))[0] == total]
    assert stat.S_IMODE(page.stat().st_mode) == 0o644
    as_nobody = ["setpriv", f"--reuid={_uid('nobody')}", f"--regid={_uid('nobody')}", "--clear-groups"]
    assert subprocess.run([*as_nobody, "cat", str(page)], capture_output=True).returncode == 0
    assert subprocess.run([*as_nobody, "ls", str(feedback)], capture_output=True).returncode != 0

    # 2. daemon forges a newer submission in nobody's name (a broken notebook) and resubmits right: daemon is
    # graded again and fetches the new page beside the old one; the forgery is collected for no one.
    inbound = base / "exchange" / COURSE / "inbound"
    forged = _plant(inbound, "nobody", _stamp(datetime.utcnow()), {NOTEBOOK: b"{}"}, "forged")
    _own(forged, _uid("daemon"))
    daemon.submit(right)
    watch.wait_for(rf"^daemon/{ASSIGNMENT}: .*feedback fetchable", count=2)
    pages = daemon.fetch_feedback()
    assert len(pages) == 2 and _score(_newest(pages)) == (total, total), pages.keys()
    assert _score(pages[min(pages)])[0] == total - points["dot_product_attention"]
    watch.wait_for(rf"^needs review: inbound/nobody\+{ASSIGNMENT}\+.*not by nobody")
    assert len(re.findall(rf"^nobody/{ASSIGNMENT}: ", watch.text(), re.M)) == 1

    # 3. nobody submits a file that is no notebook: recorded as failed, its page says so, the watch goes on.
    nobody.submit(raw=b"{ not json")
    line = watch.wait_for(rf"^nobody/{ASSIGNMENT}: 0 of .*failed: .*feedback fetchable", count=1).group(0)
    assert "not a readable notebook" in line, line
    assert "could not be graded" in _newest(nobody.fetch_feedback())
    assert watch.proc.poll() is None

    # 4. SIGTERM (systemd's and JupyterHub's stop) while a submission is being graded: the watch records it and
    # hands it back, then stops.
    assert len(re.findall(rf"^\w+/{ASSIGNMENT}: ", watch.text(), re.M)) == 4, watch.text()
    stamp = base / "submitted" / "nobody" / ASSIGNMENT / "timestamp.txt"
    old = stamp.read_text()
    nobody.submit(right)
    deadline = time.monotonic() + ROUND_TRIP
    while time.monotonic() < deadline and _read(stamp) in (old, None):   # collected: its grading starts now
        time.sleep(0.1)
    time.sleep(2)   # a grading run takes 9 s or more before its first result
    watch.proc.send_signal(signal.SIGTERM)
    assert watch.proc.wait(timeout=300) == 0
    text = watch.text()
    assert "SIGTERM: stopping once the submission being graded is recorded" in text, text
    lines = re.findall(rf"^nobody/{ASSIGNMENT}: .*", text, re.M)
    assert len(lines) == 3 and re.match(rf"nobody/{ASSIGNMENT}: {total:g} of {total:g} points; .*fetchable", lines[-1]), text
    assert text.rstrip().endswith("stopped")
    assert _score(_newest(nobody.fetch_feedback())) == (total, total)

    # 5. Started again: nothing is graded again, and what it prints says so.
    db = base / "OUT" / "gradebook.db"
    before = db.stat().st_mtime_ns
    watch.start()
    watch.wait_for(r"^up to date: 2 submission\(s\) were in the gradebook already, 0 graded at the start")
    time.sleep(3)   # a few more polls
    assert not re.findall(rf"^\w+/{ASSIGNMENT}: ", watch.text(), re.M), watch.text()
    assert db.stat().st_mtime_ns == before

    # 6. The instructor sets a manual grade (formgrader's) while the watch waits: with nothing new to grade, the
    # page is made again and replaces the one handed back; nobody fetches the lower score.
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{db}") as gb:
        cell = next(g for g in gb.find_submission(ASSIGNMENT, "nobody").notebooks[0].grades if g.max_score > 0)
        cell.manual_score, cut = 0.0, cell.max_score
        gb.db.commit()
    watch.wait_for(rf"^feedback page made again: nobody/{ASSIGNMENT} .*fetchable")
    assert _score(_newest(nobody.fetch_feedback())) == (total - cut, total)
    assert not re.findall(rf"^\w+/{ASSIGNMENT}: ", watch.text(), re.M), "nothing was graded"
    os.killpg(watch.proc.pid, signal.SIGINT)   # Ctrl-C in its terminal, while it waits
    assert watch.proc.wait(timeout=60) == 0 and watch.text().rstrip().endswith("stopped")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:   # collect is replacing the folder
        return None


def test_a_watch_started_again_collects_nothing_it_collected_before(tmp_path):
    """What a restart looks at before copying a student's newest inbound folder: SUBMISSIONS already holds its
    time (so nothing is copied again, and a failed submission, graded again when its folder changes, is not);
    a newer one is collected, once; a folder changed in the last seconds (submit still writing it) waits."""
    from grader.watch import SETTLE, Watch

    subs = tmp_path / "submitted"
    (subs / "ann" / ASSIGNMENT).mkdir(parents=True)
    (subs / "ann" / ASSIGNMENT / "timestamp.txt").write_text("2026-12-01 16:59:00.000000 UTC\n")
    watch = Watch(tmp_path / "OUT", subs, tmp_path / "exchange", COURSE, [ASSIGNMENT])
    settled = time.time_ns() - int(2 * SETTLE * 1e9)
    assert watch._not_now("ann", ASSIGNMENT, f"ann+{ASSIGNMENT}+2026-12-01 16:59:00.000000 UTC+a1", settled)
    newer = f"ann+{ASSIGNMENT}+2026-12-01 17:05:00.000000 UTC+b2"
    assert not watch._not_now("ann", ASSIGNMENT, newer, settled)
    assert watch._not_now("ann", ASSIGNMENT, newer, settled)          # tried once, not copied at every poll
    bob = f"bob+{ASSIGNMENT}+2026-12-01 17:06:00.000000 UTC+c3"
    assert watch._not_now("bob", ASSIGNMENT, bob, time.time_ns())     # still being written: next poll
    assert not watch._not_now("bob", ASSIGNMENT, bob, settled)
    assert not watch._not_now("cy", ASSIGNMENT, f"cy+{ASSIGNMENT}+never+d4", settled)   # no time: collect decides


def test_each_notice_is_printed_once_and_a_flood_of_them_is_cut(tmp_path):
    """Anyone can fill the inbound folder with folders forged in others' names: each is said once, not at every
    poll, and past MAX_NOTICES one line says the rest are not shown."""
    import io

    from grader.watch import MAX_NOTICES, Watch

    watch = Watch(tmp_path / "OUT", tmp_path / "submitted", tmp_path / "exchange", COURSE, [ASSIGNMENT])
    watch.stdout = io.StringIO()
    for k in range(MAX_NOTICES + 100):
        watch.notice(f"needs review: inbound/ann+{ASSIGNMENT}+{k}: made by eve")
        watch.notice(f"needs review: inbound/ann+{ASSIGNMENT}+0: made by eve")
    lines = watch.stdout.getvalue().splitlines()
    assert len(lines) == MAX_NOTICES + 1 and len(set(lines)) == len(lines)
    assert lines[-1].startswith(f"more than {MAX_NOTICES} notices")


def test_a_grading_process_killed_while_it_starts_costs_no_submission_its_grade():
    """A terminal's Ctrl-C reaches the grading processes too; one that is still starting (before it can ignore
    it) dies. The jobs not handed to it yet come back "not started", for a new pool, instead of the pool's
    error stopping the whole grading run (the watch would have stopped without grading them)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from grader.cli import _run_pool
    from grader.records import Job

    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    pool.submit(int).result()
    (worker,) = pool._processes.values()
    worker.kill()
    deadline = time.monotonic() + 30
    while not pool._broken and time.monotonic() < deadline:   # the executor notices its dead worker
        time.sleep(0.05)
    job = Job("ann", ASSIGNMENT, Path("/nonexistent"))
    done = []
    (left,) = _run_pool(None, [job], pool, 1, done.append)
    assert left[0] == job and str(left[1]) == "not started" and done == []
