"""Couplings against independent truths: brute force over permutations, and the limit of
the entropic plan as its regularisation vanishes."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fm_helpers.couplings import (exact_ot, independent, sinkhorn, sinkhorn_plan,
                                  squared_distances)


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
