"""Run the chapters on Colab's package versions, the setup cell in install mode.

Called by scripts/colab_check.sh, which builds ``.venv-colab`` from
scripts/colab-requirements.txt (Colab's stack, Python 3.13 where it is found). This
script runs in the main ``.venv`` (nbclient must not land in Colab's package set); the
*kernel* is ``.venv-colab``'s Python, registered as a kernelspec in a temporary folder.

1. It resets ``.venv-colab`` to its recorded package set (``.baseline.json``): it
   uninstalls what an earlier run's setup cell installed and restores changed versions,
   so that the setup cell really installs.
2. It runs the chapters from chapters/, in the order of _toc.yml, with cells injected
   (in memory only) around the setup cell of the first one: before it, nothing of the
   course is importable; after it, jax, jaxlib, flax, optax, numpy, matplotlib and pillow
   are still Colab's versions, and fm_helpers is a regular install from
   FM_HELPERS_SOURCE, a temporary copy of this working tree (tracked and untracked
   files, not ignored ones: what a clone has, plus edits). Every chapter's setup cell is
   the same cell (tests/test_conventions.py checks it), so installing once proves it for
   all; the later chapters run on what it installed, each checked after its setup cell
   as the first one was, two at a time (``--jobs``; each in its own kernel, as nbval
   runs them). ``--install-each`` resets and installs before every chapter, one by one.
3. It prints a per-chapter time table and the versions pip installed.

``--smoke`` (``make colab-smoke``) stops each chapter after its first code cell past the
setup cell (the imports): a quick proof that the setup cell installs and the course
imports on Colab's Python and IPython (a stage of ``make test``). ``make colab-check``
runs every chapter in full.

Executed notebooks go to _build/colab-check/. Exit status 1 names the chapter and cell.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat

import notebooks  # beside this file
from notebooks import ROOT

KERNEL_NAME = "fm-colab-check"
MARKER = "COLAB_CHECK_RESULT "
# What the course installs (diffrax, OTT-JAX and what they bring along): none of it may be
# importable before the setup cell.
COURSE_MODULES = ("fm_helpers", "diffrax", "equinox", "lineax", "optimistix", "jaxtyping", "ott")
# The distributions (pip names) whose versions the check prints after the setup cell.
REPORTED = ("fm_helpers", "diffrax", "equinox", "lineax", "optimistix", "jaxtyping", "ott-jax",
            "jaxopt", "scipy", "msgpack")


def canon(name: str) -> str:
    """A package name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(req: Path) -> dict[str, str]:
    pins = {}
    for line in req.read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.split("#", 1)[0].strip())
        if m:
            pins[canon(m.group(1))] = m.group(2)
    return pins


def rel(path: Path) -> str:
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def pip_list(py: Path) -> dict[str, str]:
    out = subprocess.run([str(py), "-m", "pip", "list", "--format=json",
                          "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True).stdout
    return {canon(p["name"]): p["version"] for p in json.loads(out)}


def pip(py: Path, *args: str) -> None:
    subprocess.run([str(py), "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                   check=True, capture_output=True, text=True)


def reset_venv(py: Path, baseline: dict[str, str]) -> list[str]:
    """Bring .venv-colab back to its baseline package set; return what was changed."""
    now = pip_list(py)
    extra = sorted(n for n in now if n not in baseline)
    changed = sorted(n for n in baseline if now.get(n) != baseline[n])
    if extra:
        pip(py, "uninstall", "-y", *extra)
    if changed:
        pip(py, "install", "--no-deps", *[f"{n}=={baseline[n]}" for n in changed])
    after = pip_list(py)
    if after != baseline:
        diff = {n: (baseline.get(n), after.get(n)) for n in set(after) | set(baseline)
                if after.get(n) != baseline.get(n)}
        raise SystemExit(f"colab-check: could not reset .venv-colab to its baseline: {diff}")
    return [f"-{n}" for n in extra] + [f"~{n}" for n in changed]


def snapshot(dest: Path) -> Path:
    """Copy the checkout's files (tracked and untracked, not git-ignored) to dest.

    Colab's ``pip install git+URL`` builds from a fresh clone; installing from this copy
    does the same for the working tree without writing build/ or *.egg-info into it.
    """
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                         check=True, capture_output=True).stdout
    for name in filter(None, out.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


# The two injected checks are ordinary functions; the kernel gets their source and a call.
def nothing_installed_yet(modules):
    import importlib.util

    present = [m for m in modules if importlib.util.find_spec(m) is not None]
    assert not present, f"colab-check: importable before the setup cell ran: {present}"


def already_installed(modules):
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    assert not missing, f"colab-check: not installed by the first chapter: {missing}"


def installed_as_on_colab(pins, reported, marker):
    import importlib.metadata as md
    import json
    import os
    import sys
    import sysconfig

    import flax, fm_helpers, jax, matplotlib, numpy, optax, PIL  # noqa: E401
    from jaxlib.version import __version__ as jaxlib_version

    imported = {"jax": jax.__version__, "jaxlib": jaxlib_version, "flax": flax.__version__,
                "optax": optax.__version__, "numpy": numpy.__version__,
                "matplotlib": matplotlib.__version__, "pillow": PIL.__version__}
    problems = []
    for name, want in pins.items():
        if md.version(name) != want:
            problems.append(f"{name}: installed {md.version(name)}, Colab has {want}")
        if imported.get(name, want) != want:
            problems.append(f"{name}: imported {imported[name]}, Colab has {want}")
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    where = os.path.realpath(fm_helpers.__file__)
    if not where.startswith(site + os.sep):
        problems.append(f"fm_helpers imported from {where}, not from {site}")
    direct = json.loads(md.distribution("fm_helpers").read_text("direct_url.json") or "{}")
    if direct.get("dir_info", {}).get("editable"):
        problems.append("fm_helpers is an editable install")
    source = os.environ.get("FM_HELPERS_SOURCE", "")
    if os.path.realpath(direct.get("url", "").removeprefix("file://")) != os.path.realpath(source):
        problems.append(f"fm_helpers installed from {direct.get('url')!r}, not {source!r}")
    versions = {}
    for name in sorted(set(pins) | set(reported)):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    print(marker + json.dumps({"python": sys.version.split()[0], "versions": versions}))
    assert not problems, "colab-check: " + "; ".join(problems)


def injected(function, *args) -> nbformat.NotebookNode:
    """A code cell that defines ``function`` in the kernel, calls it with ``args``, and
    deletes it again (so the chapter's namespace is as it would be on Colab)."""
    name = function.__name__
    source = (f"# colab-check (injected, not in the file)\n{inspect.getsource(function)}"
              f"{name}(*{args!r})\ndel {name}\n")
    return nbformat.v4.new_code_cell(source, metadata={"colab_check": name})


def setup_cell_index(nb) -> int:
    first = next(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code")
    if "FM_HELPERS_SOURCE" not in nb.cells[first].source:
        raise SystemExit("colab-check: the first code cell is not the Colab setup cell")
    return first


def run_chapter(path: Path, pins: dict, timeout: int, outdir: Path, smoke: bool,
                installs: bool) -> dict:
    """Run one chapter; ``installs``: the setup cell must find nothing installed."""
    nb = nbformat.read(path, as_version=4)
    setup = setup_cell_index(nb)
    origin = list(range(len(nb.cells)))  # index in the file of each cell that runs
    before = (injected(nothing_installed_yet, COURSE_MODULES) if installs
              else injected(already_installed, COURSE_MODULES))
    nb.cells[setup:setup + 1] = [before, nb.cells[setup],
                                 injected(installed_as_on_colab, pins, REPORTED, MARKER)]
    origin[setup:setup + 1] = ["injected pre-check", setup, "injected post-check"]
    if smoke:  # keep the cells up to the first code cell after the setup cell
        last = next(i for i in range(setup + 3, len(nb.cells))
                    if nb.cells[i].cell_type == "code")
        del nb.cells[last + 1:], origin[last + 1:]

    current = {"index": None}
    outdir.mkdir(parents=True, exist_ok=True)
    log = outdir / f"{path.stem}.kernel.log"  # the kernel's stderr: pip's warnings
    with open(log, "w") as stream:
        run = notebooks.execute(
            path, nb=nb, timeout=timeout, kernel_name=KERNEL_NAME, record_timing=True,
            on_cell_execute=lambda cell, cell_index, **_: current.update(index=cell_index),
            kernel_output=stream)
    nbformat.write(nb, outdir / path.name)

    result = {"chapter": path.name, "seconds": run.seconds,
              "setup_seconds": cell_seconds(nb.cells[setup + 1])}
    if run.error is not None:
        i = current["index"]
        where = origin[i] if i is not None else "?"
        label = where if isinstance(where, str) else f"cell {where} (0-based)"
        first = next((ln for ln in (nb.cells[i].source if i is not None else "").splitlines()
                      if ln.strip() and not ln.startswith("#")), "")
        result["error"] = (f"{rel(path)}: {label} failed: {first[:80]} (kernel log: "
                           f"{rel(log)})\n" + re.sub(r"\x1b\[[0-9;]*m", "", str(run.error)))
        return result
    for out in nb.cells[setup + 2].get("outputs", []):
        for line in out.get("text", "").splitlines():
            if line.startswith(MARKER):
                result.update(json.loads(line[len(MARKER):]))
    if "versions" not in result:
        result["error"] = f"{rel(path)}: the injected version check printed no result"
    return result


def cell_seconds(cell) -> float | None:
    from datetime import datetime

    ex = cell.get("metadata", {}).get("execution", {})
    a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (a and b):
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def kernel_environment(venv: Path, tmp: Path) -> None:
    """Colab-like: on the CPU, installing from a copy of this checkout, and the only
    kernelspec added is the one for .venv-colab's Python (nothing is installed)."""
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        os.environ.pop(var, None)
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # ipykernel's debugger, Python 3.13
    os.environ["FM_HELPERS_SOURCE"] = str(snapshot(tmp / "src" / "flow-matching-jax"))
    os.environ["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    kdir = tmp / "kernels" / KERNEL_NAME
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher",
                 "-f", "{connection_file}"],
        "display_name": "Python 3 (Colab stack)", "language": "python"}))
    os.environ["JUPYTER_PATH"] = str(tmp)


def report(rows: list[dict], total: float, jobs: int) -> None:
    print(f"\n{'chapter':32s} {'reset s':>8s} {'setup s':>8s} {'total s':>8s}  result")
    for r in rows:
        setup = f"{r['setup_seconds']:.1f}" if r.get("setup_seconds") is not None else "-"
        print(f"{r['chapter']:32s} {r['reset_seconds']:8.1f} {setup:>8s} "
              f"{r['seconds']:8.1f}  {'FAIL' if 'error' in r else 'ok'}")
    print(f"{'all (with venv resets)':32s} {'':8s} {'':8s} {total:8.1f}")
    if jobs > 1 and len(rows) > 2:
        print(f"(after the first, {jobs} chapters ran at once: each time above is longer "
              "than that chapter alone)")
    done = [r for r in rows if "versions" in r]
    if done:
        print(f"\nversions in the kernel after the setup cell (python {done[-1]['python']}): "
              + ", ".join(f"{k} {v}" for k, v in done[-1]["versions"].items()))


def main() -> int:
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-colab")
    ap.add_argument("--requirements", type=Path,
                    default=ROOT / "scripts" / "colab-requirements.txt")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout, seconds")
    ap.add_argument("--smoke", action="store_true",
                    help="run each chapter only up to its imports after the setup cell")
    ap.add_argument("--install-each", action="store_true",
                    help="reset .venv-colab and install before every chapter, not once")
    ap.add_argument("--jobs", type=int, default=2,
                    help="chapters run at once after the first (default 2: one per core "
                         "here); each has its own kernel")
    ap.add_argument("--record-baseline", action="store_true",
                    help="record .venv-colab's package set as the one to reset to, and exit")
    ap.add_argument("chapters", nargs="*", type=Path,
                    help="notebooks to run (default: every chapter in _toc.yml)")
    args = ap.parse_args()

    venv = args.venv.resolve()
    py = venv / "bin" / "python"
    if args.record_baseline:
        (venv / ".baseline.json").write_text(json.dumps(pip_list(py), indent=1, sort_keys=True))
        return 0
    baseline = json.loads((venv / ".baseline.json").read_text())
    pins = read_pins(args.requirements)
    chapters = [c.resolve() for c in args.chapters] or notebooks.chapter_paths()

    outdir = ROOT / "_build" / "colab-check"

    def run(path: Path, installs: bool) -> dict:
        t0 = time.perf_counter()
        reset = reset_venv(py, baseline) if installs else []
        reset_seconds = time.perf_counter() - t0
        row = run_chapter(path, pins, args.timeout, outdir, args.smoke, installs)
        print(f"colab-check: {path.name} "
              + ("FAILED" if "error" in row else f"ok ({row['seconds']:.1f} s)"), flush=True)
        return {**row, "reset_seconds": reset_seconds, "reset": reset}

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="colab-check-") as tmp:
        kernel_environment(venv, Path(tmp))
        if args.install_each:  # every chapter resets the one venv: one at a time
            rows = [run(path, installs=True) for path in chapters]
        else:  # the first installs; the others only read that install, side by side
            rows = [run(chapters[0], installs=True)]
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                rows += pool.map(lambda path: run(path, installs=False), chapters[1:])
        reset_venv(py, baseline)  # leave .venv-colab as Colab's stack, without the course
    report(rows, time.perf_counter() - started, args.jobs)

    failures = [r["error"] for r in rows if "error" in r]
    if failures:
        print(f"\ncolab-check FAILED in {len(failures)} of {len(rows)} chapters "
              f"(executed notebooks in {rel(outdir)}/):", file=sys.stderr)
        for failure in failures:
            print("\n" + failure, file=sys.stderr)
        return 1
    what = "setup cell and imports" if args.smoke else "every cell"
    installed = "each time" if args.install_each else "with the first chapter"
    print(f"\ncolab-check: {len(rows)} chapter(s) on Colab's stack ({what}), "
          f"the setup cell installing {installed}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
