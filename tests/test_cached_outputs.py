"""book/_ext/cached_outputs.py: a page rebuilt from the execution cache keeps the outputs of its
downloadable notebook. A one-page Sphinx project with myst-nb is built, its prose edited, and built
again (the second build takes the outputs from the cache); about 10 s, most of it one kernel start.
The case without the extension shows the myst-nb bug it works around: when that case fails, myst-nb
writes the cached outputs itself and the extension can go.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]

PAGE = textwrap.dedent("""\
    ---
    jupytext:
      text_representation:
        extension: .md
        format_name: myst
    kernelspec:
      display_name: Python 3
      language: python
      name: python3
    ---

    # A page

    {prose}

    ```{{code-cell}} ipython3
    from myst_nb import glue
    print(6 * 7)
    glue("hidden", 1, display=False)
    ```
    """)


def _build(project: Path, extensions: list[str]) -> Path:
    """Build `project` to HTML with myst-nb in cache mode; returns the notebook written for the page."""
    (project / "conf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'book' / '_ext')!r})\n"
        f"extensions = {['myst_nb', *extensions]!r}\nnb_execution_mode = 'cache'\n")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-q", "-b", "html", str(project), str(project / "_build" / "html")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return project / "_build" / "jupyter_execute" / "index.ipynb"


def _outputs(path: Path) -> list[str]:
    """The notebook's outputs, as their text or their MIME types."""
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return [o.get("text") or ", ".join(o.get("data", {})) for c in cells for o in c.get("outputs", [])]


@pytest.mark.parametrize("extensions, kept", [(["cached_outputs"], True), ([], False)], ids=["fixed", "myst-nb alone"])
def test_a_page_rebuilt_from_the_cache_keeps_its_notebook_outputs(tmp_path, extensions, kept):
    page = tmp_path / "index.md"
    page.write_text(PAGE.format(prose="First words."))
    assert _outputs(_build(tmp_path, extensions)) == ["42\n"]        # executed: outputs written, glue dropped
    page.write_text(PAGE.format(prose="Other words."))                # the code is unchanged: a cache hit
    assert _outputs(_build(tmp_path, extensions)) == (["42\n"] if kept else [])
