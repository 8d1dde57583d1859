"""`python -m grader release`: each student gets exactly their own feedback pages, as a folder or a zip.

A feedback tree like the one `grade` writes is made by hand (no grading run): under 2 s with the CLI subprocess.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grader.collect import CollectError
from grader.release import hand_back, release

ROOT = Path(__file__).resolve().parents[1]
PAGES = {"ann": ["01_history/01_history.html", "03_attention/03_attention.html"],
         "bob": ["03_attention/03_attention.html"]}


@pytest.fixture
def out(tmp_path) -> Path:
    """OUT as `grade` leaves it: feedback pages, autograded notebooks (never released), the gradebook."""
    out = tmp_path / "OUT"
    for student, pages in PAGES.items():
        for page in pages:
            path = out / "feedback" / student / page
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"<html>feedback for {student}: {page}</html>")
            notebook = out / "autograded" / student / Path(page).with_suffix(".ipynb")
            notebook.parent.mkdir(parents=True, exist_ok=True)
            notebook.write_text("{}")
    (out / "feedback" / "ann" / "03_attention" / "timestamp.txt").write_text("2026-01-01")   # not a page
    stale = out / "feedback" / "bob" / ".03_attention.old-4242" / "03_attention.html"   # a killed run's, not a page
    stale.parent.mkdir()
    stale.write_text("<html>old feedback</html>")
    (out / "gradebook.db").write_text("")
    return out


def test_zip_per_student_holds_exactly_their_pages(out, tmp_path):
    written = release(out, tmp_path / "returned", as_zip=True)
    assert written == {s: tmp_path / "returned" / f"{s}.zip" for s in PAGES}
    assert sorted(p.name for p in (tmp_path / "returned").iterdir()) == ["ann.zip", "bob.zip"]   # no temporaries
    for student, pages in PAGES.items():
        with zipfile.ZipFile(written[student]) as z:
            assert sorted(z.namelist()) == pages
            for page in pages:
                assert z.read(page).decode() == f"<html>feedback for {student}: {page}</html>"


def test_folders_by_default_and_a_second_release_replaces_the_first(out, tmp_path):
    dest = tmp_path / "returned"
    release(out, dest)
    (dest / "bob" / "stale.html").write_text("old")
    release(out, dest, students=["bob"])
    found = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert found == sorted(f"{s}/{p}" for s, pages in PAGES.items() for p in pages)


def test_released_files_can_be_read_by_others_as_any_new_file(out, tmp_path):
    """The umask's permissions (0755 folders, 0644 files under umask 022), not tempfile's 0700 and 0600: a
    folder on a shared drive has to be readable by the students it is returned to."""
    before = os.umask(0o022)
    try:
        release(out, tmp_path / "folders")
        release(out, tmp_path / "zips", as_zip=True)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "folders" / "ann").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "zips" / "ann.zip").stat().st_mode) == 0o644


def test_errors_name_what_is_missing(out, tmp_path):
    with pytest.raises(FileNotFoundError, match="no feedback for zed"):
        release(out, tmp_path / "r", students=["zed"])
    with pytest.raises(FileNotFoundError, match="no feedback pages under"):
        release(tmp_path / "empty", tmp_path / "r")


def test_the_command_line(out, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "grader", "release", str(out), "--to", str(tmp_path / "r"), "--zip"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "released the feedback of 2 student(s)" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["ann.zip", "bob.zip"]


# -- --exchange: where nbgrader fetch_feedback looks ------------------------------------------------------------
# A course as `collect` and `grade` leave it, made by hand: OUT/source, OUT/feedback, SUBMISSIONS/<student>/<id>/
# with the exchange's timestamp.txt and the student's submission_secret.txt, and the exchange's course folder.
ASSIGNMENT = "03_attention"
WHEN = "2026-12-01T16:59:00"


def _secret(student: str) -> str:
    return hashlib.sha256(student.encode()).hexdigest() * 2   # 128 hex digits, as nbgrader's secrets.token_hex(64)


@pytest.fixture
def handed(tmp_path) -> dict:
    out, subs, exchange = tmp_path / "OUT", tmp_path / "submitted", tmp_path / "exchange"
    (out / "source" / ASSIGNMENT).mkdir(parents=True)
    (out / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").write_text("{}")
    for student in ("ann", "bob", "cy"):
        page = out / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html"
        page.parent.mkdir(parents=True)
        page.write_text(f"<html>{student}'s feedback</html>")
        folder = subs / student / ASSIGNMENT
        folder.mkdir(parents=True)
        (folder / "timestamp.txt").write_text("2026-12-01 16:59:00.000000 UTC\n")
        (folder / "submission_secret.txt").write_text(_secret(student))
        (folder / f"{ASSIGNMENT}.ipynb").write_text("{}")
    (exchange / "transformer-course").mkdir(parents=True)
    graded = {(s, ASSIGNMENT): WHEN for s in ("ann", "bob", "cy")}
    return dict(out=out, subs=subs, exchange=exchange, graded=graded)


def _name(student: str, notebook: str = ASSIGNMENT) -> str:
    from nbgrader.utils import notebook_hash

    return notebook_hash(secret=_secret(student), notebook_id=notebook) + ".html"


def _back(h: dict, **kw):
    return hand_back(h["out"], h["subs"], h["exchange"], "transformer-course", h["graded"], **kw)


def test_exchange_pages_go_where_fetch_feedback_looks_readable_by_name_only(handed):
    feedback = handed["exchange"] / "transformer-course" / "feedback"
    before = os.umask(0o077)   # a service's umask: the pages must still be readable by their students
    try:
        done = _back(handed)
    finally:
        os.umask(before)
    assert done.listed == [] and done.released == {(s, ASSIGNMENT): [_name(s)] for s in ("ann", "bob", "cy")}
    assert sorted(p.name for p in feedback.iterdir()) == sorted(_name(s) for s in ("ann", "bob", "cy"))  # no temporaries
    assert (feedback / _name("bob")).read_text() == "<html>bob's feedback</html>"
    assert stat.S_IMODE(feedback.stat().st_mode) == 0o711
    assert stat.S_IMODE((feedback / _name("bob")).stat().st_mode) == 0o644


def test_exchange_pages_are_rewritten_only_when_they_changed(handed):
    feedback = handed["exchange"] / "transformer-course" / "feedback"
    _back(handed)
    first = {p.name: p.stat().st_ino for p in feedback.iterdir()}
    page = handed["out"] / "feedback" / "bob" / ASSIGNMENT / f"{ASSIGNMENT}.html"
    page.write_text("<html>bob's feedback, after a manual grade</html>")
    os.utime(page, ns=(page.stat().st_atime_ns, page.stat().st_mtime_ns + 10**9))
    _back(handed)
    again = {p.name: p.stat().st_ino for p in feedback.iterdir()}
    assert again[_name("ann")] == first[_name("ann")] and again[_name("bob")] != first[_name("bob")]
    assert (feedback / _name("bob")).read_text() == "<html>bob's feedback, after a manual grade</html>"


def test_a_notebook_saved_under_another_name_gets_its_page_under_that_name(handed):
    """fetch_feedback hashes the names in the student's cache: the file they submitted, not the assignment's."""
    folder = handed["subs"] / "cy" / ASSIGNMENT
    (folder / f"{ASSIGNMENT}.ipynb").rename(folder / f"{ASSIGNMENT} (1).ipynb")
    done = _back(handed)
    assert done.released[("cy", ASSIGNMENT)] == [_name("cy", f"{ASSIGNMENT} (1)")]


def test_what_cannot_be_handed_back_is_listed_never_guessed(handed):
    """Each attack or accident on its own line: a hand-in without a secret, a secret that is a link (to the
    instructor's file) or is not nbgrader's, a submission collected again after it was graded, and two
    submissions that share a secret (bob copied ann's): none of these pages is written, the rest are."""
    subs = handed["subs"]
    (subs / "ann" / ASSIGNMENT / "submission_secret.txt").unlink()
    (subs / "ann" / ASSIGNMENT / "submission_secret.txt").symlink_to(handed["out"] / "source" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")
    bad = {"dee": None, "eve": "not a secret\n", "fay": _secret("fay")}
    for student, secret in bad.items():
        folder = subs / student / ASSIGNMENT
        folder.mkdir(parents=True)
        (folder / "timestamp.txt").write_text("2026-12-01 16:59:00.000000 UTC\n")
        if secret is not None:
            (folder / "submission_secret.txt").write_text(secret)
        page = handed["out"] / "feedback" / student / ASSIGNMENT / f"{ASSIGNMENT}.html"
        page.parent.mkdir(parents=True)
        page.write_text("<html></html>")
        handed["graded"][(student, ASSIGNMENT)] = WHEN
    (subs / "fay" / ASSIGNMENT / "timestamp.txt").write_text("2026-12-02 09:00:00.000000 UTC\n")   # collected again
    (subs / "cy" / ASSIGNMENT / "submission_secret.txt").write_text(_secret("bob"))              # copied
    handed["graded"][("gus", ASSIGNMENT)] = WHEN                                                  # not collected
    (handed["out"] / "feedback" / "gus" / ASSIGNMENT).mkdir(parents=True)
    (handed["out"] / "feedback" / "gus" / ASSIGNMENT / f"{ASSIGNMENT}.html").write_text("<html></html>")
    done = _back(handed)
    why = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in done.listed}
    assert set(why) == {f"{s}/{ASSIGNMENT}" for s in ("ann", "bob", "cy", "dee", "eve", "fay", "gus")}, done.listed
    assert "a link is refused" in why[f"ann/{ASSIGNMENT}"]
    assert "no submission_secret.txt" in why[f"dee/{ASSIGNMENT}"]
    assert "not one that nbgrader's submit writes" in why[f"eve/{ASSIGNMENT}"]
    assert "collected again after it was graded" in why[f"fay/{ASSIGNMENT}"]
    assert f"cy/{ASSIGNMENT}'s (a copied secret)" in why[f"bob/{ASSIGNMENT}"]
    assert f"bob/{ASSIGNMENT}'s (a copied secret)" in why[f"cy/{ASSIGNMENT}"]
    assert "not in" in why[f"gus/{ASSIGNMENT}"]
    assert done.released == {}
    assert not (handed["exchange"] / "transformer-course" / "feedback").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another uid")
def test_an_exchange_folder_that_is_not_the_instructors_is_refused(handed):
    """The exchange's root is writable by everyone: a student who made the course's feedback folder (or a link
    there) before the instructor would read every page put into it."""
    course = handed["exchange"] / "transformer-course"
    (course / "feedback").mkdir()
    os.chown(course / "feedback", 61001, 61001)
    with pytest.raises(CollectError, match="not to you or root"):
        _back(handed)
    (course / "feedback").rmdir()
    (course / "feedback").symlink_to(handed["out"])
    with pytest.raises(CollectError, match="a symbolic link is refused"):
        _back(handed)
    assert sorted(p.name for p in handed["out"].iterdir()) == ["feedback", "source"]


def test_the_command_line_hands_back_what_the_gradebook_recorded(handed, tmp_path):
    from nbgrader.api import Gradebook
    from sqlalchemy import create_engine

    from grader.course import sqlite_url, stamp_new_gradebook
    from grader.gradebook import create_results_table, record
    from grader.records import Result

    url = sqlite_url(handed["out"] / "gradebook.db")
    stamp_new_gradebook(url)
    with Gradebook(url) as gb:
        gb.add_assignment(ASSIGNMENT)
    create_results_table(create_engine(url))
    with Gradebook(url) as gb:
        for student in ("ann", "bob"):
            record(gb, Result(student, ASSIGNMENT, "graded", score=1, max_score=1, timestamp=WHEN))
    proc = subprocess.run([sys.executable, "-m", "grader", "release", str(handed["out"]), "--exchange",
                           str(handed["exchange"]), "--course", "transformer-course", "--submissions", str(handed["subs"])],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "handed back the feedback of 2 submission(s)" in proc.stdout, proc.stdout
    feedback = handed["exchange"] / "transformer-course" / "feedback"
    assert sorted(p.name for p in feedback.iterdir()) == sorted([_name("ann"), _name("bob")])
