"""The course's published benchmark results, as chapters 5 and 7 read them.

``make bench`` writes ``benchmarks/results/latest.json`` in the repository (the book's
benchmarks appendix is generated from it). A chapter that quotes a figure measured there
reads the file with :func:`benchmark_results`: from the checkout it runs in (the offline
default, in CI and in the built book), or, when the notebook runs on its own, as in
Colab, from the course repository on GitHub.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["REPO_URL", "RESULTS_FILE", "BenchmarkResultsError", "benchmark_results"]

#: The course repository, where a notebook outside a checkout fetches the results.
REPO_URL = "https://github.com/flow-matching-jax/flow-matching-jax"
#: The results file, relative to the repository root.
RESULTS_FILE = "benchmarks/results/latest.json"


class BenchmarkResultsError(RuntimeError):
    """The results file could not be found or fetched; the message says what to do."""


def _local_copy(start: Path) -> Path | None:
    """``RESULTS_FILE`` in ``start`` or the nearest folder above it that has one."""
    for folder in [start, *start.parents]:
        if (folder / RESULTS_FILE).is_file():
            return folder / RESULTS_FILE
    return None


def benchmark_results(
    start: str | Path | None = None, *, url: str | None = None, timeout: float = 10.0
) -> dict:
    """The benchmark results (the parsed JSON of ``RESULTS_FILE``).

    Looks in ``start`` (default: the working directory, a chapter's folder when a notebook
    runs) and the folders above it; if none holds the file, downloads it from ``url``
    (default: the file on the main branch of :data:`REPO_URL`), waiting at most
    ``timeout`` seconds to connect and between bytes. Raises
    :class:`BenchmarkResultsError` when neither works.
    """
    local = _local_copy(Path.cwd() if start is None else Path(start).resolve())
    if local is not None:
        return json.loads(local.read_text())
    if url is None:
        raw = REPO_URL.replace("https://github.com", "https://raw.githubusercontent.com")
        url = f"{raw}/main/{RESULTS_FILE}"
    import requests  # imported here: only a notebook outside the checkout needs it

    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
        return response.json()
    except (requests.RequestException, ValueError) as err:
        raise BenchmarkResultsError(
            f"no {RESULTS_FILE} in {start or Path.cwd()} or above it, and {url} could not "
            f"be read within {timeout} s ({type(err).__name__}: {err}). Run the notebook "
            f"from a checkout of {REPO_URL}, or create the file there with `make bench`."
        ) from err
