"""A local Sphinx extension: the downloadable notebook keeps its outputs when they come from the cache.

With `execution_mode: cache`, myst-nb 1.4 renders a page whose code is unchanged from the outputs
in the jupyter cache, but writes the notebook it read (without outputs) to `_build/jupyter_execute/`,
where the page's download button takes it from: after an edit to a chapter's prose only, the
downloaded `.ipynb` has no outputs. This extension merges the cached outputs into that file as
soon as the page is read, before the HTML builder copies it, and drops the hidden `glue` outputs
as myst-nb does for a notebook it has just executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
from jupyter_cache import get_cache
from myst_nb.ext.glue import extract_glue_data_cell
from sphinx.application import Sphinx


def _written_notebook(app: Sphinx) -> Path | None:
    """The notebook myst-nb wrote for the page being read, if it wrote one."""
    config = getattr(app.env, "mystnb_config", None)
    if config is None or not config.output_folder:
        return None
    path = Path(config.output_folder, *app.env.docname.split("/")).with_suffix(".ipynb")
    return path if path.exists() else None


def _restore_cached_outputs(app: Sphinx, doctree: Any) -> None:
    path = _written_notebook(app)
    if path is None:
        return
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    if not code or any(cell.get("outputs") for cell in code):
        return                                              # executed now, or nothing to show
    try:
        _, merged = get_cache(app.env.mystnb_config.execution_cache_path).merge_match_into_notebook(notebook)
    except KeyError:
        return                                              # not in the cache: not executed at all
    for cell in merged.cells:
        if cell.cell_type == "code":
            extract_glue_data_cell(cell)    # drops the hidden glue outputs, as myst-nb does after executing
    nbformat.write(merged, path)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("doctree-read", _restore_cached_outputs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
