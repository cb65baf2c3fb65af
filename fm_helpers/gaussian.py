"""The one flow known in closed form: from N(0, I) to N(mu, s^2 I) along straight lines.

Taught in chapter 1 ("Continuous normalizing flows"); chapter 7 and the tests check the
solvers and the log-density ODE against it.

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

__all__ = ["GaussianFlow", "gaussian_log_prob"]


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

    def divergence(self, t):
        """div v_t, the same at every x: d (s - 1) / a(t)."""
        return self.mu.shape[-1] * (self.s - 1.0) / self.a(t)

    def log_prob(self, x: jax.Array, t=1.0) -> jax.Array:
        """log p_t(x) [n] for x [n, d]."""
        return gaussian_log_prob(x, t * self.mu, self.a(t))
