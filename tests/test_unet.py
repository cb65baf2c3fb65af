"""fm_helpers.unet: shapes through the U-Net, the class and time inputs, and a round trip
of its weights through save_state / load_state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fm_helpers import guidance, train, unet

# One compiled program per shape: calling the network op by op (eagerly) compiles every
# small operation of it separately, which takes many times longer.
apply = jax.jit(lambda model, x, t, c: model(x, t, c))


@pytest.mark.parametrize("side, channels", [(8, (16, 32, 32)), (12, (16, 16, 32)),
                                            (28, (8, 16, 16))])
def test_shapes_through_the_unet(side, channels):
    model = unet.ConditionalUNet(side, channels=channels, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, side * side))
    out = apply(model, x, jnp.array([0.1, 0.5, 0.9]), jnp.array([0, 5, model.null]))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def test_lecun_normal_is_flax_s_truncated_normal_with_variance_one_over_fan_in():
    key = jax.random.PRNGKey(0)
    # The U-Net's own shapes, some where a scale computed in float64 is 1 ulp off, and
    # a longer draw.
    for shape in ((3, 3, 16, 32), (1, 1, 48, 16), (3, 3, 48, 16), (128, 64), (5000, 40)):
        w = np.asarray(unet.lecun_normal(key, shape))
        fan_in = np.prod(shape[:-1])
        assert w.shape == shape and w.dtype == np.float32
        # Truncated at two standard deviations of the untruncated normal.
        assert np.abs(w).max() <= 2 / np.sqrt(fan_in) / 0.87962566103423978 + 1e-6
        assert abs(w.var() * fan_in - 1) < 5 * np.sqrt(2 / w.size) + 0.01
        assert abs(w.mean()) * np.sqrt(fan_in) < 5 / np.sqrt(w.size)
        # The same numbers as Flax's initialiser (partitionable Threefry: a longer draw
        # begins with the shorter one).
        np.testing.assert_array_equal(w, jax.nn.initializers.lecun_normal()(key, shape))
    # Same key, same kernel; another key, another one.
    np.testing.assert_array_equal(unet.lecun_normal(key, (8, 8)), unet.lecun_normal(key, (8, 8)))
    assert not np.allclose(unet.lecun_normal(key, (8, 8)),
                           unet.lecun_normal(jax.random.PRNGKey(1), (8, 8)))


def test_unet_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible by 4"):
        unet.ConditionalUNet(10, rngs=nnx.Rngs(0))
    model = unet.ConditionalUNet(8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="flat images"):
        model(jnp.zeros((2, 8, 8)), 0.5, 0)


def test_output_depends_on_time_class_and_each_row_alone():
    model = unet.ConditionalUNet(8, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 64))
    base = apply(model, x, 0.3, 2)
    assert not np.allclose(base, apply(model, x, 0.7, 2))
    assert not np.allclose(base, apply(model, x, 0.3, 3))
    assert not np.allclose(base, apply(model, x, 0.3, model.null))
    # GroupNorm normalises within an image, never across the batch: rows are independent
    np.testing.assert_allclose(apply(model, x[:1], 0.3, 2), base[:1], atol=1e-5)


def test_unet_works_with_guidance_and_label_dropout():
    model = unet.ConditionalUNet(8, rngs=nnx.Rngs(2))
    x = jax.random.normal(jax.random.PRNGKey(2), (6, 64))
    v = jax.jit(lambda f, y: f(y, 0.5))(guidance.GuidedVelocity(model, 4, 2.0), x)
    v_c, v_null = apply(model, x, 0.5, 4), apply(model, x, 0.5, model.null)
    np.testing.assert_allclose(v, v_null + 2.0 * (v_c - v_null), atol=1e-4)
    loss = jax.jit(guidance.LabelDropoutLoss(0.1))(model, (x, jnp.arange(6) % 10),
                                                  jax.random.PRNGKey(3))
    assert np.isfinite(float(loss))


def test_checkpoint_round_trip(tmp_path):
    model = unet.ConditionalUNet(8, rngs=nnx.Rngs(3))
    path = tmp_path / "unet.msgpack"
    train.save_state(path, model)
    fresh = train.load_state(path, unet.ConditionalUNet(8, rngs=nnx.Rngs(99)))
    x = jax.random.normal(jax.random.PRNGKey(4), (5, 64))
    np.testing.assert_array_equal(apply(fresh, x, 0.4, 1), apply(model, x, 0.4, 1))
    with pytest.raises(ValueError, match="other names or shapes"):
        train.load_state(path, unet.ConditionalUNet(8, channels=(16, 16, 16), rngs=nnx.Rngs(0)))


def test_shipped_checkpoint_reproduces_its_recorded_check():
    """The weights of scripts/make_digits_checkpoint.py load into the recipe's network,
    are at most 5 MB, and give the bits per dimension recorded beside them."""
    import json
    from importlib.resources import files

    from fm_helpers import density, images

    assets = files("fm_helpers") / "assets"
    record = json.loads((assets / "digits_unet_seed0.json").read_text())
    weights = assets / "digits_unet_seed0.msgpack"
    assert weights.stat().st_size <= 5 * 2**20
    recipe, check = record["recipe"], record["check"]
    model = train.load_state(weights, unet.ConditionalUNet(
        8, num_classes=10, channels=recipe["channels"], embed_dim=recipe["embed_dim"],
        rngs=nnx.Rngs(0)))
    v, y = images.load_digits()
    test = images.stratified_split(y, tuple(recipe["split"]), seed=recipe["split_seed"])[2]
    x = images.dequantize(jax.random.PRNGKey(check["key"]), v[test][: check["images"]])
    field = guidance.GuidedVelocity(model, jnp.asarray(y[test][: check["images"]]), 1.0)
    log_q = density.log_prob(field, jnp.asarray(x), solver="tsit5", num_steps=check["steps"])
    bits = float(images.bits_per_dim(np.asarray(log_q.log_prob), 64).mean())
    assert bits == pytest.approx(check["bits_per_dim"], abs=0.01)


def test_shipped_checkpoint_reproduces_chapter_11s_headline_figure():
    """Chapter 11's headline: the unconditional flow's bits per dimension on every test
    digit (dequantised with key 7, Hutchinson probes from key 14, Tsit5 with 8 steps).
    Recomputed from the shipped weights, it must agree with the published benchmark
    figure, which the chapter asserts it reproduces, within the figure's standard
    error; and it must beat the full-covariance Gaussian fitted as the chapter fits it."""
    import json
    from importlib.resources import files
    from pathlib import Path

    from fm_helpers import density, images

    published = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "results"
                            / "latest.json").read_text())["images"]
    assets = files("fm_helpers") / "assets"
    recipe = json.loads((assets / "digits_unet_seed0.json").read_text())["recipe"]
    model = train.load_state(assets / "digits_unet_seed0.msgpack", unet.ConditionalUNet(
        8, num_classes=10, channels=recipe["channels"], embed_dim=recipe["embed_dim"],
        rngs=nnx.Rngs(0)))
    v, y = images.load_digits()
    train_idx, _, test_idx = images.stratified_split(y, tuple(recipe["split"]),
                                                     seed=recipe["split_seed"])
    x = jnp.asarray(images.dequantize(jax.random.PRNGKey(7), v[test_idx]))
    log_q = density.log_prob(guidance.ConditionalVelocity(model, model.null), x,
                             method="hutchinson", key=jax.random.PRNGKey(14),
                             solver="tsit5", num_steps=8).log_prob
    bits = images.bits_per_dim(np.asarray(log_q), 64)
    assert bits.mean() == pytest.approx(published["bpd_hutchinson"],
                                        abs=published["bpd_hutchinson_se"])
    gaussian = images.GaussianBaseline(images.dequantize(jax.random.PRNGKey(12), v[train_idx]))
    assert bits.mean() < images.bits_per_dim(gaussian.log_prob(np.asarray(x)), 64).mean()
