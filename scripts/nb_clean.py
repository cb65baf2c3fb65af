"""Prepare chapter notebooks for commit: strip outputs, keep nbval's reference outputs.

Notebooks are committed without outputs (the book and nbval execute them), with one
exception: a cell marked ``# NBVAL_CHECK_OUTPUT`` keeps the text it printed, because
nbval compares a fresh run against it. This script executes each notebook given
(or every chapter), then strips everything else: other outputs, execution counts and
run-time metadata.

Usage (from the repository root, in .venv):
    python scripts/nb_clean.py                      # every chapter
    python scripts/nb_clean.py chapters/01_cnf.ipynb
    python scripts/nb_clean.py --no-execute FILE    # strip only (drops reference outputs too)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

import notebooks  # scripts/notebooks.py, beside this file

ROOT = Path(__file__).resolve().parents[1]
MARK = "# NBVAL_CHECK_OUTPUT"


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and MARK in cell.source


def clean(path: Path, execute: bool) -> None:
    nb = nbformat.read(path, as_version=4)
    if execute:
        run = notebooks.execute(path, nb=nb)
        if run.error is not None:
            raise SystemExit(f"{path.relative_to(ROOT)} failed; nothing written:\n{run.error}")
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        if execute and is_checked(cell):
            # keep only what a run prints as text; drop run-dependent metadata
            cell.outputs = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"]
        else:
            cell.outputs = []
        # nbval 0.11 treats a cell with outputs but no execution count as never run and
        # fails it, so a reference output keeps a (constant) count; every other cell has none.
        cell.execution_count = 1 if cell.outputs else None
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nbformat.write(nb, path)
    print(f"cleaned {path.relative_to(ROOT)}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--no-execute", action="store_true")
    args = parser.parse_args(argv)
    paths = args.notebooks or notebooks.chapter_paths()
    for path in paths:
        clean(path.resolve(), execute=not args.no_execute)


if __name__ == "__main__":
    main(sys.argv[1:])
