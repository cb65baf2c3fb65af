"""5. Whole-book execution: every chapter notebook run cold, one after another.

Each chapter of ``_toc.yml`` runs in a fresh ``python3`` kernel, from its folder, as the
book build runs it (``scripts/notebooks.py``); the time includes starting the kernel,
importing JAX and compiling. Chapters named in ``_toc.yml`` that do not exist yet are
listed as missing. The run's sizes do not apply: a chapter runs as a reader runs it.
"""

import sys
from pathlib import Path

import markup as md
from common import ROOT, Context
from plots import plt, save
from sections import Goal

NAME = "book"
TITLE = "Whole-book execution"
OPT_IN = False


def _total_time(b: dict, threshold: float) -> tuple[str, bool | None]:
    failed = [c["chapter"] for c in b["chapters"] if not c["ok"]]
    total = sum(c["seconds"] for c in b["chapters"] if c["in_toc"])
    measured = f"{md.secs(total)} s for {sum(c['in_toc'] for c in b['chapters'])} chapters"
    if b["missing"]:
        measured += f"; missing: {', '.join(b['missing'])}"
    if failed:
        measured += f"; failed: {', '.join(failed)}"
    return measured, None if b["missing"] else (total <= 60 * threshold and not failed)


GOALS: tuple[Goal, ...] = (Goal("core chapters run cold in <= {threshold:g} min in total", 6, _total_time),)


def run(ctx: Context) -> dict:
    sys.path.insert(0, str(ROOT / "scripts"))
    import notebooks  # the one place that reads _toc.yml and runs a notebook

    listed = notebooks.chapters()
    out: dict = {"chapters": [], "missing": [n for n in listed if not (ROOT / f"{n}.ipynb").exists()]}
    for name in listed:
        if name in out["missing"]:
            continue
        result = notebooks.execute(ROOT / f"{name}.ipynb", timeout=600)
        error = None  # a failing chapter is reported, not fatal
        if result.error is not None:
            error = f"{type(result.error).__name__}: {(str(result.error).strip().splitlines() or [''])[-1]}"[:300]
        out["chapters"].append({"chapter": name, "seconds": result.seconds,
                                "code_cells": sum(c.cell_type == "code" for c in result.nb.cells),
                                "ok": error is None, "error": error, "in_toc": True})
        ctx.log(f"  {name}: {result.seconds:.1f} s" + ("" if error is None else f" FAILED ({error})"))
    out["total_seconds"] = sum(c["seconds"] for c in out["chapters"])
    return out


def render(b: dict, image_dir: str) -> str:
    rows = [[c["chapter"], md.secs(c["seconds"]), c["code_cells"], "ok" if c["ok"] else f"failed: {c['error']}"]
            for c in b["chapters"]]
    parts = ["Each chapter run cold with nbclient in a fresh kernel (kernel start, imports and compilation "
             "included), one after another.", ""]
    if rows:
        parts += [md.table(["chapter", "seconds", "code cells", "status"], rows), "",
                  f"Total: {md.secs(b['total_seconds'])} s.", ""]
    if b["missing"]:
        parts += [f"Missing when this ran: {', '.join(b['missing'])}.", ""]
    if rows:
        parts.append(md.figure("Chapter execution times", image_dir, NAME))
    return "\n".join(parts).rstrip()


def plot(b: dict, path: Path) -> None:
    chapters = b["chapters"][::-1]  # the first chapter at the top
    if not chapters:
        return
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(chapters) + 1.2))
    ax.barh([c["chapter"].split("/")[-1] for c in chapters], [c["seconds"] for c in chapters],
            color=["C0" if c["ok"] else "C3" for c in chapters])
    ax.set(xlabel="seconds, cold (fresh kernel)", title=f"Chapter execution, total {b['total_seconds']:.0f} s")
    save(fig, path)
