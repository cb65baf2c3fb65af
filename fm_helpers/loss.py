"""The conditional optimal-transport path and the Flow Matching loss.

Taught in chapter 4 ("The Flow Matching loss").

With x_0 ~ p_0 = N(0, I) (noise), x_1 ~ p_1 (data) and sigma_min = s, the conditional
OT path of Lipman et al. (2023) and its velocity are

.. math::

    x_t = (1 - (1 - s) t)\\, x_0 + t\\, x_1, \\qquad
    u_t(x_t \\mid x_1) = \\frac{d x_t}{dt} = x_1 - (1 - s)\\, x_0 .

The conditional Flow Matching loss regresses the network on that target,

.. math::

    L(\\theta) = E_{t \\sim U[0, 1],\\, x_0,\\, x_1} \\, \\| v_\\theta(x_t, t) - u_t(x_t \\mid x_1) \\|^2 ,

a mean over the batch of the squared Euclidean norm (a sum over the d coordinates; the
original notebook averaged over coordinates too, which halves the value in 2D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from .model import broadcast_time

__all__ = ["PathSample", "cond_ot_path", "sample_path", "conditional_loss", "flow_matching_loss"]

Velocity = Callable[[jax.Array, jax.Array], jax.Array]


@dataclass(frozen=True)
class PathSample:
    """Points on the conditional path: noise ``x_0``, data ``x_1``, the point ``x_t`` at
    time ``t`` and the target velocity ``u_t`` = u_t(x_t | x_1), each [n, d]; ``t`` [n]."""

    x_0: jax.Array
    x_1: jax.Array
    t: jax.Array
    x_t: jax.Array
    u_t: jax.Array


def cond_ot_path(x0: jax.Array, x1: jax.Array, t: jax.Array, sigma_min: float = 0.0) -> PathSample:
    """The conditional OT path through x0 and x1 [n, d] at times t (scalar, [n] or [n, 1])."""
    x0, x1 = jnp.asarray(x0), jnp.asarray(x1)
    if x0.shape != x1.shape or x0.ndim != 2:
        raise ValueError(f"x0 and x1 must both have shape [n, d]; got {x0.shape} and {x1.shape}.")
    t = broadcast_time(t, x0.shape[0]).astype(x0.dtype)
    x_t = (1.0 - (1.0 - sigma_min) * t[:, None]) * x0 + t[:, None] * x1
    u_t = x1 - (1.0 - sigma_min) * x0
    return PathSample(x0, x1, t, x_t, u_t)


def sample_path(key: jax.Array, x1: jax.Array, sigma_min: float = 0.0) -> PathSample:
    """Draw x_0 ~ N(0, I) and t ~ U[0, 1] for each data point of x1 [n, d]."""
    key_x0, key_t = jax.random.split(key)
    x0 = jax.random.normal(key_x0, x1.shape, dtype=x1.dtype)
    t = jax.random.uniform(key_t, (x1.shape[0],), dtype=x1.dtype)
    return cond_ot_path(x0, x1, t, sigma_min)


def conditional_loss(
    velocity: Velocity,
    x0: jax.Array,
    x1: jax.Array,
    t: jax.Array,
    sigma_min: float = 0.0,
) -> jax.Array:
    """The loss of ``velocity(x, t)`` (a network, say) for given noise x0, data x1 and
    times t: deterministic, so used for validation on fixed noise."""
    path = cond_ot_path(x0, x1, t, sigma_min)
    return jnp.mean(jnp.sum((velocity(path.x_t, path.t) - path.u_t) ** 2, axis=-1))


def flow_matching_loss(
    velocity: Velocity, x1: jax.Array, key: jax.Array, sigma_min: float = 0.0
) -> jax.Array:
    """Monte Carlo estimate of the conditional Flow Matching loss of ``velocity`` on the
    batch ``x1``: fresh noise and times are drawn from ``key``."""
    path = sample_path(key, x1, sigma_min)
    return conditional_loss(velocity, path.x_0, path.x_1, path.t, sigma_min)
