"""Metrics: energy distance between sample sets, negative log-likelihood and the KL gap.

Taught in chapters 6 (energy distance) and 7 (NLL and KL gap).

Energy distance (Szekely and Rizzo) between distributions P and Q, estimated from
samples a ~ P and b ~ Q:

.. math:: D^2(P, Q) = 2 E\\|X - Y\\| - E\\|X - X'\\| - E\\|Y - Y'\\| \\ge 0,

zero only when P = Q. The within-set means leave out the zero diagonal (U-statistics),
so the estimate is unbiased; it can dip slightly below zero when P = Q.

For a model density q and data with true density p and entropy H(p),

.. math:: \\text{NLL} = E_{x \\sim p}[-\\log q(x)] = H(p) + KL(p \\,\\|\\, q),

so the test NLL minus the true entropy estimates KL(p || q), the KL gap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["mean_pairwise_distance", "energy_distance", "nll", "kl_gap"]


@jax.jit
def _block_distance_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    diff = a[:, None, :] - b[None, :, :]
    return jnp.sum(jnp.sqrt(jnp.sum(diff**2, axis=-1)))


def mean_pairwise_distance(a, b, *, same: bool = False, block: int = 1024) -> float:
    """Mean of ``|a_i - b_j|`` over all pairs (over ``i != j`` when ``same``), in blocks."""
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    total = 0.0
    for i in range(0, len(a), block):
        for j in range(0, len(b), block):
            total += float(_block_distance_sum(jnp.asarray(a[i : i + block]), jnp.asarray(b[j : j + block])))
    pairs = len(a) * (len(b) - 1) if same else len(a) * len(b)
    return total / pairs


def energy_distance(a, b, *, b_within: float | None = None) -> float:
    """Energy distance D^2 between the samples a [n, d] and b [m, d] (see module docstring).

    ``b_within``, if given, is ``mean_pairwise_distance(b, b, same=True)`` computed once by a
    caller that scores many sample sets against the same ``b``.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two sample sets [n, d] and [m, d] with n, m >= 2; got {a.shape} and {b.shape}.")
    if b_within is None:
        b_within = mean_pairwise_distance(b, b, same=True)
    return 2.0 * mean_pairwise_distance(a, b) - mean_pairwise_distance(a, a, same=True) - b_within


def nll(log_probs) -> tuple[float, float]:
    """Mean negative log-likelihood in nats and its standard error."""
    lp = np.asarray(log_probs, dtype=np.float64)
    return float(-lp.mean()), float(lp.std(ddof=1) / np.sqrt(len(lp)))


def kl_gap(log_probs, entropy: float) -> float:
    """Test NLL minus the true entropy: an estimate of KL(data || model) in nats."""
    return nll(log_probs)[0] - float(entropy)
