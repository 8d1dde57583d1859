"""The nbgrader course directories the grader works in, and the nbgrader configuration they share.

OUT (the `--out` directory) is a complete nbgrader course: source/ (a copy of the instructor notebooks),
release/, autograded/, feedback/, the gradebook and an nbgrader_config.py, so `nbgrader formgrader` or
`nbgrader generate_feedback` can be run there afterwards. Each grading worker has a private course in
OUT/.work/<name>/ (OUT/.work/shard-K-of-N/<name>/ for a shard) with its own SQLite gradebook (a copy of a
template holding the assignments), so parallel workers never write to the same database; the main process
records their grades in the main gradebook as they finish.

Several shards may prepare one course at once (one OUT on a shared file system, one gradebook server):
`course_lock` makes them take turns, through a lock file in OUT/.work and, for PostgreSQL, an advisory
lock in the database; they take turns again to write OUT/grades.csv.
"""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import hashlib
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from traitlets.config import Config, PyFileConfigLoader

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT / "solutions"
DEFAULT_CONFIG = REPO_ROOT / "nbgrader_config.py"
FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "grader.feedback.InertComments",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "grader.feedback.RedactHiddenTests",
]


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return "sqlite:///" + str(Path(path).resolve())


def gradebook_of(command: str, out: Path, db_url: str | None, roster: Path | None) -> str | None:
    """The gradebook URL an instructor command reads (--db-url, else OUT/gradebook.db), after checking it and
    --roster; None, with the reason on stderr, when either is missing."""
    if db_url is None:
        db = out / "gradebook.db"
        if not db.is_file():
            print(f"python -m grader {command}: no gradebook at {db}; give the OUT of a grading run or --db-url",
                  file=sys.stderr)
            return None
        db_url = sqlite_url(db)
    if roster is not None and not roster.is_file():
        print(f"python -m grader {command}: --roster must be a CSV file; got {roster}", file=sys.stderr)
        return None
    return db_url


def ensure_alembic_on_path() -> None:
    """nbgrader runs the `alembic` executable when it creates a gradebook; put this Python's bin/ on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def stamp_new_gradebook(db_url: str) -> None:
    """Give an empty database the schema version nbgrader would write, computed in-process.

    nbgrader stamps a new gradebook by running the `alembic` command in a subprocess, which takes
    seconds; with the version table in place it just creates its tables. A database that already has
    tables is left alone.
    """
    import nbgrader
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, inspect, text

    head = ScriptDirectory(str(Path(nbgrader.__file__).parent / "alembic")).get_current_head()
    engine = create_engine(db_url)
    try:
        if inspect(engine).get_table_names():
            return
        with engine.begin() as connection:
            connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            connection.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": head})
    finally:
        engine.dispose()


def nbgrader_config(root: Path, db_url: str, config_file: Path | None = None, timeout: int | None = None) -> Config:
    """nbgrader settings for a course rooted at `root`.

    Starts from the course's nbgrader_config.py (timeouts, stubs, hidden-test markers, ...), then points
    the course directory at `root` with the standard source/ and release/ names. The feedback always
    redacts hidden tests, whatever the config file says. `timeout` (seconds per cell) overrides the file.
    """
    cfg = Config()
    if config_file is not None and Path(config_file).is_file():
        path = Path(config_file).resolve()
        cfg.merge(PyFileConfigLoader(path.name, path=str(path.parent)).load_config())
    cfg.CourseDirectory.root = str(Path(root).resolve())
    cfg.CourseDirectory.source_directory = "source"
    cfg.CourseDirectory.release_directory = "release"
    cfg.CourseDirectory.db_url = db_url
    if timeout is not None:
        cfg.ExecutePreprocessor.timeout = timeout
        cfg.Execute.timeout = timeout
    cfg.GenerateFeedback.preprocessors = FEEDBACK_PREPROCESSORS
    cfg.HTMLExporter.template_name = "feedback"
    for marker in ("begin_test_delimeter", "end_test_delimeter"):
        if marker in cfg.ClearHiddenTests:
            cfg.RedactHiddenTests[marker] = cfg.ClearHiddenTests[marker]
    return cfg


def write_course_config(out: Path, db_url: str, config_file: Path | None) -> None:
    """OUT/nbgrader_config.py: the course settings plus OUT's layout, for nbgrader commands run in OUT."""
    lines = ["c = get_config()  # noqa: F821"]
    if config_file is not None and Path(config_file).is_file():
        lines.append(f"load_subconfig({str(Path(config_file).resolve())!r})  # noqa: F821")
    lines += [
        f"c.CourseDirectory.root = {str(out.resolve())!r}",
        'c.CourseDirectory.source_directory = "source"',
        'c.CourseDirectory.release_directory = "release"',
        f"c.CourseDirectory.db_url = {db_url!r}",
        f"c.GenerateFeedback.preprocessors = {FEEDBACK_PREPROCESSORS!r}",
    ]
    (out / "nbgrader_config.py").write_text("\n".join(lines) + "\n")


def generate_assignments(root: Path, db_url: str, assignments: list[str], config_file: Path | None) -> None:
    """`nbgrader generate_assignment` for each assignment in root/source, recording it in the gradebook.

    This stores the source cells (hidden tests included) that autograde restores into submissions.
    """
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    ensure_alembic_on_path()
    stamp_new_gradebook(db_url)
    cfg = nbgrader_config(root, db_url, config_file)
    for assignment in assignments:
        coursedir = CourseDirectory(config=cfg)
        coursedir.assignment_id = assignment
        converter = GenerateAssignment(coursedir=coursedir, config=cfg)
        converter.force = True
        converter.start()


def replace_dir(src: Path, dest: Path) -> None:
    """Put the folder `src` at `dest` (same file system), replacing what is there by renames only: a reader,
    or a run killed at any moment, sees the old folder, the new one or none, never a half-written one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(src, dest)
    if old.exists():
        shutil.rmtree(old)


def new_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder parent/<prefix><random>, with the permissions of any new folder (the umask's), not
    tempfile.mkdtemp's 0700: it is renamed into place for others to read (feedback pages, released files)."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = parent / f"{prefix}{secrets.token_hex(6)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def remove_leftovers(folder: Path) -> None:
    """Remove what replace_dir and copy_sources leave in `folder` when a run is killed between their steps:
    the replaced `.NAME.old-PID` and the unfinished `.NAME.new-XXXX`. Call it where no other process writes."""
    for pattern in (".*.old-*", ".*.new-*"):
        for path in folder.glob(pattern) if folder.is_dir() else ():
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def course_lock(out: Path, db_url: str) -> Iterator[None]:
    """Held while a course is prepared and while grades.csv is written: a lock file OUT/.work/course.lock
    (shards sharing OUT) and, when the gradebook is PostgreSQL, an advisory lock in it (shards on machines
    with an OUT each)."""
    work = Path(out) / ".work"
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "course.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            if db_url.startswith("postgresql"):
                from sqlalchemy import create_engine, text

                key = int.from_bytes(hashlib.sha256(b"grader.course.prepare_course").digest()[:8], "big") >> 1
                engine = create_engine(db_url)
                try:
                    with engine.connect() as connection:
                        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                        connection.commit()
                        try:
                            yield
                        finally:
                            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                            connection.commit()
                finally:
                    engine.dispose()
            else:
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=[".ipynb_checkpoints", "__pycache__"])
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    if filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1:] != ([], []):
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


def copy_sources(out: Path, source: Path, assignments: list[str]) -> None:
    """OUT/source/<assignment> = SOURCE/<assignment>, replaced whole (by a rename) only when it differs."""
    remove_leftovers(out / "source")
    for assignment in assignments:
        dest = out / "source" / assignment
        if dest.exists() and _same_tree(source / assignment, dest):
            continue
        tmp = new_folder(dest.parent, f".{assignment}.new-") / assignment
        shutil.copytree(source / assignment, tmp, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        replace_dir(tmp, dest)
        tmp.parent.rmdir()


def stored_cells(db_url: str, assignments: list[str]) -> dict:
    """assignment -> notebook -> what `nbgrader generate_assignment` stores about its cells ({} for an
    assignment, or a database, that has none yet).

    A gradebook that already holds these cells is left alone: generate_assignment deletes a notebook that
    has no submissions yet and adds it back one committed cell at a time, so a shard that regenerated it
    while another shard records grades would make that shard's submission miss comments or grades.
    """
    from nbgrader.api import Gradebook, MissingEntry
    from sqlalchemy import create_engine, inspect

    engine = create_engine(db_url)
    try:
        if "assignment" not in inspect(engine).get_table_names():
            return {name: {} for name in assignments}
    finally:
        engine.dispose()
    cells = {}
    with Gradebook(db_url) as gb:
        for name in assignments:
            try:
                notebooks = gb.find_assignment(name).notebooks
            except MissingEntry:
                notebooks = []
            cells[name] = {nb.name: _notebook_cells(nb) for nb in notebooks}
    return cells


def _notebook_cells(nb) -> tuple:
    return (nb.kernelspec,
            sorted((c.name, c.max_score, c.cell_type) for c in nb.grade_cells),
            sorted(c.name for c in nb.solution_cells),
            sorted((c.name, c.max_score, c.cell_type) for c in nb.task_cells),
            sorted((c.name, c.cell_type, c.locked, c.source, c.checksum) for c in nb.source_cells))


def due_dates(db_url: str) -> dict:
    """assignment -> due date (naive UTC datetime, or None) in a gradebook."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gb:
        return {a.name: a.duedate for a in gb.assignments}


def own_gradebook(config_file: Path | None) -> Path:
    """The instructor's own gradebook: the one next to nbgrader_config.py, where `nbgrader db assignment add ID
    --duedate=...` run in the repository (README step 3's folder) writes."""
    return (config_file.parent if config_file else REPO_ROOT) / "gradebook.db"


def adopt_due_dates(db_url: str, assignments: list[str], known: dict, config_file: Path | None) -> dict:
    """Due dates of `assignments` that the main gradebook (`db_url`) lacks but the instructor's own gradebook
    (own_gradebook) has. They are written into the main gradebook and returned; each
    adopted date, and each assignment left without one (nobody is late), is said on stderr."""
    from nbgrader.api import Gradebook

    own = own_gradebook(config_file)
    found = {}
    if own.is_file() and sqlite_url(own) != db_url:
        try:
            found = {a: d for a, d in due_dates(sqlite_url(own)).items()
                     if a in assignments and a not in known and d is not None}
        except Exception as err:   # not a gradebook, or another nbgrader's schema: the dates are not there
            print(f"python -m grader: cannot read due dates from {own}: {type(err).__name__}: {err}", file=sys.stderr)
    if found:
        with Gradebook(db_url) as gb:
            for name, date in found.items():
                gb.update_or_create_assignment(name, duedate=date)
                print(f"python -m grader: the due date of {name} ({date:%Y-%m-%d %H:%M} UTC) is taken from {own} "
                      f"into the grading gradebook", file=sys.stderr)
    for name in sorted(set(assignments) - set(known) - set(found)):
        print(f"python -m grader: {name} has no due date, so no submission of it is late (set one: cd OUT && "
              f"nbgrader db assignment add {name} --duedate=...)", file=sys.stderr)
    return found


def prepare_course(
    out: Path, source: Path, assignments: list[str], db_url: str, config_file: Path | None, work: Path | None = None
) -> Path:
    """Make OUT a course for `assignments` and return the template gradebook for the workers.

    The template (WORK/template.db, WORK = OUT/.work unless given) and, when it does not exist yet, a
    SQLite main gradebook are generated once; an existing main gradebook (or any other database URL)
    gets the assignments added or updated in place when its cells differ from the template's
    (stored_cells), so grading again into the same OUT keeps earlier results. Due dates are the main
    gradebook's (set with `nbgrader db assignment add ID --duedate=...` or in formgrader) and are copied
    into the template, so the workers' feedback shows late penalties; one set only in the instructor's own
    gradebook (see adopt_due_dates) is copied into the main gradebook first, and an assignment with no due date
    is named on stderr.
    Safe to run from several shards at once (course_lock).
    """
    from nbgrader.api import Gradebook
    from sqlalchemy import create_engine

    from grader.gradebook import create_results_table

    out.mkdir(parents=True, exist_ok=True)
    work = work or out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    template = work / "template.db"
    template.unlink(missing_ok=True)
    main_db = out / "gradebook.db"
    with course_lock(out, db_url):
        copy_sources(out, source, assignments)
        generate_assignments(out, sqlite_url(template), assignments, config_file)
        if db_url == sqlite_url(main_db) and not main_db.exists():
            shutil.copyfile(template, main_db)
        elif stored_cells(db_url, assignments) != stored_cells(sqlite_url(template), assignments):
            generate_assignments(out, db_url, assignments, config_file)
        for url in (sqlite_url(template), db_url):
            engine = create_engine(url)
            try:
                create_results_table(engine)
            finally:
                engine.dispose()
        dates = {name: date for name, date in due_dates(db_url).items() if name in assignments and date is not None}
        dates |= adopt_due_dates(db_url, assignments, dates, config_file)
        with Gradebook(sqlite_url(template)) as gb:
            for name, date in dates.items():
                gb.update_or_create_assignment(name, duedate=date)
        write_course_config(out, db_url, config_file)
    return template
