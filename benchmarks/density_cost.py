"""4. Cost of the log-likelihood: exact divergence against Hutchinson's estimate.

Part A, the course's 2D problem: ``fm_helpers.density.log_prob`` of 10k test points under
the trained model, exact and Hutchinson (1 probe), with the adaptive solver the chapters
use (Tsit5, rtol = atol = 1e-5) and with 8 fixed Tsit5 steps. Times are of a second call
(after compilation), and the compilation time is given apart.

Part B, scaling with the dimension d: a randomly initialised VelocityUNet with d inputs
and outputs (its default widths) as the velocity field, n standard-normal points, and a
fixed solver (Tsit5, ``scaling_steps`` steps, so both methods make the same number of
velocity evaluations whatever d is, and the times compare per evaluation). The exact
divergence costs d forward-mode derivatives per evaluation; Hutchinson with one probe
costs one. The spread of Hutchinson's answer around the exact one (RMS over points, in
nats) is the price of its speed.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from common import Config, Problem, median, seconds
from fm_helpers.density import ExactAugmented, HutchinsonAugmented, log_prob
from fm_helpers.model import VelocityUNet, velocity_fn


def _twice(fn):
    """``(result, compile seconds, run seconds)``: the first call compiles and runs; the run
    time is the median of further calls (three when a call is short, else one)."""
    out, first = seconds(fn)
    out, s = seconds(fn)
    runs = [s]
    for _ in range(2 if s < 1.0 else 0):
        out, s = seconds(fn)
        runs.append(s)
    return out, first - runs[0], median(runs)


def _flops_per_evaluation(field, y) -> float:
    """XLA's count of floating-point operations of one evaluation of an augmented field."""
    cost = jax.jit(lambda y: field(jnp.float32(0.5), y)).lower(y).compile().cost_analysis()
    return float(cost["flops"] if isinstance(cost, dict) else cost[0]["flops"])


def _evaluation_ms(field, y, reps: int = 5) -> float:
    """Milliseconds of one evaluation of the augmented field, compiled on its own (outside
    the solver): what an evaluation costs without the solver's bookkeeping."""
    f = jax.jit(lambda y: field(jnp.float32(0.5), y))
    jax.block_until_ready(f(y))
    return median([seconds(f, y)[1] for _ in range(reps)]) * 1e3


def run(cfg: Config, problem: Problem, state, log=print) -> dict:
    velocity = velocity_fn(state)
    points = problem.density.sample(jax.random.PRNGKey(606), cfg.n_density)
    key = jax.random.PRNGKey(7)
    out = {"n_points_2d": cfg.n_density, "two_d": [], "scaling": {"n_points": cfg.n_scaling,
           "solver": "tsit5", "num_steps": cfg.scaling_steps, "rows": []}}
    exact_lp = {}
    for solver_name, num_steps in (("adaptive", None), ("tsit5-8", 8)):
        for method in ("exact", "hutchinson"):
            kw = dict(method=method, num_steps=num_steps, return_nfe=True)
            if method == "hutchinson":
                kw.update(key=key, num_probes=1)
            (lp, nfe), compile_s, run_s = _twice(lambda: log_prob(velocity, points, **kw))
            lp = np.asarray(lp, dtype=np.float64)
            rec = {"method": method, "solver": solver_name, "nfe": int(nfe), "seconds": run_s,
                   "compile_seconds": compile_s, "mean_log_prob": float(lp.mean()),
                   "seconds_per_evaluation_ms": run_s / nfe * 1e3}
            y = (points, jnp.zeros(points.shape[0]))
            aug = (ExactAugmented(velocity) if method == "exact" else
                   HutchinsonAugmented(velocity, jax.random.rademacher(key, (1,) + points.shape, dtype=points.dtype)))
            rec["gflop_per_evaluation"] = _flops_per_evaluation(aug, y) / 1e9
            rec["gflops_per_second"] = rec["gflop_per_evaluation"] * nfe / run_s
            rec["standalone_evaluation_ms"] = _evaluation_ms(aug, y)
            rec["solver_share"] = 1.0 - rec["standalone_evaluation_ms"] * nfe / 1e3 / run_s
            if method == "exact":
                exact_lp[solver_name] = lp
            else:
                rec["rms_diff_vs_exact"] = float(np.sqrt(np.mean((lp - exact_lp[solver_name]) ** 2)))
            if solver_name != "adaptive":
                rec["rms_diff_vs_exact_adaptive"] = float(np.sqrt(np.mean((lp - exact_lp["adaptive"]) ** 2)))
            out["two_d"].append(rec)
            log(f"  2D {method} {solver_name}: {run_s:.2f} s (+{compile_s:.1f} s compile), NFE {nfe}")

    for d in cfg.dims:
        model = VelocityUNet()
        params = model.init(jax.random.PRNGKey(d), jnp.zeros((1, d)), jnp.zeros((1,)))["params"]
        field = velocity_fn(model, params)
        x = jax.random.normal(jax.random.PRNGKey(1000 + d), (cfg.n_scaling, d))
        row = {"d": d}
        lps = {}
        for method in ("exact", "hutchinson"):
            kw = dict(method=method, solver="tsit5", num_steps=cfg.scaling_steps)
            if method == "hutchinson":
                kw.update(key=key, num_probes=1)
            lp, compile_s, run_s = _twice(lambda: log_prob(field, x, **kw))
            lps[method] = np.asarray(lp, dtype=np.float64)
            row[f"{method}_seconds"] = run_s
            row[f"{method}_compile_seconds"] = compile_s
        row["speedup_hutchinson"] = row["exact_seconds"] / row["hutchinson_seconds"]
        row["hutchinson_rms_error"] = float(np.sqrt(np.mean((lps["hutchinson"] - lps["exact"]) ** 2)))
        row["exact_log_prob_std"] = float(lps["exact"].std())
        out["scaling"]["rows"].append(row)
        log(f"  d={d}: exact {row['exact_seconds']:.3f} s, hutchinson {row['hutchinson_seconds']:.3f} s, "
            f"x{row['speedup_hutchinson']:.1f}, rms error {row['hutchinson_rms_error']:.3f}")
    return out
