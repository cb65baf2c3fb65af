"""11. Profile of a training step (opt-in: ``--only profile`` or ``--only all``).

What limits each method of section 1, from the throughputs it measured (measured here if
section 1 did not run): XLA's count of floating-point operations per step, and the GFLOP/s
of the fused scan beside a 1024x1024 matrix product; the jit loop's extra time per step
beside the cost of an empty jitted call; PyTorch's time in each phase of a step; and a
cost model ``time per step = fixed + per-sample x batch`` through the two batch sizes.
"""

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import markup as md
from common import Context, fresh_model, seconds, xla_flops
from flax import nnx
from fm_helpers.train import create_optimizer, make_train_chunk
from sections import Goal

NAME = "profile"
TITLE = "Profile of a training step"
OPT_IN = True  # a diagnosis of section 1's figures; no goal depends on it
GOALS: tuple[Goal, ...] = ()


def _matmul_gflops(size: int = 1024, reps: int = 5) -> float:
    """What a large matrix product reaches on these cores: the arithmetic ceiling."""
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    return 2 * size**3 / min(seconds(f, a)[1] for _ in range(reps)) / 1e9


def _empty_call_us(calls: int = 2000) -> float:
    """Microseconds of dispatch per call of a jitted function that does nothing."""
    f = jax.jit(lambda x: x + 1.0)
    x = f(jnp.zeros(())).block_until_ready()  # compiled before the clock starts
    start = time.perf_counter()
    for _ in range(calls):
        x = f(x)
    x.block_until_ready()
    return (time.perf_counter() - start) / calls * 1e6


def _cost_model(t: dict) -> dict:
    """Per method, the line through the step times at the smallest and largest batch."""
    lo, hi = min(map(int, t["batches"])), max(map(int, t["batches"]))
    if lo == hi:
        return {}
    out = {}
    for m in t["methods"]:
        t_lo, t_hi = (1.0 / t["batches"][str(b)]["steps_per_second"][m] for b in (lo, hi))
        per_sample = (t_hi - t_lo) / (hi - lo)
        fixed = t_lo - per_sample * lo
        out[m] = {"fixed_us": fixed * 1e6, "per_sample_us": per_sample * 1e6,
                  f"fixed_share_at_{hi}": fixed / t_hi, f"fixed_share_at_{lo}": fixed / t_lo}
    return out


def _torch_phases(t: dict, batch: str, data: jax.Array) -> dict:
    """PyTorch's mean microseconds per step in each phase, for both thread settings."""
    import torch_model  # PyTorch only when measuring

    out = {}
    for label, threads, m in ((f"{t['torch_threads']} threads", t["torch_threads"], "torch eager"),
                              ("1 thread", 1, "torch eager 1 thread")):
        weights = nnx.to_pure_dict(nnx.state(fresh_model()))
        trainer = torch_model.TorchTrainer(weights, np.asarray(data), int(batch), threads=threads)
        trainer.run(5)  # warm-up, as before section 1's measurements
        out[label] = trainer.profile(max(5, t["batches"][batch]["steps_per_measure"][m] // 4))
    return out


def run(ctx: Context) -> dict:
    t, data = ctx.results("training"), ctx.train
    matmul = _matmul_gflops()
    out: dict = {"matmul_1024_gflops_per_second": matmul, "empty_jit_call_us": _empty_call_us(),
           "cost_model": _cost_model(t), "batches": {}}
    for b, rec in t["batches"].items():
        sps = rec["steps_per_second"]
        model = fresh_model()
        graphdef, state = nnx.split((model, create_optimizer(model, t["learning_rate"])))
        one_step = make_train_chunk(int(b), 1)  # a scan of one step: the step's arithmetic
        flops = xla_flops(one_step, graphdef, state, jax.random.PRNGKey(1), data)
        out["batches"][b] = {
            "xla_flops_per_step": flops,
            "fused_gflops_per_second": flops * sps["fused"] / 1e9,
            "torch_phases_us": _torch_phases(t, b, data),
            "loop_overhead_us_per_step": (1.0 / sps["jit loop"] - 1.0 / sps["fused"]) * 1e6,
            "fused_share_of_matmul_peak": flops * sps["fused"] / 1e9 / matmul,
        }
    ctx.log(f"  profile: {out}")
    return out


def render(p: dict, image_dir: str) -> str:
    parts = ["**Profile.** Two batch sizes give each method a cost model *time per step = fixed + per-sample x batch*:",
             ""]
    cm = p["cost_model"]
    if cm:
        keys = [k for k in next(iter(cm.values())) if k.startswith("fixed_share_at_")]
        parts += [md.table(["method", "fixed (us/step)", "per sample (us)"] +
                           [f"fixed share at batch {k.rsplit('_', 1)[1]}" for k in keys],
                           [[m, f"{v['fixed_us']:.0f}", f"{v['per_sample_us']:.2f}"] +
                            [f"{100 * v[k]:.0f}%" for k in keys] for m, v in cm.items()]), ""]
    for b, rec in p["batches"].items():
        phases = "; ".join(f"{name}: " + ", ".join(f"{k} {v:.0f} us" for k, v in ph.items())
                           for name, ph in rec["torch_phases_us"].items())
        parts.append(
            f"- batch {b}: XLA counts {rec['xla_flops_per_step'] / 1e6:.1f} MFLOP per step; the fused scan runs "
            f"{md.num(rec['fused_gflops_per_second'])} GFLOP/s, {100 * rec['fused_share_of_matmul_peak']:.0f}% of "
            f"what a 1024x1024 matrix product reaches here ({md.num(p['matmul_1024_gflops_per_second'])} GFLOP/s). "
            f"Time per step, jit loop minus scan: {rec['loop_overhead_us_per_step']:.0f} us (an empty jitted call "
            f"costs {p['empty_jit_call_us']:.1f} us). PyTorch per step, {phases}.")
    return "\n".join(parts)


def plot(p: dict, path: Path) -> None:
    """No figure: the profile is a table and a few lines of text."""
