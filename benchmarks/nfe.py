"""3. Sample quality against the number of velocity evaluations (NFE).

One trained model (the largest training budget of this run), one set of noise points,
every fixed-step solver at several step counts, and adaptive Tsit5 (rtol = atol = 1e-5)
as the reference. Quality is the energy distance of the samples to the test set; the
distance of each sample to the adaptive solution from the same noise point (the solver's
own error) is reported beside it.

"Within 10% of adaptive" uses chapter 6's floor-aware rule. Fresh exact samples of the
same size give the energy distance's floor (mean and standard deviation over
``FLOOR_DRAWS`` draws). The model's own distance is estimated as the adaptive value minus
the floor's mean; a fixed-step row counts when it exceeds the adaptive value by at most
10% of that estimate, or of the floor's standard deviation if that is larger (the metric
cannot resolve smaller distances, and 10% of noise would be a tolerance set by noise).
"""

from __future__ import annotations

import jax
import numpy as np

FLOOR_DRAWS = 5

from common import Config, EnergyToTest, Problem, seconds
from fm_helpers.model import velocity_fn
from fm_helpers.sample import sample


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
    model_distance = out["adaptive"]["energy_distance"] - out["floor"]["mean"]
    out["tolerance"] = 0.1 * max(model_distance, out["floor"]["sd"])
    log(f"  adaptive tsit5: NFE {ref.nfe}, energy distance {out['adaptive']['energy_distance']:.2e}")
    for solver, step_counts in cfg.fixed_steps.items():
        for n in step_counts:
            res = sample(velocity, noise, solver=solver, num_steps=n)
            x = np.asarray(res.samples)
            out["fixed"].append({
                "solver": solver, "num_steps": n, "nfe": int(res.nfe),
                "energy_distance": energy_distance(x),
                "mean_error_vs_adaptive": float(np.mean(np.linalg.norm(x - ref_x, axis=1))),
            })
            row = out["fixed"][-1]
            row["within_10_percent"] = row["energy_distance"] - out["adaptive"]["energy_distance"] <= out["tolerance"]
        log(f"  {solver}: " + ", ".join(f"NFE {r['nfe']} ED {r['energy_distance']:.2e}"
                                        for r in out["fixed"] if r["solver"] == solver))
    return out
