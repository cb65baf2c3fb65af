"""The conventions every chapter notebook keeps (see DESIGN.md and the chapter issues)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

import notebooks  # scripts/notebooks.py: the toc, read in one place

ROOT = notebooks.ROOT
CONFIG = notebooks.CONFIG
CHAPTERS = notebooks.chapters()
MAX_LINE = 88  # what the widened content column shows without scrolling (tests/browser)


def load(name: str):
    return nbformat.read(ROOT / f"{name}.ipynb", as_version=4)


def test_every_chapter_in_the_toc_exists():
    on_disk = sorted(p.relative_to(ROOT).with_suffix("").as_posix()
                     for p in (ROOT / "chapters").glob("*.ipynb"))
    assert sorted(CHAPTERS) == on_disk, "every chapter notebook is in _toc.yml, and only those"
    missing = [c for c in CHAPTERS if not (ROOT / f"{c}.ipynb").exists()]
    assert not missing, f"chapters listed in _toc.yml but missing: {missing}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_setup_cell_installs_from_the_configured_repository(chapter):
    nb = load(chapter)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    urls = re.findall(r'REPO_URL = "([^"]+)"', first_code.source)
    assert urls == [CONFIG["repository"]["url"]], "the setup cell must name _config.yml's repository.url"
    assert "find_spec(\"fm_helpers\")" in first_code.source, "the setup cell must do nothing when fm_helpers is installed"
    assert "FM_HELPERS_SOURCE" in first_code.source, "make colab-check points the install at the checkout"
    assert "jax==" in first_code.source, "the setup cell must pin Colab's installed jax"
    assert "hide-cell" in first_code.metadata.get("tags", []), "tag the setup cell hide-cell"


def test_every_chapter_has_the_same_setup_cell():
    """make colab-check installs with the first chapter's setup cell only: that proves it
    for every chapter because it is the same cell, byte for byte."""
    sources = {c: next(cell for cell in load(c).cells if cell.cell_type == "code").source
               for c in CHAPTERS}
    first = sources[CHAPTERS[0]]
    differ = [c for c, source in sources.items() if source != first]
    assert not differ, f"setup cells that differ from {CHAPTERS[0]}'s: {differ}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_committed_without_outputs(chapter):
    """Only cells marked NBVAL_CHECK_OUTPUT keep an output: nbval's reference text."""
    for cell in load(chapter).cells:
        if cell.cell_type != "code":
            continue
        if "# NBVAL_CHECK_OUTPUT" in cell.source:
            assert all(o.output_type == "stream" for o in cell.outputs)
            # nbval 0.11 fails a reference output that has no execution count
            assert (cell.execution_count is not None) == bool(cell.outputs), (
                f"reference output needs an execution count (run scripts/nb_clean.py): {cell.source[:60]!r}")
        else:
            assert not cell.outputs, f"output left in: {cell.source[:60]!r}"
            assert cell.execution_count is None, f"execution count left in: {cell.source[:60]!r}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_structure(chapter):
    nb = load(chapter)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    text = "\n".join(markdown)
    assert re.match(r"\(\S+\)=\s*\n# ", markdown[0]), "first cell: a label, then the H1 title"
    assert len(re.findall(r"^# ", text, flags=re.M)) == 1, "exactly one H1 title"
    assert re.search(r"^#+ .*Objectives", text, flags=re.M | re.I), "objectives at the top"
    assert re.search(r"^#+ .*Summary", text, flags=re.M | re.I), "a summary"
    assert re.search(r"^#+ .*Exercises", text, flags=re.M | re.I), "exercises"
    assert text.count(":::{dropdown} Solution") >= 2, "at least two exercises with revealable solutions"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_checks_the_reader_can_see(chapter):
    code = "\n".join(c.source for c in load(chapter).cells if c.cell_type == "code")
    assert re.search(r"^\s*assert .+, ", code, flags=re.M), "at least one assert with a message"
    assert "fm_helpers" in code


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_code_lines_fit_the_page(chapter):
    long = [line for c in load(chapter).cells if c.cell_type == "code"
            for line in c.source.splitlines() if len(line) > MAX_LINE]
    assert not long, f"{len(long)} code lines over {MAX_LINE} characters, e.g. {long[:3]}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_myst_nb_imports(chapter):
    """`from myst_nb import glue` fails in Colab."""
    code = "\n".join(c.source for c in load(chapter).cells if c.cell_type == "code")
    assert "myst_nb" not in code and "glue(" not in code


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_expected_errors_are_marked_for_both_runners(chapter):
    for cell in load(chapter).cells:
        if cell.cell_type != "code":
            continue
        tagged = "raises-exception" in cell.metadata.get("tags", [])
        marked = "NBVAL_RAISES_EXCEPTION" in cell.source
        assert tagged == marked, f"tag raises-exception and NBVAL_RAISES_EXCEPTION go together: {cell.source[:60]!r}"


def test_book_config():
    assert CONFIG["only_build_toc_files"] is True
    assert CONFIG["execute"]["stderr_output"] == "remove"
    assert CONFIG["execute"]["timeout"] >= 90
    assert CONFIG["sphinx"]["recursive_update"] is True
    for pattern in (".venv", "_build", "tests"):
        assert pattern in CONFIG["exclude_patterns"]


def test_api_page_covers_every_public_name():
    """Every module of fm_helpers has a section on the API page, and every public name a
    module defines is in its ``__all__`` (which is what the page documents): a name that
    readers should not use starts with an underscore instead."""
    import importlib
    import pkgutil

    import fm_helpers

    page = (ROOT / "book" / "api.md").read_text()
    for info in pkgutil.iter_modules(fm_helpers.__path__):
        assert f".. automodule:: fm_helpers.{info.name}\n" in page, info.name
        module = importlib.import_module(f"fm_helpers.{info.name}")
        defined = {
            name for name, value in vars(module).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == module.__name__
        }
        assert defined <= set(module.__all__), (info.name, defined - set(module.__all__))
