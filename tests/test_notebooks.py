"""scripts/notebooks.py: the chapters the book cache lacks are run and stored so that the
book build finds them (jupyter-cache matches cells by source and metadata)."""

import nbformat
import pytest

import notebooks  # scripts/notebooks.py


@pytest.fixture()
def one_chapter(tmp_path, monkeypatch):
    """A one-cell notebook as the only chapter, and an empty cache, both in tmp_path."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# A chapter"),
        nbformat.v4.new_code_cell("print(6 * 7)", metadata={"tags": ["kept"]})])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setattr(notebooks, "ROOT", tmp_path)
    monkeypatch.setattr(notebooks, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(notebooks, "chapter_paths", lambda: [path])
    return path


def test_fill_book_cache_stores_what_the_build_will_match(one_chapter):
    assert not notebooks.cached(one_chapter)
    (path, run), = notebooks.fill_book_cache(jobs=1)
    assert run.error is None and path == one_chapter
    assert notebooks.cached(one_chapter), "the file as it is on disk now matches"
    from jupyter_cache import get_cache

    cache = get_cache(str(notebooks.CACHE))
    record = cache.match_cache_notebook(nbformat.read(one_chapter, as_version=4))
    stored = cache.get_cache_bundle(record.pk).nb
    assert stored.cells[0].outputs[0]["text"] == "42\n"
    assert notebooks.fill_book_cache(jobs=1) == [], "a second call runs nothing"


def test_a_failing_chapter_is_not_stored(one_chapter):
    nb = nbformat.read(one_chapter, as_version=4)
    nb.cells[1].source = "raise ValueError('broken chapter')"
    nbformat.write(nb, one_chapter)
    (_, run), = notebooks.fill_book_cache(jobs=1)
    assert "broken chapter" in str(run.error)
    assert not notebooks.cached(one_chapter)
