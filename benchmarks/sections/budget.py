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

The models stay in the run's context: sections 3 and 4 reuse the largest.
"""

from pathlib import Path

import jax
import numpy as np
from flax import nnx

import markup as md
from common import BATCH, Context, seconds
from fm_helpers.density import log_prob
from fm_helpers.metrics import kl_gap, nll
from fm_helpers.sample import sample
from plots import log_x, plt, save
from sections import Goal

NAME = "budget"
TITLE = "Quality against training budget"
OPT_IN = False
MAX_TRAIN_SECONDS = 300  # the goal's "within 5 minutes"


def _kl_gap(b: dict, threshold: float) -> tuple[str, bool]:
    ok = [r for r in b["runs"] if r["kl_gap"] <= threshold and r["train_seconds"] <= MAX_TRAIN_SECONDS]
    if ok:
        r = ok[0]
        return f"{r['steps']} steps: KL gap {r['kl_gap']:.3f} nats in {md.secs(r['train_seconds'])} s", True
    r = min(b["runs"], key=lambda r: r["kl_gap"])
    return f"best: {r['steps']} steps, KL gap {r['kl_gap']:.3f} nats in {md.secs(r['train_seconds'])} s", False


GOALS: tuple[Goal, ...] = (Goal("KL gap <= {threshold:.2f} nats within 5 minutes of training", 0.10, _kl_gap),)


def _score(model: nnx.Module, ctx: Context) -> dict:
    velocity = model  # an NNX module is a velocity (x, t) -> v
    density, lp_s = seconds(lambda: log_prob(velocity, ctx.test[: ctx.cfg.n_nll]))
    lp, nfe = density.log_prob, density.nfe
    mean_nll, se = nll(lp)
    noise = jax.random.normal(jax.random.PRNGKey(303), (ctx.cfg.n_samples, 2))
    res, sample_s = seconds(lambda: sample(velocity, noise))
    return {"nll": mean_nll, "nll_stderr": se, "kl_gap": kl_gap(lp, ctx.density.entropy()),
            "energy_distance": ctx.energy_distance(res.samples), "log_prob_nfe": int(nfe),
            "log_prob_seconds": lp_s, "sample_nfe": int(res.nfe), "sample_seconds": sample_s}


def run(ctx: Context) -> dict:
    cfg = ctx.cfg
    exact = ctx.density.sample(jax.random.PRNGKey(404), cfg.n_samples)
    out = {"batch_size": BATCH, "learning_rate": cfg.learning_rate,
           "schedule": "cosine decay over each budget to 5% (fit's default)", "n_train": cfg.n_train,
           "n_nll": cfg.n_nll, "n_samples": cfg.n_samples, "entropy": ctx.density.entropy(),
           "exact_sample_energy_distance": ctx.energy_distance(exact), "runs": []}
    for steps in cfg.budgets:
        model, history = ctx.trained(steps)  # history.seconds: the wall time of the whole fit call
        rec = {"steps": steps, "train_seconds": history.seconds, "fit_steps_per_second": history.steps_per_second,
               "final_train_loss": float(np.mean(history.loss[-min(500, steps):])), **_score(model, ctx)}
        out["runs"].append(rec)
        ctx.log(f"  {steps} steps: {history.seconds:.1f} s, KL gap {rec['kl_gap']:.3f} +- {rec['nll_stderr']:.3f} "
                f"nats, energy distance {rec['energy_distance']:.2e}")
    return out


def render(b: dict, image_dir: str) -> str:
    rows = [[f"{r['steps']:,}", md.secs(r["train_seconds"]), f"{r['fit_steps_per_second']:.0f}",
             f"{r['kl_gap']:.3f} ± {r['nll_stderr']:.3f}", md.num(r["energy_distance"]),
             f"{r['final_train_loss']:.3f}"] for r in b["runs"]]
    return "\n".join([
        f"Batch {b['batch_size']}, learning rate {b['learning_rate']}, {b['schedule']}; each budget trained "
        f"from scratch on {b['n_train']:,} points. KL gap = test NLL on {b['n_nll']:,} points (exact, adaptive "
        f"Tsit5) minus the true entropy {b['entropy']:.4f} nats (± one standard error of the NLL). Energy "
        f"distance of {b['n_samples']:,} samples to {b['n_samples']:,} test points; a fresh exact sample of the "
        f"same size scores {md.num(b['exact_sample_energy_distance'])}.",
        "",
        md.table(["steps", "training wall time (s)", "steps/s", "KL gap (nats)", "energy distance",
                  "final train loss"], rows),
        "",
        md.figure("Quality against training budget", image_dir, NAME),
    ])


def plot(b: dict, path: Path) -> None:
    runs, threshold = b["runs"], GOALS[0].threshold
    steps = [r["steps"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.errorbar(steps, [r["kl_gap"] for r in runs], yerr=[r["nll_stderr"] for r in runs], marker="o", capsize=3)
    ax1.axhline(threshold, color="gray", ls="--", lw=1, label=f"goal: {threshold:.2f} nats")
    for r in runs:
        ax1.annotate(f"{r['train_seconds']:.0f} s", (r["steps"], r["kl_gap"]), textcoords="offset points",
                     xytext=(4, 6), fontsize=8)
    ax1.set(xlabel="training steps", ylabel="KL gap (nats)", title="KL gap (labels: training time)")
    log_x(ax1, steps)
    ax1.legend(fontsize=8)
    ax2.plot(steps, [r["energy_distance"] for r in runs], marker="o")
    # Energy distances can dip below zero (an unbiased estimate near 0): a symmetric log
    # axis, linear within the sampling noise of an exact sample of the same size.
    noise = abs(b["exact_sample_energy_distance"])
    ax2.set_yscale("symlog", linthresh=10 ** np.floor(np.log10(max(noise, 1e-6))))
    ax2.axhspan(-noise, noise, color="0.9", zorder=0, label="|exact sample| (noise level)")
    ax2.set(xlabel="training steps", ylabel="energy distance to test set", title="Energy distance")
    log_x(ax2, steps)
    ax2.legend(fontsize=8)
    save(fig, path)
