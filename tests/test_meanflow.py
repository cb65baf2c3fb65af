"""MeanFlow against closed forms: the average velocity of a curved Gaussian flow, finite
differences, and one-step maps whose densities are known (affine, and a fold)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fm_helpers.gaussian import gaussian_log_prob
from fm_helpers.meanflow import (AverageVelocityMLP, Instantaneous, generate, meanflow_loss,
                                 meanflow_target, one_step_log_prob, sample_times)
from fm_helpers.sample import sample
from fm_helpers.train import fit

MU, S = jnp.array([2.0, -1.0]), 0.5


def c(t):
    """The variance of (1 - t) x0 + t x1 per coordinate, x0 ~ N(0, I), x1 ~ N(MU, S^2 I)."""
    return (1 - t) ** 2 + t**2 * S**2


def velocity(z, t):
    """The marginal velocity of the independent coupling between the two Gaussians:
    E[x1 - x0 | x_t = z] = MU + (t S^2 - (1 - t)) / c(t) (z - t MU). Its paths bend."""
    t = jnp.asarray(t)[..., None]
    return MU + (t * S**2 - (1 - t)) / c(t) * (z - t * MU)


def average(z, r, t):
    """The exact average velocity from (z, r) to t: the flow map of this field is
    z_t = t MU + sqrt(c(t) / c(r)) (z - r MU), so u = (z_t - z) / (t - r)."""
    r, t = jnp.asarray(r)[..., None], jnp.asarray(t)[..., None]
    end = t * MU + jnp.sqrt(c(t) / c(r)) * (z - r * MU)
    return (end - z) / (t - r)


def points(n=256, seed=0):
    kz, kr, kt = jax.random.split(jax.random.PRNGKey(seed), 3)
    z = 1.5 * jax.random.normal(kz, (n, 2))
    r = jax.random.uniform(kr, (n,), minval=0.0, maxval=0.6)
    t = r + jax.random.uniform(kt, (n,), minval=0.1, maxval=0.4)  # a gap of at least 0.1
    return z, r, t


def test_the_closed_form_is_the_average_of_the_velocity():
    z, r, t = points(8)
    x = z  # integrate v from r to t with 2,000 small Euler steps, each point its own times
    for k in range(2000):
        s = r + (t - r) * k / 2000
        x = x + (t - r)[:, None] / 2000 * velocity(x, s)
    np.testing.assert_allclose(x, z + (t - r)[:, None] * average(z, r, t), atol=2e-3)


def test_the_identity_holds_at_the_true_average_velocity_only():
    """The MeanFlow residual u - (v + (t - r) du/dr) vanishes for the exact u and the
    exact velocity, and not for a perturbed u."""
    z, r, t = points()
    out, target = meanflow_target(average, z, r, t, velocity(z, r))
    assert float(jnp.max(jnp.abs(out - target))) < 1e-3
    wrong = lambda z, r, t: average(z, r, t) + 0.1 * jnp.sin(z) * (t - r)[:, None]  # noqa: E731
    out, target = meanflow_target(wrong, z, r, t, velocity(z, r))
    assert float(jnp.mean(jnp.abs(out - target))) > 1e-2


def test_the_total_derivative_matches_finite_differences():
    """du/dr along v, from one jax.jvp, against a central difference along the path."""
    model = AverageVelocityMLP(2, rngs=nnx.Rngs(0))
    z, r, t = points(64)
    v = velocity(z, r)
    out, target = meanflow_target(model, z, r, t, v)
    h = 1e-3  # float32: smaller steps lose more to rounding than they gain
    ahead, behind = model(z + h * v, r + h, t), model(z - h * v, r - h, t)
    du_dr = (ahead - behind) / (2 * h)
    np.testing.assert_allclose(target, v + (t - r)[:, None] * du_dr, atol=5e-4)
    np.testing.assert_allclose(out, model(z, r, t), rtol=1e-6)


def test_sample_times():
    r, t = sample_times(jax.random.PRNGKey(0), 20_000, equal_fraction=0.75)
    assert np.all(r <= t) and np.all(r >= 0) and np.all(t <= 1)
    assert abs(float(jnp.mean(r == t)) - 0.75) < 0.02
    r, t = sample_times(jax.random.PRNGKey(0), 1000, equal_fraction=0.0)
    assert not np.any(r == t)


def test_generate_takes_equal_jumps():
    z = jax.random.normal(jax.random.PRNGKey(0), (10, 2))
    np.testing.assert_allclose(generate(average, z, 1), z + average(z, jnp.zeros(10), jnp.ones(10)),
                               rtol=1e-6)
    half = z + 0.5 * average(z, jnp.zeros(10), jnp.full(10, 0.5))
    two = half + 0.5 * average(half, jnp.full(10, 0.5), jnp.ones(10))
    np.testing.assert_allclose(generate(average, z, 2), two, rtol=1e-6)
    # the exact average velocity jumps exactly: one step equals two
    np.testing.assert_allclose(generate(average, z, 1), two, atol=1e-5)
    with pytest.raises(ValueError):
        generate(average, z, 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Affine:
    """u(z, 0, 1) = (A - I) z + b: the one-step map T(z) = A z + b."""

    A: jax.Array
    b: jax.Array

    def __call__(self, z, r, t):
        return z @ (self.A - jnp.eye(2)).T + self.b


def test_one_step_density_of_an_affine_map():
    A, b = jnp.array([[1.5, 0.4], [-0.3, 0.8]]), jnp.array([0.5, -1.0])
    x = jax.random.normal(jax.random.PRNGKey(1), (50, 2)) @ A.T + b
    got = one_step_log_prob(Affine(A, b), x)
    z = np.linalg.solve(np.asarray(A), (np.asarray(x) - np.asarray(b)).T).T
    want = np.asarray(gaussian_log_prob(jnp.asarray(z), 0.0, 1.0)) - np.log(abs(np.linalg.det(A)))
    np.testing.assert_allclose(got.log_prob, want, atol=1e-4)
    assert np.all(got.roots == 1) and not np.any(got.folded) and np.all(got.residual <= 1e-5)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Fold:
    """T(z) = (z_1^2, z_2): every x with x_1 > 0 has two preimages, z_1 = +-sqrt(x_1)."""

    scale: jax.Array

    def __call__(self, z, r, t):
        return jnp.stack([self.scale * z[:, 0] ** 2 - z[:, 0], 0.0 * z[:, 1]], axis=1)


def test_one_step_density_sums_over_the_fold():
    """q(x) = 2 N(sqrt(x1)) N(x2) / (2 sqrt(x1)): both roots are found and summed."""
    x = jnp.stack([jnp.linspace(0.2, 3.0, 20), jnp.linspace(-1.0, 1.0, 20)], axis=1)
    got = one_step_log_prob(Fold(jnp.float32(1.0)), x)
    root = np.sqrt(np.asarray(x[:, 0]))
    want = (np.log(2) + np.asarray(gaussian_log_prob(jnp.stack([jnp.asarray(root), x[:, 1]], 1), 0.0, 1.0))
            - np.log(2 * root))
    assert np.all(got.roots == 2) and np.all(got.folded)
    np.testing.assert_allclose(got.log_prob, want, atol=1e-4)
    outside = one_step_log_prob(Fold(jnp.float32(1.0)), jnp.array([[-0.5, 0.0]]))
    assert outside.roots[0] == 0 and outside.log_prob[0] == -np.inf


def test_meanflow_trains_a_one_step_gaussian_map():
    """A short fit with the MeanFlow loss on N(MU, S^2 I) data: one step of the network
    lands near the optimal map MU + S z, far closer than the untrained network, and the
    network's u(x, t, t) is a velocity the multi-step solvers accept."""
    data = np.asarray(MU + S * jax.random.normal(jax.random.PRNGKey(3), (4000, 2)))
    model = AverageVelocityMLP(2, rngs=nnx.Rngs(0))
    trained, history = fit(data, steps=1000, batch_size=256, learning_rate=1e-3, model=model,
                           loss=meanflow_loss, progress=False)  # at 3e-3 it trains unstably
    assert np.all(np.isfinite(history.loss))
    z = jax.random.normal(jax.random.PRNGKey(4), (2000, 2))
    target = np.asarray(MU + S * z)  # the independent flow's map here is the OT map
    err = np.linalg.norm(np.asarray(generate(trained, z, 1)) - target, axis=1).mean()
    err_before = np.linalg.norm(np.asarray(generate(model, z, 1)) - target, axis=1).mean()
    assert err < 0.1 * err_before and err < 0.15, (err, err_before)
    multi = sample(Instantaneous(trained), z).samples
    assert np.linalg.norm(np.asarray(multi) - target, axis=1).mean() < 0.15


def test_fit_rejects_a_custom_loss_with_validation():
    model = AverageVelocityMLP(2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="custom loss"):
        fit(np.zeros((10, 2)), steps=1, model=model, loss=meanflow_loss, val_points=np.zeros((5, 2)),
            progress=False)
