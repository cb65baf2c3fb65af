"""Train chapter 8's flow and its twice-reflowed flow, and ship their weights.

Chapter 9 compares MeanFlow with Euler steps of these two networks. Training them there
would cost the chapter a fifth of its time budget, so this script trains them once, with
chapter 8's recipe and seed, and saves the weights with ``train.save_state`` (msgpack, no
pickle) in fm_helpers/assets/. The recipe, seed and wall time are written next to them,
in a JSON file.

- data: 20,000 points drawn from the two-moons image with key 0 (chapter 8's training
  set: the first 20,000 of 21,000 draws);
- the flow: ``train.fit`` with independent pairs, 1,200 steps at batch 128, peak
  learning rate 3e-3, seed 0, chunks of 400 steps;
- reflow: ``train.reflow`` from it, two rounds with keys 11 and 12, 4,000 pairs and
  1,000 steps per round at batch 128 and peak rate 1e-3, seed 0.

Run from the repository root:  python scripts/make_chapter8_weights.py
The benchmark's "straight" section trains the same models for its seed 0; chapter 9 and
tests/test_meanflow.py check the shipped weights against its published Euler distances.
"""

import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np

from fm_helpers import data, train

ASSETS = Path(__file__).resolve().parents[1] / "fm_helpers" / "assets"
FLOW, REFLOW = ASSETS / "chapter8_flow_seed0.msgpack", ASSETS / "chapter8_reflow2_seed0.msgpack"
RECORD = ASSETS / "chapter8_seed0.json"
RECIPE = {"n_train": 20_000, "data_key": 0, "seed": 0, "steps": 1200, "batch_size": 128,
          "learning_rate": 3e-3, "chunk_size": 400, "reflow_keys": [11, 12],
          "reflow_pairs": 4000, "reflow_steps": 1000, "reflow_learning_rate": 1e-3}


def main() -> None:
    start = time.perf_counter()
    r = RECIPE
    truth = data.ImageDensity(data.load_image())
    points = np.asarray(truth.sample(jax.random.PRNGKey(r["data_key"]), r["n_train"] + 1000))
    flow, _ = train.fit(points[: r["n_train"]], steps=r["steps"], batch_size=r["batch_size"],
                        learning_rate=r["learning_rate"], seed=r["seed"],
                        chunk_size=r["chunk_size"], progress=False)
    rounds = train.reflow(flow, [jax.random.PRNGKey(k) for k in r["reflow_keys"]],
                          num_pairs=r["reflow_pairs"], steps=r["reflow_steps"],
                          batch_size=r["batch_size"], learning_rate=r["reflow_learning_rate"],
                          seed=r["seed"])
    train.save_state(FLOW, flow)
    train.save_state(REFLOW, rounds[-1][0])
    record = {"recipe": RECIPE, "wall_seconds": round(time.perf_counter() - start, 1),
              "machine": f"{platform.machine()}, {jax.devices()[0].platform}",
              "versions": {p: version(p) for p in ("jax", "flax", "optax", "diffrax")}}
    RECORD.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {FLOW.name}, {REFLOW.name} ({REFLOW.stat().st_size / 1e3:.0f} kB each) "
          f"and {RECORD.name} in {ASSETS}")


if __name__ == "__main__":
    main()
