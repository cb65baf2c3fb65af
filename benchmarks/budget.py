"""2. Quality against training budget.

For each budget (number of steps) a fresh model is trained with ``fm_helpers.train.fit``
(batch 256, learning rate 3e-3, seed 0). ``fit`` decays the learning rate with a cosine
over ``steps``, so a 1k-step run is not the first 1k steps of a 30k-step run: every
budget is trained separately, from the same initial weights. Each model is then scored
on the same test points:

- KL gap: test NLL (exact log-likelihood, adaptive Tsit5 at rtol = atol = 1e-5) minus the
  true entropy of the image density, with the standard error of the NLL;
- energy distance between samples (adaptive Tsit5 from fixed noise) and the test set,
  next to the energy distance of a fresh exact sample of the same size (the value a
  perfect model would get with this many points).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from common import Config, EnergyToTest, Problem, seconds
from fm_helpers.density import log_prob
from fm_helpers.metrics import nll
from fm_helpers.model import velocity_fn
from fm_helpers.sample import sample
from fm_helpers.train import fit


def evaluate(state, problem: Problem, cfg: Config, ed: EnergyToTest) -> dict:
    velocity = velocity_fn(state)
    test_nll = problem.test[: cfg.n_nll]
    (lp, nfe), lp_s = seconds(lambda: log_prob(velocity, test_nll, return_nfe=True))
    mean_nll, se = nll(lp)
    noise = jax.random.normal(jax.random.PRNGKey(303), (cfg.n_samples, 2))
    res, sample_s = seconds(lambda: sample(velocity, noise))
    return {
        "nll": mean_nll,
        "nll_stderr": se,
        "kl_gap": mean_nll - problem.entropy,
        "energy_distance": ed(res.samples),
        "log_prob_nfe": int(nfe),
        "log_prob_seconds": lp_s,
        "sample_nfe": int(res.nfe),
        "sample_seconds": sample_s,
    }


def run(cfg: Config, problem: Problem, log=print) -> tuple[dict, object]:
    exact = problem.density.sample(jax.random.PRNGKey(404), cfg.n_samples)
    ed = EnergyToTest(problem.test[: cfg.n_samples])
    out = {
        "batch_size": 256,
        "learning_rate": cfg.budget_lr,
        "schedule": "cosine decay over each budget to 5% (fit's default)",
        "n_train": cfg.n_train,
        "n_nll": cfg.n_nll,
        "n_samples": cfg.n_samples,
        "entropy": problem.entropy,
        "exact_sample_energy_distance": ed(exact),
        "runs": [],
    }
    state = None
    for steps in cfg.budgets:
        start = time.perf_counter()
        state, history = fit(problem.train, steps=steps, batch_size=256, learning_rate=cfg.budget_lr,
                             seed=0, progress=False)
        wall = time.perf_counter() - start
        rec = {
            "steps": steps,
            "train_seconds": wall,
            "fit_steps_per_second": history.steps_per_second,
            "final_train_loss": float(np.mean(history.loss[-min(500, steps):])),
        }
        rec.update(evaluate(state, problem, cfg, ed))
        out["runs"].append(rec)
        log(f"  {steps} steps: {wall:.1f} s, KL gap {rec['kl_gap']:.3f} +- {rec['nll_stderr']:.3f} nats, "
            f"energy distance {rec['energy_distance']:.2e}")
    return out, state
