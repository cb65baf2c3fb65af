"""Train chapter 11's longer run of the digits U-Net and ship it inside fm_helpers.

Writes fm_helpers/assets/digits_unet_seed0.msgpack (the weights, through
fm_helpers.train.save_state: msgpack, no pickle) and digits_unet_seed0.json (the recipe,
the seed, the wall time, the versions, and the check numbers that tests/test_unet.py
recomputes from the shipped weights).

Run from the repository root:  .venv/bin/python scripts/make_digits_checkpoint.py
On the same machine and versions the weights agree to float rounding, not bit for bit:
XLA's CPU backend gave different last bits from one run to the next (a second run,
on a busy machine, took 943 s and gave a check figure of 1.8308217 against the shipped
1.8308184).
"""

import json
import platform
import time
from importlib.metadata import version
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fm_helpers import density, guidance, images, train, unet

ASSETS = Path(__file__).resolve().parents[1] / "fm_helpers" / "assets"
NAME = "digits_unet_seed0"
RECIPE = {
    "split": [0.7, 0.15, 0.15], "split_seed": 0, "seed": 0, "steps": 10_000,
    "batch_size": 128, "learning_rate": 2e-3, "drop_prob": 0.1, "chunk_size": 1,
    "channels": [16, 32, 32], "embed_dim": 64,
}
# The check the test repeats: exact bits per dimension of the first CHECK_IMAGES test
# images, dequantised with key CHECK_KEY, by Tsit5 with CHECK_STEPS fixed steps.
CHECK_IMAGES, CHECK_KEY, CHECK_STEPS = 8, 7, 8


def build() -> unet.ConditionalUNet:
    """The network of the recipe, with parameters drawn from its seed."""
    return unet.ConditionalUNet(8, num_classes=10, channels=RECIPE["channels"],
                                embed_dim=RECIPE["embed_dim"], rngs=nnx.Rngs(RECIPE["seed"]))


def data():
    """(levels, labels) of the train, validation and test splits of the recipe."""
    v, y = images.load_digits()
    parts = images.stratified_split(y, tuple(RECIPE["split"]), seed=RECIPE["split_seed"])
    return [(v[p], y[p]) for p in parts]


def check_bits(model) -> float:
    """The check of the module docstring: mean bits per dimension of a few test images."""
    (_, _), (_, _), (v_test, y_test) = data()
    x = images.dequantize(jax.random.PRNGKey(CHECK_KEY), v_test[:CHECK_IMAGES])
    field = guidance.GuidedVelocity(model, jnp.asarray(y_test[:CHECK_IMAGES]), 1.0)
    log_q = density.log_prob(field, jnp.asarray(x), solver="tsit5", num_steps=CHECK_STEPS)
    return float(images.bits_per_dim(np.asarray(log_q.log_prob), 64).mean())


def main() -> None:
    (v_train, y_train), _, _ = data()
    tick = time.perf_counter()
    model, history = train.fit(
        v_train.astype(np.float32), labels=y_train, model=build(),
        loss=images.Dequantized(guidance.LabelDropoutLoss(RECIPE["drop_prob"])),
        steps=RECIPE["steps"], batch_size=RECIPE["batch_size"],
        learning_rate=RECIPE["learning_rate"], seed=RECIPE["seed"],
        chunk_size=RECIPE["chunk_size"], progress=False)  # chunks of 1: no loop (see
    # fm_helpers.train.make_train_chunk: a convolution is far slower inside one on the CPU)
    wall = time.perf_counter() - tick
    ASSETS.mkdir(parents=True, exist_ok=True)
    train.save_state(ASSETS / f"{NAME}.msgpack", model)
    record = {
        "recipe": RECIPE, "wall_seconds": round(wall, 1),
        "final_loss": float(history.loss[-500:].mean()),
        "check": {"images": CHECK_IMAGES, "key": CHECK_KEY, "steps": CHECK_STEPS,
                  "bits_per_dim": check_bits(model)},
        "machine": f"{platform.machine()}, {jax.default_backend()}",
        "versions": {p: version(p) for p in ("jax", "flax", "optax", "diffrax")},
    }
    (ASSETS / f"{NAME}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
