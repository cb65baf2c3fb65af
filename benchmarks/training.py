"""1. Training throughput: fused lax.scan, a step-per-call jit loop, and eager PyTorch.

All three train the same network (fm_helpers.model.VelocityUNet defaults, starting from
the same weights) on the same loss, data and batch size with Adam at lr 1e-3, in one
process, in interleaved rounds (the order rotates each round); the figure of each method
is the median of its rounds.

- ``fused``: ``fm_helpers.train.make_train_chunk`` (what ``fit`` runs): ``chunk`` steps in
  one compiled ``lax.scan``, and Python waits for each chunk as ``fit`` does.
- ``jit loop``: ``jax.jit(make_train_step(batch))`` called once per step from Python,
  without waiting for the loss (JAX's asynchronous dispatch, the loop's best case).
- ``torch eager``: the same network in PyTorch (torch_model.py), one Python step at a
  time, ``torch.set_num_threads(cores)``;
- ``torch eager 1 thread``: the same with ``torch.set_num_threads(1)``. With small
  matrices, and with other processes on the cores, one thread can beat several (OpenMP
  threads wait for each other at every operation), so the goal compares the fused scan with
  the faster of the two PyTorch settings.

A profile separates what limits each method: XLA's count of floating-point operations
per step, the throughput a large matrix product reaches on these cores, the cost of an
empty jitted call, and a two-point cost model ``time per step = fixed + per-sample x batch``
fitted from the two batch sizes.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import Config, Problem, median
from fm_helpers.model import VelocityUNet
from fm_helpers.train import create_train_state, make_train_chunk, make_train_step

METHODS = ("fused", "jit loop", "torch eager", "torch eager 1 thread")


def _jax_runners(batch: int, chunk: int, data, seed: int = 0):
    state = create_train_state(jax.random.PRNGKey(seed), VelocityUNet(), dim=2, learning_rate=1e-3)
    chunk_fn = make_train_chunk(batch, chunk)
    step_fn = jax.jit(make_train_step(batch))
    box = {"fused": (state, jax.random.PRNGKey(1)), "loop": (state, jax.random.PRNGKey(1))}

    def fused(n_chunks: int) -> float:
        state, key = box["fused"]
        for _ in range(n_chunks):
            state, key, losses = chunk_fn(state, key, data)
            np.asarray(losses)  # fit waits for every chunk (progress bar, validation)
        box["fused"] = (state, key)
        return float(losses[-1])

    def loop(n_steps: int) -> float:
        state, key = box["loop"]
        for _ in range(n_steps):
            state, key, loss = step_fn(state, key, data)
        box["loop"] = (state, key)
        return float(loss)  # waits for the last step

    return state, fused, loop, step_fn


def _timed(fn, n) -> float:
    start = time.perf_counter()
    fn(n)
    return time.perf_counter() - start


def _matmul_gflops(size: int = 1024, reps: int = 5) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def _empty_call_us(calls: int = 2000) -> float:
    f = jax.jit(lambda x: x + 1.0)
    x = jnp.zeros(())
    f(x).block_until_ready()
    start = time.perf_counter()
    for _ in range(calls):
        x = f(x)
    x.block_until_ready()
    return (time.perf_counter() - start) / calls * 1e6


def run(cfg: Config, problem: Problem, log=print) -> dict:
    import torch

    import torch_model

    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    data = problem.train
    data_np = np.asarray(data)
    out = {
        "methods": list(METHODS),
        "learning_rate": 1e-3,
        "chunk": cfg.chunk,
        "rounds": cfg.rounds,
        "seconds_per_measure": cfg.seconds_per_measure,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "batches": {},
    }
    model = VelocityUNet()
    params0 = create_train_state(jax.random.PRNGKey(0), model, dim=2).params
    out["same_network"] = torch_model.check_same(model.apply, params0)
    log(f"  same network check: {out['same_network']}")

    for batch in cfg.batches:
        state, fused, loop, step_fn = _jax_runners(batch, cfg.chunk, data)
        trainer = torch_model.TorchTrainer(state.params, data_np, batch, threads=cores)
        trainer1 = torch_model.TorchTrainer(state.params, data_np, batch, threads=1)
        compile_s = {"fused": _timed(fused, 1), "jit loop": _timed(loop, 1)}
        trainer.run(5)
        trainer1.run(5)
        # calibrate: steps per measurement so that each takes about seconds_per_measure
        rate = {
            "fused": cfg.chunk / _timed(fused, 1),
            "jit loop": 50 / _timed(loop, 50),
            "torch eager": 10 / _timed(trainer.run, 10),
            "torch eager 1 thread": 10 / _timed(trainer1.run, 10),
        }
        units = {
            "fused": max(1, round(rate["fused"] * cfg.seconds_per_measure / cfg.chunk)),
            "jit loop": max(20, round(rate["jit loop"] * cfg.seconds_per_measure)),
            "torch eager": max(5, round(rate["torch eager"] * cfg.seconds_per_measure)),
            "torch eager 1 thread": max(5, round(rate["torch eager 1 thread"] * cfg.seconds_per_measure)),
        }
        steps = {m: units[m] for m in METHODS}
        steps["fused"] = units["fused"] * cfg.chunk
        runners = {"fused": fused, "jit loop": loop, "torch eager": trainer.run, "torch eager 1 thread": trainer1.run}
        per_round = {m: [] for m in METHODS}
        for r in range(cfg.rounds):
            k = r % len(METHODS)
            order = METHODS[k:] + METHODS[:k]
            for m in order:
                per_round[m].append(steps[m] / _timed(runners[m], units[m]))
            log(f"  batch {batch} round {r + 1}: " + ", ".join(f"{m} {per_round[m][-1]:.0f}/s" for m in METHODS))
        sps = {m: median(per_round[m]) for m in METHODS}
        torch_phases = {f"{cores} threads": trainer.profile(max(5, steps["torch eager"] // 4)),
                        "1 thread": trainer1.profile(max(5, steps["torch eager 1 thread"] // 4))}
        best_torch = max(sps["torch eager"], sps["torch eager 1 thread"])
        flops = jax.jit(make_train_step(batch)).lower(state, jax.random.PRNGKey(1), data).compile().cost_analysis()
        flops = float(flops["flops"]) if isinstance(flops, dict) else float(flops[0]["flops"])
        out["batches"][str(batch)] = {
            "steps_per_measure": steps,
            "steps_per_second_rounds": per_round,
            "steps_per_second": sps,
            "compile_seconds": compile_s,
            "ratios": {
                "fused / best torch": sps["fused"] / best_torch,
                "fused / torch eager": sps["fused"] / sps["torch eager"],
                "fused / torch eager 1 thread": sps["fused"] / sps["torch eager 1 thread"],
                "fused / jit loop": sps["fused"] / sps["jit loop"],
                "jit loop / best torch": sps["jit loop"] / best_torch,
            },
            "xla_flops_per_step": flops,
            "fused_gflops_per_second": flops * sps["fused"] / 1e9,
            "torch_phases_us": torch_phases,
        }

    torch.set_num_threads(cores)
    # profile: where the time of a step goes
    matmul = _matmul_gflops()
    empty_us = _empty_call_us()
    profile = {"matmul_1024_gflops_per_second": matmul, "empty_jit_call_us": empty_us, "cost_model": {}}
    if len(cfg.batches) >= 2:
        b_hi, b_lo = max(cfg.batches), min(cfg.batches)
        for m in METHODS:
            t_hi = 1.0 / out["batches"][str(b_hi)]["steps_per_second"][m]
            t_lo = 1.0 / out["batches"][str(b_lo)]["steps_per_second"][m]
            per_sample = (t_hi - t_lo) / (b_hi - b_lo)
            fixed = t_lo - per_sample * b_lo
            profile["cost_model"][m] = {
                "fixed_us": fixed * 1e6,
                "per_sample_us": per_sample * 1e6,
                f"fixed_share_at_{b_hi}": fixed / t_hi,
                f"fixed_share_at_{b_lo}": fixed / t_lo,
            }
    for b, rec in out["batches"].items():
        t_fused = 1.0 / rec["steps_per_second"]["fused"]
        t_loop = 1.0 / rec["steps_per_second"]["jit loop"]
        rec["loop_overhead_us_per_step"] = (t_loop - t_fused) * 1e6
        rec["fused_share_of_matmul_peak"] = rec["fused_gflops_per_second"] / matmul
    out["profile"] = profile
    log(f"  profile: {profile}")
    return out
