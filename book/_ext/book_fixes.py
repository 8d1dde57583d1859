"""A local Sphinx extension with one fix for the course website.

Sphinx 7.4 adds an inline script twice when an extension registers it after the builder has
started (sphinx-thebe and sphinx-togglebutton do): once from the registry as filename '' and
once directly as filename None, which its duplicate check treats as different. The second copy
of sphinx-thebe's `const THEBE_JS_URL = ...` is a JavaScript SyntaxError on every page. This
extension drops exact duplicates (same body, same attributes) from each page's scripts.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _drop_duplicate_scripts(app: Sphinx, pagename: str, templatename: str,
                            context: dict[str, Any], doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", script) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("html-page-context", _drop_duplicate_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
