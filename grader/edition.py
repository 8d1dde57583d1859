"""`python -m grader edition --to DIR [--repository-url URL]`: the student edition of the course.

The instructor's repository holds solutions/ (every answer and the hidden tests), and a student who clones it has
them. The student edition is what students should clone and what the book's launch buttons should open: the
repository's tracked files (`git ls-files`; every file when it is not a git checkout) without
  solutions/    the instructor's notebooks: answers and hidden tests,
  tests/        the instructor's test suite, which reads solutions/,
  benchmarks/   and .ci/, which are about the grader and the package, not the course,
with exercises/ (the released notebooks, which nbgrader made without answers or hidden tests), the book, the
package and the student-side checks (grader/, whose checks the notebooks import). --repository-url puts the
edition's own repository into _config.yml, so its launch buttons, repository and issue links point at it.

Before anything is written, every file is read: a notebook that holds nbgrader's solution or hidden-test marker
lines (`### BEGIN SOLUTION`, `### BEGIN HIDDEN TESTS`), or any file with a line of an instructor solution, stops
the command, naming the file,
so an answer kept somewhere else in the tree never reaches students. The reference implementations in
transformer_ref and grader/checks are public by design (the book shows them) and are not treated as answers.
DIR is written whole under a temporary name and renamed, so it is never half written.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

from grader.course import REPO_ROOT, new_folder

LEFT_OUT = ("solutions/", "tests/", "benchmarks/", ".ci/")
_MARKER = re.compile(r"(?m)^(?:\s|\\n|\")*#+\s*(BEGIN (?:SOLUTION|HIDDEN TESTS))")   # a notebook's marker line
PUBLIC = ("transformer_ref/", "grader/checks/", "book/")   # the package, its checks and the book: shown to all
MIN_LINE = 24   # characters (spaces removed) of a solution line that count as giving it away


def tracked_files(root: Path) -> list[str]:
    """The repository's files (relative paths): git's tracked files, or every file outside hidden folders."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=True, timeout=60)
        files = [f for f in out.stdout.decode().split("\0") if f]
    except (OSError, subprocess.SubprocessError):
        files = []
    if not files:
        files = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                 and not any(part.startswith(".") or part in ("_build", "__pycache__")
                             for part in p.relative_to(root).parts[:-1])]
    return sorted(f for f in files if (root / f).is_file())


def edition_files(root: Path) -> list[str]:
    """The files of the student edition."""
    return [f for f in tracked_files(root) if not f.startswith(LEFT_OUT)]


def solution_lines(root: Path) -> set[str]:
    """The lines of every instructor solution block (between BEGIN and END SOLUTION) and hidden-test block,
    spaces removed, at least MIN_LINE characters: what must not be in the edition."""
    import nbformat

    lines: set[str] = set()
    for path in sorted((root / "solutions").glob("*/*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            for block in re.findall(r"BEGIN (?:SOLUTION|HIDDEN TESTS)(.*?)END (?:SOLUTION|HIDDEN TESTS)",
                                    cell.source, re.S):
                lines |= {re.sub(r"\s+", "", line) for line in block.splitlines()}
    return {line for line in lines if len(line) >= MIN_LINE}


def give_aways(root: Path, files: list[str]) -> list[str]:
    """"path: why" for each file of the edition that holds a marker or (outside PUBLIC) a solution line."""
    secret = solution_lines(root)
    found = []
    for name in files:
        try:
            text = (root / name).read_text(errors="replace")
        except OSError as err:
            found.append(f"{name}: cannot be read ({err.strerror})")
            continue
        marker = _MARKER.search(text) if name.endswith(".ipynb") else None
        if marker is not None:
            found.append(f"{name}: holds nbgrader's {marker.group(1)!r} marker")
            continue
        if name.startswith(PUBLIC):
            continue
        squeezed = {re.sub(r"\s+", "", line) for line in text.splitlines()}
        line = next(iter(sorted(squeezed & secret)), None)
        if line is not None:
            found.append(f"{name}: holds a line of an instructor solution ({line[:60]})")
    return found


def set_repository(config: Path, url: str) -> None:
    """_config.yml's repository url (the one place the launch buttons and links read) set to `url`."""
    text = config.read_text()
    new, n = re.subn(r"(?m)^(repository:\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*).*$", lambda m: m.group(1) + url, text)
    if n != 1:
        raise ValueError(f"{config}: no `repository: url:` entry to set")
    config.write_text(new)


def write_edition(root: Path, to: Path, repository_url: str | None = None) -> list[str]:
    """Write the edition to `to` (which must not exist); its files."""
    files = edition_files(root)
    problems = give_aways(root, files)
    if problems:
        raise ValueError("the student edition would give answers away:\n  " + "\n  ".join(problems))
    scratch = new_folder(to.parent, f".{to.name}-")
    try:
        for name in files:
            (scratch / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, scratch / name)
        if repository_url:
            set_repository(scratch / "_config.yml", repository_url)
        scratch.rename(to)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return files


def add_command(commands: argparse._SubParsersAction) -> None:
    """Register `edition` on the `python -m grader` command line."""
    p = commands.add_parser("edition", help="write the student edition of the course (no solutions, no hidden "
                                            "tests)", description=__doc__.split("\n\n")[0])
    p.add_argument("--to", type=Path, required=True, help="a new folder for the edition")
    p.add_argument("--repository-url", help="the edition's repository, for the book's launch buttons and links")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    to = args.to.resolve()
    if to.exists():
        print(f"python -m grader edition: --to must be a new folder; {to} exists", file=sys.stderr)
        return 2
    try:
        files = write_edition(REPO_ROOT, to, args.repository_url)
    except ValueError as err:
        print(f"python -m grader edition: {err}", file=sys.stderr)
        return 1
    print(f"student edition: {len(files)} files in {to} (without {', '.join(LEFT_OUT)}); publish it as the "
          f"repository students clone" + (f" ({args.repository_url})" if args.repository_url else
                                            " and set --repository-url for the book's launch buttons"))
    return 0
