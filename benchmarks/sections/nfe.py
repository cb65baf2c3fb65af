"""3. Sample quality against the number of velocity evaluations (NFE).

One trained model (the largest training budget of this run), one set of noise points,
every fixed-step solver at several step counts, and adaptive Tsit5 (rtol = atol = 1e-5)
as the reference.

Each fixed-step row is compared with the adaptive solution from the same noise point,
row by row, so no sampling noise separates them: the mean distance between paired
samples, and the extra share of samples that lands off the image's support (where the
true density is zero), each with a bootstrap interval. The cheapest setting within
tolerance is chosen by :func:`fm_helpers.metrics.cheapest_within_tolerance`, the rule
chapter 6 uses. The energy distance of each row to the test set is reported beside it,
with its floor (fresh exact samples of the same size, ``FLOOR_DRAWS`` draws), as in
chapter 6.
"""

from pathlib import Path

import jax
import numpy as np

import markup as md
from common import Context, seconds
from fm_helpers import metrics
from fm_helpers.sample import sample
from plots import log_x, plt, save
from sections import Goal

NAME = "nfe"
TITLE = "Sample quality against NFE"
OPT_IN = False
FLOOR_DRAWS = 5
LEVEL, RESAMPLES = 0.95, 1000  # bootstrap intervals of the paired comparison
COLORS = {"euler": "C0", "midpoint": "C1", "heun": "C2", "tsit5": "C3"}
# fixed-step solvers and their step counts, in a full run and with --quick
FIXED_STEPS: dict[bool, dict[str, tuple[int, ...]]] = {
    False: {"euler": (1, 2, 4, 8, 16, 32, 64), "midpoint": (1, 2, 4, 8, 16), "heun": (1, 2, 4, 8, 16),
            "tsit5": (1, 2, 3, 4)},
    True: {"euler": (2, 8), "midpoint": (2, 8), "heun": (2, 8), "tsit5": (1, 2)}}


def _cheapest(n: dict, threshold: float) -> tuple[str, bool]:
    ref, rule = n["adaptive"], n["rule"]
    if n["cheapest"] is None:
        return f"no fixed-step setting in the sweep is within tolerance (adaptive NFE {ref['nfe']})", False
    best = n["fixed"][n["cheapest"]]
    return (f"{best['solver']} x{best['num_steps']} (NFE {best['nfe']}, adaptive {ref['nfe']}): mean distance "
            f"{md.num(best['mean_distance'])} to the adaptive samples (limit {md.num(rule['distance_tolerance'])}), "
            f"{md.pct(best['off_support'])} off the support against {md.pct(ref['off_support'])} "
            f"(limit +{md.pct(rule['excess_tolerance'])})"), best["nfe"] <= threshold


GOALS: tuple[Goal, ...] = (Goal("a fixed-step solver within tolerance of adaptive at <= {threshold:g} NFE "
                               "(chapter 6's rule, fm_helpers.metrics.cheapest_within_tolerance)", 16, _cheapest),)


def _apply_rule(out: dict, candidates: list, ref_x: np.ndarray, density: object) -> None:
    """Chapter 6's rule on the fixed-step rows of ``out``, which it annotates."""
    choice = metrics.cheapest_within_tolerance(candidates, [r["nfe"] for r in out["fixed"]], ref_x, density,
                                               level=LEVEL, num_resamples=RESAMPLES)
    for row, gap, ok in zip(out["fixed"], choice.gaps, choice.within):
        row.update({"mean_distance": gap.mean_distance, "mean_distance_ci": list(map(float, gap.mean_distance_ci)),
                    "off_support": gap.off_support, "excess_off_support": gap.excess_off_support,
                    "excess_off_support_ci": list(map(float, gap.excess_off_support_ci)),
                    "within_tolerance": bool(ok)})
    out["adaptive"]["off_support"] = choice.reference_off_support
    out["rule"] = {"function": "fm_helpers.metrics.cheapest_within_tolerance", "pixel_fraction": metrics.PIXEL_FRACTION,
                   "leak_fraction": metrics.LEAK_FRACTION, "distance_tolerance": choice.distance_tolerance,
                   "excess_tolerance": choice.excess_tolerance, "level": LEVEL, "num_resamples": RESAMPLES}
    out["cheapest"] = choice.cheapest  # index into out["fixed"], or None


def run(ctx: Context) -> dict:
    steps, n_samples, density = ctx.cfg.budgets[-1], ctx.cfg.n_samples, ctx.density  # the largest budget's model
    velocity = ctx.trained(steps)[0]  # an NNX module is a velocity (x, t) -> v
    noise = jax.random.normal(jax.random.PRNGKey(505), (n_samples, 2))
    seconds(sample, velocity, noise)  # compiles
    ref, ref_s = seconds(sample, velocity, noise)
    ref_x = np.asarray(ref.samples)
    floor = [ctx.energy_distance(density.sample(jax.random.PRNGKey(404 + i), n_samples)) for i in range(FLOOR_DRAWS)]
    out: dict = {"model_steps": steps, "n_samples": n_samples,
           "adaptive": {"solver": "tsit5", "rtol": 1e-5, "atol": 1e-5, "nfe": int(ref.nfe), "steps": int(ref.steps),
                        "energy_distance": ctx.energy_distance(ref_x), "seconds": ref_s},
           "fixed": [], "floor": {"draws": floor, "mean": float(np.mean(floor)), "sd": float(np.std(floor, ddof=1))},
           "exact_sample_energy_distance": floor[0]}
    ctx.log(f"  adaptive tsit5: NFE {ref.nfe}, energy distance {out['adaptive']['energy_distance']:.2e}")
    candidates = []
    for solver, step_counts in FIXED_STEPS[ctx.cfg.quick].items():
        for n in step_counts:
            res = sample(velocity, noise, solver=solver, num_steps=n)
            candidates.append(np.asarray(res.samples))
            out["fixed"].append({"solver": solver, "num_steps": n, "nfe": int(res.nfe),
                                 "energy_distance": ctx.energy_distance(candidates[-1])})
        ctx.log(f"  {solver}: " + ", ".join(f"NFE {r['nfe']} ED {r['energy_distance']:.2e}"
                                            for r in out["fixed"] if r["solver"] == solver))
    _apply_rule(out, candidates, ref_x, density)
    pick = None if out["cheapest"] is None else out["fixed"][out["cheapest"]]
    ctx.log("  cheapest within tolerance: " + (f"{pick['solver']} x{pick['num_steps']}" if pick else "none"))
    return out


def _floor_text(floor: dict) -> str:
    return (f"Energy distance to the test set, for comparison: fresh exact samples of the same size score "
            f"{md.num(floor['mean'])} ± {md.num(floor['sd'])} (mean ± sd of {len(floor['draws'])} draws), the floor "
            f"no model can beat and the resolution of that metric.")


def render(n: dict, image_dir: str) -> str:
    a, rule = n["adaptive"], n["rule"]
    rows = [[f"{a['solver']} adaptive (rtol {a['rtol']:g})", "-", a["nfe"], md.num(a["energy_distance"]), "0",
             md.pct(a["off_support"]), "0", "-"]]
    rows += [[r["solver"], r["num_steps"], r["nfe"], md.num(r["energy_distance"]),
              f"{md.num(r['mean_distance'])} {md.interval(r['mean_distance_ci'])}", md.pct(r["off_support"]),
              f"{md.pct(r['excess_off_support'])} {md.interval(r['excess_off_support_ci'], md.pct)}",
              "yes" if r["within_tolerance"] else "no"] for r in n["fixed"]]
    return "\n".join([
        f"Model trained for {n['model_steps']:,} steps; {n['n_samples']:,} samples from the same noise for every "
        "solver. Each fixed-step row is compared with the adaptive solution from the same noise point. "
        f"*Distance to adaptive*: mean distance between paired samples; *off support*: share of samples where "
        f"the true density is zero; *extra off support*: that share minus the adaptive one; brackets: "
        f"{100 * rule['level']:g}% bootstrap intervals over {rule['num_resamples']} resamples of the points. "
        f"*Within tolerance* is the rule of chapter 6 (`{rule['function']}`): the upper ends of both intervals "
        f"within a distance of {md.num(rule['distance_tolerance'])} ({rule['pixel_fraction']:g} of a pixel) and an "
        f"extra share of {md.pct(rule['excess_tolerance'])} ({rule['leak_fraction']:g} of the adaptive solution's "
        f"share off the support); the cheapest setting within tolerance is the one with the fewest NFE. "
        + _floor_text(n["floor"]),
        "",
        md.table(["solver", "steps", "NFE", "energy distance", "distance to adaptive", "off support",
                  "extra off support", "within tolerance"], rows),
        "",
        md.figure("Paired comparison with the adaptive solver against NFE", image_dir, NAME),
    ])


def plot(n: dict, path: Path) -> None:
    """Chapter 6's rule, drawn: each fixed-step setting's mean distance to the adaptive
    samples from the same noise, and its extra share of samples off the support (its share
    minus the adaptive one's), against NFE, with the two limits of
    fm_helpers.metrics.cheapest_within_tolerance."""
    a, rule, goal = n["adaptive"], n["rule"], GOALS[0].threshold
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
    ticks = sorted({r["nfe"] for r in n["fixed"]} | {int(goal)})
    for ax in (ax1, ax2):
        ax.axvline(goal, color="gray", ls=":", lw=1, label=f"NFE = {goal:g} (the goal)")
        log_x(ax, ticks)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7, loc="best")
    save(fig, path)
