import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.loss import cond_ot_path, conditional_loss, flow_matching_loss, sample_path
from fm_helpers.model import VelocityUNet

KEY = jax.random.PRNGKey(1)
X0 = jax.random.normal(KEY, (16, 2))
X1 = jax.random.uniform(jax.random.PRNGKey(2), (16, 2), minval=-1, maxval=1)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_endpoints(sigma_min):
    x_at_0, _ = cond_ot_path(X0, X1, 0.0, sigma_min)
    x_at_1, _ = cond_ot_path(X0, X1, 1.0, sigma_min)
    np.testing.assert_allclose(x_at_0, X0, atol=1e-7)
    # at t = 1 the path sits at x_1 plus sigma_min times the noise
    np.testing.assert_allclose(x_at_1, X1 + sigma_min * X0, atol=1e-6)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.9])
def test_velocity_is_time_derivative(sigma_min, t):
    x_of_t = lambda tau: cond_ot_path(X0, X1, tau, sigma_min)[0]  # noqa: E731
    dx_dt = jax.jacfwd(x_of_t)(jnp.float32(t))
    _, u_t = cond_ot_path(X0, X1, t, sigma_min)
    np.testing.assert_allclose(u_t, dx_dt, atol=1e-6)


def test_time_shapes_agree():
    t = jnp.linspace(0, 1, 16)
    a = cond_ot_path(X0, X1, t)[0]
    b = cond_ot_path(X0, X1, t[:, None])[0]
    np.testing.assert_array_equal(a, b)


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        cond_ot_path(X0, X1[:, :1], 0.5)
    with pytest.raises(ValueError, match="t must be"):
        cond_ot_path(X0, X1, jnp.zeros((16, 2)))


def test_conditional_loss_matches_hand_computation():
    model = VelocityUNet()
    params = model.init(KEY, X0, jnp.zeros(16))["params"]
    t = jnp.linspace(0.05, 0.95, 16)
    loss = conditional_loss(model.apply, params, X0, X1, t)
    x_t = (1 - t[:, None]) * X0 + t[:, None] * X1
    v = model.apply({"params": params}, x_t, t)
    expected = np.mean(np.sum((np.asarray(v) - np.asarray(X1 - X0)) ** 2, axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_flow_matching_loss_uses_sample_path():
    model = VelocityUNet()
    params = model.init(KEY, X0, jnp.zeros(16))["params"]
    path = sample_path(KEY, X1)
    direct = conditional_loss(model.apply, params, path.x_0, path.x_1, path.t)
    np.testing.assert_allclose(flow_matching_loss(model.apply, params, X1, KEY), direct, rtol=1e-6)
    assert path.x_t.shape == path.dx_t.shape == X1.shape and path.t.shape == (16,)
