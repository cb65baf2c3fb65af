"""5. Whole-book execution: every chapter notebook run cold, one after another.

Each chapter of ``_toc.yml`` runs in a fresh ``python3`` kernel, from its folder, as the
book build runs it (``scripts/notebooks.py``); the time includes starting the kernel,
importing JAX and compiling. Chapters named in ``_toc.yml`` that do not exist yet are
listed as missing.
"""

from __future__ import annotations

import sys

from common import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402


def run(cfg, problem=None, log=print) -> dict:
    listed = notebooks.chapters()
    out = {"chapters": [], "missing": [n for n in listed if not (ROOT / f"{n}.ipynb").exists()]}
    for name in listed:
        if name in out["missing"]:
            continue
        result = notebooks.execute(ROOT / f"{name}.ipynb", timeout=600)
        error = None
        if result.error is not None:  # a failing chapter is reported, not fatal
            last = str(result.error).strip().splitlines()[-1:] or [""]
            error = f"{type(result.error).__name__}: {last[0]}"[:300]
        code_cells = sum(c.cell_type == "code" for c in result.nb.cells)
        out["chapters"].append({"chapter": name, "seconds": result.seconds,
                                "code_cells": code_cells, "ok": error is None,
                                "error": error, "in_toc": True})
        log(f"  {name}: {result.seconds:.1f} s" + ("" if error is None else f" FAILED ({error})"))
    out["total_seconds"] = sum(c["seconds"] for c in out["chapters"])
    return out
