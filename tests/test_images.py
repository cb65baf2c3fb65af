"""fm_helpers.images: the digits, the split, dequantisation, bits per dimension, baselines."""

import jax
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from fm_helpers import images


@pytest.fixture(scope="module")
def digits():
    return images.load_digits()


def test_digits_load_offline_with_their_levels(digits):
    v, y = digits
    assert v.shape == (1797, 64) and y.shape == (1797,)
    assert v.min() == 0 and v.max() == images.DIGIT_LEVELS - 1
    assert sorted(np.unique(y)) == list(range(10))


def test_split_is_stratified_disjoint_and_complete(digits):
    _, y = digits
    parts = images.stratified_split(y, (0.7, 0.15, 0.15), seed=0)
    joined = np.concatenate(parts)
    assert len(joined) == len(y) and len(np.unique(joined)) == len(y)
    for c in range(10):
        n_c = np.sum(y == c)
        for part, share in zip(parts, (0.7, 0.15, 0.15)):
            assert abs(np.sum(y[part] == c) - share * n_c) <= 1.5  # rounding per class
    again = images.stratified_split(y, (0.7, 0.15, 0.15), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    with pytest.raises(ValueError, match="fractions"):
        images.stratified_split(y, (0.5, 0.5, 0.5))


def test_dequantize_stays_in_each_level_box(digits):
    v, _ = digits
    x = images.dequantize(jax.random.PRNGKey(0), v)
    assert x.dtype == np.float32 and x.min() >= -1 and x.max() < 1
    np.testing.assert_array_equal(images.quantize(x), v)
    np.testing.assert_array_equal(x, images.dequantize(jax.random.PRNGKey(0), v))
    with pytest.raises(ValueError, match="grey levels"):
        images.dequantize(jax.random.PRNGKey(0), v + 1)


def test_bits_per_dim_of_the_uniform_model_is_log2_levels():
    for levels, dim in ((17, 64), (256, 784), (2, 3)):
        log_q = np.full(5, -dim * np.log(2.0))  # uniform on [-1, 1]^D
        np.testing.assert_allclose(images.bits_per_dim(log_q, dim, levels), np.log2(levels),
                                   rtol=1e-12)


def test_dequantised_bound_on_a_discrete_case_with_a_closed_form():
    """One pixel, L = 4 levels, the model q(x) = (1 + a x) / 2 on [-1, 1]. The probability
    of level v is the integral of q over its box, in closed form; the bound is
    E_u[log q(x)] - log(L / 2), also in closed form; dequantised samples estimate it."""
    L, a = 4, 0.6
    edges = -1 + 2 * np.arange(L + 1) / L

    def cdf(x):
        return (x + a * x**2 / 2) / 2

    def antiderivative_of_log_q(x):  # d/dx of this is log((1 + a x) / 2)
        return (1 + a * x) * np.log(1 + a * x) / a - x - x * np.log(2)

    for v in range(L):
        lo, hi = edges[v], edges[v + 1]
        log_p = np.log(cdf(hi) - cdf(lo))
        mean_log_q = (antiderivative_of_log_q(hi) - antiderivative_of_log_q(lo)) / (hi - lo)
        bound = mean_log_q - np.log(L / 2)
        assert bound < log_p  # Jensen: strict, since q is not constant on the box
        x = images.dequantize(jax.random.PRNGKey(v), np.full((200_000, 1), v), levels=L)
        estimate = np.mean(np.log((1 + a * x.astype(np.float64)) / 2)) - np.log(L / 2)
        assert estimate == pytest.approx(bound, abs=2e-3)
        # and bits_per_dim turns the bound into bits
        bits = images.bits_per_dim(np.array([mean_log_q]), dim=1, levels=L)[0]
        assert bits == pytest.approx(-bound / np.log(2), rel=1e-12)
        assert bits > -log_p / np.log(2)


def test_gaussian_baseline_is_the_fitted_full_gaussian(digits):
    v, _ = digits
    x = images.dequantize(jax.random.PRNGKey(1), v[:600])
    g = images.GaussianBaseline(x[:500])
    ref = multivariate_normal(x[:500].astype(np.float64).mean(0),
                              np.cov(x[:500].astype(np.float64), rowvar=False, bias=True))
    np.testing.assert_allclose(g.log_prob(x[500:]), ref.logpdf(x[500:]), rtol=1e-8)


def test_mixture_baseline_picks_the_best_on_validation(digits):
    v, _ = digits
    x = images.dequantize(jax.random.PRNGKey(2), v)
    best, scores = images.fit_mixture_baseline(x[:1200], x[1200:1500], components=(1, 4))
    assert set(scores) == {1, 4}
    assert best.n_components == max(scores, key=scores.get)
    assert best.score(x[1200:1500]) == pytest.approx(max(scores.values()))


def test_nearest_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 5)), rng.normal(size=(1100, 5))
    brute = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(images.nearest_distances(a, b, block=8), brute, rtol=1e-9)
    assert np.all(images.nearest_distances(b[:10], b) < 1e-6)  # a training image itself


def test_dequantized_loss_draws_fresh_noise_inside_each_box():
    import jax.numpy as jnp

    seen = []

    def inner(model, batch, key):
        seen.append(batch[0])
        return jnp.sum(batch[0])

    v = jnp.tile(jnp.arange(17.0), (3, 1))  # every level once per row
    loss = images.Dequantized(inner)
    loss(None, (v, jnp.zeros(3, jnp.int32)), jax.random.PRNGKey(0))
    loss(None, (v, jnp.zeros(3, jnp.int32)), jax.random.PRNGKey(1))
    a, b = (np.asarray(s) for s in seen)
    np.testing.assert_array_equal(images.quantize(a), np.asarray(v, dtype=np.int64))
    np.testing.assert_array_equal(images.quantize(b), np.asarray(v, dtype=np.int64))
    assert not np.allclose(a, b)  # another key, other noise
    assert images.Dequantized(inner) == images.Dequantized(inner)
