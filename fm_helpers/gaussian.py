"""Flows known in closed form: from N(0, I) to N(mu, s^2 I), along straight lines
(:class:`GaussianFlow`) and along the curved paths of independent pairs
(:class:`IndependentGaussianFlow`).

The first is taught in chapter 1 ("Continuous normalizing flows"); chapter 7 and the
tests check the solvers and the log-density ODE against it. Chapter 9 checks the MeanFlow
identity on the second, whose average velocity differs from its velocity.

With a(t) = 1 - t + t s, the flow map, its velocity and its densities are

.. math::

    \\phi_t(x_0) = a(t)\\, x_0 + t \\mu, \\qquad
    v_t(x) = \\mu + (s - 1) \\frac{x - t \\mu}{a(t)},

    \\nabla \\cdot v_t = \\frac{d (s - 1)}{a(t)}, \\qquad
    p_t = N(t \\mu, a(t)^2 I).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

__all__ = ["GaussianFlow", "IndependentGaussianFlow", "gaussian_log_prob"]


def gaussian_log_prob(x: jax.Array, mean, scale) -> jax.Array:
    """``log N(x; mean, scale^2 I)`` [n] for x [n, d]."""
    d = x.shape[-1]
    z = (x - mean) / scale
    return -0.5 * jnp.sum(z**2, axis=-1) - d * jnp.log(scale) - 0.5 * d * jnp.log(2 * jnp.pi)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class GaussianFlow:
    """The flow from N(0, I) at t = 0 to N(``mu``, ``s``^2 I) at t = 1 (see the module
    docstring). A pytree: ``mu`` [d] and ``s`` are inputs of a compiled solve, so the
    instance itself can be passed as the velocity of :func:`fm_helpers.sample.sample`."""

    mu: jax.Array
    s: jax.Array

    def a(self, t):
        """The scale of p_t: a(t) = 1 - t + t s."""
        return 1.0 - t + t * self.s

    def flow_map(self, x0: jax.Array, t) -> jax.Array:
        """phi_t(x0) for x0 [n, d]."""
        return self.a(t) * x0 + t * self.mu

    def __call__(self, x: jax.Array, t) -> jax.Array:
        """The velocity v_t(x) for x [n, d] and a scalar t."""
        return self.mu + (self.s - 1.0) * (x - t * self.mu) / self.a(t)

    def average_velocity(self, x: jax.Array, r, t) -> jax.Array:
        """The average velocity from x at time r to time t [n, d] (r, t scalars or [n]).
        The paths are straight lines run at constant speed, so it is the velocity at the
        start, v_r(x), whatever t is."""
        r = jnp.asarray(r)[..., None]
        return self.mu + (self.s - 1.0) * (x - r * self.mu) / self.a(r)

    def divergence(self, t):
        """div v_t, the same at every x: d (s - 1) / a(t)."""
        return self.mu.shape[-1] * (self.s - 1.0) / self.a(t)

    def log_prob(self, x: jax.Array, t=1.0) -> jax.Array:
        """log p_t(x) [n] for x [n, d]."""
        return gaussian_log_prob(x, t * self.mu, self.a(t))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class IndependentGaussianFlow:
    """The marginal flow of Flow Matching between N(0, I) and N(mu, s^2 I) when
    noise and data are paired independently (chapters 4 and 5 train on such pairs).

    With c(t) = (1 - t)^2 + t^2 s^2, the variance of (1 - t) x0 + t x1 per coordinate,

    .. math::

        v_t(x) = \\mu + \\frac{t s^2 - (1 - t)}{c(t)} (x - t \\mu), \\qquad
        \\phi_{r \\to t}(x) = t \\mu + \\sqrt{c(t) / c(r)}\\, (x - r \\mu).

    Its paths bend (they are straight only when s = 0, all data at one point), so its
    average velocity u(x, r, t) = (phi_{r->t}(x) - x) / (t - r) differs from v_r(x): the
    smallest example on which the MeanFlow identity says something. ``t`` and ``r`` are
    scalars or [n].
    """

    mu: jax.Array
    s: jax.Array

    def c(self, t):
        """The variance c(t) = (1 - t)^2 + t^2 s^2 of p_t per coordinate."""
        return (1.0 - t) ** 2 + t**2 * self.s**2

    def __call__(self, x: jax.Array, t) -> jax.Array:
        """The velocity v_t(x) [n, d]."""
        t = jnp.asarray(t)[..., None]
        return self.mu + (t * self.s**2 - (1.0 - t)) / self.c(t) * (x - t * self.mu)

    def flow_map(self, x: jax.Array, r, t) -> jax.Array:
        """Where the flow started at x at time r is at time t [n, d]."""
        r, t = jnp.asarray(r)[..., None], jnp.asarray(t)[..., None]
        return t * self.mu + jnp.sqrt(self.c(t) / self.c(r)) * (x - r * self.mu)

    def average_velocity(self, x: jax.Array, r, t) -> jax.Array:
        """u(x, r, t) = (phi_{r->t}(x) - x) / (t - r) [n, d], for t != r."""
        gap = jnp.asarray(t) - jnp.asarray(r)
        return (self.flow_map(x, r, t) - x) / gap[..., None]

    def log_prob(self, x: jax.Array, t=1.0) -> jax.Array:
        """log p_t(x) [n]: p_t = N(t mu, c(t) I)."""
        return gaussian_log_prob(x, t * self.mu, jnp.sqrt(self.c(t)))
