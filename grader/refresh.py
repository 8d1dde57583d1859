"""Penalties and feedback pages brought up to date without running any student code.

A feedback page is made when its submission is graded, from the worker's gradebook: autograded scores and the
late penalty of the due date known then. Two things change a submission's final score afterwards: a manual grade
in formgrader, and a due date set or moved (`nbgrader db assignment add ID --duedate=...`). At the end of every
`python -m grader grade` run (a resumed run that has nothing left to grade included), for each submission of the
run's scope:
  1. the late penalty is worked out again from the assignment's due date as it is now (grader.gradebook's
     apply_late_penalty, the rule grading uses);
  2. when what its page shows (grader_pages, written with the page) differs from what the gradebook holds now,
     nbgrader's GenerateFeedback makes the page again from OUT/autograded and the gradebook (manual grades
     included) in a scratch folder, the page is made inert (grader.inert) and moved into OUT/feedback.
So grades.csv, the pages, `python -m grader export` and `nbgrader export` show the same final score.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from grader.course import ensure_alembic_on_path, new_folder, nbgrader_config, replace_dir
from grader.feedback import inert_pages


def make_pages(root: Path, db_url: str, config_file: Path | None, student: str, assignment: str) -> Path:
    """nbgrader's GenerateFeedback for one submission: root/autograded/<student>/<assignment>/*.ipynb and the
    gradebook at `db_url` -> root/feedback/<student>/<assignment>/*.html, made inert. The folder of pages."""
    from nbgrader.converters import GenerateFeedback
    from nbgrader.coursedir import CourseDirectory

    ensure_alembic_on_path()
    cfg = nbgrader_config(root, db_url, config_file)
    log = logging.getLogger(f"grader.nbgrader.{os.getpid()}")
    log.propagate = False
    coursedir = CourseDirectory(config=cfg, log=log)
    coursedir.assignment_id, coursedir.student_id = assignment, student
    converter = GenerateFeedback(coursedir=coursedir, config=cfg, log=log)
    converter.force = True
    converter.start()
    pages = root / "feedback" / student / assignment
    if not pages.exists():
        raise RuntimeError("nbgrader generate_feedback produced no feedback")
    inert_pages(pages)   # grader.inert: no student markup
    return pages


def refresh(gb, out: Path, db_url: str, config_file: Path | None, keys: list[tuple[str, str]],
            late) -> list[tuple[str, str]]:
    """Steps 1 and 2 of the module docstring for the graded submissions among `keys` ((student, assignment));
    the submissions whose page was made again. `gb`: the main gradebook, open."""
    from nbgrader.api import MissingEntry
    from sqlalchemy import and_, delete, select

    from grader.gradebook import PAGES, RESULTS, apply_late_penalty, page_signature

    graded = {(s, a) for s, a in gb.db.execute(select(RESULTS.c.student_id, RESULTS.c.assignment)
                                               .where(RESULTS.c.status == "graded"))}
    shown = {(s, a): text for s, a, text in gb.db.execute(select(PAGES.c.student_id, PAGES.c.assignment,
                                                                 PAGES.c.shown))}
    stale = []
    for key in sorted(set(keys) & graded):
        try:
            submission = gb.find_submission(key[1], key[0])
        except MissingEntry:
            continue
        apply_late_penalty(submission, late)
        if page_signature(submission) != shown.get(key) and (out / "autograded" / key[0] / key[1]).is_dir():
            stale.append((key, submission))
    gb.db.commit()
    remade = []
    for (student, assignment), submission in stale:
        scratch = new_folder(out / ".work", "refresh-")
        try:
            shutil.copytree(out / "autograded" / student / assignment, scratch / "autograded" / student / assignment)
            pages = make_pages(scratch, db_url, config_file, student, assignment)
            replace_dir(pages, out / "feedback" / student / assignment)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        where = and_(PAGES.c.student_id == student, PAGES.c.assignment == assignment)
        gb.db.execute(delete(PAGES).where(where))
        gb.db.execute(PAGES.insert().values(student_id=student, assignment=assignment, shown=page_signature(submission)))
        gb.db.commit()
        remade.append((student, assignment))
    return remade
