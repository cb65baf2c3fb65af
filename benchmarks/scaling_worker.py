"""Step times of the course's training step on 1, 2, 4 and 8 simulated CPU devices.

Run by ``sections/scaling.py`` in a process of its own: JAX fixes its number of CPU
devices when it starts, and the other sections run on one. Prints one line of JSON.

Usage: python benchmarks/scaling_worker.py STEPS BATCH [BATCH ...]
"""

import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from common import seconds  # noqa: E402  (benchmarks/, this script's folder)
from fm_helpers import data, parallel, train  # noqa: E402

DEVICE_COUNTS = (1, 2, 4, 8)


def step_seconds(batch: int, devices: int, steps: int, points, repeats: int = 5) -> float:
    """Best wall time of one compiled chunk of ``steps`` steps, divided by ``steps``."""
    model = train.create_model(jax.random.PRNGKey(0))
    graphdef, state = nnx.split((model, train.create_optimizer(model, 1e-3, steps)))
    sharding, data_on = None, points
    if devices > 1:
        mesh = parallel.make_mesh((devices,))
        sharding = parallel.batch_sharding(mesh)
        state, data_on = parallel.replicate(state, mesh), parallel.replicate(points, mesh)
    chunk = train.make_train_chunk(batch, steps, batch_sharding=sharding)
    run = chunk.lower(graphdef, state, jax.random.PRNGKey(1), data_on).compile()
    args = (state, jax.random.PRNGKey(1), data_on)
    seconds(run, *args)  # warm up
    return min(seconds(run, *args)[1] for _ in range(repeats)) / steps


def main(steps: int, batches: list[int]) -> dict:
    truth = data.ImageDensity(data.load_image())
    points = np.asarray(truth.sample(jax.random.PRNGKey(0), 20_000))
    return {"steps": steps, "cores": os.cpu_count(), "platform": jax.devices()[0].platform,
            "ms_per_step": {str(b): {str(k): 1e3 * step_seconds(b, k, steps, points)
                                     for k in DEVICE_COUNTS} for b in batches}}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), [int(b) for b in sys.argv[2:]])))
