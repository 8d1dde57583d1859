"""`python -m grader collect` (grader/collect.py) on a real nbgrader exchange, attacked the way a student can.

The instructor generates and releases 03_attention into a temporary exchange with nbgrader, as in
tests/test_exchange.py; alice and bob fetch, fill in and submit it with nbgrader (bob twice: first wrong, then
right). Other students put folders into the inbound folder by hand, as anyone can (it is writable by all):
a folder named after alice, links and a FIFO in their own folders, a folder that is a link, impossible times.

Owners. A real exchange has one OS user per student, and `nbgrader submit` run by a student leaves a folder
owned by them. Here nbgrader runs as this user (root in CI, as the instructor; `--student=ID` names the
submission), and each folder is then handed to its student's uid with os.lchown, which gives the folder on
disk exactly the owner a student's own submit would have. The uids (UIDS) have no entry in /etc/passwd, so
the test changes nothing on the machine: collect() is given the student id -> uid lookup (its `uid_of`), and
the command line's own lookup (pwd) is tested with the users every Debian system has, root and nobody.
Changing owners needs root, so those tests are skipped for other users.
"""

from __future__ import annotations

import csv
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from grader.cli import discover, main
from grader.collect import collect
from test_exchange import ASSIGNMENT, COURSE, ROOT, _clean_env, _fill_in, _nbgrader, _solutions

UIDS = {name: 61000 + k for k, name in enumerate(
    ("alice", "bob", "mallory", "eve", "frank", "grace", "heidi", "carol", "dave", "ivan", "judy"), start=1)}
NOTEBOOK = f"{ASSIGNMENT}.ipynb"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: students' folders get their own uids (os.lchown)")


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f UTC")   # nbgrader's timestamp_format, as its submit writes it


def _own(path: Path, uid: int) -> None:
    """Give `path` and everything in it (links themselves, never their targets) to `uid`."""
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in dirs + files:
            os.lchown(os.path.join(folder, name), uid, uid)
    os.lchown(path, uid, uid)


def _plant(inbound: Path, student: str, stamp: str, files: dict[str, bytes] = {}, tag: str = "x") -> Path:
    """A submission folder made by hand in the name of `student` (then given to its maker's uid with _own)."""
    folder = inbound / f"{student}+{ASSIGNMENT}+{stamp}+{tag}"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The exchange after everyone has submitted, and what collect() made of it (run with a time limit)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: students' folders get their own uids (os.lchown)")
    base = tmp_path_factory.mktemp("collect")
    course, exchange = base / "course", base / "exchange"
    for folder in ("solutions", "exercises"):
        shutil.copytree(ROOT / folder / ASSIGNMENT, course / folder / ASSIGNMENT)
    instructor = _clean_env(base / "instructor")
    here = [f"--CourseDirectory.root={course}", f"--CourseDirectory.db_url=sqlite:///{course / 'gradebook.db'}"]
    _nbgrader(["generate_assignment", ASSIGNMENT, "--force", *here], ROOT, instructor)
    _nbgrader(["release_assignment", ASSIGNMENT, *here, f"--Exchange.root={exchange}"], ROOT, instructor)
    inbound = exchange / COURSE / "inbound"

    right = _solutions()
    wrong = dict(right, dot_product_attention=right["dot_product_attention"].replace("dim=-1", "dim=-2"))
    submitted: dict[str, list[Path]] = {}
    for k, (student, bodies) in enumerate((("alice", right), ("bob", wrong), ("bob", right))):
        work = base / student / f"work-{k}"
        work.mkdir(parents=True)
        env = _clean_env(base / student / "home")
        env.update(JUPYTER_CONFIG_PATH=str(ROOT / "grader" / "lab"), NBGRADER_EXCHANGE=str(exchange))
        _nbgrader(["fetch_assignment", ASSIGNMENT], work, env)
        _fill_in(work / COURSE / ASSIGNMENT / NOTEBOOK, bodies)
        before = set(inbound.iterdir())
        _nbgrader(["submit", ASSIGNMENT, f"--student={student}"], work, env)
        (new,) = set(inbound.iterdir()) - before
        _own(new, UIDS[student])
        submitted.setdefault(student, []).append(new)
        time.sleep(0.05)
    (alice_folder,) = submitted["alice"]
    alice_notebook = alice_folder / NOTEBOOK
    solution = course / "solutions" / ASSIGNMENT / NOTEBOOK        # the instructor's, owned by the instructor
    now = datetime.utcnow()
    honest = alice_notebook.read_bytes()

    # mallory: a newer folder in alice's name holding a broken notebook (nbgrader collect takes it: alice gets 0),
    # a folder in the name of no user, and her own folder made of links to alice's notebook.
    forged = _plant(inbound, "alice", _stamp(now + timedelta(seconds=1)), {NOTEBOOK: b"{}"}, "forged")
    nobody = _plant(inbound, "nosuchlogin", _stamp(now), {NOTEBOOK: honest})
    own = _plant(inbound, "mallory", _stamp(now))
    os.link(alice_notebook, own / NOTEBOOK)
    (own / "copy.ipynb").symlink_to(alice_notebook)
    for folder in (forged, nobody):
        _own(folder, UIDS["mallory"])
    _own(own, UIDS["mallory"])
    os.lchown(own / NOTEBOOK, UIDS["alice"], UIDS["alice"])   # a hard link is alice's file: its owner is hers
    # eve: the notebook a link to the instructor's solution, and a linked folder; frank: the folder itself a link.
    eve = _plant(inbound, "eve", _stamp(now), {"notes.txt": b"mine"})
    (eve / NOTEBOOK).symlink_to(solution)
    (eve / "source").symlink_to(solution.parent, target_is_directory=True)
    _own(eve, UIDS["eve"])
    frank = inbound / f"frank+{ASSIGNMENT}+{_stamp(now)}+x"
    frank.symlink_to(solution.parent, target_is_directory=True)
    os.lchown(frank, UIDS["frank"], UIDS["frank"])
    # grace: a hard link to the instructor's solution; heidi: a FIFO where the notebook should be (a reader blocks).
    grace = _plant(inbound, "grace", _stamp(now))
    os.link(solution, grace / NOTEBOOK)
    _own(grace, UIDS["grace"])
    os.lchown(grace / NOTEBOOK, 0, 0)   # the link shares the solution's inode, and so its owner
    heidi = _plant(inbound, "heidi", _stamp(now), {"notes.txt": b"mine"})
    os.mkfifo(heidi / NOTEBOOK)
    _own(heidi, UIDS["heidi"])
    # Times: carol's folder name holds no time, dave's is in 2099, ivan's is a day early (and so is the folder's
    # mtime, set with utime: only the ctime, which no one can set back, tells); judy's own timestamp.txt is
    # garbage, and her folder is honest.
    for student, stamp in (("carol", "never"), ("dave", "2099-01-01 00:00:00.000000 UTC"),
                           ("ivan", _stamp(now - timedelta(days=1))), ("judy", _stamp(now))):
        folder = _plant(inbound, student, stamp, {NOTEBOOK: honest, "timestamp.txt": b"whenever"})
        if student == "ivan":
            day_before = (now - timedelta(days=1) - datetime(1970, 1, 1)).total_seconds()
            os.utime(folder, (day_before, day_before))
        _own(folder, UIDS[student])

    to = base / "submitted"
    box: dict = {}
    worker = threading.Thread(target=lambda: box.update(done=collect(exchange, COURSE, ASSIGNMENT, to, UIDS.get)),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "collect blocked (on the FIFO?)"
    return dict(done=box["done"], to=to, course=course, inbound=inbound, submitted=submitted, honest=honest,
                solution=solution, now=now, instructor=instructor)


@as_root
def test_the_attacks_fool_nbgrader_collect(world, tmp_path):
    """What grader collect is for: on this exchange nbgrader's own collect stops at one folder name it cannot
    parse, and without that folder (and the FIFO, which its copy would block on) it collects the forgery as
    alice's and the instructor's solution as eve's and grace's."""
    here = [f"--CourseDirectory.root={tmp_path / 'course'}",
            f"--CourseDirectory.db_url=sqlite:///{tmp_path / 'gradebook.db'}"]
    env = world["instructor"]
    exchange = world["inbound"].parents[1]
    proc = subprocess.run([sys.executable, "-m", "nbgrader", "collect", ASSIGNMENT, *here, f"--Exchange.root={exchange}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "course" / "submitted").exists()
    copy = tmp_path / "exchange"
    shutil.copytree(exchange, copy, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n.startswith(("carol+", "heidi+"))])
    _nbgrader(["collect", ASSIGNMENT, *here, f"--Exchange.root={copy}"], ROOT, env)
    got = tmp_path / "course" / "submitted"
    assert (got / "alice" / ASSIGNMENT / NOTEBOOK).read_bytes() == b"{}"
    for student in ("eve", "grace"):
        assert (got / student / ASSIGNMENT / NOTEBOOK).read_bytes() == world["solution"].read_bytes()


def _review(world, start: str) -> list[str]:
    return [line for line in world["done"].review if line.startswith(start)]


@as_root
def test_collected_are_the_students_own_folders_and_no_link_or_special_file(world):
    done, to = world["done"], world["to"]
    assert set(done.collected) == set(UIDS) - {"frank"}, done.collected
    for folder, dirs, files in os.walk(to):
        for name in dirs + files:
            mode = os.lstat(os.path.join(folder, name)).st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), os.path.join(folder, name)
    solution = world["solution"].read_bytes()
    for path in to.rglob("*"):
        assert not path.is_file() or path.read_bytes() != solution, path


@as_root
def test_a_folder_in_another_students_name_is_collected_for_no_one(world):
    to = world["to"]
    assert (to / "alice" / ASSIGNMENT / NOTEBOOK).read_bytes() == world["honest"]   # hers, not the forgery
    (line,) = _review(world, f"inbound/alice+{ASSIGNMENT}+")
    assert line.endswith(f"made by uid {UIDS['mallory']}, not by alice: not collected as alice's"), line
    (line,) = _review(world, "inbound/nosuchlogin+")
    assert "is no user's login here: not collected" in line
    assert not (to / "nosuchlogin").exists()


@as_root
def test_the_forger_gets_nothing_of_the_victims(world):
    mallory = world["to"] / "mallory" / ASSIGNMENT
    assert sorted(p.name for p in mallory.iterdir()) == ["timestamp.txt"]
    lines = _review(world, "mallory: left out ")
    assert any("copy.ipynb: a symbolic link" in line for line in lines), lines
    assert any(f"{NOTEBOOK}: owned by uid {UIDS['alice']}, not by mallory (a hard link" in line
               for line in lines), lines


@as_root
@pytest.mark.parametrize("student,entry,why", [
    ("eve", NOTEBOOK, "a symbolic link"), ("eve", "source", "a symbolic link"),
    ("grace", NOTEBOOK, "owned by root, not by grace (a hard link to their file)"), ("heidi", NOTEBOOK, "a FIFO")])
def test_links_hard_links_and_fifos_are_left_out_and_listed(world, student, entry, why):
    assert f"{student}: left out {entry}: {why}" in world["done"].review
    folder = world["to"] / student / ASSIGNMENT
    assert not os.path.lexists(folder / entry)
    if student != "grace":
        assert (folder / "notes.txt").read_bytes() == b"mine"


@as_root
def test_a_submission_folder_that_is_a_link_is_not_collected(world):
    (line,) = _review(world, "inbound/frank+")
    assert line.endswith("a symbolic link, not a submission: not collected")
    assert not (world["to"] / "frank").exists()


@as_root
def test_the_newest_of_two_submissions_wins(world):
    first, second = world["submitted"]["bob"]
    collected = (world["to"] / "bob" / ASSIGNMENT / NOTEBOOK).read_bytes()
    assert collected == (second / NOTEBOOK).read_bytes() != (first / NOTEBOOK).read_bytes()


@as_root
def test_the_time_is_the_exchanges_record_never_the_students_file(world):
    done, to = world["done"], world["to"]
    for student in ("alice", "judy"):
        stamp = (to / student / ASSIGNMENT / "timestamp.txt").read_text().strip()
        assert done.collected[student] is not None and stamp == _stamp(done.collected[student])
    assert abs(done.collected["judy"] - world["now"]) < timedelta(seconds=1)   # the folder's name; not "whenever"
    (alice,) = world["submitted"]["alice"]
    assert _stamp(done.collected["alice"]) == alice.name.rsplit("+", 3)[2]


@as_root
@pytest.mark.parametrize("student,why", [
    ("carol", "the time in its folder's name, 'never', is not a time"),
    ("dave", "its folder's name says it was submitted at 2099-01-01 00:00:00.000000 UTC, but its folder was last "
             "modified at"),
    ("ivan", "but it was last changed at")])
def test_an_unreadable_or_inconsistent_time_needs_review(world, student, why):
    assert world["done"].collected[student] is None
    (line,) = _review(world, f"{student}: the time needs review: ")
    assert why in line, line
    stamp = (world["to"] / student / ASSIGNMENT / "timestamp.txt").read_text()
    assert stamp.startswith("needs review: ") and why in stamp


@as_root
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap for python -m grader (`make sandbox`)")
def test_grading_what_was_collected(world):
    """End to end: alice is not zeroed by the forgery, mallory and eve get nothing of alice's or the solution's,
    bob's newest counts, and a time that needs review is never graded as on time."""
    out = world["to"].parent / "graded"
    proc = subprocess.run([sys.executable, "-m", "grader", "grade", str(world["to"]), "--out", str(out),
                           "--workers", "1", "--no-progress"],
                          cwd=ROOT, env=world["instructor"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "grades.csv", newline="") as f:
        rows = {r["student_id"]: r for r in csv.DictReader(f)}
    full = float(rows["alice"]["max_score"])
    for student in ("alice", "bob", "judy"):
        assert rows[student]["status"] == "graded" and float(rows[student]["score"]) == full, rows[student]
    for student in ("mallory", "eve", "grace", "heidi"):
        assert float(rows[student]["score"]) == 0, rows[student]
    for student in ("carol", "dave", "ivan"):
        assert rows[student]["status"] == "needs review", rows[student]
        assert "not graded (neither on time nor late)" in rows[student]["reason"]
        assert "needs review" in rows[student]["reason"]
    body = _solutions()["dot_product_attention"].strip().splitlines()[-1].strip()
    for student in ("eve", "grace"):
        for page in (out / "feedback" / student).rglob("*.html"):
            assert body not in page.read_text(), (student, page)
    assert "needs review" in proc.stdout


# ---------------------------------------------------------------- the command line, with the system's own users


def _exchange_with(base: Path, owner: int) -> Path:
    exchange = base / "exchange"
    (exchange / COURSE / "inbound").mkdir(parents=True)
    os.chown(exchange / COURSE, owner, owner)
    return exchange / COURSE / "inbound"


@as_root
def test_the_command_matches_owners_by_login(tmp_path, capsys):
    inbound = _exchange_with(tmp_path, 0)
    now = datetime.utcnow()
    mine = _plant(inbound, "nobody", _stamp(now), {NOTEBOOK: b"nobody's"})
    _own(mine, 65534)
    assert os.stat(mine).st_uid == 65534 and __import__("pwd").getpwnam("nobody").pw_uid == 65534
    _plant(inbound, "nobody", _stamp(now + timedelta(seconds=1)), {NOTEBOOK: b"root's"}, "newer")
    assert main(["collect", ASSIGNMENT, "--exchange", str(tmp_path / "exchange"), "--course", COURSE,
                 "--to", str(tmp_path / "submitted")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "submitted" / "nobody" / ASSIGNMENT / NOTEBOOK).read_bytes() == b"nobody's"
    assert "collected 1 submissions" in out and "made by root, not by nobody: not collected as nobody's" in out


@as_root
def test_the_command_refuses_an_exchange_a_student_made(tmp_path, capsys):
    _exchange_with(tmp_path, 65534)
    assert main(["collect", ASSIGNMENT, "--exchange", str(tmp_path / "exchange"), "--course", COURSE,
                 "--to", str(tmp_path / "submitted")]) == 2
    assert "belongs to nobody, not to you or root" in capsys.readouterr().err
    assert not (tmp_path / "submitted").exists()


def test_the_command_prints_no_control_character_of_a_folder_name(tmp_path, capsys):
    inbound = _exchange_with(tmp_path, os.geteuid())
    _plant(inbound, "x\x1b]52;c;aGk=\x07", _stamp(datetime.utcnow()))
    main(["collect", ASSIGNMENT, "--exchange", str(tmp_path / "exchange"), "--course", COURSE,
          "--to", str(tmp_path / "submitted")])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b]52" in out


# ---------------------------------------------------------------- grade: an unreadable time is never on time


@pytest.mark.parametrize("content", [b"never", b"", b"\xff\xfe", b"2026-13-45 99:99:99 UTC", "link", "fifo"])
def test_grade_lists_a_submission_without_a_readable_time_as_needs_review(tmp_path, content):
    folder = tmp_path / "sub" / "ann" / ASSIGNMENT
    folder.mkdir(parents=True)
    stamp = folder / "timestamp.txt"
    if content == "link":
        (tmp_path / "elsewhere.txt").write_text("2026-01-01 00:00:00 UTC")
        stamp.symlink_to(tmp_path / "elsewhere.txt")
    elif content == "fifo":
        os.mkfifo(stamp)   # a reader that waits for a writer would stop the run
    else:
        stamp.write_bytes(content)
    jobs, listed = discover(tmp_path / "sub", {ASSIGNMENT})
    assert jobs == [] and [r.status for r in listed] == ["needs review"]
    assert "not graded (neither on time nor late)" in listed[0].reason


def test_grade_takes_a_readable_time_and_no_time_as_before(tmp_path):
    for student, stamp in (("ann", "2026-12-01 16:59:00.000000 UTC"), ("ben", None)):
        folder = tmp_path / student / ASSIGNMENT
        folder.mkdir(parents=True)
        if stamp:
            (folder / "timestamp.txt").write_text(stamp)
    jobs, listed = discover(tmp_path, {ASSIGNMENT})
    assert listed == [] and [(j.student_id, j.timestamp) for j in jobs] == [("ann", "2026-12-01T16:59:00"),
                                                                          ("ben", None)]
