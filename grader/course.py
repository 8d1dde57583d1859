"""The nbgrader course directories the grader works in, and the nbgrader configuration they share.

OUT (the `--out` directory) is a complete nbgrader course: source/ (a copy of the instructor notebooks),
release/, autograded/, feedback/, the gradebook and an nbgrader_config.py, so `nbgrader formgrader` or
`nbgrader generate_feedback` can be run there afterwards. Each grading worker has a private course in
OUT/.work/<name>/ with its own SQLite gradebook (a copy of a template holding the assignments), so
parallel workers never write to the same database; the main process merges their grades.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from traitlets.config import Config, PyFileConfigLoader

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT / "solutions"
DEFAULT_CONFIG = REPO_ROOT / "nbgrader_config.py"
FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "grader.feedback.RedactHiddenTests",
]


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite database file."""
    return "sqlite:///" + str(Path(path).resolve())


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


def prepare_course(
    out: Path, source: Path, assignments: list[str], db_url: str, config_file: Path | None
) -> Path:
    """Make OUT a course for `assignments` and return the template gradebook for the workers.

    The template (OUT/.work/template.db) and, when it does not exist yet, a SQLite main gradebook are
    generated once; an existing main gradebook (or any other database URL) gets the assignments
    added or updated in place, so grading again into the same OUT keeps earlier results.
    """
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    for assignment in assignments:
        dest = out / "source" / assignment
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(source / assignment, dest, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    template = work / "template.db"
    template.unlink(missing_ok=True)
    generate_assignments(out, sqlite_url(template), assignments, config_file)
    main_db = out / "gradebook.db"
    if db_url == sqlite_url(main_db) and not main_db.exists():
        shutil.copyfile(template, main_db)
    else:
        generate_assignments(out, db_url, assignments, config_file)
    write_course_config(out, db_url, config_file)
    return template
