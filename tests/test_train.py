import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.data import ImageDensity, load_image
from fm_helpers.density import log_prob
from fm_helpers.model import velocity_fn
from fm_helpers.plot import square_grid
from fm_helpers.train import create_train_state, fit, load_params, make_train_chunk, make_train_step, save_params


@pytest.fixture(scope="module")
def data():
    return np.asarray(ImageDensity(load_image()).sample(jax.random.PRNGKey(0), 4000))


@pytest.fixture(scope="module")
def trained(data):
    return fit(data, steps=600, batch_size=256, learning_rate=3e-3, seed=0, val_points=data[:500],
               progress=False, chunk_size=200)


def test_same_seed_same_parameters(data, trained):
    state, _ = trained
    again, _ = fit(data, steps=600, batch_size=256, learning_rate=3e-3, seed=0, val_points=data[:500],
                   progress=False, chunk_size=200)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(again.params)):
        np.testing.assert_array_equal(a, b)


def test_different_seed_different_parameters(data, trained):
    other, _ = fit(data, steps=10, seed=1, progress=False)
    first = jax.tree_util.tree_leaves(trained[0].params)[0]
    assert not np.array_equal(first, jax.tree_util.tree_leaves(other.params)[0])


def test_history(trained):
    _, history = trained
    assert history.loss.shape == (600,) and np.all(np.isfinite(history.loss))
    np.testing.assert_array_equal(history.val_steps, [200, 400, 600])
    assert history.val_loss[-1] < history.val_loss[0]  # it learns
    assert history.loss[-100:].mean() < history.loss[:20].mean()
    assert history.steps_per_second > 0 and history.seconds > 0


def test_scan_equals_step_loop(data):
    """The fused chunk runs exactly the steps that the per-call loop runs."""
    state = create_train_state(jax.random.PRNGKey(0), learning_rate=1e-3)
    key, points = jax.random.PRNGKey(1), jnp.asarray(data)
    step = jax.jit(make_train_step(64))
    looped, k, losses = state, key, []
    for _ in range(5):
        looped, k, loss = step(looped, k, points)
        losses.append(loss)
    fused, k2, fused_losses = make_train_chunk(64, 5)(state, key, points)
    np.testing.assert_array_equal(k, k2)
    np.testing.assert_allclose(fused_losses, np.array(losses), rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(looped.params), jax.tree_util.tree_leaves(fused.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_trained_density_integrates_to_one(trained):
    """A model trained for a few hundred steps is a proper density: its log_prob on a
    grid that covers the support sums to 1 (times the cell area) within 0.02."""
    state, _ = trained
    points, cell_area, _ = square_grid(n=80, lim=2.5)
    lp = np.asarray(log_prob(velocity_fn(state), jnp.asarray(points), rtol=1e-4, atol=1e-4))
    mass = float(np.exp(lp).sum() * cell_area)
    assert abs(mass - 1.0) < 0.02, mass


def test_save_load_round_trip(trained, tmp_path):
    state, _ = trained
    path = tmp_path / "params.msgpack"
    save_params(path, state.params)
    template = create_train_state(jax.random.PRNGKey(9)).params
    loaded = load_params(path, template)
    for a, b in zip(jax.tree_util.tree_leaves(state.params), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no parameter file"):
        load_params(tmp_path / "missing.msgpack", template)


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((0, 2)), np.full((3, 2), np.nan)])
def test_fit_rejects_bad_points(bad):
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        fit(bad, steps=1, progress=False)


def test_fit_rejects_bad_sizes(data):
    with pytest.raises(ValueError, match="positive"):
        fit(data, steps=0, progress=False)
