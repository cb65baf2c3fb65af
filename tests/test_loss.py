import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.loss import cond_ot_path, conditional_loss, flow_matching_loss, sample_path
from flax import nnx

from fm_helpers.model import VelocityMLP

KEY = jax.random.PRNGKey(1)
X0 = jax.random.normal(KEY, (16, 2))
X1 = jax.random.uniform(jax.random.PRNGKey(2), (16, 2), minval=-1, maxval=1)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_endpoints(sigma_min):
    x_at_0 = cond_ot_path(X0, X1, 0.0, sigma_min).x_t
    x_at_1 = cond_ot_path(X0, X1, 1.0, sigma_min).x_t
    np.testing.assert_allclose(x_at_0, X0, atol=1e-7)
    # at t = 1 the path sits at x_1 plus sigma_min times the noise
    np.testing.assert_allclose(x_at_1, X1 + sigma_min * X0, atol=1e-6)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.9])
def test_velocity_is_time_derivative(sigma_min, t):
    x_of_t = lambda tau: cond_ot_path(X0, X1, tau, sigma_min).x_t  # noqa: E731
    dx_dt = jax.jacfwd(x_of_t)(jnp.float32(t))
    u_t = cond_ot_path(X0, X1, t, sigma_min).u_t
    np.testing.assert_allclose(u_t, dx_dt, atol=1e-6)


def test_time_shapes_agree():
    t = jnp.linspace(0, 1, 16)
    a = cond_ot_path(X0, X1, t)
    b = cond_ot_path(X0, X1, t[:, None])
    np.testing.assert_array_equal(a.x_t, b.x_t)
    np.testing.assert_array_equal(a.t, t)
    np.testing.assert_array_equal(a.x_0, X0)
    np.testing.assert_array_equal(a.x_1, X1)


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        cond_ot_path(X0, X1[:, :1], 0.5)
    with pytest.raises(ValueError, match="t must be"):
        cond_ot_path(X0, X1, jnp.zeros((16, 2)))


def test_conditional_loss_matches_hand_computation():
    model = VelocityMLP(rngs=nnx.Rngs(0))
    t = jnp.linspace(0.05, 0.95, 16)
    loss = conditional_loss(model, X0, X1, t)
    x_t = (1 - t[:, None]) * X0 + t[:, None] * X1
    v = model(x_t, t)
    expected = np.mean(np.sum((np.asarray(v) - np.asarray(X1 - X0)) ** 2, axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_flow_matching_loss_draws_standard_noise_and_uniform_times():
    """Against a closed form, not the function's own body. For the field v(x, t) = t * 1
    (the same t in every coordinate) and u = x1 - x0 with x0 ~ N(0, I), t ~ U[0, 1]:
    E|u - t 1|^2 = |x1|^2 + d - 2 E[t] sum(x1) + d E[t^2] = |x1|^2 + d - sum(x1) + d / 3.
    A wrong noise scale or time distribution moves the estimate by far more than the
    Monte Carlo error allowed here (5 standard errors, from the same sum sampled in NumPy)."""
    n, d = 200_000, X1.shape[1]
    x1 = jnp.tile(X1, (n // X1.shape[0], 1))

    def time_field(x, t):
        return jnp.broadcast_to(t[:, None], x.shape)

    estimate = float(flow_matching_loss(time_field, x1, KEY))
    x1_np = np.asarray(x1, dtype=np.float64)
    expected = np.mean(np.sum(x1_np**2, axis=1) + d - x1_np.sum(axis=1) + d / 3)
    rng = np.random.default_rng(0)
    x0, t = rng.standard_normal(x1_np.shape), rng.uniform(size=(n, 1))
    per_point = np.sum((x1_np - x0 - t) ** 2, axis=1)
    standard_error = per_point.std() / np.sqrt(n)
    assert abs(per_point.mean() - expected) < 5 * standard_error  # the formula itself
    assert abs(estimate - expected) < 5 * standard_error


def test_sample_path_shapes():
    path = sample_path(KEY, X1)
    assert path.x_t.shape == path.u_t.shape == X1.shape and path.t.shape == (16,)
    np.testing.assert_allclose(path.u_t, path.x_1 - path.x_0, atol=1e-6)


