"""Benchmarks of the course: speed and quality, measured in one process.

    python benchmarks/run.py                      # everything (what `make bench` runs)
    python benchmarks/run.py --quick              # small sizes, for development
    python benchmarks/run.py --only training,nfe  # a subset
    python benchmarks/run.py --render FILE.json   # tables and figures again from a JSON

A full run of every benchmark writes benchmarks/results/latest.json, the markdown
benchmarks/results/latest.md that the book's appendix page includes, and the figures in
book/_static/bench/. Quick or partial runs write to benchmarks/results/dev.tmp/ (ignored
by git), so they never overwrite the published results.

These machines are shared and noisy: compare figures measured in the same run (the
ratios), not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (sets JAX_PLATFORMS=cpu before JAX loads)
import report  # noqa: E402

PUBLISHED_JSON = HERE / "results" / "latest.json"
PUBLISHED_FIGURES = common.ROOT / "book" / "_static" / "bench"
PAGE_IMAGE_DIR = report.PAGE_IMAGE_DIR
PACKAGES = ("jax", "jaxlib", "flax", "optax", "diffrax", "equinox", "numpy", "torch", "nbclient", "fm_helpers")


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


def write_outputs(results: dict, json_path: Path, figures_dir: Path, image_dir: str) -> str:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    import plots

    plots.make_all(results, figures_dir)
    md = report.render(results, image_dir)
    json_path.with_suffix(".md").write_text(md)
    return md


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for development")
    parser.add_argument("--only", default=",".join(report.SECTIONS),
                        help=f"comma-separated subset of: {', '.join(report.SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the JSON, markdown and figures (default: published files for a full "
                             "run of everything, benchmarks/results/dev.tmp otherwise)")
    parser.add_argument("--render", type=Path, default=None, help="only redo markdown and figures from this JSON")
    args = parser.parse_args(argv)

    if args.render is not None:
        results = report.load(args.render)
        results["goals"] = report.goals(results)
        published = args.render.resolve() == PUBLISHED_JSON.resolve()
        figures = PUBLISHED_FIGURES if published else args.render.parent / "bench"
        image_dir = PAGE_IMAGE_DIR if published else "bench"
        print(write_outputs(results, args.render, figures, image_dir))
        return 0

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in report.SECTIONS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(report.SECTIONS)}")
    only = [s for s in report.SECTIONS if s in only]
    publish = args.out is None and not args.quick and only == list(report.SECTIONS)
    if publish:
        json_path, figures, image_dir = PUBLISHED_JSON, PUBLISHED_FIGURES, PAGE_IMAGE_DIR
    else:
        out = args.out or HERE / "results" / "dev.tmp"
        json_path, figures, image_dir = out / "latest.json", out / "bench", "bench"

    import jax

    cfg = common.Config.quick_() if args.quick else common.Config.full()
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    print(f"# Benchmarks ({'quick' if args.quick else 'full'}): {', '.join(only)}", flush=True)
    print(f"CPU {cpu_model()}, {os.cpu_count()} cores, load average {load_start:.2f}, "
          f"JAX devices {jax.devices()}", flush=True)
    problem = common.make_problem(cfg)
    results: dict = {}
    section_seconds = {}
    state, state_steps = None, None

    def log(msg: str) -> None:
        print(msg, flush=True)

    for key in only:
        tick = time.perf_counter()
        print(f"\n== {key} ==", flush=True)
        if key == "training":
            import training

            results[key] = training.run(cfg, problem, log)
        elif key == "budget":
            import budget

            results[key], state = budget.run(cfg, problem, log)
            state_steps = cfg.budgets[-1]
        elif key in ("nfe", "density"):
            if state is None:  # no budget run in this process: train the largest budget now
                from fm_helpers.train import fit

                state_steps = cfg.budgets[-1]
                print(f"  training a model for {state_steps} steps first", flush=True)
                state, _ = fit(problem.train, steps=state_steps, batch_size=256,
                               learning_rate=cfg.budget_lr, seed=0, progress=False)
            if key == "nfe":
                import nfe

                results[key] = nfe.run(cfg, problem, state, state_steps, log)
            else:
                import density_cost

                results[key] = density_cost.run(cfg, problem, state, log)
                results[key]["model_steps"] = state_steps
        elif key == "book":
            import book

            results[key] = book.run(cfg, problem, log)
        section_seconds[key] = time.perf_counter() - tick
        print(f"  ({section_seconds[key]:.0f} s)", flush=True)

    results["meta"] = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "packages": versions(),
        "jax_devices": [str(d) for d in jax.devices()],
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "quick": args.quick,
        "only": only,
        "section_seconds": section_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    results["goals"] = report.goals(results)
    ordered = {"meta": results.pop("meta"), "goals": results.pop("goals"), **results}
    md = write_outputs(ordered, json_path, figures, image_dir)
    print("\n" + md)
    print(f"wrote {json_path}, {json_path.with_suffix('.md')} and figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
