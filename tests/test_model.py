import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fm_helpers.model import GaussianFourierProjection, VelocityMLP, broadcast_time

KEY = jax.random.PRNGKey(0)


def net(seed=0, **kwargs):
    return VelocityMLP(rngs=nnx.Rngs(seed), **kwargs)


@pytest.mark.parametrize("d", [2, 3])
def test_output_width_equals_input_width(d):
    """Regression test for the original notebook's bug: its last layer produced 128
    features per point, whatever d was."""
    model = VelocityMLP(d, rngs=nnx.Rngs(0))
    assert model(jnp.ones((5, d)), jnp.zeros(5)).shape == (5, d)


def test_time_embedding_is_not_squeezed_to_d():
    """The original fed a time embedding of x.shape[-1] = 2 features to every layer."""
    model = net(time_dim=64, embedding_size=32)
    assert model.time_in.kernel.value.shape == (2 * 32, 64)
    for layer in (model.down_1, model.down_2, model.up_1, model.up_2):
        assert layer.time.kernel.value.shape[0] == 64


def test_time_shapes_are_equivalent():
    model = net()
    x = jax.random.normal(KEY, (4, 2))
    vector = model(x, jnp.full(4, 0.3))
    np.testing.assert_allclose(model(x, 0.3), vector, atol=1e-6)
    np.testing.assert_allclose(model(x, jnp.full((4, 1), 0.3)), vector, atol=1e-6)


def test_broadcast_time_rejects_wrong_lengths():
    assert broadcast_time(0.5, 3).shape == (3,)
    with pytest.raises(ValueError, match="scalar"):
        broadcast_time(jnp.zeros(4), 3)
    with pytest.raises(ValueError, match="scalar"):
        broadcast_time(jnp.zeros((3, 2)), 3)


def test_output_depends_on_time():
    model = net()
    x = jax.random.normal(KEY, (4, 2))
    assert float(jnp.abs(model(x, 0.1) - model(x, 0.9)).max()) > 1e-3


def test_fourier_features_are_fixed_and_exact():
    proj = GaussianFourierProjection(embedding_size=8, scale=2.0, rngs=nnx.Rngs(0))
    t = jnp.linspace(0, 1, 5)
    w = np.asarray(proj.W.value)
    feats = proj(t)
    assert feats.shape == (5, 16)
    np.testing.assert_allclose(feats[:, :8], np.sin(2 * np.pi * np.outer(t, w)), atol=1e-5)
    np.testing.assert_allclose(feats[:, 8:], np.cos(2 * np.pi * np.outer(t, w)), atol=1e-5)
    # W is not a parameter: gradients (which are taken with respect to nnx.Param) skip it
    assert nnx.state(proj, nnx.Param) == nnx.State({})
    model = net()
    grads = nnx.grad(lambda m: m(jnp.ones((3, 2)), 0.5).sum())(model)
    names = {path[0] for path, _ in nnx.to_flat_state(grads)}
    assert "fourier" not in names and "layer_in" in names


def test_a_model_is_a_pytree_of_its_arrays():
    """What lets a solver take the model itself: its leaves are its arrays (parameters
    and Fourier weights), and two models of one architecture have one structure."""
    model = net()
    leaves = jax.tree_util.tree_leaves(model)
    assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)
    assert sum(leaf.size for leaf in leaves) == sum(
        leaf.size for leaf in jax.tree_util.tree_leaves(nnx.state(model))
    )
    assert jax.tree_util.tree_structure(model) == jax.tree_util.tree_structure(net(seed=1))


def _by_hand(model, x, t, act):
    """The forward pass written out with the model's own weights and ``act``."""
    dense = lambda layer, h: h @ layer.kernel.value + (  # noqa: E731
        0.0 if layer.bias is None else layer.bias.value
    )
    w = model.fourier.W.value
    angles = 2 * jnp.pi * t * w[None, :]
    e = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
    e = dense(model.time_out, jax.nn.silu(dense(model.time_in, e)))
    time_dense = lambda layer, h: dense(layer.dense, h) + dense(layer.time, e)  # noqa: E731
    h1 = act(dense(model.layer_in, x))
    h2 = act(time_dense(model.down_1, h1))
    h = act(time_dense(model.down_2, h2))
    h = jnp.concatenate([act(time_dense(model.up_1, h)), h2], axis=-1)
    h = jnp.concatenate([act(time_dense(model.up_2, h)), h1], axis=-1)
    return dense(model.layer_out, h)


def test_relu_variant_is_the_original_activation():
    """The activation is really used in the hidden layers: the ReLU network matches a
    forward pass written out by hand with ReLU, differs from SiLU's on the same
    parameters, and is piecewise linear in x (zero second derivative away from the
    kinks, which random points miss), while the SiLU network is not."""
    x = jax.random.normal(jax.random.PRNGKey(5), (8, 2))
    relu, silu = net(activation=jax.nn.relu), net()  # same seed: same parameters
    np.testing.assert_allclose(relu(x, 0.4), _by_hand(relu, x, 0.4, jax.nn.relu), atol=1e-5)
    np.testing.assert_allclose(silu(x, 0.4), _by_hand(silu, x, 0.4, jax.nn.silu), atol=1e-5)
    assert np.abs(np.asarray(relu(x, 0.4) - silu(x, 0.4))).max() > 1e-3

    def curvature(model):
        v = lambda point: model(point[None, :], 0.4)[0, 0]  # noqa: E731
        return np.abs(np.asarray(jax.vmap(jax.hessian(v))(x))).max()

    assert curvature(relu) == 0.0, "ReLU hidden layers: piecewise linear in x"
    assert curvature(silu) > 1e-3, "SiLU hidden layers: curved in x"


def test_rejects_bad_input():
    model = net()
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        model(jnp.ones(2), jnp.zeros(1))
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        model(jnp.ones((4, 3)), 0.5)
    with pytest.raises(ValueError, match="three"):
        net(widths=(8, 16))
