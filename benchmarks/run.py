"""Benchmarks of the course: speed and quality, measured in one process.

    python benchmarks/run.py --only all           # every section (what `make bench` runs)
    python benchmarks/run.py --quick              # small sizes, every section that is not opt-in
    python benchmarks/run.py --only training,nfe  # some sections; opt-in ones (profile) by name
    python benchmarks/run.py --render FILE.json   # tables and figures again from a JSON
    python benchmarks/run.py --only straight --add  # measure a section, add it to the published run

A full-size run of (at least) every section that is not opt-in writes
benchmarks/results/latest.json, latest.md beside it (the book's appendix includes it) and
the figures in book/_static/bench/; other runs write to benchmarks/results/dev.tmp/
(ignored by git). Sections are the modules in benchmarks/sections/, listed in report.py.
Compare figures measured in the same run (ratios): these machines are shared and noisy.
"""

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before the sections import JAX
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import jax  # noqa: E402
import report  # noqa: E402
from common import FULL, QUICK, ROOT, Context  # noqa: E402
from sections import Section  # noqa: E402

PUBLISHED_JSON = HERE / "results" / "latest.json"
PUBLISHED_FIGURES = ROOT / "book" / "_static" / "bench"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "diffrax", "equinox", "numpy", "torch", "nbclient", "fm_helpers")
BY_NAME = {s.NAME: s for s in report.SECTIONS}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_outputs(results: dict, json_path: Path, figures: Path, image_dir: str) -> str:
    """The JSON, its markdown beside it and the figures; returns the markdown."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    figures.mkdir(parents=True, exist_ok=True)
    for s in report.SECTIONS:
        if s.NAME in results:
            s.plot(results[s.NAME], figures / f"{s.NAME}.png")
    text = report.render(results, image_dir)
    json_path.with_suffix(".md").write_text(text)
    return text


def select(only: str | None) -> list[Section]:
    """The sections named (``all``: every one), in page order; by default those not opt-in."""
    names = {n.strip() for n in (only or "").split(",") if n.strip()}
    if unknown := names - set(BY_NAME) - {"all"}:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from all, {', '.join(BY_NAME)}")
    return [s for s in report.SECTIONS if s.NAME in names or "all" in names or not (names or s.OPT_IN)]


def measure(sections: list[Section], quick: bool) -> dict:
    """Run ``sections`` in one process; their results, then ``meta`` and ``goals``."""
    start, load_start = time.perf_counter(), os.getloadavg()[0]
    print(f"# Benchmarks ({'quick' if quick else 'full'}): {', '.join(s.NAME for s in sections)}", flush=True)
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores, load average {load_start:.2f}, "
          f"JAX devices {jax.devices()}", flush=True)
    ctx = Context(QUICK if quick else FULL, BY_NAME, log=lambda msg: print(msg, flush=True))
    results, section_seconds = {}, {}
    for s in sections:
        print(f"\n== {s.NAME} ==", flush=True)
        tick = time.perf_counter()
        results[s.NAME] = ctx.results(s.NAME)
        section_seconds[s.NAME] = time.perf_counter() - tick
        print(f"  ({section_seconds[s.NAME]:.0f} s)", flush=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "packages": versions(), "jax_devices": [str(d) for d in jax.devices()],
        "load_start": load_start, "load_end": os.getloadavg()[0], "quick": quick,
        "only": [s.NAME for s in sections], "section_seconds": section_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    return {"meta": meta, "goals": report.goals(results), **results}


def destination(publish: bool, json_path: Path) -> tuple[Path, Path, str]:
    """Where the JSON goes, where the figures go, and the figures' folder as its markdown sees it."""
    if publish:
        return PUBLISHED_JSON, PUBLISHED_FIGURES, report.PAGE_IMAGE_DIR
    return json_path, json_path.parent / "bench", "bench"


def add_sections(sections: list[Section]) -> int:
    """Measure ``sections`` (a full run's sizes) and put their results into the published JSON, with the date,
    load and wall time of this measurement in its meta; the other sections keep their run's results."""
    published = json.loads(PUBLISHED_JSON.read_text())
    measured = measure(sections, quick=False)
    added = published["meta"].setdefault("added", {})
    for s in sections:
        published[s.NAME] = measured[s.NAME]
        m = measured["meta"]
        added[s.NAME] = {"date": m["date"], "load_start": m["load_start"], "load_end": m["load_end"],
                         "seconds": m["section_seconds"][s.NAME]}
    published["goals"] = report.goals(published)
    print("\n" + write_outputs(published, *destination(True, PUBLISHED_JSON)))
    print(f"added {', '.join(s.NAME for s in sections)} to {PUBLISHED_JSON}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--only", default=None, help=f"comma-separated sections, or all: {', '.join(BY_NAME)} "
                        "(default: every section that is not opt-in)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the JSON, markdown and figures "
                        "(default: the published files for a full run, benchmarks/results/dev.tmp otherwise)")
    parser.add_argument("--render", type=Path, default=None, help="only redo markdown and figures from this JSON")
    parser.add_argument("--add", action="store_true", help="measure the --only sections and put them into the "
                        "published results, which keep the rest of their run (the page says when each was measured)")
    args = parser.parse_args(argv)
    if args.add:
        if not args.only:
            raise SystemExit("--add needs --only with the sections to measure")
        return add_sections(select(args.only))
    if args.render is not None:
        results = json.loads(args.render.read_text())
        if (goals := report.goals(results)) != results["goals"]:  # the goals' rules changed since the run
            results["goals"] = goals  # (else the JSON is written back as it was, byte for byte)
        where = destination(args.render.resolve() == PUBLISHED_JSON.resolve(), args.render)
        print(write_outputs(results, *where))
        return 0
    sections = select(args.only)
    required = {s.NAME for s in report.SECTIONS if not s.OPT_IN}
    publish = args.out is None and not args.quick and required <= {s.NAME for s in sections}
    where = destination(publish, (args.out or HERE / "results" / "dev.tmp") / "latest.json")
    print("\n" + write_outputs(measure(sections, args.quick), *where))
    print(f"wrote {where[0]}, {where[0].with_suffix('.md')} and figures in {where[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
