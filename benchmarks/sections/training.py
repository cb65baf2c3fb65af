"""1. Training throughput: fused lax.scan (Flax NNX, and the Linen version it replaced), a
step-per-call jit loop, and eager PyTorch.

All of them train the same network (fm_helpers.model.VelocityMLP defaults, starting from
the same weights) on the same loss, data and batch size with Adam at lr 1e-3, in one
process, in interleaved rounds (the order rotates each round); the figure of each method
is the median of its rounds.

- ``fused``: ``fm_helpers.train.make_train_chunk`` (what ``fit`` runs): ``chunk`` steps in
  one compiled ``lax.scan`` over ``nnx.split((model, optimizer))``, and Python waits for
  each chunk as ``fit`` does.
- ``fused (Linen)``: the same with the course's code before the move to NNX
  (linen_reference.py: a ``flax.linen`` network and a ``TrainState``). Issue 10's goal:
  the NNX chunk within 5% of it.
- ``jit loop``: the step of ``make_train_step(batch)`` compiled by ``jax.jit`` on the split
  state (merge, step, split inside), called once per step from Python without waiting
  for the loss (JAX's asynchronous dispatch, the loop's best case).
- ``torch eager``: the same network in PyTorch (torch_model.py), one Python step at a
  time, ``torch.set_num_threads(cores)``;
- ``torch eager 1 thread``: the same with ``torch.set_num_threads(1)``. With small
  matrices, and with other processes on the cores, one thread can beat several (OpenMP
  threads wait for each other at every operation), so the goal compares the fused scan with
  the faster of the two PyTorch settings.

Where each method's time goes is the opt-in section ``profile`` (profiling.py).
"""

import os
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import markup as md
import linen_reference
from common import Context, fresh_model, median, seconds
from flax import nnx
from fm_helpers.train import create_optimizer, make_train_chunk, make_train_step
from plots import plt, save
from sections import Goal

NAME = "training"
TITLE = "Training throughput"
OPT_IN = False
LEARNING_RATE, CHUNK = 1e-3, 500  # CHUNK: steps per fused lax.scan call (fit's default chunk_size)
BATCHES = (256, 32)
ROUNDS = {False: (3, 2.0), True: (2, 0.5)}  # rounds, and seconds per method per round (full, --quick)
METHODS = ("fused", "fused (Linen)", "jit loop", "torch eager", "torch eager 1 thread")
COLORS = {"fused": "C0", "fused (Linen)": "C2", "jit loop": "C1", "torch eager": "C3", "torch eager 1 thread": "C4"}
# A unit is one step, or one chunk of steps for the fused methods. Per method: units run first
# (compilation, warm-up), units timed to calibrate, fewest units in a measurement.
UNITS = {"fused": (1, 1, 1), "fused (Linen)": (1, 1, 1), "jit loop": (1, 50, 20), "torch eager": (5, 10, 5),
         "torch eager 1 thread": (5, 10, 5)}


def _speedup(t: dict, threshold: float) -> tuple[str, bool | None]:
    ratio = {b: rec["ratios"]["fused / best torch"] for b, rec in t["batches"].items()}
    if "256" not in ratio:
        return "not measured at batch 256", None
    other = [f"batch {b}: {md.num(r)}x" for b, r in ratio.items() if b != "256"]
    return f"{md.num(ratio['256'])}x" + (f" ({', '.join(other)})" if other else ""), ratio["256"] >= threshold


def _nnx_vs_linen(t: dict, threshold: float) -> tuple[str, bool | None]:
    rec = t["batches"].get("256")
    if rec is None or "fused / fused (Linen)" not in rec["ratios"]:
        return "not measured at batch 256", None
    ratio = rec["ratios"]["fused / fused (Linen)"]
    sps = rec["steps_per_second"]
    return (f"{md.num(ratio)} ({md.num(sps['fused'])} against {md.num(sps['fused (Linen)'])} steps/s)",
            ratio >= threshold)


GOALS: tuple[Goal, ...] = (
    Goal("fused training >= {threshold:g}x eager PyTorch (batch 256, faster PyTorch thread setting)", 4.0, _speedup),
    Goal("fused NNX training >= {threshold:g}x the Linen version it replaced (batch 256, same run)", 0.95,
         _nnx_vs_linen),
)


def _runners(batch: int, data: jax.Array, trainer: type) -> dict[str, Callable[[int], object]]:
    """The four methods, each a function that trains for some units, from the same weights."""
    model = fresh_model()
    graphdef, state = nnx.split((model, create_optimizer(model, LEARNING_RATE)))
    chunk_fn, step = make_train_chunk(batch, CHUNK), make_train_step(batch)
    linen_chunk = linen_reference.make_train_chunk(batch, CHUNK)

    @jax.jit
    def step_fn(state, key, data):  # one step on the split state: what a loop can compile
        model, optimizer = nnx.merge(graphdef, state)
        key, loss = step(model, optimizer, key, data)
        return nnx.state((model, optimizer)), key, loss

    key = jax.random.PRNGKey(1)
    carry = {"fused": (state, key), "jit loop": (state, key),
             "fused (Linen)": (linen_reference.create_train_state(model, LEARNING_RATE), key)}

    def fused_with(name: str, fn: Callable) -> Callable[[int], None]:
        def run(n_chunks: int) -> None:
            state, key = carry[name]
            for _ in range(n_chunks):
                state, key, losses = fn(state, key, data)
                np.asarray(losses)  # fit waits for every chunk (progress bar, validation)
            carry[name] = (state, key)

        return run

    def loop(n_steps: int) -> None:
        state, key = carry["jit loop"]
        for _ in range(n_steps):
            state, key, loss = step_fn(state, key, data)
        carry["jit loop"] = (state, key)
        float(loss)  # waits for the last step only

    data_np, cores = np.asarray(data), os.cpu_count() or 1
    weights = nnx.to_pure_dict(nnx.state(model))
    return {"fused": fused_with("fused", lambda s, k, d: chunk_fn(graphdef, s, k, d)),
            "fused (Linen)": fused_with("fused (Linen)", linen_chunk), "jit loop": loop,
            "torch eager": trainer(weights, data_np, batch, threads=cores).run,
            "torch eager 1 thread": trainer(weights, data_np, batch, threads=1).run}


def _batch(batch: int, rounds: int, per_measure: float, data: jax.Array, trainer: type, log: Callable) -> dict:
    runners, compile_s, units = _runners(batch, data, trainer), {}, {}
    for m, (warm, probe, least) in UNITS.items():
        compile_s[m] = seconds(runners[m], warm)[1]  # JAX compiles here; PyTorch warms up
        units[m] = max(least, round(probe / seconds(runners[m], probe)[1] * per_measure))
    steps = {m: units[m] * (CHUNK if m.startswith("fused") else 1) for m in METHODS}
    per_round: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(rounds):
        k = r % len(METHODS)
        for m in METHODS[k:] + METHODS[:k]:  # rotated, so that no method always runs first
            per_round[m].append(steps[m] / seconds(runners[m], units[m])[1])
        log(f"  batch {batch} round {r + 1}: " + ", ".join(f"{m} {per_round[m][-1]:.0f}/s" for m in METHODS))
    sps = {m: median(per_round[m]) for m in METHODS}
    best_torch = max(sps["torch eager"], sps["torch eager 1 thread"])
    ratios = {"fused / best torch": sps["fused"] / best_torch, "fused / torch eager": sps["fused"] / sps["torch eager"],
              "fused / torch eager 1 thread": sps["fused"] / sps["torch eager 1 thread"],
              "fused / jit loop": sps["fused"] / sps["jit loop"], "jit loop / best torch": sps["jit loop"] / best_torch,
              "fused / fused (Linen)": sps["fused"] / sps["fused (Linen)"]}
    return {"steps_per_measure": steps, "steps_per_second_rounds": per_round, "steps_per_second": sps,
            "compile_seconds": {m: compile_s[m] for m in ("fused", "fused (Linen)", "jit loop")}, "ratios": ratios}


def run(ctx: Context) -> dict:
    import torch  # imported to measure only: rendering does without PyTorch

    import torch_model

    rounds, per_measure = ROUNDS[ctx.cfg.quick]
    same = torch_model.check_same(fresh_model())
    same_linen = linen_reference.check_same(fresh_model(), ctx.train)
    ctx.log(f"  same network check: {same}; NNX against Linen: {same_linen}")
    out = {"methods": list(METHODS), "learning_rate": LEARNING_RATE, "chunk": CHUNK, "rounds": rounds,
           "seconds_per_measure": per_measure, "torch_threads": os.cpu_count() or 1, "torch_version": torch.__version__,
           "batches": {}, "same_network": same, "same_as_linen": same_linen}
    for b in BATCHES:
        out["batches"][str(b)] = _batch(b, rounds, per_measure, ctx.train, torch_model.TorchTrainer, ctx.log)
    return out


def render(t: dict, image_dir: str) -> str:
    methods, threads = t["methods"], t["torch_threads"]
    names = {"fused": "fused `lax.scan`", "fused (Linen)": "fused, Linen", "jit loop": "jit loop",
             "torch eager": f"torch eager, {threads} threads", "torch eager 1 thread": "torch eager, 1 thread"}
    ratios = [r for r in ("fused / fused (Linen)", "fused / best torch", "fused / jit loop", "jit loop / best torch")
              if all(r in rec["ratios"] for rec in t["batches"].values())]
    rows = [[b, *(md.num(rec["steps_per_second"][m]) for m in methods), *(f"{rec['ratios'][r]:.2f}" for r in ratios)]
            for b, rec in t["batches"].items()]
    sn = t["same_network"]
    parts = [
        f"Steps per second, median of {t['rounds']} interleaved rounds of about "
        f"{t['seconds_per_measure']} s each; PyTorch {t['torch_version']} with "
        f"`torch.set_num_threads({threads})` (the core count) and with 1 thread. "
        f"*Best torch* is the faster of the two.",
        "",
        md.table(["batch", *(names[m] for m in methods), *(r.replace("fused (Linen)", "Linen") for r in ratios)], rows),
        "",
        f"Same network: {sn['trainable_params_jax']} trainable parameters in both; from the same weights and "
        f"inputs the outputs differ by at most {md.num(sn['max_abs_output_diff'])}, the losses by "
        f"{md.num(sn['abs_loss_diff'])} and the gradients by {md.num(sn['max_abs_grad_diff'])} (float32 round-off).",
        "",
    ]
    sl = t["same_as_linen"]
    parts += [f"NNX against Linen (the course's code before issue 10): {sl['steps']} fused steps from the same "
              f"weights and keys give losses that differ by at most {md.num(sl['max_abs_loss_diff'])}.", ""]
    return "\n".join([*parts, md.figure("Training throughput", image_dir, NAME)])


def plot(t: dict, path: Path) -> None:
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
    save(fig, path)
