"""The `exercise` directive: the box that leads from a chapter to its exercise notebook.

    :::{exercise} 03_attention
    :::

renders one compact admonition, "Exercise 3", with three links to the notebook
exercises/03_attention/03_attention.ipynb: download it (Sphinx copies it into
_build/html/_downloads/), open it on Binder, open it on the JupyterHub. Each chapter uses it twice: right after its learning goals (as above), and in its
"Exercises" section with the `:how-to:` flag, which adds the paragraph HOW_TO (how to work in the
notebook, written once here for every chapter). Text inside the directive comes first.

The launch links are built from the same settings as the page's launch buttons (_config.yml's
`repository` and `launch_buttons`, which Jupyter Book passes to sphinx-book-theme as
html_theme_options), so moving the course means changing _config.yml only. Formats:
- Binder: {binderhub_url}/v2/gh/{org}/{repo}/{branch}?labpath={path}  (urlpath=tree/{path} for
  notebook_interface: classic)
- JupyterHub, through nbgitpuller as sphinx-book-theme's launch buttons do:
  {jupyterhub_url}/hub/user-redirect/git-pull?repo={repo_url}&urlpath=lab/tree/{repo}/{path}&branch={branch}
A link whose URL is not configured is left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util.docutils import SphinxDirective

STATIC = Path(__file__).with_name("static")

HOW_TO = ("Write your code where the notebook says `# YOUR CODE HERE`, then run the test cell below it: "
          "it prints one line with the item's points when your code is right and names the likely mistake "
          "when it is not; the notebook's last cell lists which items pass so far. "
          "Open the notebook on Binder or on your JupyterHub, or download it and open it in JupyterLab "
          "on your own machine.")
"""The `:how-to:` paragraph (MyST Markdown)."""


def exercise_path(exercise_id: str) -> str:
    """The notebook of an exercise, relative to the book's source directory (the repository root)."""
    return f"exercises/{exercise_id}/{exercise_id}.ipynb"


def exercise_number(exercise_id: str) -> int:
    """03_attention -> 3 (exercises are numbered like their chapters)."""
    number = exercise_id.split("_", 1)[0]
    if not number.isdigit():
        raise ExtensionError(f"an exercise id starts with its chapter's number (03_attention); got {exercise_id!r}")
    return int(number)


def launch_urls(theme_options: dict[str, Any], path: str) -> dict[str, str]:
    """{"Binder": url, "JupyterHub": url} that open `path` (relative to the book's source
    directory), from sphinx-book-theme's options; a service without a configured URL is absent."""
    repo_url = str(theme_options.get("repository_url") or "").rstrip("/")
    if not repo_url.startswith("https://github.com/"):
        raise ExtensionError(f"the exercise launch links need a GitHub repository (_config.yml "
                             f"repository.url); got {repo_url!r}")
    org, repo = repo_url.removeprefix("https://github.com/").split("/")[:2]
    branch = theme_options.get("repository_branch") or "main"
    book_dir = str(theme_options.get("path_to_docs") or "").strip("/")
    path_in_repo = f"{book_dir}/{path}" if book_dir else path
    launch = theme_options.get("launch_buttons") or {}
    lab = launch.get("notebook_interface", "classic") == "jupyterlab"

    urls = {}
    binderhub = str(launch.get("binderhub_url") or "").rstrip("/")
    if binderhub:
        query = f"labpath={path_in_repo}" if lab else f"urlpath=tree/{path_in_repo}"
        urls["Binder"] = f"{binderhub}/v2/gh/{org}/{repo}/{branch}?{query}"
    jupyterhub = str(launch.get("jupyterhub_url") or "").rstrip("/")
    if jupyterhub:
        ui = "lab/tree" if lab else "tree"
        query = urlencode({"repo": repo_url, "urlpath": f"{ui}/{repo}/{path_in_repo}", "branch": branch},
                          safe="/")
        urls["JupyterHub"] = f"{jupyterhub}/hub/user-redirect/git-pull?{query}"
    return urls


class ExerciseDirective(SphinxDirective):
    """`{exercise} <id>`: the exercise box for exercises/<id>/<id>.ipynb."""

    required_arguments = 1
    has_content = True
    option_spec = {"how-to": directives.flag}

    def run(self) -> list[nodes.Node]:
        exercise_id = self.arguments[0]
        path = exercise_path(exercise_id)
        if not (Path(self.env.srcdir) / path).is_file():
            raise self.error(f"exercise {exercise_id!r}: {path} does not exist")
        name = Path(path).name

        box = nodes.admonition(classes=["exercise-box"])
        self.set_source_info(box)
        box += nodes.title(text=f"Exercise {exercise_number(exercise_id)}")
        if self.content:
            self.state.nested_parse(self.content, self.content_offset, box)
        if "how-to" in self.options:
            self.state.nested_parse(StringList([HOW_TO], source="exercise_box.HOW_TO"), 0, box)

        links = nodes.paragraph(classes=["exercise-links"])
        # The {download} role's node: Sphinx copies the file into _downloads/ and links it.
        download = addnodes.download_reference(
            "", "", refdoc=self.env.docname, refdomain="", reftype="download", refexplicit=True,
            refwarn=False, reftarget=f"/{path}")
        download += nodes.inline("", name, classes=["exercise-download"])
        links += download
        for service, url in launch_urls(self.config.html_theme_options, path).items():
            links += nodes.Text(" ")
            links += nodes.reference("", service, refuri=url, reftitle=f"Open {name} on {service}",
                                     classes=["exercise-launch", f"exercise-{service.lower()}"])
        box += links
        return [box]


def _add_static_path(app: Sphinx) -> None:
    app.config.html_static_path.append(str(STATIC))


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("exercise", ExerciseDirective)
    app.connect("builder-inited", _add_static_path)
    app.add_css_file("exercise_box.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
