import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fm_helpers.baselines import choose_bandwidth, gaussian_log_prob, kde_log_prob
from fm_helpers.data import ImageDensity
from fm_helpers.metrics import (
    cheapest_within_tolerance,
    energy_distance,
    kl_gap,
    mean_pairwise_distance,
    nll,
    off_support,
    paired_gap,
    straightness,
)
from fm_helpers.gaussian import GaussianFlow
from fm_helpers.sample import sample

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


# ----------------------------------------------------------------- choosing a solver
# A 4 x 4 image whose left half is black and right half white: the support is x < 0,
# and a pixel is 0.5 wide, so the distance tolerance is PIXEL_FRACTION * 0.5 = 0.05.
HALF = ImageDensity(np.tile([0.0, 0.0, 1.0, 1.0], (4, 1)))


def reference_set(n, leak=0.1, seed=1):
    """n points: the first ``leak * n`` off the support (x > 0), the rest on it (x < 0);
    of those, the next n // 20 lie 0.001 inside the edge x = 0. Returns the points and
    the slice of the edge points."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(-0.9, -0.1, n), rng.uniform(-0.8, 0.8, n)])
    off = int(leak * n)
    x[:off, 0] = rng.uniform(0.1, 0.9, off)
    edge = slice(off, off + n // 20)
    x[edge, 0] = -0.001
    return x, edge


def test_off_support_follows_log_prob():
    x = np.array([[-0.5, 0.0], [0.5, 0.0], [-0.5, 1.5], [-1.0, -1.0]])
    np.testing.assert_array_equal(off_support(HALF, x), [False, True, True, False])
    np.testing.assert_array_equal(off_support(HALF, x), ~np.isfinite(HALF.log_prob(x)))


def test_paired_gap_against_direct_computation():
    r, edge = reference_set(500)
    x = r + RNG.normal(scale=0.01, size=r.shape)
    x[edge, 0] = 0.2  # the 25 edge points moved off the support
    gap = paired_gap(x, r, HALF, num_resamples=300)
    assert gap.mean_distance == pytest.approx(np.linalg.norm(x - r, axis=1).mean())
    assert gap.off_support == pytest.approx(np.mean(x[:, 0] > 0))
    assert gap.excess_off_support == pytest.approx(np.mean(x[:, 0] > 0) - 0.1)
    for mean, (low, high) in [(gap.mean_distance, gap.mean_distance_ci),
                              (gap.excess_off_support, gap.excess_off_support_ci)]:
        assert low < mean < high
    same = paired_gap(r, r, HALF, num_resamples=50)
    assert same.mean_distance == 0 and same.mean_distance_ci == (0.0, 0.0)
    assert same.excess_off_support_ci == (0.0, 0.0)
    with pytest.raises(ValueError, match="paired"):
        paired_gap(x[:-1], r, HALF)


def test_rule_picks_the_cheapest_setting_within_tolerance():
    r, edge = reference_set(4000)
    far = r + [0.0, 0.1]  # every point 0.2 of a pixel away: too far
    leaky = r.copy()  # 5% of the points pushed across the edge by 0.002: a tiny mean
    leaky[edge, 0] = 0.001  # distance, but 0.05 more off the support (limit 0.1 * 0.1)
    close = r + [0.0, 0.01]  # 0.02 of a pixel, on the support: within tolerance
    exact = r.copy()  # within tolerance too, but more expensive
    choice = cheapest_within_tolerance([far, leaky, close, exact], [4, 8, 20, 60], r, HALF)
    assert choice.distance_tolerance == pytest.approx(0.05)
    assert choice.reference_off_support == pytest.approx(0.1)
    assert choice.excess_tolerance == pytest.approx(0.01)
    assert choice.gaps[1].mean_distance < choice.distance_tolerance  # refused for its leak
    assert choice.gaps[1].excess_off_support == pytest.approx(0.05)
    assert choice.within == (False, False, True, True)
    assert choice.cheapest == 2
    # equal cost: the smaller distance wins
    assert cheapest_within_tolerance([close, exact], [20, 20], r, HALF).cheapest == 1


def test_rule_refuses_when_nothing_is_within_tolerance():
    r, _ = reference_set(1000)
    choice = cheapest_within_tolerance([r + [0.0, 0.1], r + [0.0, 0.3]], [4, 2], r, HALF)
    assert choice.within == (False, False) and choice.cheapest is None


def test_rule_refuses_when_the_samples_cannot_resolve_the_tolerance():
    # The same 0.5% extra leak (half the 1% limit) in a small and a large sample: with 200
    # points it is one point, and the bootstrap interval reaches past the limit.
    for n, expected in [(200, None), (20_000, 0)]:
        r, edge = reference_set(n)
        x = r.copy()
        x[edge.start : edge.start + n // 200, 0] = 0.5
        choice = cheapest_within_tolerance([x], [10], r, HALF)
        assert choice.gaps[0].excess_off_support == pytest.approx(0.005)
        assert choice.cheapest == expected


def test_rule_checks_its_arguments():
    r, _ = reference_set(100)
    with pytest.raises(ValueError, match="NFE"):
        cheapest_within_tolerance([r, r], [1], r, HALF)
    with pytest.raises(ValueError, match="paired"):
        cheapest_within_tolerance([r[:50]], [1], r, HALF)


def test_bootstrap_means_are_means_of_resampled_rows():
    # The counts-and-product form gives the means of the rows drawn with replacement,
    # for the same draws (in chunks of 100 resamples) as indexing the rows directly.
    from fm_helpers.metrics import _bootstrap_means

    values = RNG.normal(size=(50, 3))
    rng = np.random.default_rng(7)
    rows = np.concatenate([rng.integers(0, 50, size=(min(100, 250 - s), 50))
                           for s in range(0, 250, 100)])
    np.testing.assert_allclose(_bootstrap_means(values, 250, 7), values[rows].mean(axis=1),
                               rtol=1e-12)


def test_rule_gives_each_candidate_its_own_paired_gap():
    # One bootstrap for all candidates: the same intervals as one paired_gap each.
    r, edge = reference_set(500)
    moved = r + [0.0, 0.01]
    noisy = r + RNG.normal(scale=0.02, size=r.shape)
    noisy[edge, 0] = 0.2
    choice = cheapest_within_tolerance([moved, noisy], [1, 2], r, HALF, num_resamples=200)
    for x, got in zip([moved, noisy], choice.gaps):
        want = paired_gap(x, r, HALF, num_resamples=200)
        for field in ["mean_distance", "off_support", "excess_off_support"]:
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-12)
        for field in ["mean_distance_ci", "excess_off_support_ci"]:
            assert getattr(got, field) == pytest.approx(getattr(want, field), rel=1e-12)
    assert choice.gaps[1].excess_off_support_ci[0] > 0  # the moved edge points


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Rotation:
    """v(x, t) = w J x: every path is an arc of a circle, run at constant speed."""

    w: jax.Array

    def __call__(self, x, t):
        return self.w * jnp.stack([-x[:, 1], x[:, 0]], axis=1)


def test_straightness_against_closed_forms():
    """The straight Gaussian flow: S = 0. The rotation by w: x_t = R(wt) x_0, so
    S = E|x_0|^2 (w^2 - 2 + 2 cos w), in closed form (complex numbers: the chord is
    (e^{iw} - 1) x_0 and the velocity i w e^{iwt} x_0)."""
    x0 = jax.random.normal(jax.random.PRNGKey(0), (4000, 2))
    flow = GaussianFlow(jnp.array([1.0, -0.5]), jnp.float32(0.5))
    run = sample(flow, x0, save_trajectory=33)
    assert straightness(flow, run.trajectory, run.ts) < 1e-8
    for w in (0.5, np.pi / 2, 3.0):
        spin = Rotation(jnp.float32(w))
        run = sample(spin, x0, save_trajectory=129)
        want = float(jnp.mean(jnp.sum(x0**2, axis=1))) * (w**2 - 2 + 2 * np.cos(w))
        assert straightness(spin, run.trajectory, run.ts) == pytest.approx(want, rel=1e-3)


def test_straightness_checks_the_times():
    x = jnp.zeros((5, 3, 2))
    flow = GaussianFlow(jnp.zeros(2), jnp.float32(1.0))
    with pytest.raises(ValueError, match="from 0 to 1"):
        straightness(flow, x, jnp.linspace(0.0, 0.5, 5))
    with pytest.raises(ValueError, match=r"\[k, n, d\]"):
        straightness(flow, x, jnp.linspace(0.0, 1.0, 4))
