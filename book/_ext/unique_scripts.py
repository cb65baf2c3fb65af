"""Drop duplicate <script> entries from each page.

sphinx-thebe 0.3.1 registers its inline configuration script (``const THEBE_JS_URL =
...``) twice under Jupyter Book 1.0 and Sphinx 7.4, so every page raised "Identifier
'THEBE_JS_URL' has already been declared" in the browser console. The browser test
(tests/browser) requires pages without console errors; keeping the first copy of each
script fixes it without touching the installed packages.
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    # body-only scripts are registered with filename None by some extensions, "" by others
    return str(getattr(script, "filename", script) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def _dedupe(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        key = _script_key(script)
        if key not in seen:
            seen.add(key)
            unique.append(script)
    # in place: the context shares this list with the builder, and handlers that run
    # later (Sphinx's MathJax among them) add their scripts to it
    scripts[:] = unique


def setup(app):
    # early: emit_firstresult stops at the first handler that returns a template name
    app.connect("html-page-context", _dedupe, priority=1)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
