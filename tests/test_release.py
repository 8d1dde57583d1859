"""`python -m grader release`: each student gets exactly their own feedback pages, as a folder or a zip.

A feedback tree like the one `grade` writes is made by hand (no grading run): under 2 s with the CLI subprocess.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from grader.release import release

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
