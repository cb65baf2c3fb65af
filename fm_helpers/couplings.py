"""Couplings: which noise point each data point is paired with in the loss.

Taught in chapter 8 ("Straighter paths").

The conditional Flow Matching loss of :mod:`fm_helpers.loss` draws a noise point x_0 and
a data point x_1 and regresses the network on the velocity of the straight path between
them. Any joint distribution pi(x_0, x_1) whose two marginals are p_0 = N(0, I) and the
data gives a valid objective: the flow it learns still carries p_0 to the data. Which
pairs are drawn decides which flow it is, and how curved its paths are.

A coupling here acts on a batch: ``coupling(key, x0, x1) -> (x0, x1)`` takes n noise and
n data points drawn independently, and returns them paired. :func:`independent` keeps
the pairs as drawn. :func:`exact_ot` pairs them by the assignment that minimises the
total squared distance (minibatch optimal transport, Tong et al. 2023; Pooladian et al.
2023), solved on the host by SciPy. :func:`sinkhorn` uses the entropy-regularised plan
from OTT-JAX and draws each noise point's partner from its row of the plan.
:func:`exact_ot` only permutes the batch, so each pair's noise is still N(0, I) and its
data point still a draw from the data: both marginals are kept exactly. :func:`sinkhorn`
keeps the noise as drawn, and the data's marginal up to the solver's error in the plan's
column sums. Neither is the optimal-transport plan between the two whole distributions:
it is optimal only within each batch.

Reflow (Liu et al. 2023) pairs differently: :func:`reflow_pairs` draws noise points and
pushes each through a trained flow, so each pair is (x_0, psi(x_0)). Training on such
fixed pairs (``fit(x1, noise_points=x0)``) learns straighter paths, because the lines
between such pairs meet far less than those of independent pairs. The new flow carries
p_0 to the first flow's samples, not to the data, so the first flow's errors are kept.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Coupling", "independent", "squared_distances", "exact_ot", "sinkhorn_plan",
           "sinkhorn", "reflow_pairs"]

# (key, x0 [n, d], x1 [n, d]) -> (x0, x1), the same points paired anew.
Coupling = Callable[[jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _check_batch(x0: jax.Array, x1: jax.Array) -> None:
    if x0.ndim != 2 or x0.shape != x1.shape:
        raise ValueError(
            f"a coupling pairs n noise points with n data points, both [n, d]; got "
            f"{x0.shape} and {x1.shape}."
        )


def independent(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The pairs as drawn: x_0 and x_1 independent (the loss of chapters 4 and 5)."""
    _check_batch(x0, x1)
    return x0, x1


def squared_distances(x0: jax.Array, x1: jax.Array) -> jax.Array:
    """The cost matrix C[i, j] = ||x0[i] - x1[j]||^2, [n, m]."""
    return jnp.sum((x0[:, None, :] - x1[None, :, :]) ** 2, axis=-1)


def _assignment(cost: np.ndarray) -> np.ndarray:
    """SciPy's optimal assignment of a square cost matrix: column j(i) for each row i."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(np.asarray(cost, dtype=np.float64))
    return cols[np.argsort(rows)].astype(np.int32)


def exact_ot(key: jax.Array, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Minibatch optimal transport: x0[i] is paired with x1[j(i)], where the permutation
    j minimises sum_i ||x0[i] - x1[j(i)]||^2. The assignment is solved on the host with
    ``scipy.optimize.linear_sum_assignment`` (through ``jax.pure_callback``, so this works
    inside a compiled training step); ``key`` is not used."""
    _check_batch(x0, x1)
    shape = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
    perm = jax.pure_callback(_assignment, shape, squared_distances(x0, x1),
                             vmap_method="sequential")
    return x0, x1[perm]


def sinkhorn_plan(x0: jax.Array, x1: jax.Array, epsilon: float = 0.05) -> jax.Array:
    """The entropic optimal-transport plan P [n, n] between the uniform measures on x0
    and x1, from OTT-JAX's Sinkhorn solver: it minimises sum_ij P_ij C_ij - epsilon H(P)
    with rows and columns summing to 1/n, for the squared distances C divided by their
    mean (so ``epsilon`` is relative to the mean cost). As epsilon -> 0 the plan tends to
    the exact assignment (a permutation matrix over n); as epsilon grows it tends to the
    independent coupling (every entry 1/n^2)."""
    from ott.geometry import pointcloud
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    _check_batch(x0, x1)
    geometry = pointcloud.PointCloud(x0, x1, epsilon=epsilon, scale_cost="mean")
    return ott_sinkhorn.Sinkhorn()(linear_problem.LinearProblem(geometry)).matrix


def sinkhorn(
    key: jax.Array, x0: jax.Array, x1: jax.Array, epsilon: float = 0.05
) -> tuple[jax.Array, jax.Array]:
    """Entropic minibatch optimal transport: each x0[i] is paired with an x1[j] drawn
    with probability P[i, j] / sum_j P[i, j], where P is :func:`sinkhorn_plan`. The
    noise points are kept as drawn; a data point may be drawn for several of them."""
    plan = sinkhorn_plan(x0, x1, epsilon)
    partner = jax.random.categorical(key, jnp.log(jnp.maximum(plan, 1e-30)), axis=1)
    return x0, x1[partner]


def reflow_pairs(
    velocity: Callable, key: jax.Array, n: int, dim: int = 2, **options
) -> tuple[jax.Array, jax.Array]:
    """Reflow's pairs: n noise points x0 ~ N(0, I) [n, dim] drawn from ``key``, and the
    points x1 = psi(x0) [n, dim] that the flow of ``velocity`` carries them to at t = 1,
    solved by :func:`fm_helpers.sample.sample` with ``options`` (its solver settings;
    adaptive Tsit5 by default)."""
    from .sample import sample

    if int(n) < 1 or int(dim) < 1:
        raise ValueError(f"n and dim must be positive integers; got n={n!r}, dim={dim!r}.")
    x0 = jax.random.normal(key, (int(n), int(dim)))
    return x0, sample(velocity, x0, **options).samples
