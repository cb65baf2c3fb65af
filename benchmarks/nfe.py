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

from __future__ import annotations

import jax
import numpy as np

FLOOR_DRAWS = 5
LEVEL, RESAMPLES = 0.95, 1000  # bootstrap intervals of the paired comparison

from common import Config, EnergyToTest, Problem, seconds  # noqa: E402
from fm_helpers import metrics  # noqa: E402
from fm_helpers.model import velocity_fn  # noqa: E402
from fm_helpers.sample import sample  # noqa: E402


def _interval(ci) -> list[float]:
    return [float(ci[0]), float(ci[1])]


def run(cfg: Config, problem: Problem, state, steps_trained: int, log=print) -> dict:
    velocity = velocity_fn(state)
    noise = jax.random.normal(jax.random.PRNGKey(505), (cfg.n_samples, 2))
    energy_distance = EnergyToTest(problem.test[: cfg.n_samples])
    ref, _ = seconds(lambda: sample(velocity, noise))  # compile
    ref, ref_s = seconds(lambda: sample(velocity, noise))
    ref_x = np.asarray(ref.samples)
    out = {
        "model_steps": steps_trained,
        "n_samples": cfg.n_samples,
        "adaptive": {
            "solver": "tsit5", "rtol": 1e-5, "atol": 1e-5, "nfe": int(ref.nfe), "steps": int(ref.steps),
            "energy_distance": energy_distance(ref_x), "seconds": ref_s,
        },
        "fixed": [],
    }
    floor = [energy_distance(problem.density.sample(jax.random.PRNGKey(404 + i), cfg.n_samples))
             for i in range(FLOOR_DRAWS)]
    out["floor"] = {"draws": floor, "mean": float(np.mean(floor)), "sd": float(np.std(floor, ddof=1))}
    out["exact_sample_energy_distance"] = floor[0]
    log(f"  adaptive tsit5: NFE {ref.nfe}, energy distance {out['adaptive']['energy_distance']:.2e}")
    candidates = []
    for solver, step_counts in cfg.fixed_steps.items():
        for n in step_counts:
            res = sample(velocity, noise, solver=solver, num_steps=n)
            candidates.append(np.asarray(res.samples))
            out["fixed"].append({"solver": solver, "num_steps": n, "nfe": int(res.nfe),
                                 "energy_distance": energy_distance(candidates[-1])})
        log(f"  {solver}: " + ", ".join(f"NFE {r['nfe']} ED {r['energy_distance']:.2e}"
                                        for r in out["fixed"] if r["solver"] == solver))
    choice = metrics.cheapest_within_tolerance(
        candidates, [r["nfe"] for r in out["fixed"]], ref_x, problem.density,
        level=LEVEL, num_resamples=RESAMPLES,
    )
    for row, gap, ok in zip(out["fixed"], choice.gaps, choice.within):
        row.update({
            "mean_distance": gap.mean_distance, "mean_distance_ci": _interval(gap.mean_distance_ci),
            "off_support": gap.off_support, "excess_off_support": gap.excess_off_support,
            "excess_off_support_ci": _interval(gap.excess_off_support_ci), "within_tolerance": bool(ok),
        })
    out["adaptive"]["off_support"] = choice.reference_off_support
    out["rule"] = {
        "function": "fm_helpers.metrics.cheapest_within_tolerance",
        "pixel_fraction": metrics.PIXEL_FRACTION, "leak_fraction": metrics.LEAK_FRACTION,
        "distance_tolerance": choice.distance_tolerance, "excess_tolerance": choice.excess_tolerance,
        "level": LEVEL, "num_resamples": RESAMPLES,
    }
    out["cheapest"] = choice.cheapest  # index into out["fixed"], or None
    pick = "none" if choice.cheapest is None else (
        f"{out['fixed'][choice.cheapest]['solver']} x{out['fixed'][choice.cheapest]['num_steps']}")
    log(f"  cheapest within tolerance: {pick}")
    return out
