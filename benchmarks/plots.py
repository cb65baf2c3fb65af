"""Figures of a results JSON, written as PNG files (run.py calls ``make_all``).

    python benchmarks/plots.py benchmarks/results/latest.json book/_static/bench
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from report import FIGURES, load  # noqa: E402

COLORS = {"fused": "C0", "jit loop": "C1", "torch eager": "C3", "torch eager 1 thread": "C4", "euler": "C0", "midpoint": "C1",
          "heun": "C2", "tsit5": "C3", "exact": "C0", "hutchinson": "C1"}


def _log_x(ax, ticks) -> None:
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ticks, [f"{t:,}" for t in ticks])


def _energy_y(ax, values, floor) -> None:
    """Energy distances can dip below zero (an unbiased estimate near 0): a symmetric log
    axis, linear within the sampling noise ``|floor|`` of an exact sample of the same size."""
    noise = max(abs(floor), 1e-6)
    ax.set_yscale("symlog", linthresh=10 ** np.floor(np.log10(noise)))
    ax.axhspan(-abs(floor), abs(floor), color="0.9", zorder=0, label="|exact sample| (noise level)")


def training(t: dict, path: Path) -> None:
    batches = list(t["batches"])
    fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.6))
    axes = [axes] if len(batches) == 1 else axes
    for ax, b in zip(axes, batches):
        sps = t["batches"][b]["steps_per_second"]
        labels = [m.replace("torch eager", "torch").replace(" 1 thread", "\n1 thread") for m in sps]
        bars = ax.bar(labels, list(sps.values()), color=[COLORS.get(m) for m in sps])
        for bar, m in zip(bars, sps):
            ax.annotate(f"{sps[m]:.0f}/s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(f"batch {b}")
        ax.set_ylabel("training steps per second")
        ax.margins(y=0.15)
    fig.suptitle("Training throughput, same network and loss (median of interleaved rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def budget(b: dict, path: Path) -> None:
    runs = b["runs"]
    steps = [r["steps"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.errorbar(steps, [r["kl_gap"] for r in runs], yerr=[r["nll_stderr"] for r in runs], marker="o", capsize=3)
    ax1.axhline(0.10, color="gray", ls="--", lw=1, label="goal: 0.10 nats")
    for r in runs:
        ax1.annotate(f"{r['train_seconds']:.0f} s", (r["steps"], r["kl_gap"]), textcoords="offset points",
                     xytext=(4, 6), fontsize=8)
    ax1.set(xlabel="training steps", ylabel="KL gap (nats)", title="KL gap (labels: training time)")
    _log_x(ax1, steps)
    ax1.legend(fontsize=8)
    eds = [r["energy_distance"] for r in runs]
    ax2.plot(steps, eds, marker="o")
    _energy_y(ax2, eds, b["exact_sample_energy_distance"])
    ax2.set(xlabel="training steps", ylabel="energy distance to test set", title="Energy distance")
    _log_x(ax2, steps)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def nfe(n: dict, path: Path) -> None:
    """Chapter 6's rule, drawn: each fixed-step setting's mean distance to the adaptive
    samples from the same noise, and its extra share of samples off the support (its share
    minus the adaptive one's), against NFE, with the two limits of
    fm_helpers.metrics.cheapest_within_tolerance."""
    if "rule" not in n:  # results from before the rule: nothing of it to draw
        return
    a, rule = n["adaptive"], n["rule"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for solver in dict.fromkeys(r["solver"] for r in n["fixed"]):
        rows = [r for r in n["fixed"] if r["solver"] == solver]
        nfes = [r["nfe"] for r in rows]
        ax1.plot(nfes, [r["mean_distance"] for r in rows], marker="o", label=solver, color=COLORS.get(solver))
        extra = np.array([r["excess_off_support"] for r in rows])
        low, high = np.array([r["excess_off_support_ci"] for r in rows]).T
        ax2.errorbar(nfes, extra, yerr=[extra - low, high - extra], marker="o", capsize=3, label=solver,
                     color=COLORS.get(solver))
    for r in n["fixed"]:
        if r["within_tolerance"]:
            ax1.plot(r["nfe"], r["mean_distance"], "o", ms=12, mfc="none", mec="k")
    ax1.plot([], [], "o", ms=12, mfc="none", mec="k", label="within tolerance")
    ax1.axhline(rule["distance_tolerance"], color="gray", ls="--", lw=1,
                label=f"limit: {rule['pixel_fraction']:g} x pixel width")
    ax1.set(yscale="log", xlabel="NFE (velocity evaluations)", ylabel="mean distance to adaptive sample",
            title="Distance to the adaptive samples, same noise")
    ax2.axhline(0.0, color="k", lw=1, label=f"tsit5 adaptive (NFE {a['nfe']}, {100 * a['off_support']:.2f}% off)")
    ax2.axhline(rule["excess_tolerance"], color="gray", ls="--", lw=1,
                label=f"limit: {rule['leak_fraction']:g} x adaptive's share")
    # linear within the limit (zero and negative values show), logarithmic beyond it
    ax2.set_yscale("symlog", linthresh=rule["excess_tolerance"] or 1e-4)
    ax2.set(xlabel="NFE (velocity evaluations)", ylabel="extra share off the support (vs adaptive)",
            title=f"Extra share off the support ({100 * rule['level']:g}% intervals)")
    ticks = sorted({r["nfe"] for r in n["fixed"]} | {16})
    for ax in (ax1, ax2):
        ax.axvline(16, color="gray", ls=":", lw=1, label="NFE = 16 (the goal)")
        _log_x(ax, ticks)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def density(d: dict, path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    recs = d["two_d"]
    labels = [f"{r['method']}\n{r['solver']}" for r in recs]
    ax1.bar(labels, [r["seconds"] for r in recs], color=[COLORS[r["method"]] for r in recs])
    ax1.axhline(10, color="gray", ls="--", lw=1, label="goal: 10 s (exact)")
    ax1.set(ylabel="seconds (after compilation)", title=f"log p of {d['n_points_2d']:,} 2D points")
    ax1.tick_params(axis="x", labelsize=8)
    ax1.legend(fontsize=8)
    rows = d["scaling"]["rows"]
    dims = [r["d"] for r in rows]
    for m in ("exact", "hutchinson"):
        ax2.plot(dims, [r[f"{m}_seconds"] for r in rows], marker="o", label=m, color=COLORS[m])
    ax2.set(xscale="log", yscale="log", xlabel="dimension d", ylabel="seconds",
            title=f"{d['scaling']['n_points']:,} points, tsit5 x{d['scaling']['num_steps']}")
    ax2.minorticks_off()
    ax2.set_xticks(dims, [str(x) for x in dims])
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def book(b: dict, path: Path) -> None:
    chapters = b["chapters"]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(chapters) + 1.2))
    names = [c["chapter"].split("/")[-1] for c in chapters][::-1]
    secs = [c["seconds"] for c in chapters][::-1]
    ax.barh(names, secs, color=["C0" if c["ok"] else "C3" for c in chapters][::-1])
    ax.set(xlabel="seconds, cold (fresh kernel)", title=f"Chapter execution, total {b['total_seconds']:.0f} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {"training": training, "budget": budget, "nfe": nfe, "density": density, "book": book}


def make_all(results: dict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, fn in PLOTS.items():
        if key in results and not (key == "book" and not results[key]["chapters"]):
            fn(results[key], out_dir / FIGURES[key])
            written.append(out_dir / FIGURES[key])
    return written


if __name__ == "__main__":
    make_all(load(sys.argv[1]), sys.argv[2])
