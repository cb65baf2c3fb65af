"""Run by tests/test_parallel.py in a fresh process with eight simulated CPU devices (JAX
fixes its device count when it starts, so the pytest process cannot have them). Prints
one line of JSON: what the tests assert on."""

import json
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from fm_helpers import couplings, density, parallel, sample, train  # noqa: E402

out = {"devices": jax.device_count()}
mesh = parallel.make_mesh((8,))
rng = np.random.default_rng(0)
points = rng.normal(size=(2000, 2)).astype(np.float32) * [1.0, 0.3] + [0.5, 0.0]

# 1. Equal losses: the same short run on one device and on eight.
recipe = dict(steps=60, batch_size=64, learning_rate=3e-3, chunk_size=30, seed=0,
              progress=False, val_points=points[:256])
model_1, history_1 = train.fit(points, **recipe)
model_8, history_8 = train.fit(points, mesh=mesh, **recipe)
out["loss_relative_gap"] = float(np.max(np.abs(history_8.loss - history_1.loss)
                                        / history_1.loss))
out["val_loss_relative_gap"] = float(np.max(np.abs(history_8.val_loss - history_1.val_loss)
                                            / history_1.val_loss))
out["loss_decreased"] = bool(history_8.loss[-10:].mean() < history_8.loss[:10].mean())
out["trained_on_devices"] = len(model_8.layer_in.kernel.value.sharding.device_set)
try:
    train.fit(points, steps=2, batch_size=60, mesh=mesh, progress=False)
    out["odd_batch_error"] = None
except ValueError as error:
    out["odd_batch_error"] = str(error)

# 2. Minibatch OT per shard against one assignment over the whole batch.
per_shard = jax.jit(parallel.per_shard(couplings.exact_ot, mesh))
global_costs, shard_costs, permutes_within = [], [], True
for b in range(3):
    k0, k1 = jax.random.split(jax.random.PRNGKey(b))
    x0, x1 = jax.random.normal(k0, (256, 2)), jnp.asarray(points)[
        jax.random.randint(k1, (256,), 0, len(points))]
    _, x1_global = couplings.exact_ot(None, x0, x1)
    y0, y1 = per_shard(jax.random.PRNGKey(0), parallel.shard_rows(x0, mesh),
                       parallel.shard_rows(x1, mesh))
    global_costs.append(float(jnp.sum((x1_global - x0) ** 2)))
    shard_costs.append(float(jnp.sum((y1 - y0) ** 2)))
    # Each block of 32 rows of y1 must be the same block of x1, reordered.
    for k in range(8):
        rows = slice(32 * k, 32 * (k + 1))
        same = np.array_equal(np.sort(np.asarray(y1[rows]), axis=0),
                              np.sort(np.asarray(x1[rows]), axis=0))
        permutes_within &= same and np.array_equal(y0[rows], x0[rows])
out["ot_global"], out["ot_per_shard"] = global_costs, shard_costs
# Training with pairs made per shard: the step's batch is split, each device pairs its own.
_, history_ot = train.fit(points, steps=40, batch_size=64, learning_rate=3e-3, seed=0,
                          chunk_size=40, progress=False, mesh=mesh,
                          coupling=parallel.per_shard(couplings.exact_ot, mesh))
out["per_shard_ot_fit_finite"] = bool(np.all(np.isfinite(history_ot.loss)))
out["per_shard_ot_fit_decreased"] = bool(history_ot.loss[-10:].mean()
                                         < history_ot.loss[:10].mean())
out["ot_permutes_within_shards"] = bool(permutes_within)

# 3. Sampling and log-densities of split points against one device.
one = jax.devices()[0]
flow = parallel.replicate(train.create_model(jax.random.PRNGKey(1)), mesh)
flow_one = train.create_model(jax.random.PRNGKey(1))
nnx.update(flow_one, jax.device_put(nnx.state(flow), one))
x = jax.random.normal(jax.random.PRNGKey(2), (512, 2))
split = parallel.shard_rows(x, mesh)
for name, options in [("fixed", dict(num_steps=8)), ("adaptive", {})]:
    lp_8 = np.asarray(density.log_prob(flow, split, **options).log_prob)
    lp_1 = np.asarray(density.log_prob(flow_one, jax.device_put(x, one),
                                       **options).log_prob)
    out[f"log_prob_gap_{name}"] = float(np.max(np.abs(lp_8 - lp_1)))
    out[f"log_prob_scale_{name}"] = float(np.max(np.abs(lp_1)))
s_8 = np.asarray(sample.sample(flow, split, num_steps=8).samples)
s_1 = np.asarray(sample.sample(flow_one, jax.device_put(x, one), num_steps=8).samples)
out["sample_gap"] = float(np.max(np.abs(s_8 - s_1)))
out["input_split_over"] = len(split.sharding.device_set)
print(json.dumps(out))
