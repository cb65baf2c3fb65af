import jax
import numpy as np
import pytest
from scipy import stats

from fm_helpers.baselines import choose_bandwidth, gaussian_log_prob, kde_log_prob
from fm_helpers.metrics import energy_distance, kl_gap, mean_pairwise_distance, nll

RNG = np.random.default_rng(0)


def test_mean_pairwise_distance_against_brute_force():
    a, b = RNG.normal(size=(30, 2)), RNG.normal(size=(20, 2))
    brute = np.mean([np.linalg.norm(x - y) for x in a for y in b])
    assert mean_pairwise_distance(a, b, block=7) == pytest.approx(brute, rel=1e-5)
    within = np.mean([np.linalg.norm(a[i] - a[j]) for i in range(30) for j in range(30) if i != j])
    assert mean_pairwise_distance(a, a, same=True, block=8) == pytest.approx(within, rel=1e-5)


def test_energy_distance_separates_distributions():
    a = RNG.normal(size=(1000, 2))
    same = energy_distance(a, RNG.normal(size=(1000, 2)))
    shifted = energy_distance(a, RNG.normal(size=(1000, 2)) + [0.5, 0.0])
    assert abs(same) < 0.01 < shifted
    # and it grows with the shift
    more = energy_distance(a, RNG.normal(size=(1000, 2)) + [1.0, 0.0])
    assert more > shifted


def test_energy_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="sample sets"):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))


def test_nll_and_kl_gap():
    lp = np.array([-1.0, -2.0, -3.0])
    mean, stderr = nll(lp)
    assert mean == pytest.approx(2.0) and stderr == pytest.approx(1.0 / np.sqrt(3))
    assert kl_gap(lp, entropy=1.5) == pytest.approx(0.5)


def test_gaussian_baseline_matches_scipy():
    train = RNG.normal(size=(500, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]]) + [1.0, -1.0]
    x = RNG.normal(size=(10, 2))
    expected = stats.multivariate_normal(train.mean(0), np.cov(train.T, bias=True)).logpdf(x)
    np.testing.assert_allclose(gaussian_log_prob(train, x), expected, rtol=1e-10)


def test_kde_matches_a_sum_of_gaussians():
    train, x, h = RNG.normal(size=(50, 2)), RNG.normal(size=(7, 2)), 0.3
    expected = np.log(np.mean([stats.multivariate_normal(c, h**2 * np.eye(2)).pdf(x) for c in train], axis=0))
    np.testing.assert_allclose(kde_log_prob(train, x, h, block=3), expected, rtol=1e-10)


def test_bandwidth_choice_prefers_a_sensible_width():
    train, val = RNG.normal(size=(2000, 1)), RNG.normal(size=(500, 1))
    h, scores = choose_bandwidth(train, val, candidates=[0.01, 0.3, 5.0])
    assert h == 0.3 and scores.shape == (3,)
