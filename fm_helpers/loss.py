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
from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["PathSample", "cond_ot_path", "sample_path", "conditional_loss", "flow_matching_loss"]


@dataclass(frozen=True)
class PathSample:
    """One draw from the conditional path; every field has shape (batch_size, d) except t."""

    x_0: jax.Array  # noise
    x_1: jax.Array  # data
    t: jax.Array  # times, shape (batch_size,)
    x_t: jax.Array  # point on the path at time t
    dx_t: jax.Array  # target velocity u_t(x_t | x_1)


def _time_column(t: jax.Array, n: int) -> jax.Array:
    t = jnp.asarray(t)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim > 1:
        raise ValueError(f"t must be a scalar, [n] or [n, 1]; got shape {t.shape}.")
    return jnp.broadcast_to(t, (n,))[:, None]


def cond_ot_path(
    x0: jax.Array, x1: jax.Array, t: jax.Array, sigma_min: float = 0.0
) -> tuple[jax.Array, jax.Array]:
    """``(x_t, u_t)`` on the conditional OT path; x0, x1 [n, d], t scalar, [n] or [n, 1]."""
    if x0.shape != x1.shape or x0.ndim != 2:
        raise ValueError(f"x0 and x1 must both have shape [n, d]; got {x0.shape} and {x1.shape}.")
    t = _time_column(t, x0.shape[0])
    x_t = (1.0 - (1.0 - sigma_min) * t) * x0 + t * x1
    u_t = x1 - (1.0 - sigma_min) * x0
    return x_t, u_t


def sample_path(key: jax.Array, x1: jax.Array, sigma_min: float = 0.0) -> PathSample:
    """Draw x_0 ~ N(0, I) and t ~ U[0, 1] for each data point and return the path sample."""
    key_x0, key_t = jax.random.split(key)
    x0 = jax.random.normal(key_x0, x1.shape, dtype=x1.dtype)
    t = jax.random.uniform(key_t, (x1.shape[0],), dtype=x1.dtype)
    x_t, dx_t = cond_ot_path(x0, x1, t, sigma_min)
    return PathSample(x0, x1, t, x_t, dx_t)


def conditional_loss(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    x0: jax.Array,
    x1: jax.Array,
    t: jax.Array,
    sigma_min: float = 0.0,
) -> jax.Array:
    """The loss for given noise x0, data x1 and times t (deterministic: used for
    validation on fixed noise). ``apply_fn({'params': params}, x, t)`` is the network."""
    x_t, u_t = cond_ot_path(x0, x1, t, sigma_min)
    v_t = apply_fn({"params": params}, x_t, _time_column(t, x0.shape[0])[:, 0])
    return jnp.mean(jnp.sum((v_t - u_t) ** 2, axis=-1))


def flow_matching_loss(
    apply_fn: Callable[..., jax.Array],
    params: Any,
    x1: jax.Array,
    key: jax.Array,
    sigma_min: float = 0.0,
) -> jax.Array:
    """Monte Carlo estimate of the conditional Flow Matching loss on the batch ``x1``:
    fresh noise and times are drawn from ``key``."""
    path = sample_path(key, x1, sigma_min)
    return conditional_loss(apply_fn, params, path.x_0, path.x_1, path.t, sigma_min)
