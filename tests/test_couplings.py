"""Couplings against independent truths: brute force over permutations, and the limit of
the entropic plan as its regularisation vanishes."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.couplings import (exact_ot, independent, reflow_pairs, sinkhorn,
                                  sinkhorn_plan, squared_distances)
from fm_helpers.metrics import straightness
from fm_helpers.sample import sample
from fm_helpers.train import fit


def batch(seed: int, n: int, d: int = 2):
    k0, k1 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(k0, (n, d)), 2.0 + jax.random.normal(k1, (n, d))


def total_cost(x0, x1) -> float:
    return float(np.sum((np.asarray(x0, np.float64) - np.asarray(x1, np.float64)) ** 2))


def best_permutation(x0, x1) -> np.ndarray:
    """By brute force: the permutation p minimising sum_i ||x0[i] - x1[p[i]]||^2."""
    cost = np.asarray(squared_distances(x0, x1), np.float64)
    perms = np.array(list(itertools.permutations(range(len(cost)))))
    return perms[np.argmin(cost[np.arange(len(cost)), perms].sum(axis=1))]


def test_squared_distances_against_a_loop():
    x0, x1 = batch(0, 4)
    want = [[total_cost(a[None], b[None]) for b in x1] for a in x0]
    np.testing.assert_allclose(squared_distances(x0, x1), want, rtol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_exact_ot_is_the_best_permutation(seed):
    """n = 6: all 720 pairings tried; the assignment pairs the points as the cheapest
    of them does (ties have probability zero here)."""
    x0, x1 = batch(seed, 6)
    best = best_permutation(x0, x1)
    y0, y1 = jax.jit(exact_ot)(jax.random.PRNGKey(seed), x0, x1)
    np.testing.assert_array_equal(y0, x0)  # the noise stays in place
    np.testing.assert_array_equal(y1, x1[best])


@pytest.mark.parametrize("seed", range(3))
def test_exact_ot_pairs_each_point_once_and_costs_less(seed):
    x0, x1 = batch(seed, 256)
    y0, y1 = exact_ot(jax.random.PRNGKey(0), x0, x1)
    order = lambda a: np.asarray(a)[np.lexsort(np.asarray(a).T)]  # noqa: E731
    np.testing.assert_array_equal(order(y1), order(x1))  # a permutation of the batch
    assert total_cost(y0, y1) < total_cost(*independent(None, x0, x1))


def test_exact_ot_under_vmap():
    """The host callback runs once per batch of a vmapped call."""
    x0, x1 = (jnp.stack(side) for side in zip(*(batch(seed, 5) for seed in range(3))))
    y0, y1 = jax.vmap(exact_ot, in_axes=(None, 0, 0))(jax.random.PRNGKey(0), x0, x1)
    for i in range(3):
        np.testing.assert_array_equal(y1[i], exact_ot(None, x0[i], x1[i])[1])


def shifted(seed: int, n: int, shift=(3.0, -1.0)):
    """Points of a grid with unit spacing, and the same points shuffled and shifted: for
    the squared distance the optimal pairing is known exactly, each x0[i] with its own
    shifted copy. Any other pairing p costs sum_i ||x0[i] - x0[p(i)]||^2 more (the cross
    terms with the shift sum to zero), at least 2 on this grid: a well-separated optimum."""
    x0 = jnp.stack(jnp.divmod(jnp.arange(n, dtype=jnp.float32), 4), axis=1)
    order = jax.random.permutation(jax.random.PRNGKey(seed), n)
    return x0, x0[order] + jnp.array(shift), jnp.argsort(order)  # x1[partner[i]] = x0[i] + shift


def test_exact_ot_finds_the_known_optimum():
    x0, x1, partner = shifted(0, 64)
    np.testing.assert_array_equal(exact_ot(None, x0, x1)[1], x1[partner])


def test_sinkhorn_plan_tends_to_the_assignment():
    """Entropic plans approach the optimal permutation's matrix (entries 1/n) as epsilon
    decreases, and keep both marginals uniform: OTT stops when the L1 error of a
    marginal is below 1e-3 (its default threshold)."""
    n = 8
    x0, x1, partner = shifted(1, n)
    target = np.zeros((n, n))
    target[np.arange(n), np.asarray(partner)] = 1.0 / n
    gaps = []
    for eps in (1.0, 0.1, 0.01):
        plan = np.asarray(sinkhorn_plan(x0, x1, epsilon=eps), np.float64)
        for marginal in (plan.sum(axis=0), plan.sum(axis=1)):
            assert np.abs(marginal - 1.0 / n).sum() < 1.1e-3
        gaps.append(np.abs(plan - target).sum())  # 0 for the assignment, at most 2
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01, gaps
    assert gaps[0] > 0.5, "a large epsilon spreads the plan"


def test_sinkhorn_pairs_from_the_plan():
    """With a small epsilon the drawn partners are the optimal ones; with a large one
    they are not."""
    x0, x1, partner = shifted(2, 16)
    y0, y1 = sinkhorn(jax.random.PRNGKey(3), x0, x1, epsilon=0.005)
    np.testing.assert_array_equal(y0, x0)
    np.testing.assert_array_equal(y1, x1[partner])
    loose = sinkhorn(jax.random.PRNGKey(3), x0, x1, epsilon=10.0)[1]
    assert not np.array_equal(loose, x1[partner])


@pytest.mark.parametrize("coupling", [independent, exact_ot, sinkhorn])
def test_wrong_shapes(coupling):
    with pytest.raises(ValueError, match=r"both \[n, d\]"):
        coupling(jax.random.PRNGKey(0), jnp.zeros((4, 2)), jnp.zeros((5, 2)))


# ----------------------------------------------------------------------------- reflow
# Between N(0, I) and N(mu, Sigma), with independent pairs, everything is closed form.
# x_t = (1 - t) x0 + t x1 has mean t mu and covariance C_t = (1 - t)^2 I + t^2 Sigma; the
# flow's velocity is E[x1 - x0 | x_t = x] = mu + (t Sigma - (1 - t) I) C_t^{-1} (x - t mu).
# Its flow map is x0 -> t mu + C_t^{1/2} x0 (all these matrices commute), so at t = 1 it
# is mu + Sigma^{1/2} x0: the optimal-transport map between the two Gaussians. The paths
# to it are curved; reflow on its pairs should straighten them.
MU = jnp.array([2.0, -1.0])
SIGMA = jnp.array([[0.5, 0.3], [0.3, 0.4]])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class IndependentGaussianFlow:
    mu: jax.Array
    sigma: jax.Array

    def __call__(self, x, t):
        eye = jnp.eye(self.mu.shape[0])
        cov = (1 - t) ** 2 * eye + t**2 * self.sigma
        gain = (t * self.sigma - (1 - t) * eye) @ jnp.linalg.inv(cov)
        return self.mu + (x - t * self.mu) @ gain.T


def ot_map(x0):
    values, vectors = np.linalg.eigh(np.asarray(SIGMA, np.float64))
    root = vectors @ np.diag(np.sqrt(values)) @ vectors.T  # the symmetric square root
    return np.asarray(MU) + np.asarray(x0, np.float64) @ root.T


def test_reflow_pairs_of_the_gaussian_flow_are_the_ot_map():
    x0, x1 = reflow_pairs(IndependentGaussianFlow(MU, SIGMA), jax.random.PRNGKey(0), 500)
    assert x0.shape == x1.shape == (500, 2)
    np.testing.assert_allclose(x1, ot_map(x0), atol=1e-4)
    with pytest.raises(ValueError, match="positive"):
        reflow_pairs(IndependentGaussianFlow(MU, SIGMA), jax.random.PRNGKey(0), 0)


def test_reflow_straightens_the_gaussian_flow_into_the_ot_map():
    """A network trained on the pairs (x0, psi(x0)) of the curved closed-form flow learns
    a flow whose paths are near straight lines: S falls by a factor of 1000 or more, and
    one Euler step, x0 + v(x0, 0), lands close to the optimal-transport map's image."""
    flow = IndependentGaussianFlow(MU, SIGMA)
    x0, x1 = reflow_pairs(flow, jax.random.PRNGKey(0), 8000)
    model, _ = fit(x1, noise_points=x0, steps=1000, batch_size=256, learning_rate=3e-3,
                   seed=0, progress=False)
    z = jax.random.normal(jax.random.PRNGKey(1), (2000, 2))
    curved, straight = sample(flow, z, save_trajectory=33), sample(model, z, save_trajectory=33)
    s_curved = straightness(flow, curved.trajectory, curved.ts)
    s_straight = straightness(model, straight.trajectory, straight.ts)
    assert s_straight < s_curved / 1000, (s_straight, s_curved)
    target = ot_map(z)
    one_step = np.asarray(sample(model, z, solver="euler", num_steps=1).samples)
    curved_one_step = np.asarray(sample(flow, z, solver="euler", num_steps=1).samples)
    err = np.linalg.norm(one_step - target, axis=1).mean()
    err_curved = np.linalg.norm(curved_one_step - target, axis=1).mean()
    assert err < 0.03 and err < err_curved / 20, (err, err_curved)
