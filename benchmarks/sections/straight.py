"""6. Straighter paths: couplings, minibatch optimal transport and reflow (chapter 8).

Chapter 8's recipe, step for step, for several seeds: on its data (20,000 training and
1,000 test points drawn from the image with key 0), four models at its batch size:

- independent pairs and minibatch OT (``couplings.exact_ot``), 1,200 steps of
  ``fit`` at a peak learning rate of 3e-3 with seed ``s``;
- two rounds of reflow from the independent model (``train.reflow``): 4,000 pairs from
  ``couplings.reflow_pairs`` (key ``10 + round + 100 s``), then 1,000 steps from the
  parent's weights at 1e-3 with seed ``s + round``.

Each model is scored from the chapter's 2,500 noise points (key 2): its straightness S
(``metrics.straightness`` on 17 times of an adaptive Tsit5 solve), the fewest Euler steps
that chapter 6's rule accepts against that solve (1, 2, 4 and 8 steps, then doubling up
to 32, as the chapter does), and its exact KL gap on the test points (paired standard
error). Seed 0 is the chapter's run, which checks it. The minibatch-OT model is also
trained at the other batch sizes of the chapter's sweep (seed 0).
"""

from pathlib import Path

import jax
import numpy as np

import markup as md
from common import Context
from fm_helpers import couplings, metrics, train
from fm_helpers.data import ImageDensity, load_image
from fm_helpers.density import log_prob
from fm_helpers.sample import sample
from plots import log_x, plt, save
from sections import Goal

NAME = "straight"
TITLE = "Straighter paths"
OPT_IN = False
# Chapter 8's settings; its batch size is the one its pair-cost sweep chooses.
SETTINGS = {"n_train": 20_000, "n_test": 1_000, "batch_size": 128, "steps": 1200, "chunk_size": 400,
            "learning_rate": 3e-3, "reflow_pairs": 4000, "reflow_steps": 1000,
            "reflow_learning_rate": 1e-3, "num_noise": 2500}
EULER_NFE = (1, 2, 4, 8, 16, 32)
SEEDS = {False: (0, 1, 2, 3, 4), True: (0,)}
SWEEP = {False: (32, 64, 128, 256, 512), True: (64, 128)}
MODELS = ("independent", "minibatch OT", "reflow 1", "reflow 2")


def _fewest_steps(aim: int, rows: list[dict]) -> tuple[str, bool]:
    best = [r["models"][m]["euler_steps"] for r in rows for m in MODELS[1:]]
    met = [n for n in best if n is not None and n <= aim]
    shown = ", ".join("> 32" if n is None else str(n) for n in best)
    return f"straightened models over the seeds: {shown}", bool(met)


GOALS: tuple[Goal, ...] = (
    Goal("a straightened model within chapter 6's tolerance with Euler at <= {threshold:g} steps",
         4, lambda s, aim: _fewest_steps(aim, s["runs"])),)


def _data(quick: bool) -> tuple[ImageDensity, np.ndarray, np.ndarray]:
    truth = ImageDensity(load_image())
    n_train, n_test = SETTINGS["n_train"], SETTINGS["n_test"]
    points = np.asarray(truth.sample(jax.random.PRNGKey(0), n_train + n_test))
    return truth, points[:n_train], points[n_train:]


def _score(model, truth, noise, test_x, log_p) -> dict:
    """Chapter 8's measurements of one model."""
    run = sample(model, noise, save_trajectory=17)
    reference = np.asarray(run.samples)
    candidates = []
    for n in EULER_NFE:  # 1, 2, 4, 8; then doubling until one is within tolerance
        candidates.append(np.asarray(sample(model, noise, solver="euler", num_steps=n).samples))
        one = metrics.cheapest_within_tolerance(candidates[-1:], [n], reference, truth)
        if n >= 8 and one.cheapest is not None:
            break
    nfe = list(EULER_NFE[: len(candidates)])
    choice = metrics.cheapest_within_tolerance(candidates, nfe, reference, truth)
    gap = log_p - np.asarray(log_prob(model, test_x).log_prob)
    return {"straightness": metrics.straightness(model, run.trajectory, run.ts),
            "euler_steps": None if choice.cheapest is None else nfe[choice.cheapest],
            "euler_distance": {str(n): g.mean_distance for n, g in zip(nfe, choice.gaps)},
            "adaptive_nfe": run.nfe, "kl_gap": float(gap.mean()),
            "kl_gap_se": float(gap.std(ddof=1) / np.sqrt(len(gap)))}


def _models(train_x: np.ndarray, seed: int, batch: int) -> tuple[dict, dict]:
    s = SETTINGS
    models, ms = {}, {}
    for name, coupling in [("independent", couplings.independent), ("minibatch OT", couplings.exact_ot)]:
        models[name], h = train.fit(train_x, steps=s["steps"], batch_size=batch, learning_rate=s["learning_rate"],
                                    seed=seed, coupling=coupling, progress=False, chunk_size=s["chunk_size"])
        ms[name] = 1e3 / h.steps_per_second
    keys = [jax.random.PRNGKey(10 + round_ + 100 * seed) for round_ in (1, 2)]
    rounds = train.reflow(models["independent"], keys, num_pairs=s["reflow_pairs"], steps=s["reflow_steps"],
                          batch_size=batch, learning_rate=s["reflow_learning_rate"], seed=seed)
    for round_, (model, h) in enumerate(rounds, start=1):
        models[f"reflow {round_}"], ms[f"reflow {round_}"] = model, 1e3 / h.steps_per_second
    return models, ms


def run(ctx: Context) -> dict:
    quick = ctx.cfg.quick
    truth, train_x, test_x = _data(quick)
    noise = jax.random.normal(jax.random.PRNGKey(2), (SETTINGS["num_noise"], 2))
    log_p = np.asarray(truth.log_prob(test_x))
    out = {"settings": dict(SETTINGS), "runs": [], "batch_sweep": []}
    for seed in SEEDS[quick]:
        models, ms = _models(train_x, seed, SETTINGS["batch_size"])
        scores = {name: {**_score(m, truth, noise, test_x, log_p), "ms_per_step": ms[name]}
                  for name, m in models.items()}
        out["runs"].append({"seed": seed, "models": scores})
        ctx.log(f"  seed {seed}: " + "; ".join(
            f"{name} S {v['straightness']:.1e}, Euler {v['euler_steps']}, KL {v['kl_gap']:.3f}"
            for name, v in scores.items()))
    for batch in SWEEP[quick]:
        model, h = train.fit(train_x, steps=SETTINGS["steps"], batch_size=batch,
                             learning_rate=SETTINGS["learning_rate"], seed=0, coupling=couplings.exact_ot,
                             progress=False, chunk_size=SETTINGS["chunk_size"])
        score = _score(model, truth, noise, test_x, log_p)
        out["batch_sweep"].append({"batch_size": batch, "ms_per_step": 1e3 / h.steps_per_second, **score})
        ctx.log(f"  OT batch {batch}: S {score['straightness']:.1e}, Euler {score['euler_steps']}, "
                f"{1e3 / h.steps_per_second:.1f} ms per step")
    return out


def _steps(n) -> str:
    return "> 32" if n is None else str(n)


def render(s: dict, image_dir: str) -> str:
    st = s["settings"]
    rows = []
    for name in MODELS:
        per = [r["models"][name] for r in s["runs"]]
        S = np.array([p["straightness"] for p in per])
        kl = np.array([p["kl_gap"] for p in per])
        rows.append([name, f"{np.mean([p['ms_per_step'] for p in per]):.2f}",
                     f"{md.num(S.mean())} ({md.num(S.min())} to {md.num(S.max())})",
                     ", ".join(_steps(p["euler_steps"]) for p in per),
                     ", ".join(str(p["adaptive_nfe"]) for p in per),
                     f"{kl.mean():.3f} ± {kl.std(ddof=1) if len(kl) > 1 else 0:.3f}"])
    sweep = [[r["batch_size"], f"{r['ms_per_step']:.2f}", md.num(r["straightness"]), _steps(r["euler_steps"]),
              f"{r['kl_gap']:.3f} ± {r['kl_gap_se']:.3f}"] for r in s["batch_sweep"]]
    seeds = ", ".join(str(r["seed"]) for r in s["runs"])
    return "\n".join([
        f"Chapter 8's recipe for seeds {seeds}: {st['n_train']:,} training points, batch {st['batch_size']}, "
        f"{st['steps']:,} steps at a peak learning rate of {st['learning_rate']}; reflow: {st['reflow_pairs']:,} "
        f"pairs and {st['reflow_steps']:,} steps at {st['reflow_learning_rate']} from the parent's weights, twice. "
        f"Scored from {st['num_noise']:,} noise points: S on 17 times of an adaptive Tsit5 solve; the fewest Euler "
        f"steps within chapter 6's tolerance of that solve (1 to 32 steps); the exact KL gap on {st['n_test']:,} "
        "test points.",
        "",
        md.table(["model", "ms per training step (mean)", "straightness S: mean (range)",
                  "fewest Euler steps, per seed", "adaptive NFE, per seed", "KL gap (nats): mean ± sd over seeds"],
                 rows),
        "",
        "The minibatch-OT model at each batch size of chapter 8's sweep (seed 0; KL gap ± its paired standard error):",
        "",
        md.table(["OT batch size", "ms per training step", "straightness S", "fewest Euler steps", "KL gap (nats)"],
                 sweep),
        "",
        md.figure("Euler's distance to the adaptive samples against steps, per model", image_dir, NAME),
    ])


def plot(s: dict, path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, name in enumerate(MODELS):
        for j, r in enumerate(s["runs"]):
            dist = r["models"][name]["euler_distance"]
            ax1.loglog([int(n) for n in dist], list(dist.values()), "o-", color=f"C{k}", alpha=0.6, ms=3,
                       label=name if j == 0 else None)
    ax1.set(xlabel="Euler steps", ylabel="mean distance to adaptive samples", title="Euler's error, every seed")
    log_x(ax1, list(EULER_NFE))
    ax1.legend(fontsize=8)
    sweep = s["batch_sweep"]
    batches = [r["batch_size"] for r in sweep]
    ax2.loglog(batches, [r["straightness"] for r in sweep], "o-", label="straightness S")
    ax2.set(xlabel="OT batch size", ylabel="S", title="Minibatch OT: straightness against batch size")
    log_x(ax2, batches)
    twin = ax2.twinx()
    twin.plot(batches, [r["ms_per_step"] for r in sweep], "s--", color="C3", label="ms per step")
    twin.set_ylabel("ms per training step")
    ax2.legend(loc="upper center", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    save(fig, path)
