"""Exact log-likelihood of a flow by the instantaneous change of variables.

Taught in chapter 7 ("Density").

Along a trajectory of dx/dt = v_t(x), the log-density obeys (Chen et al., 2018)

.. math:: \\frac{d}{dt} \\log p_t(x_t) = -\\nabla \\cdot v_t(x_t) .

To evaluate ``log p_1`` at a data point x_1 we run the flow *backwards*, from t = 1 to
t = 0, together with an accumulator ``l`` obeying ``dl/dt = div v_t(x_t)`` and ``l(1) = 0``.
Then ``l(0) = -int_0^1 div v_t(x_t) dt`` and

.. math:: \\log p_1(x_1) = \\log p_0(x_0) + l(0) = \\log p_0(x_0) - \\int_0^1 \\nabla \\cdot v_t(x_t)\\, dt ,

with ``p_0 = N(0, I)``. The divergence is either exact (the trace of the Jacobian,
one forward-mode derivative per dimension) or Hutchinson's estimate ``e^T (dv/dx) e``,
whose mean over random probes e with ``E[e e^T] = I`` is the trace (Hutchinson, 1989;
Grathwohl et al., 2019). Here the probes are Rademacher (entries +-1), drawn once per
point and held fixed along the path. The path does not depend on them, so with
``M = int_0^1 J_t dt``, the Jacobian integrated along the path, one probe gives
``l(0) = -e^T M e`` instead of ``-tr M``: an unbiased estimate of the log-density whose
error is ``-sum_{i != j} e_i e_j M_ij``. In two dimensions that error is
``-e_1 e_2 (M_12 + M_21)``, so an estimate takes one of two values, and the two probes
(1, 1) and (1, -1) together give the exact trace.
"""

from __future__ import annotations

from typing import Callable

from dataclasses import dataclass

import diffrax
import jax
import jax.numpy as jnp

from .gaussian import gaussian_log_prob
from .sample import SolverOptions, _check_velocity, solve

__all__ = [
    "LogProbResult",
    "divergence_exact",
    "divergence_hutchinson",
    "log_prob",
]

Velocity = Callable[[jax.Array, jax.Array], jax.Array]


def divergence_exact(
    velocity: Velocity, x: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(v, div v)`` at x [n, d], shapes [n, d] and [n]: the trace of each point's Jacobian,
    from d forward-mode derivatives (JVPs).

    It assumes that each point's velocity depends only on that point (no coupling across
    the batch, as in the course's networks). Then one JVP of the batched function with
    the tangent e_i on every point gives column i of every point's Jacobian, whose i-th
    entry is the diagonal element J_ii. ``jax.vmap`` runs the d JVPs together and
    computes the velocity itself once.
    """
    f = lambda y: velocity(y, t)  # noqa: E731
    d = x.shape[-1]

    def column(i):
        tangent = jnp.zeros_like(x).at[:, i].set(1.0)
        v, dv = jax.jvp(f, (x,), (tangent,))
        return v, dv[:, i]

    v, diag = jax.vmap(column, out_axes=(None, 0))(jnp.arange(d))  # diag: [d, n]
    return v, jnp.sum(diag, axis=0)


def divergence_hutchinson(
    velocity: Velocity, x: jax.Array, t: jax.Array, probes: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(v, estimate of div v)`` at x [n, d]: the mean of ``e^T J e`` over the probes
    ``probes`` [k, n, d] (probe j of point i is ``probes[j, i]``).

    One JVP per probe; ``jax.vmap`` runs them together and computes the velocity itself
    once, so k probes cost less than k separate JVPs. The same assumption as
    :func:`divergence_exact`: no coupling across the batch.
    """
    f = lambda y: velocity(y, t)  # noqa: E731

    def one(e):
        v, jv = jax.jvp(f, (x,), (e,))
        return v, jnp.sum(e * jv, axis=-1)

    v, estimates = jax.vmap(one, out_axes=(None, 0))(probes)
    return v, jnp.mean(estimates, axis=0)


def _augmented_exact(t, y, velocity):
    """Right-hand side ``(t, (x, l), velocity) -> (v, div v)`` of the augmented ODE
    ``d(x, l)/dt = (v_t(x), div v_t(x))``, with the exact divergence."""
    return divergence_exact(velocity, y[0], t)


def _augmented_hutchinson(t, y, args):
    """The same with Hutchinson's estimate; ``args = (velocity, probes)``: the probes
    [k, n, d] are inputs of the solve, so they stay fixed along the path."""
    velocity, probes = args
    return divergence_hutchinson(velocity, y[0], t, probes)


@dataclass(frozen=True)
class LogProbResult:
    """What :func:`log_prob` returns: ``log_prob`` [n], the log-density of the flow at
    each point; ``noise`` [n, d], where the backward flow took each point at t = 0;
    ``nfe``, the velocity evaluations of the solve; ``steps``, the steps it took,
    rejected ones included."""

    log_prob: jax.Array
    noise: jax.Array
    nfe: int
    steps: int


def log_prob(
    velocity: Velocity,
    x1: jax.Array,
    *,
    method: str = "exact",
    key: jax.Array | None = None,
    num_probes: int = 1,
    **options,
) -> LogProbResult:
    """``log p_1(x1)`` of the flow that carries N(0, I) at t = 0 to p_1 at t = 1.

    ``velocity(x, t)``: a function, or a network (an NNX module) itself.
    ``x1`` [n, d]: the points. ``method="exact"`` uses the Jacobian trace;
    ``method="hutchinson"`` needs ``key``, from which it draws ``num_probes`` Rademacher
    probes per point, held fixed along the path, and averages their estimates. The
    augmented ODE is solved backwards from t = 1 to t = 0 with ``options``, the fields of
    :class:`fm_helpers.sample.SolverOptions` (adaptive Tsit5 with ``rtol = atol = 1e-5``
    unless told otherwise). The steps are shared by the whole batch, so a point's value
    depends, at the level of the solver's error, on the other points solved with it.
    Returns a :class:`LogProbResult`.
    """
    _check_velocity(velocity)
    options = SolverOptions(**options)
    x1 = jnp.asarray(x1)
    if x1.ndim != 2:
        raise ValueError(f"x1 must have shape [n, d]; got {x1.shape}.")
    if method == "exact":
        field, args = _augmented_exact, velocity
    elif method == "hutchinson":
        if key is None:
            raise ValueError(
                "method='hutchinson' needs a PRNG key: "
                "log_prob(..., key=jax.random.PRNGKey(0))."
            )
        if int(num_probes) < 1:
            raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}.")
        probes = jax.random.rademacher(key, (int(num_probes),) + x1.shape, dtype=x1.dtype)
        field, args = _augmented_hutchinson, (velocity, probes)
    else:
        raise ValueError(f"unknown method {method!r}; use 'exact' or 'hutchinson'.")

    y1 = (x1, jnp.zeros(x1.shape[0], dtype=x1.dtype))
    result = solve(field, y1, 1.0, 0.0, options, args=args, saveat=diffrax.SaveAt(t1=True))
    x0, l0 = result.solution.ys[0][-1], result.solution.ys[1][-1]
    log_p0 = gaussian_log_prob(x0, 0.0, 1.0)  # p_0 = N(0, I)
    return LogProbResult(log_p0 + l0, x0, result.nfe, result.steps)
