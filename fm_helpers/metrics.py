"""Metrics: energy distance, a paired comparison of solvers, negative log-likelihood and
the KL gap.

Taught in chapters 6 (energy distance; choosing a solver), 7 (NLL and KL gap) and 8
(straightness).

Energy distance (Székely and Rizzo) between distributions P and Q, estimated from
samples a ~ P and b ~ Q:

.. math:: D^2(P, Q) = 2 E\\|X - Y\\| - E\\|X - X'\\| - E\\|Y - Y'\\| \\ge 0,

zero only when P = Q. The within-set means leave out the zero diagonal (U-statistics),
so the estimate is unbiased; it can dip slightly below zero when P = Q.

Choosing a solver (chapter 6). Two sample sets made from the *same* noise points, one by
a cheap solver and one by an accurate reference solver, can be compared row by row:
row i of both started from the same noise point, so their difference is the cheap
solver's error at that point, with no sampling noise between the sets.
:func:`paired_gap` measures it (the mean distance between paired samples, and the extra
share of samples that lands where the true density is zero), with bootstrap intervals
over the rows; :func:`cheapest_within_tolerance` turns that into one rule that picks the
cheapest solver setting, or none.

For a model density q and data with true density p and entropy H(p),

.. math:: \\text{NLL} = E_{x \\sim p}[-\\log q(x)] = H(p) + KL(p \\,\\|\\, q),

so the test NLL minus the true entropy estimates KL(p || q), the KL gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "mean_pairwise_distance",
    "energy_distance",
    "off_support",
    "PairedGap",
    "paired_gap",
    "SolverChoice",
    "cheapest_within_tolerance",
    "PIXEL_FRACTION",
    "LEAK_FRACTION",
    "nll",
    "kl_gap",
    "straightness",
]

#: Default limit of :func:`cheapest_within_tolerance` on the mean distance to the
#: reference samples, as a fraction of the width of one pixel.
PIXEL_FRACTION = 0.1
#: Default limit of :func:`cheapest_within_tolerance` on the extra share of samples off the
#: support, as a fraction of the reference's own share.
LEAK_FRACTION = 0.1


@jax.jit
def _block_distance_sum(a: jax.Array, b: jax.Array) -> jax.Array:
    diff = a[:, None, :] - b[None, :, :]
    return jnp.sum(jnp.sqrt(jnp.sum(diff**2, axis=-1)))


def mean_pairwise_distance(a, b, *, same: bool = False, block: int = 1024) -> float:
    """Mean of ``|a_i - b_j|`` over all pairs, computed in blocks of ``block`` rows.

    ``same=True`` says that ``b`` is ``a``: the mean is then over the pairs ``i != j``
    (the zero distances ``|a_i - a_i|`` are left out of the count).
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    total = 0.0
    for i in range(0, len(a), block):
        for j in range(0, len(b), block):
            part = _block_distance_sum(jnp.asarray(a[i : i + block]), jnp.asarray(b[j : j + block]))
            total += float(part)
    pairs = len(a) * (len(b) - 1) if same else len(a) * len(b)
    return total / pairs


def energy_distance(a, b, *, b_within: float | None = None) -> float:
    """Energy distance D^2 between the samples a [n, d] and b [m, d] (see module docstring).

    ``b_within``, if given, is ``mean_pairwise_distance(b, b, same=True)`` computed once by a
    caller that scores many sample sets against the same ``b``.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(
            f"need two sample sets [n, d] and [m, d] with n, m >= 2; got {a.shape} and {b.shape}."
        )
    if b_within is None:
        b_within = mean_pairwise_distance(b, b, same=True)
    return 2.0 * mean_pairwise_distance(a, b) - mean_pairwise_distance(a, a, same=True) - b_within


# ----------------------------------------------------------------------------- solvers


def off_support(density, x) -> np.ndarray:
    """Boolean [n]: True where the true density is zero at the point ``x[i]``.

    ``density`` is anything with a ``log_prob(x) -> [n]`` method, such as
    :class:`fm_helpers.data.ImageDensity`, whose ``log_prob`` is ``-inf`` outside the
    square and on white pixels (pixel weight 0).
    """
    return ~np.isfinite(np.asarray(density.log_prob(np.asarray(x))))


@dataclass(frozen=True)
class PairedGap:
    """One sample set ``x`` [n, d] against a reference ``r`` [n, d] from the same noise.

    ``mean_distance``: mean of ``|x_i - r_i|``; ``off_support``: share of the ``x_i`` where
    the true density is zero; ``excess_off_support``: that share minus the reference's.
    The ``*_ci`` fields are (low, high) bootstrap intervals of the two paired means.
    """

    mean_distance: float
    mean_distance_ci: tuple[float, float]
    off_support: float
    excess_off_support: float
    excess_off_support_ci: tuple[float, float]


def _paired_rows(samples, reference) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if x.ndim != 2 or x.shape != r.shape or len(x) < 2:
        raise ValueError(
            f"samples and reference must be paired sets of the same shape [n, d] with n >= 2 "
            f"(row i of both from the same noise point); got {x.shape} and {r.shape}."
        )
    return x, r


def _bootstrap_means(values: np.ndarray, num_resamples: int, seed: int) -> np.ndarray:
    """Means of ``values`` [n, k] over ``num_resamples`` resamples of its rows, drawn with
    replacement: [num_resamples, k]. The same seed gives the same resamples.

    A resample is held as the count of each row in it, so that its means of all k columns
    are one row of a matrix product (counts / n) @ values: resampling many columns at
    once costs little more than one.
    """
    rng = np.random.default_rng(seed)
    n, chunk, out = len(values), 100, []
    for start in range(0, num_resamples, chunk):
        m = min(chunk, num_resamples - start)
        rows = rng.integers(0, n, size=(m, n))  # resample j: the rows rows[j]
        counts = np.bincount((rows + n * np.arange(m)[:, None]).ravel(), minlength=m * n)
        out.append(counts.reshape(m, n) @ values / n)
    return np.concatenate(out)


def _paired_gaps(
    candidates: Sequence, reference, density, num_resamples: int, level: float, seed: int
) -> tuple[PairedGap, ...]:
    """:func:`paired_gap` of every candidate against one reference, with one bootstrap:
    every candidate's means are recomputed on the same resamples of the rows."""
    if not 0.0 < level < 1.0 or num_resamples < 1:
        raise ValueError("level must lie in (0, 1) and num_resamples must be positive.")
    rows = [_paired_rows(x, reference) for x in candidates]
    if not rows:
        return ()
    off_r = off_support(density, rows[0][1]).astype(np.float64)
    columns, means = [], []
    for x, r in rows:
        distance = np.linalg.norm(x - r, axis=1)
        off_x = off_support(density, x).astype(np.float64)
        columns += [distance, off_x - off_r]  # the excess share, row by row
        means.append((float(distance.mean()), float(off_x.mean())))
    resampled = _bootstrap_means(np.stack(columns, axis=1), num_resamples, seed)
    low, high = np.quantile(resampled, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=0)
    return tuple(
        PairedGap(
            mean_distance=distance,
            mean_distance_ci=(float(low[2 * k]), float(high[2 * k])),
            off_support=off,
            excess_off_support=float(columns[2 * k + 1].mean()),
            excess_off_support_ci=(float(low[2 * k + 1]), float(high[2 * k + 1])),
        )
        for k, (distance, off) in enumerate(means)
    )


def paired_gap(
    samples, reference, density, *, num_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> PairedGap:
    """Compare ``samples`` [n, d] with ``reference`` [n, d] row by row (see :class:`PairedGap`).

    The intervals are percentile bootstrap intervals at ``level``: the rows are resampled
    with replacement ``num_resamples`` times (from ``seed``) and each paired mean is
    recomputed. They say how much the means would move with other noise points.
    """
    return _paired_gaps([samples], reference, density, num_resamples, level, seed)[0]


@dataclass(frozen=True)
class SolverChoice:
    """The result of :func:`cheapest_within_tolerance`.

    ``gaps[k]`` and ``within[k]`` belong to candidate k; ``cheapest`` is the index of the
    chosen candidate, or None when none is within tolerance. ``distance_tolerance`` and
    ``excess_tolerance`` are the two limits that were applied, ``reference_off_support``
    the reference's own share of samples off the support.
    """

    gaps: tuple[PairedGap, ...]
    within: tuple[bool, ...]
    cheapest: int | None
    distance_tolerance: float
    excess_tolerance: float
    reference_off_support: float


def cheapest_within_tolerance(
    candidates: Sequence,
    nfe: Sequence[int],
    reference,
    density,
    *,
    pixel_fraction: float = PIXEL_FRACTION,
    leak_fraction: float = LEAK_FRACTION,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> SolverChoice:
    """The cheapest candidate sample set that is as good as the reference, or none.

    ``candidates[k]`` [n, 2] and ``reference`` [n, 2] come from the same noise points
    (row i of each from noise point i); ``nfe[k]`` is what candidate k cost; ``density``
    is the true density, an :class:`fm_helpers.data.ImageDensity`. Candidate k is *within
    tolerance* when the upper ends of both bootstrap intervals of :func:`paired_gap` (at
    ``level``, the same resamples for every candidate) lie within two limits:

    - mean distance to the reference sample from the same noise at most
      ``pixel_fraction`` times the width of one pixel (the smaller of the cell's width
      ``2 / W`` and height ``2 / H``): the candidate moves samples by much less than the
      resolution of the image that defines the data;
    - extra share of samples off the support (where the true density is zero) at most
      ``leak_fraction`` times the reference's own share: the candidate adds at most that
      fraction to an error of the model that the known density measures exactly. When the
      reference puts no sample off the support, that limit is 0.

    Among the candidates within tolerance the one with the smallest NFE is chosen (ties:
    the smaller mean distance). ``cheapest`` is None when none is within tolerance: the
    rule refuses rather than picks the least bad one, and with too few samples for
    narrow intervals it refuses too.
    """
    if len(candidates) != len(nfe):
        raise ValueError(f"got {len(candidates)} candidates but {len(nfe)} NFE values.")
    if pixel_fraction < 0 or leak_fraction < 0:
        raise ValueError("pixel_fraction and leak_fraction must not be negative.")
    pixel = min(2.0 / density.width, 2.0 / density.height)
    reference_off = float(off_support(density, reference).mean())
    distance_tolerance = pixel_fraction * pixel
    excess_tolerance = leak_fraction * reference_off
    gaps = _paired_gaps(candidates, reference, density, num_resamples, level, seed)
    within = tuple(
        g.mean_distance_ci[1] <= distance_tolerance and g.excess_off_support_ci[1] <= excess_tolerance
        for g in gaps
    )
    chosen = [k for k in range(len(gaps)) if within[k]]
    cheapest = min(chosen, key=lambda k: (nfe[k], gaps[k].mean_distance)) if chosen else None
    return SolverChoice(gaps, within, cheapest, distance_tolerance, excess_tolerance, reference_off)


# ----------------------------------------------------------------------------- likelihood


def nll(log_probs) -> tuple[float, float]:
    """Mean negative log-likelihood in nats and its standard error."""
    lp = np.asarray(log_probs, dtype=np.float64)
    return float(-lp.mean()), float(lp.std(ddof=1) / np.sqrt(len(lp)))


def kl_gap(log_probs, entropy: float) -> float:
    """Test NLL minus the true entropy: an estimate of KL(data || model) in nats."""
    return nll(log_probs)[0] - float(entropy)


# ----------------------------------------------------------------------------- straightness


@jax.jit
def _off_chord(velocity, trajectory: jax.Array, ts: jax.Array) -> jax.Array:
    """Mean over the paths of ||(x_1 - x_0) - v(x_t, t)||^2 at each time of ``ts``."""
    chord = trajectory[-1] - trajectory[0]

    def at(x_t_and_t):
        x_t, t = x_t_and_t
        return jnp.mean(jnp.sum((chord - velocity(x_t, t)) ** 2, axis=-1))

    return jax.lax.map(at, (trajectory, ts))


def straightness(velocity, trajectory, ts) -> float:
    """Straightness of the flow of ``velocity`` (Liu et al. 2023):

    .. math:: S = \\int_0^1 E \\| (X_1 - X_0) - v(X_t, t) \\|^2 \\, dt,

    along paths X_t of the ODE dx/dt = v(x, t), given as ``trajectory`` [k, n, d] at the
    times ``ts`` [k], from t = 0 to t = 1 (``sample(velocity, x0,
    save_trajectory=k)`` returns both). S = 0 exactly when every path is a straight
    line run at constant speed; then one Euler step is exact. The integral over t is
    the trapezoid rule on ``ts``. ``velocity`` is a pytree such as an NNX module or a
    :class:`fm_helpers.gaussian.GaussianFlow`: it is an input of a compiled function.
    """
    trajectory, ts = jnp.asarray(trajectory), jnp.asarray(ts)
    if trajectory.ndim != 3 or ts.shape != (trajectory.shape[0],) or len(ts) < 2:
        raise ValueError(
            f"need a trajectory [k, n, d] at k >= 2 times ts [k]; got {trajectory.shape} "
            f"and {ts.shape}."
        )
    if not (float(ts[0]) == 0.0 and float(ts[-1]) == 1.0 and bool(jnp.all(jnp.diff(ts) > 0))):
        raise ValueError("ts must increase from 0 to 1: the whole path, in order.")
    values = np.asarray(_off_chord(velocity, trajectory, ts), np.float64)
    widths = np.diff(np.asarray(ts, np.float64))
    return float(np.sum(widths * (values[1:] + values[:-1]) / 2.0))
