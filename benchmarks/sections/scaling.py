"""10. Scaling out: the training step on 1, 2, 4 and 8 *simulated* devices (chapter 12).

The devices are XLA's CPU split in eight (``jax_num_cpu_devices``), sharing this machine's
cores: the figures say what sharding costs here, not what real accelerators would gain.
The batch is split across the devices (``fit(..., mesh=...)``'s step), the network and
Adam's state copied to each. Measured in a separate process (``scaling_worker.py``),
since JAX fixes its device count when it starts.
"""

import json
import subprocess
import sys
from pathlib import Path

import markup as md
from common import Context
from sections import Goal

NAME = "scaling"
TITLE = "Scaling out (simulated devices)"
OPT_IN = False
GOALS: tuple[Goal, ...] = ()  # a measurement of cost, with nothing to meet
SETTINGS = {False: {"steps": 200, "batches": (256, 4096)}, True: {"steps": 20, "batches": (256,)}}
WORKER = Path(__file__).resolve().parents[1] / "scaling_worker.py"


def run(ctx: Context) -> dict:
    cfg = SETTINGS[ctx.cfg.quick]
    done = subprocess.run([sys.executable, str(WORKER), str(cfg["steps"]),
                           *map(str, cfg["batches"])], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scaling_worker.py failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    ctx.log(f"  simulated devices, ms per step: {out['ms_per_step']}")
    return out


def render(s: dict, image_dir: str) -> str:
    counts = list(next(iter(s["ms_per_step"].values())))
    rows = []
    for batch, times in s["ms_per_step"].items():
        rows.append([batch] + [f"{times[k]:.2f} ({times[k] / times['1']:.2f}x)" for k in counts])
    return "\n".join([
        f"The training step of chapter 12, data-parallel on *simulated* {s['platform'].upper()} devices "
        f"that share this machine's {s['cores']} cores: milliseconds per step (best of 5 runs of "
        f"{s['steps']} steps in one compiled scan), and in brackets the time relative to one device. "
        "Simulated devices add no arithmetic power: the same work runs on the same cores, with an "
        "all-reduce per step besides. A figure below 1.00x means the split kept the cores busier than "
        "one device's program did: a fact about XLA's CPU backend on this machine, not a prediction "
        "for accelerators. Chapter 12 estimates what real accelerators would do.",
        "",
        md.table(["batch"] + [f"{k} device{'s' if k != '1' else ''}" for k in counts], rows),
    ])


def plot(s: dict, path: Path) -> None:
    """No figure: one small table."""
