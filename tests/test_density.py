"""log_prob against the closed-form density of conftest.AffineFlow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.density import divergence_exact, divergence_hutchinson, log_prob


def test_exact_log_prob_matches_closed_form(affine, noise):
    x1 = affine.push(noise)
    lp = np.asarray(log_prob(affine, x1, method="exact"))
    np.testing.assert_allclose(lp, affine.log_prob(x1), atol=1e-4)


def test_divergence_exact_on_linear_field():
    a = jnp.array([[0.5, 2.0, 0.0], [-1.0, -3.0, 1.0], [0.2, 0.0, 1.5]])
    field = lambda x, t: x @ a.T + t  # noqa: E731 (Jacobian a everywhere)
    x = jax.random.normal(jax.random.PRNGKey(3), (5, 3))
    v, div = divergence_exact(field, x, jnp.float32(0.3))
    np.testing.assert_allclose(div, np.full(5, np.trace(a)), atol=1e-5)
    np.testing.assert_allclose(v, x @ a.T + 0.3, atol=1e-6)


def test_hutchinson_is_unbiased_on_linear_field():
    a = jax.random.normal(jax.random.PRNGKey(4), (4, 4))
    field = lambda x, t: x @ a.T  # noqa: E731
    x = jnp.ones((1, 4))
    probes = jax.random.rademacher(jax.random.PRNGKey(5), (20000, 1, 4), dtype=jnp.float32)
    _, estimate = divergence_hutchinson(field, x, 0.0, probes)
    # Rademacher probes: Var(e^T A e) = (1/2) sum_{i != j} (A_ij + A_ji)^2 <= 2 ||A||_F^2
    stderr = np.sqrt(2 * float(jnp.sum(a**2)) / 20000)
    assert abs(float(estimate[0]) - float(jnp.trace(a))) < 4 * stderr


def test_hutchinson_mean_agrees_with_exact_on_a_network():
    """On a nonlinear field (a random network) the mean of independent Hutchinson runs
    agrees with the exact value within its standard error."""
    from fm_helpers.model import VelocityUNet, velocity_fn

    model = VelocityUNet(widths=(16, 32, 64))
    params = model.init(jax.random.PRNGKey(6), jnp.zeros((1, 2)), jnp.zeros(1))["params"]
    velocity = velocity_fn(model, params)
    x = jax.random.normal(jax.random.PRNGKey(7), (8, 2))
    exact = np.asarray(log_prob(velocity, x, num_steps=8))
    runs = np.stack([
        np.asarray(log_prob(velocity, x, method="hutchinson", key=jax.random.PRNGKey(100 + k), num_steps=8))
        for k in range(48)
    ])
    mean, stderr = runs.mean(0), runs.std(0, ddof=1) / np.sqrt(len(runs))
    assert np.all(stderr > 0), "the estimator should be random"
    assert np.all(np.abs(mean - exact) < 4 * stderr + 1e-5)


def test_hutchinson_needs_key(affine, noise):
    with pytest.raises(ValueError, match="PRNG key"):
        log_prob(affine, noise, method="hutchinson")
    with pytest.raises(ValueError, match="unknown method"):
        log_prob(affine, noise, method="trace")
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        log_prob(affine, noise[0])
