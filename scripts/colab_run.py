"""Run every chapter on Colab's package versions, with its setup cell in install mode.

Called by scripts/colab_check.sh (``make colab-check``), which builds ``.venv-colab`` from
scripts/colab-requirements.txt and records its package set in ``.venv-colab/.baseline.json``.
This script runs in the main ``.venv`` (it needs nbclient and nbformat, which Colab's
package set should not be polluted with); the *kernel* is ``.venv-colab``'s Python,
registered as a kernelspec in a temporary directory. For each chapter in _toc.yml it

1. resets ``.venv-colab`` to the baseline: uninstalls whatever an earlier chapter's setup
   cell installed (fm_helpers, diffrax, equinox, ...), restores any baseline version that
   was changed, so that every chapter's setup cell really installs;
2. executes the notebook top to bottom with cwd = chapters/, allowing errors only in cells
   tagged ``raises-exception``, with two cells injected (in memory only) around the setup
   cell: one asserting that nothing of the course is installed yet, one asserting that
   afterwards jax/jaxlib/flax/optax/numpy/matplotlib/pillow are still Colab's versions and
   that fm_helpers is imported from site-packages, installed (not editable) from
   FM_HELPERS_SOURCE = a temporary copy of this checkout's working tree (tracked and
   untracked, not ignored files: what a clone would have, plus uncommitted edits);
3. prints a per-chapter time table and the versions pip installed.

Executed notebooks are written to _build/colab-check/ for inspection. Exit status 1 names
the chapter and cell that failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
KERNEL_NAME = "fm-colab-check"
MARKER = "COLAB_CHECK_RESULT "
# What diffrax brings along, also checked absent before each setup cell.
COURSE_MODULES = ("fm_helpers", "diffrax", "equinox", "lineax", "optimistix", "jaxtyping")
REPORTED = ("fm_helpers", "diffrax", "equinox", "lineax", "optimistix", "jaxtyping", "scipy", "msgpack")


def chapters_from_toc() -> list[Path]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = []

    def walk(node):
        if isinstance(node, dict):
            f = node.get("file")
            if isinstance(f, str) and f.startswith("chapters/"):
                files.append(ROOT / f"{f}.ipynb")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return files


def read_pins(req: Path) -> dict[str, str]:
    pins = {}
    for line in req.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if m:
            pins[canon(m.group(1))] = m.group(2)
    return pins


def rel(path: Path) -> str:
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_list(py: Path) -> dict[str, str]:
    out = subprocess.run([str(py), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
                         check=True, capture_output=True, text=True).stdout
    return {canon(p["name"]): p["version"] for p in json.loads(out)}


def reset_venv(py: Path, baseline: dict[str, str]) -> list[str]:
    """Bring .venv-colab back to its baseline package set; return what was changed."""
    now = pip_list(py)
    extra = sorted(n for n in now if n not in baseline)
    changed = sorted(n for n in baseline if now.get(n) != baseline[n])
    if extra:
        subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", *extra], check=True,
                       capture_output=True, text=True)
    if changed:
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                        *[f"{n}=={baseline[n]}" for n in changed]], check=True, capture_output=True, text=True)
    after = pip_list(py)
    if after != baseline:
        diff = {n: (baseline.get(n), after.get(n)) for n in set(after) | set(baseline)
                if after.get(n) != baseline.get(n)}
        raise SystemExit(f"colab-check: could not reset .venv-colab to its baseline: {diff}")
    return [f"-{n}" for n in extra] + [f"~{n}" for n in changed]


def snapshot(dest: Path) -> Path:
    """Copy the checkout's files (tracked and untracked, not git-ignored) to dest.

    Colab's ``pip install git+URL`` builds from a fresh clone; installing from this copy
    does the same for the working tree (uncommitted edits included) without writing
    build/ or *.egg-info into the checkout, and without stale files that setuptools
    leaves in build/lib being packaged. Falls back to the checkout itself outside git.
    """
    try:
        out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                             check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ROOT
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def pre_check_source() -> str:
    return f"""# colab-check (injected, not in the file): nothing of the course is installed yet
import importlib.util as _cc_u
_cc_present = [m for m in {COURSE_MODULES!r} if _cc_u.find_spec(m) is not None]
assert not _cc_present, f"colab-check: already importable before the setup cell ran: {{_cc_present}}"
del _cc_u, _cc_present
"""


def post_check_source(pins: dict[str, str]) -> str:
    return f"""# colab-check (injected, not in the file): the setup cell installed the course, kept Colab's stack
def _cc_check():
    import importlib.metadata as md, json, os, sys, sysconfig
    import jax, flax, optax, numpy, matplotlib, PIL, diffrax, fm_helpers
    from jaxlib.version import __version__ as jaxlib_version
    pins = {pins!r}
    runtime = {{"jax": jax.__version__, "jaxlib": jaxlib_version, "flax": flax.__version__,
               "optax": optax.__version__, "numpy": numpy.__version__,
               "matplotlib": matplotlib.__version__, "pillow": PIL.__version__}}
    problems = []
    for name, want in pins.items():
        got = md.version(name)
        if got != want:
            problems.append(f"{{name}}: installed {{got}}, Colab has {{want}}")
        if name in runtime and runtime[name] != want:
            problems.append(f"{{name}}: imported {{runtime[name]}}, Colab has {{want}}")
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    where = os.path.realpath(fm_helpers.__file__)
    if not where.startswith(site + os.sep):
        problems.append(f"fm_helpers imported from {{where}}, not from the install in {{site}}")
    direct = json.loads(md.distribution("fm_helpers").read_text("direct_url.json") or "{{}}")
    if direct.get("dir_info", {{}}).get("editable"):
        problems.append("fm_helpers is an editable install")
    source = os.environ.get("FM_HELPERS_SOURCE", "")
    if os.path.realpath(direct.get("url", "").removeprefix("file://")) != os.path.realpath(source):
        problems.append(f"fm_helpers installed from {{direct.get('url')!r}}, not FM_HELPERS_SOURCE={{source!r}}")
    report = {{"python": sys.version.split()[0], "fm_helpers_file": where,
              "versions": {{n: md.version(n) for n in sorted(set(pins) | set({list(REPORTED)!r}))
                           if _cc_has(md, n)}}}}
    print({MARKER!r} + json.dumps(report))
    assert not problems, "colab-check: " + "; ".join(problems)
def _cc_has(md, n):
    try:
        md.version(n)
        return True
    except md.PackageNotFoundError:
        return False
_cc_check()
del _cc_check, _cc_has
"""


def find_setup_cell(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            if "FM_HELPERS_SOURCE" not in cell.source or 'find_spec("fm_helpers")' not in cell.source:
                raise SystemExit("colab-check: the first code cell is not the Colab setup cell")
            return i
    raise SystemExit("colab-check: no code cell")


def cell_seconds(cell) -> float | None:
    ex = cell.get("metadata", {}).get("execution", {})
    a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (a and b):
        return None
    from datetime import datetime
    return (datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00"))).total_seconds()


def run_chapter(path: Path, pins: dict[str, str], timeout: int, outdir: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    setup = find_setup_cell(nb)
    pre = nbformat.v4.new_code_cell(pre_check_source(), metadata={"colab_check": "pre"})
    post = nbformat.v4.new_code_cell(post_check_source(pins), metadata={"colab_check": "post"})
    # original cell index (0-based, among all cells) of each cell of the run
    origin = list(range(len(nb.cells)))
    nb.cells[setup:setup + 1] = [pre, nb.cells[setup], post]
    origin[setup:setup + 1] = ["injected pre-check", setup, "injected post-check"]

    current = {"index": None}

    def on_cell_execute(cell, cell_index, **_):
        current["index"] = cell_index

    # The kernel is found through JUPYTER_PATH (set in main); nbclient owns and shuts it down.
    client = NotebookClient(nb, kernel_name=KERNEL_NAME, timeout=timeout, allow_errors=False,
                            record_timing=True, resources={"metadata": {"path": str(path.parent)}},
                            on_cell_execute=on_cell_execute)
    outdir.mkdir(parents=True, exist_ok=True)
    log = outdir / f"{path.stem}.kernel.log"  # the kernel's own stderr, pip's warnings included
    t0 = time.perf_counter()
    error = None
    with open(log, "w") as stderr:
        try:
            client.execute(stderr=stderr, stdout=stderr)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as exc:
            error = exc
    seconds = time.perf_counter() - t0
    nbformat.write(nb, outdir / path.name)

    result = {"chapter": path.name, "seconds": seconds, "setup_seconds": cell_seconds(nb.cells[setup + 1])}
    if error is not None:
        idx = current["index"]
        where = origin[idx] if idx is not None else "?"
        label = where if isinstance(where, str) else f"cell {where} (0-based, of {len(origin) - 2} cells)"
        src = nb.cells[idx].source if idx is not None else ""
        first = next((ln for ln in src.splitlines() if ln.strip() and not ln.startswith("#")), "")
        result["error"] = (f"{rel(path)}: {label} failed{': ' + first[:80] if first else ''}"
                           f" (kernel log: {rel(log)})\n" + re.sub(r"\x1b\[[0-9;]*m", "", str(error)))
        return result
    for out in nb.cells[setup + 2].get("outputs", []):
        if out.get("output_type") == "stream":
            for line in out.get("text", "").splitlines():
                if line.startswith(MARKER):
                    result.update(json.loads(line[len(MARKER):]))
    if "versions" not in result:
        result["error"] = f"{rel(path)}: the injected version check printed no result"
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=str(ROOT / ".venv-colab"))
    ap.add_argument("--requirements", default=str(ROOT / "scripts" / "colab-requirements.txt"))
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout, seconds")
    ap.add_argument("chapters", nargs="*", help="notebooks to run (default: every chapter in _toc.yml)")
    args = ap.parse_args()

    venv = Path(args.venv).resolve()
    py = venv / "bin" / "python"
    baseline = json.loads((venv / ".baseline.json").read_text())
    pins = read_pins(Path(args.requirements))
    chapters = [Path(c).resolve() for c in args.chapters] or chapters_from_toc()
    if not chapters:
        print("colab-check: no chapters found in _toc.yml", file=sys.stderr)
        return 1

    # The kernel's environment: Colab-like, on the CPU, installing from this checkout.
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        os.environ.pop(var, None)
    os.environ["JAX_PLATFORMS"] = "cpu"
    src_tmp = tempfile.TemporaryDirectory(prefix="colab-src-")
    os.environ["FM_HELPERS_SOURCE"] = str(snapshot(Path(src_tmp.name) / "flow-matching-jax"))
    os.environ["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"  # ipykernel's debugger warning on 3.13

    outdir = ROOT / "_build" / "colab-check"
    rows, failures, installed = [], [], {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="colab-kernel-") as tmp:
        kdir = Path(tmp) / "kernels" / KERNEL_NAME
        kdir.mkdir(parents=True)
        (kdir / "kernel.json").write_text(json.dumps({
            "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (Colab stack)", "language": "python"}))
        os.environ["JUPYTER_PATH"] = tmp  # only this kernelspec is added; nothing is installed
        for path in chapters:
            t0 = time.perf_counter()
            reset = reset_venv(py, baseline)
            reset_s = time.perf_counter() - t0
            print(f"colab-check: {path.name} ... ", end="", flush=True)
            res = run_chapter(path, pins, args.timeout, outdir)
            res["reset_seconds"] = reset_s
            res["reset"] = reset
            rows.append(res)
            if "error" in res:
                print("FAILED", flush=True)
                failures.append(res["error"])
            else:
                print(f"ok ({res['seconds']:.1f} s)", flush=True)
                installed = res["versions"]
        reset_venv(py, baseline)  # leave .venv-colab as Colab's stack, without the course
    src_tmp.cleanup()
    total = time.perf_counter() - t_all

    print()
    print(f"{'chapter':32s} {'reset s':>8s} {'setup s':>8s} {'total s':>8s}  result")
    for r in rows:
        setup = f"{r['setup_seconds']:.1f}" if r.get("setup_seconds") is not None else "-"
        print(f"{r['chapter']:32s} {r['reset_seconds']:8.1f} {setup:>8s} {r['seconds']:8.1f}  "
              f"{'FAIL' if 'error' in r else 'ok'}")
    print(f"{'all (with venv resets)':32s} {'':8s} {'':8s} {total:8.1f}")
    if installed:
        print("\nversions in the kernel after the setup cell (python "
              f"{rows[-1].get('python', '?')}): "
              + ", ".join(f"{k} {v}" for k, v in installed.items()))
    if failures:
        print(f"\ncolab-check FAILED in {len(failures)} of {len(rows)} chapters "
              f"(executed notebooks in {rel(outdir)}/):", file=sys.stderr)
        for f in failures:
            print("\n" + f, file=sys.stderr)
        return 1
    print(f"\ncolab-check: {len(rows)} chapters ran on Colab's stack, setup cell installing each time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
