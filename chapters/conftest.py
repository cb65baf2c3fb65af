"""Execute once: what nbval runs here, the book build reuses.

``make notebooks`` runs every chapter with nbval (one pytest item per code cell, in one
kernel per notebook). nbval keeps what each cell printed in ``item.test_outputs``. When
every cell of a chapter has passed, these hooks write those outputs into a copy of the
notebook and store it in the book's jupyter-cache (``scripts/notebooks.py``). The book is
built with ``execute_notebooks: cache``, so it takes the chapter's outputs from there and
does not run it again. A chapter that failed, or was only partly selected, is not stored;
the book build then runs it itself.
"""

from __future__ import annotations

import copy
import time

import pytest

import notebooks

_runs: dict = {}  # notebook path -> {"start", "outputs": {cell_num: outputs}, "ok", "cells"}


def _is_cell(item) -> bool:
    return hasattr(item, "cell_num") and hasattr(item, "test_outputs")


def pytest_runtest_setup(item):
    if _is_cell(item) and item.parent.path not in _runs:
        cells = [i for i in item.session.items if _is_cell(i) and i.parent is item.parent]
        _runs[item.parent.path] = {"start": time.perf_counter(), "outputs": {}, "ok": True,
                                   "cells": len(cells)}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    run = _runs.get(getattr(item.parent, "path", None)) if _is_cell(item) else None
    if run is None:
        return
    if report.failed or (report.skipped and report.when == "call"):
        run["ok"] = False
    if report.when == "call" and report.passed:
        run["outputs"][item.cell_num] = item.test_outputs or []


def pytest_runtest_teardown(item, nextitem):
    if not _is_cell(item) or (nextitem is not None and nextitem.parent is item.parent):
        return
    run = _runs.pop(item.parent.path, None)
    if run and run["ok"] and len(run["outputs"]) == run["cells"] == _code(item):
        notebooks.store_in_book_cache(item.parent.path, _executed(item.parent.nb, run),
                                      time.perf_counter() - run["start"])


def _code(item) -> int:
    return sum(cell.cell_type == "code" for cell in item.parent.nb.cells)


def _executed(nb, run):
    """The notebook as read by nbval, with each code cell's outputs and execution count."""
    nb = copy.deepcopy(nb)
    count = 0
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = run["outputs"][count]
            count += 1
            cell.execution_count = count
    return nb
