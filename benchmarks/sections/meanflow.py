"""7. One step: MeanFlow against Euler steps of a flow and of its reflow (chapter 9).

Chapter 9's recipe for several seeds, on chapter 8's data (20,000 training and 1,000 test
points drawn from the image with key 0) and its 2,500 noise points (key 2):

- the flow: chapter 8's independent model (1,200 steps, batch 128, peak rate 3e-3, seed
  ``s``), and its two reflow rounds (``train.reflow``, keys ``10 + round + 100 s``;
  seed 0 gives the networks the chapter loads, ``scripts/make_chapter8_weights.py``);
- MeanFlow from scratch: ``AverageVelocityMLP`` with ``nnx.Rngs(s)``, 4,000 steps of
  ``meanflow_loss`` at batch 128 and a peak rate of 1e-3, 75% of the pairs with r = t;
- two variants of MeanFlow for comparison: from the flow's weights
  (``AverageVelocityMLP.from_velocity``, peak rate 3e-4, every seed), and from scratch
  with half the pairs at r = t (seed 0).

Each generator is scored as the chapter scores it: at 1 and 2 evaluations, the mean
distance of its samples to the flow's adaptive samples from the same noise, the share off
the support, and (MeanFlow only) the exact KL gap of the map on the first 256 test points
(``meanflow.map_log_prob``); the flow's adaptive solve gives the reference row. Seed 0 is
the chapter's run, which checks it.
"""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import markup as md
from common import Context
from fm_helpers import meanflow, metrics, train
from fm_helpers.data import ImageDensity, load_image
from fm_helpers.density import log_prob
from fm_helpers.sample import sample
from plots import plt, save
from sections import Goal

NAME = "meanflow"
TITLE = "One step: MeanFlow"
OPT_IN = False
SETTINGS = {"n_train": 20_000, "n_test": 1_000, "n_density": 256, "num_noise": 2500,
            "flow_steps": 1200, "flow_batch": 128, "flow_learning_rate": 3e-3,
            "reflow_pairs": 4000, "reflow_steps": 1000, "reflow_learning_rate": 1e-3,
            "mf_steps": 4000, "mf_batch": 128, "mf_learning_rate": 1e-3, "equal_fraction": 0.75,
            "warm_learning_rate": 3e-4}
SEEDS = {False: (0, 1, 2), True: (0,)}
GENERATORS = ("MeanFlow", "MeanFlow, from the flow", "flow, Euler", "reflow 2, Euler")


def _aim_off(s: dict, ratio: float) -> tuple[str, bool]:
    pairs = [(r["generators"]["MeanFlow"]["1"]["off_support"], r["flow"]["off_support"]) for r in s["runs"]]
    shown = ", ".join(f"{a:.1%} vs {b:.1%}" for a, b in pairs)
    return f"1-NFE MeanFlow vs adaptive flow, off support, per seed: {shown}", all(a <= ratio * b for a, b in pairs)


def _aim_kl(s: dict, ratio: float) -> tuple[str, bool]:
    pairs = [(r["generators"]["MeanFlow"]["1"]["kl_gap"], r["flow"]["kl_gap"]) for r in s["runs"]]
    shown = ", ".join(f"{_kl(a)} vs {b:.2f}" for a, b in pairs)
    return (f"1-NFE MeanFlow vs adaptive flow, KL gap, per seed: {shown}",
            all(a is not None and a <= ratio * b for a, b in pairs))


GOALS: tuple[Goal, ...] = (
    Goal("1-NFE MeanFlow's off-support share within {threshold:g}x the adaptive flow's", 2, _aim_off),
    Goal("1-NFE MeanFlow's exact KL gap within {threshold:g}x the adaptive flow's", 2, _aim_kl),
)


_run_map = jax.jit(lambda T, z: T(z))  # one compile per kind of map, not per call


def _score_map(T, noise, reference, truth, x_test, log_p, density: bool) -> dict:
    x = np.asarray(_run_map(T, noise))
    out = {"distance": float(np.linalg.norm(x - reference, axis=1).mean()),
           "off_support": float(metrics.off_support(truth, x).mean())}
    if density:
        d = meanflow.map_log_prob(T, x_test)
        gap = log_p - d.log_prob
        kept = np.isfinite(gap)
        out |= {"kl_gap": float(gap.mean()) if kept.all() else None,  # None: q = 0 somewhere
                "kl_gap_inverted": float(gap[kept].mean()), "inversion_failed": float(np.mean(~kept)),
                "median_gap": float(np.median(gap)), "holes": float(np.mean(gap > 10)),
                "several_roots": float(np.mean(d.roots > 1))}
    return out


def _meanflow(train_x, model, learning_rate, equal_fraction, seed):
    s = SETTINGS
    loss = functools.partial(meanflow.meanflow_loss, equal_fraction=equal_fraction)
    net, h = train.fit(train_x, model=model, steps=s["mf_steps"], batch_size=s["mf_batch"],
                       learning_rate=learning_rate, seed=seed, progress=False, loss=loss)
    return net, 1e3 / h.steps_per_second


def run(ctx: Context) -> dict:
    s = SETTINGS
    truth = ImageDensity(load_image())
    points = np.asarray(truth.sample(jax.random.PRNGKey(0), s["n_train"] + s["n_test"]))
    train_x, x_test = points[: s["n_train"]], points[s["n_train"]:][: s["n_density"]]
    log_p = np.asarray(truth.log_prob(x_test))
    noise = jax.random.normal(jax.random.PRNGKey(2), (s["num_noise"], 2))
    out = {"settings": dict(s), "runs": [], "variants": []}
    for seed in SEEDS[ctx.cfg.quick]:
        flow, _ = train.fit(train_x, steps=s["flow_steps"], batch_size=s["flow_batch"],
                            learning_rate=s["flow_learning_rate"], seed=seed, chunk_size=400, progress=False)
        keys = [jax.random.PRNGKey(10 + k + 100 * seed) for k in (1, 2)]  # chapter 8's
        reflow = train.reflow(flow, keys, num_pairs=s["reflow_pairs"], steps=s["reflow_steps"],
                              batch_size=s["flow_batch"], learning_rate=s["reflow_learning_rate"], seed=seed)[-1][0]
        scratch, ms = _meanflow(train_x, meanflow.AverageVelocityMLP(2, rngs=nnx.Rngs(seed)),
                                s["mf_learning_rate"], s["equal_fraction"], seed)
        warm, ms_warm = _meanflow(train_x, meanflow.AverageVelocityMLP.from_velocity(flow),
                                  s["warm_learning_rate"], s["equal_fraction"], seed)
        run_ = sample(flow, noise)
        reference = np.asarray(run_.samples)
        flow_row = {"nfe": run_.nfe, "off_support": float(metrics.off_support(truth, reference).mean()),
                    "kl_gap": float(np.mean(log_p - np.asarray(log_prob(flow, x_test).log_prob)))}
        nets = {"MeanFlow": scratch, "MeanFlow, from the flow": warm}
        generators = {}
        for name in GENERATORS:
            generators[name] = {}
            for k in (1, 2):
                T = (meanflow.MeanFlowMap(nets[name], k) if name in nets
                     else meanflow.EulerMap(flow if name.startswith("flow") else reflow, k))
                generators[name][str(k)] = _score_map(T, noise, reference, truth, x_test, log_p, name in nets)
        mf_flow = np.asarray(log_prob(meanflow.Instantaneous(scratch), x_test).log_prob)
        out["runs"].append({"seed": seed, "flow": flow_row, "generators": generators,
                            "meanflow_adaptive_kl_gap": float(np.mean(log_p - mf_flow)),
                            "ms_per_step": {"MeanFlow": ms, "MeanFlow, from the flow": ms_warm}})
        g = generators["MeanFlow"]["1"]
        ctx.log(f"  seed {seed}: 1-NFE MeanFlow distance {g['distance']:.3f}, off {g['off_support']:.1%}, "
                f"KL {_kl(g['kl_gap'])}; flow off {flow_row['off_support']:.1%}, KL {flow_row['kl_gap']:.3f}")
        if seed == 0:
            half, _ = _meanflow(train_x, meanflow.AverageVelocityMLP(2, rngs=nnx.Rngs(seed)),
                                s["mf_learning_rate"], 0.5, seed)
            out["variants"].append({"name": "from scratch, half the pairs at r = t", "seed": seed, **{
                str(k): _score_map(meanflow.MeanFlowMap(half, k), noise, reference, truth, x_test, log_p, True)
                for k in (1, 2)}})
    return out


def _kl(v: float | None) -> str:
    return "∞" if v is None else f"{v:.2f}"


def render(s: dict, image_dir: str) -> str:
    st = s["settings"]
    seeds = ", ".join(str(r["seed"]) for r in s["runs"])
    rows = []
    for name in GENERATORS:
        for k in ("1", "2"):
            per = [r["generators"][name][k] for r in s["runs"]]
            rows.append([name, k, ", ".join(f"{p['distance']:.4f}" for p in per),
                         ", ".join(f"{p['off_support']:.1%}" for p in per),
                         ", ".join(_kl(p["kl_gap"]) for p in per) if "kl_gap" in per[0] else "—",
                         ", ".join(f"{p['inversion_failed']:.1%}" for p in per) if "kl_gap" in per[0] else "—"])
    flows = [r["flow"] for r in s["runs"]]
    rows.append(["flow, adaptive", ", ".join(str(f["nfe"]) for f in flows), "0",
                 ", ".join(f"{f['off_support']:.1%}" for f in flows),
                 ", ".join(f"{f['kl_gap']:.3f}" for f in flows), "—"])
    variants = [[v["name"], k, f"{v[k]['distance']:.4f}", f"{v[k]['off_support']:.1%}", _kl(v[k]["kl_gap"]),
                 f"{v[k]['inversion_failed']:.1%}"] for v in s["variants"] for k in ("1", "2")]
    return "\n".join([
        f"Chapter 9's recipe for seeds {seeds}: the flow ({st['flow_steps']:,} steps at batch {st['flow_batch']}) "
        f"and its two reflow rounds as in chapter 8; MeanFlow, {st['mf_steps']:,} steps at batch {st['mf_batch']}, "
        f"from scratch (peak rate {st['mf_learning_rate']}) and from the flow's weights (peak rate "
        f"{st['warm_learning_rate']}). Every generator maps the same {st['num_noise']:,} noise points; the KL gap "
        f"is the exact one of the map, on {st['n_density']} test points (∞ when Newton's method found no root for "
        "some point). Values per seed.",
        "",
        md.table(["generator", "NFE", "distance to the flow's adaptive samples", "off support", "KL gap (nats)",
                  "inversion failed"], rows),
        "",
        "Variants (seed 0):",
        "",
        md.table(["MeanFlow variant", "NFE", "distance", "off support", "KL gap (nats)", "inversion failed"],
                 variants),
        "",
        md.figure("Off-support share and distance at 1 and 2 evaluations, per generator and seed", image_dir, NAME),
    ])


def plot(s: dict, path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for c, name in enumerate(GENERATORS):
        for j, r in enumerate(s["runs"]):
            g = r["generators"][name]
            ax1.plot([1, 2], [g["1"]["off_support"], g["2"]["off_support"]], "o-", color=f"C{c}", alpha=0.7,
                     label=name if j == 0 else None)
            ax2.semilogy([1, 2], [g["1"]["distance"], g["2"]["distance"]], "o-", color=f"C{c}", alpha=0.7)
    for j, r in enumerate(s["runs"]):
        ax1.axhline(r["flow"]["off_support"], color="gray", ls="--", lw=1, label="flow, adaptive" if j == 0 else None)
    ax1.set(xlabel="evaluations", ylabel="share off the support", xticks=[1, 2], title="Samples off the support")
    ax2.set(xlabel="evaluations", ylabel="distance to the flow's adaptive samples", xticks=[1, 2],
            title="Distance from the same noise")
    ax1.legend(fontsize=8)
    save(fig, path)
