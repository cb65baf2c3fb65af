"""The book's notebooks: which there are, running one, and handing its outputs to the book.

The one place that reads ``_toc.yml`` and the one place that sets up nbclient. Used by
the tests (conventions, browser), the Colab check, the whole-book benchmark,
``scripts/nb_clean.py`` and ``chapters/conftest.py`` (which stores what nbval executed in
the book's jupyter-cache, so that the book build does not run a chapter a second time).
``make book`` calls ``--fill-cache`` first: the chapters the cache lacks run two at a
time, so the build itself executes nothing.

Import it from the repository root's ``scripts`` folder (pytest puts it on the path).
"""

from __future__ import annotations

import fcntl
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
# Where the book build (execute_notebooks: cache) looks for executed notebooks.
CACHE = ROOT / (CONFIG["execute"].get("cache") or "_build/.jupyter_cache")



def pages() -> list[str]:
    """Every page of the book in reading order, as in ``_toc.yml`` (no suffix)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [entry["file"] for entry in part["chapters"]]
    return files


def chapters() -> list[str]:
    """The chapter notebooks, ``chapters/NN_name``, in reading order."""
    return [page for page in pages() if page.startswith("chapters/")]


def chapter_paths() -> list[Path]:
    return [ROOT / f"{name}.ipynb" for name in chapters()]


@dataclass(frozen=True)
class Run:
    """An executed notebook, how long it took (kernel start included), and its error."""

    nb: nbformat.NotebookNode
    seconds: float
    error: Exception | None


def execute(path: Path, *, timeout: int | None = None, kernel_name: str = "python3",
            nb: nbformat.NotebookNode | None = None, kernel_output: IO | None = None,
            **client_options) -> Run:
    """Run the notebook at ``path`` (or ``nb``, read from it) top to bottom, from its folder.

    ``timeout`` is per cell and defaults to the book's ``execute.timeout``; the kernel
    process's own stdout and stderr go to ``kernel_output`` when given. Errors from the
    cells are returned in ``Run.error``, not raised, so a caller can report every chapter.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4) if nb is None else nb
    client = NotebookClient(
        nb, timeout=timeout or CONFIG["execute"]["timeout"], kernel_name=kernel_name,
        resources={"metadata": {"path": str(Path(path).parent)}}, **client_options)
    start = time.perf_counter()
    error = None
    try:
        client.execute(**({"stdout": kernel_output, "stderr": kernel_output}
                          if kernel_output else {}))
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
        error = exc
    return Run(nb, time.perf_counter() - start, error)


@contextmanager
def _locked(cache: Path):
    """One writer at a time: nbval runs chapters on two workers."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".write-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def store_in_book_cache(path: Path, nb: nbformat.NotebookNode, seconds: float) -> None:
    """Put an executed notebook where ``jupyter-book build`` finds it.

    jupyter-cache matches a notebook by a hash of its code cells (source and metadata) and
    its kernelspec, so ``nb`` must be the file at ``path`` with outputs filled in.
    """
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    with _locked(CACHE):
        get_cache(str(CACHE)).cache_notebook_bundle(
            CacheBundleIn(nb, str(Path(path).resolve()), data={"execution_seconds": seconds}),
            check_validity=False, overwrite=True)


def cached(path: Path) -> bool:
    """Whether the book cache holds this notebook as it is now on disk."""
    from jupyter_cache import get_cache

    if not CACHE.exists():
        return False
    try:
        get_cache(str(CACHE)).match_cache_notebook(nbformat.read(path, as_version=4))
    except KeyError:
        return False
    return True


def _outputs_into_file(path: Path, executed: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook at ``path`` with the outputs of ``executed``: nbclient adds timing
    metadata to every cell, and the cache matches cells by their metadata too."""
    nb = nbformat.read(path, as_version=4)
    for cell, ran in zip(nb.cells, executed.cells, strict=True):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = ran.outputs, ran.execution_count
    return nb


def fill_book_cache(jobs: int = 2) -> list[tuple[Path, Run]]:
    """Run every chapter that the book cache does not hold as it is now, ``jobs`` at a
    time (each in its own kernel, from its folder, with the book's timeout), and store
    each one that ran without error. Returns the runs, in reading order."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [p for p in chapter_paths() if not cached(p)]

    def run(path: Path) -> tuple[Path, Run]:
        result = execute(path)
        if result.error is None:
            store_in_book_cache(path, _outputs_into_file(path, result.nb), result.seconds)
        print(f"{path.relative_to(ROOT)}: {'FAILED' if result.error else 'ran'} in "
              f"{result.seconds:.1f} s", flush=True)
        return path, result

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return list(pool.map(run, todo))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="The book's chapters and its cache.")
    parser.add_argument("--fill-cache", action="store_true", help="run the chapters the "
                        "book cache lacks, side by side, and store them (make book does)")
    parser.add_argument("--jobs", type=int, default=2, help="chapters at once (default 2)")
    args = parser.parse_args(argv)
    if not args.fill_cache:  # which chapters the book cache holds
        for p in chapter_paths():
            print(f"{'cached ' if cached(p) else 'to run '} {p.relative_to(ROOT)}")
        return 0
    runs = fill_book_cache(args.jobs)
    failed = [(p, r) for p, r in runs if r.error is not None]
    for path, r in failed:
        print(f"\n{path.relative_to(ROOT)} failed:\n{r.error}", file=sys.stderr)
    print(f"book cache: {len(runs) - len(failed)} chapter(s) run and stored, "
          f"{len(chapter_paths()) - len(runs)} already there")
    return 1 if failed else 0


if __name__ == "__main__":  # python scripts/notebooks.py [--fill-cache]
    sys.exit(main())
