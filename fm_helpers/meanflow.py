"""MeanFlow: the average velocity, one-step generation, and the one-step map's density.

For chapter 9 ("One step", in preparation), which will teach it.

A flow dz/dt = v(z, t) carries noise at t = 0 to data at t = 1 (the course's direction;
Geng et al. 2025 run time the other way, data at 0 and noise at 1). Its *average
velocity* from time r to time t, started at the point z at time r, is

.. math:: u(z, r, t) = \\frac{1}{t - r} \\int_r^t v(z_s, s)\\, ds, \\qquad z_r = z,

so that one evaluation jumps along the path: z_t = z + (t - r) u(z, r, t). Differentiate
(t - r) u(z_r, r, t) = int_r^t v(z_s, s) ds in r, with z_r moving along the path:

.. math:: u(z, r, t) = v(z, r) + (t - r) \\frac{d}{dr} u(z_r, r, t), \\qquad
          \\frac{d}{dr} = v(z, r) \\cdot \\nabla_z + \\partial_r ,

the MeanFlow identity in this direction (the paper's has a minus sign and d/dt, because
its average is started at the later time). The total derivative is one forward-mode
product: ``jax.jvp`` of u at (z, r, t) with the tangent (v, 1, 0). Training regresses
u_theta on ``stop_gradient(v + (t - r) du_theta/dr)`` with the conditional velocity
v = x_1 - x_0 at z = (1 - r) x_0 + r x_1; where r = t the target is v itself, the
Flow Matching loss.

A network u_theta gives the one-step map T(z) = z + u_theta(z, 0, 1). Its density at x
is the change of variables summed over every z with T(z) = x:

.. math:: q(x) = \\sum_{z:\\, T(z) = x} \\frac{p_0(z)}{|\\det \\partial T / \\partial z|} .
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .gaussian import gaussian_log_prob
from .model import GaussianFourierProjection, VelocityMLP, broadcast_time

__all__ = [
    "AverageVelocityMLP",
    "Instantaneous",
    "sample_times",
    "meanflow_target",
    "meanflow_loss",
    "generate",
    "OneStepDensity",
    "one_step_log_prob",
]

# u(z, r, t) -> [n, d]
AverageVelocity = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


class AverageVelocityMLP(VelocityMLP):
    """:class:`~fm_helpers.model.VelocityMLP` with two times: ``u(z, r, t)``. The time
    embedding joins Fourier features of r and of the gap t - r (the network sees how far
    it must jump), then the same layers as the velocity network."""

    def __init__(self, dim: int = 2, *, embedding_size: int = 64, fourier_scale: float = 1.0,
                 time_dim: int = 64, rngs: nnx.Rngs, **kwargs):
        super().__init__(dim, embedding_size=embedding_size, fourier_scale=fourier_scale,
                         time_dim=time_dim, rngs=rngs, **kwargs)
        self.fourier_gap = GaussianFourierProjection(embedding_size, fourier_scale, rngs=rngs)
        self.time_in = nnx.Linear(4 * embedding_size, time_dim, rngs=rngs)

    def __call__(self, z: jax.Array, r: jax.Array, t: jax.Array) -> jax.Array:
        self._check(z)
        n = z.shape[0]
        r, t = broadcast_time(r, n), broadcast_time(t, n)
        features = jnp.concatenate([self.fourier(r), self.fourier_gap(t - r)], axis=-1)
        return self.body(z, self.embed(features))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Instantaneous:
    """The velocity v(x, t) = u(x, t, t) of an average-velocity network, as a pytree, for
    the multi-step solvers of :mod:`fm_helpers.sample` and :mod:`fm_helpers.density`."""

    average: Any

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        return self.average(x, t, t)


def sample_times(key: jax.Array, n: int, equal_fraction: float = 0.75) -> tuple[jax.Array, jax.Array]:
    """n pairs (r, t) with 0 <= r <= t <= 1: two uniform times, sorted; a share
    ``equal_fraction`` of the pairs then gets t = r (there the loss is Flow Matching)."""
    key_a, key_b, key_eq = jax.random.split(key, 3)
    a, b = jax.random.uniform(key_a, (n,)), jax.random.uniform(key_b, (n,))
    r, t = jnp.minimum(a, b), jnp.maximum(a, b)
    t = jnp.where(jax.random.uniform(key_eq, (n,)) < equal_fraction, r, t)
    return r, t


def meanflow_target(u: AverageVelocity, z, r, t, v) -> tuple[jax.Array, jax.Array]:
    """``(u(z, r, t), v + (t - r) du/dr)``: the network's output and the MeanFlow target,
    with du/dr the total derivative along the velocity v [n, d] (one ``jax.jvp``, tangent
    (v, 1, 0)). The target is not stopped here; :func:`meanflow_loss` stops it."""
    ones, zeros = jnp.ones_like(r), jnp.zeros_like(t)
    out, du_dr = jax.jvp(u, (z, r, t), (v, ones, zeros))
    return out, v + (t - r)[:, None] * du_dr


def meanflow_loss(model: AverageVelocity, x1: jax.Array, key: jax.Array,
                  equal_fraction: float = 0.75, power: float = 0.0,
                  eps: float = 1e-3) -> jax.Array:
    """The MeanFlow loss of ``model`` u(z, r, t) on the data batch x1 [n, d]: noise x0,
    times from :func:`sample_times`, z = (1 - r) x0 + r x1, v = x1 - x0, and the mean
    over the batch of e = ||u - stop_gradient(v + (t - r) du/dr)||^2. With ``power`` p
    > 0 each e is weighted by stop_gradient(1 / (e + eps)^p), Geng et al.'s adaptive
    weighting (p = 1 turns the squared error into about a plain error)."""
    key_x0, key_times = jax.random.split(key)
    x0 = jax.random.normal(key_x0, x1.shape, dtype=x1.dtype)
    r, t = sample_times(key_times, x1.shape[0], equal_fraction)
    z = (1.0 - r)[:, None] * x0 + r[:, None] * x1
    out, target = meanflow_target(model, z, r, t, x1 - x0)
    err = jnp.sum((out - jax.lax.stop_gradient(target)) ** 2, axis=-1)
    weight = jax.lax.stop_gradient(1.0 / (err + eps) ** power)
    return jnp.mean(weight * err)


def generate(model: AverageVelocity, z: jax.Array, steps: int = 1) -> jax.Array:
    """From noise z [n, d] at t = 0 to samples at t = 1 in ``steps`` equal jumps
    z <- z + (t - r) u(z, r, t): ``steps`` evaluations of the network."""
    if int(steps) < 1:
        raise ValueError(f"steps must be a positive integer; got {steps!r}.")
    times = np.linspace(0.0, 1.0, int(steps) + 1)
    for r, t in zip(times[:-1], times[1:]):
        z = z + (t - r) * model(z, jnp.float32(r), jnp.float32(t))
    return z


@dataclass(frozen=True)
class OneStepDensity:
    """What :func:`one_step_log_prob` returns, for n points. ``log_prob`` [n]: log q(x)
    summed over the roots found (-inf where none was found); ``roots`` [n]: how many
    distinct z with T(z) = x were found; ``folded`` [n]: True where some root has a
    Jacobian determinant of the other sign than the rest, or more than one root was
    found; ``residual`` [n]: the largest ``|T(z) - x|`` over the roots kept."""

    log_prob: np.ndarray
    roots: np.ndarray
    folded: np.ndarray
    residual: np.ndarray


def _jacobian(T: Callable) -> Callable:
    """z [n, d] -> the Jacobians dT/dz [n, d, d] of a map that acts row by row."""
    return jax.vmap(jax.jacfwd(lambda zz: T(zz[None])[0]))


def _newton(T: Callable, x: jax.Array, z: jax.Array, iterations: int) -> jax.Array:
    """Newton's method for T(z) = x, point by point (each a d x d linear solve)."""
    jac = _jacobian(T)

    def step(z, _):
        residual = T(z) - x
        return z - jnp.linalg.solve(jac(z), residual[..., None])[..., 0], None

    return jax.lax.scan(step, z, None, length=iterations)[0]


def one_step_log_prob(model: AverageVelocity, x, *, starts: jax.Array | None = None,
                      iterations: int = 30, tol: float = 1e-5, merge: float = 1e-3) -> OneStepDensity:
    """log q(x) of the one-step map T(z) = z + u(z, 0, 1) at the points x [n, d].

    Newton's method solves T(z) = x from every start: ``x - u(x, 0, 1)`` and each row of
    ``starts`` [k, d] (default: 16 points of N(0, I) from a fixed key, the same for
    every x). A run counts when it ends with ``|T(z) - x| <= tol``; runs that end within
    ``merge`` of each other are one root. The density sums ``p_0(z) / |det dT/dz|`` over the
    roots."""
    x = jnp.asarray(x, dtype=jnp.float32)
    n, d = x.shape
    if starts is None:
        starts = jax.random.normal(jax.random.PRNGKey(0), (16, d))
    T = lambda z: z + model(z, jnp.zeros(z.shape[0]), jnp.ones(z.shape[0]))  # noqa: E731
    guesses = jnp.concatenate([(2.0 * x - T(x))[None], jnp.broadcast_to(starts[:, None], (len(starts), n, d))])
    solve = jax.jit(lambda z0: _newton(T, x, z0, iterations))
    ends = np.stack([np.asarray(solve(g)) for g in guesses], axis=1)  # [n, k, d]
    flat = jnp.asarray(ends.reshape(-1, d))
    residual = np.linalg.norm(np.asarray(T(flat)) - np.repeat(np.asarray(x), ends.shape[1], axis=0), axis=1)
    det = np.asarray(jnp.linalg.det(_jacobian(T)(flat)))
    log_p0 = np.asarray(gaussian_log_prob(flat, 0.0, 1.0))
    residual, det, log_p0 = (a.reshape(n, -1) for a in (residual, det, log_p0))
    log_prob, roots, folded, worst = (np.full(n, -np.inf), np.zeros(n, int), np.zeros(n, bool),
                                      np.full(n, np.nan))
    for i in range(n):
        kept: list[int] = []
        for j in np.flatnonzero(residual[i] <= tol):
            if all(np.linalg.norm(ends[i, j] - ends[i, k]) > merge for k in kept):
                kept.append(j)
        if kept:
            terms = log_p0[i, kept] - np.log(np.abs(det[i, kept]))
            log_prob[i] = np.logaddexp.reduce(terms)
            roots[i] = len(kept)
            signs = np.sign(det[i, kept])
            folded[i] = len(kept) > 1 or bool(np.any(signs != signs[0]))
            worst[i] = residual[i, kept].max()
    return OneStepDensity(log_prob, roots, folded, worst)
