import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.model import GaussianFourierProjection, VelocityUNet, velocity_fn

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("d", [2, 3])
def test_output_width_equals_input_width(d):
    """Regression test for the original notebook's bug: its last layer produced 128
    features per point, whatever d was."""
    model = VelocityUNet()
    x = jnp.ones((5, d))
    params = model.init(KEY, x, jnp.zeros(5))["params"]
    assert model.apply({"params": params}, x, jnp.zeros(5)).shape == (5, d)


def test_time_embedding_is_not_squeezed_to_d():
    """The original fed a time embedding of x.shape[-1] = 2 features to every layer."""
    model = VelocityUNet()
    params = model.init(KEY, jnp.ones((1, 2)), jnp.zeros(1))["params"]
    kernels = [p["kernel"].shape for name, p in params.items() if name.startswith("Dense")]
    assert (model.embedding_size * 2, model.time_dim) in kernels
    time_kernels = [p["Dense_1"]["kernel"].shape for name, p in params.items() if name.startswith("TimeDense")]
    assert time_kernels and all(shape[0] == model.time_dim > 2 for shape in time_kernels)


def test_time_shapes_are_equivalent():
    model = VelocityUNet()
    x = jax.random.normal(KEY, (4, 2))
    params = model.init(KEY, x, jnp.zeros(4))["params"]
    scalar = model.apply({"params": params}, x, 0.3)
    vector = model.apply({"params": params}, x, jnp.full(4, 0.3))
    column = model.apply({"params": params}, x, jnp.full((4, 1), 0.3))
    np.testing.assert_allclose(scalar, vector, atol=1e-6)
    np.testing.assert_allclose(column, vector, atol=1e-6)


def test_output_depends_on_time():
    model = VelocityUNet()
    x = jax.random.normal(KEY, (4, 2))
    params = model.init(KEY, x, jnp.zeros(4))["params"]
    a = model.apply({"params": params}, x, 0.1)
    b = model.apply({"params": params}, x, 0.9)
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_fourier_features():
    proj = GaussianFourierProjection(embedding_size=8, scale=2.0)
    t = jnp.linspace(0, 1, 5)
    params = proj.init(KEY, t)
    feats = proj.apply(params, t)
    w = params["params"]["W"]
    assert feats.shape == (5, 16)
    np.testing.assert_allclose(feats[:, :8], np.sin(2 * np.pi * np.outer(t, w)), atol=1e-5)
    np.testing.assert_allclose(feats[:, 8:], np.cos(2 * np.pi * np.outer(t, w)), atol=1e-5)
    # W is frozen: no gradient flows into it
    grad = jax.grad(lambda p: proj.apply(p, t).sum())(params)
    assert float(jnp.abs(grad["params"]["W"]).max()) == 0.0


def test_velocity_fn_forms_agree():
    from fm_helpers.train import create_train_state

    state = create_train_state(KEY)
    x = jax.random.normal(KEY, (3, 2))
    a = velocity_fn(state)(x, 0.5)
    b = velocity_fn(VelocityUNet(), state.params)(x, 0.5)
    np.testing.assert_array_equal(a, b)


def test_relu_variant_is_the_original_activation():
    """The activation is really used in the hidden layers: with ReLU the network is
    piecewise linear in x, so its second derivative in x is zero (away from the kinks,
    which random points miss); with SiLU, on the same parameters, it is not."""
    x = jax.random.normal(jax.random.PRNGKey(5), (8, 2))
    params = VelocityUNet().init(KEY, x, jnp.zeros(8))["params"]

    def curvature(activation):
        net = VelocityUNet(activation=activation)

        def v(point):  # one point, first output coordinate, at t = 0.4
            return net.apply({"params": params}, point[None, :], 0.4)[0, 0]

        return np.abs(np.asarray(jax.vmap(jax.hessian(v))(x))).max()

    relu = VelocityUNet(activation=nn.relu).apply({"params": params}, x, 0.4)
    silu = VelocityUNet().apply({"params": params}, x, 0.4)
    assert np.abs(np.asarray(relu - silu)).max() > 1e-3, "the activation changes the output"
    assert curvature(nn.relu) == 0.0, "ReLU hidden layers: piecewise linear in x"
    assert curvature(nn.silu) > 1e-3, "SiLU hidden layers: curved in x"


def test_rejects_unbatched_input():
    model = VelocityUNet()
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        model.init(KEY, jnp.ones(2), jnp.zeros(1))
