"""fm_helpers.parallel on eight simulated devices, against one device.

JAX fixes the number of CPU devices when it first runs, so the checks that need eight
run in a fresh process (tests/parallel_worker.py) and report their figures here. The
checks of bad input run in this process, which has one CPU device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fm_helpers import parallel, train

WORKER = Path(__file__).with_name("parallel_worker.py")


@pytest.fixture(scope="module")
def eight():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_worker_had_eight_devices(eight):
    assert eight["devices"] == 8
    assert eight["trained_on_devices"] == 8, "the sharded run's weights live on 8 devices"
    assert eight["input_split_over"] == 8


def test_eight_devices_train_as_one(eight):
    assert eight["loss_decreased"], "a real run, not a constant"
    assert eight["loss_relative_gap"] <= 1e-5
    assert eight["val_loss_relative_gap"] <= 1e-5, "the validation curve too"


def test_a_batch_that_does_not_split_is_refused(eight):
    assert "multiple" in eight["odd_batch_error"]


def test_per_shard_ot_never_beats_one_assignment(eight):
    global_cost, shard_cost = np.array(eight["ot_global"]), np.array(eight["ot_per_shard"])
    assert eight["ot_permutes_within_shards"], "each shard's rows are only reordered"
    assert np.all(shard_cost >= global_cost * (1 - 1e-6))
    assert np.all(shard_cost > global_cost), "32 points a shard: strictly worse here"


def test_fit_trains_with_minibatch_ot_per_shard(eight):
    assert eight["per_shard_ot_fit_finite"] and eight["per_shard_ot_fit_decreased"]


def test_sharded_evaluation_equals_one_device(eight):
    assert eight["sample_gap"] <= 1e-5
    assert eight["log_prob_gap_fixed"] <= 1e-5 * max(1.0, eight["log_prob_scale_fixed"])
    # Adaptive steps: the error norm is summed across devices, so the same steps.
    assert eight["log_prob_gap_adaptive"] <= 1e-4 * max(1.0, eight["log_prob_scale_adaptive"])


def test_too_few_devices_says_what_to_do():
    assert jax.device_count() < 8  # this process kept JAX's default: one CPU device
    with pytest.raises(RuntimeError, match="jax_num_cpu_devices"):
        parallel.make_mesh((8,))


def test_rows_that_do_not_split_are_refused():
    mesh = parallel.make_mesh((1,))
    assert parallel.shard_rows(np.zeros((3, 2)), mesh).shape == (3, 2)
    with pytest.raises(ValueError, match="one positive size per axis"):
        parallel.make_mesh((2, 2), ("data",))


def test_single_device_fit_is_unchanged_by_a_one_device_mesh():
    points = np.random.default_rng(1).normal(size=(500, 2)).astype(np.float32)
    recipe = dict(steps=20, batch_size=32, chunk_size=20, seed=3, progress=False)
    _, plain = train.fit(points, **recipe)
    _, meshed = train.fit(points, mesh=parallel.make_mesh((1,)), **recipe)
    np.testing.assert_array_equal(plain.loss, meshed.loss)
