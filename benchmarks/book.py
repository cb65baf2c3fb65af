"""5. Whole-book execution: every chapter notebook run cold, one after another.

Each notebook in ``chapters/`` runs with nbclient in a fresh ``python3`` kernel, from
the notebook's folder, as the book build runs it; the time includes starting the kernel,
importing JAX and compiling. Chapters named in ``_toc.yml`` that do not exist yet are
listed as missing.
"""

from __future__ import annotations

import re
import time

from common import ROOT


def toc_chapters() -> list[str]:
    text = (ROOT / "_toc.yml").read_text()
    return re.findall(r"file:\s*(chapters/[\w-]+)", text)


def run(cfg, problem=None, log=print) -> dict:
    import nbformat
    from nbclient import NotebookClient

    listed = toc_chapters()
    present = sorted(p.relative_to(ROOT).with_suffix("").as_posix() for p in (ROOT / "chapters").glob("*.ipynb"))
    names = listed + [p for p in present if p not in listed]
    out = {"chapters": [], "missing": [n for n in listed if n not in present]}
    for name in names:
        if name not in present:
            continue
        path = ROOT / f"{name}.ipynb"
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        error = None
        try:
            client.execute()
        except Exception as exc:  # a failing chapter is reported, not fatal
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"[:300]
        wall = time.perf_counter() - start
        code_cells = sum(c.cell_type == "code" for c in nb.cells)
        out["chapters"].append({"chapter": name, "seconds": wall, "code_cells": code_cells,
                                "ok": error is None, "error": error, "in_toc": name in listed})
        log(f"  {name}: {wall:.1f} s" + ("" if error is None else f" FAILED ({error})"))
    out["total_seconds"] = sum(c["seconds"] for c in out["chapters"])
    return out
