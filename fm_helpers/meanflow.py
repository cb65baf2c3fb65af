"""MeanFlow: the average velocity, few-step generation, and the exact density of a map.

Taught in chapter 9 ("One step").

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

A sampler with a fixed number of network evaluations is a map x = T(z) of the noise:
:class:`MeanFlowMap` (z + u(z, 0, 1) for one step) and :class:`EulerMap` (a flow's
Euler steps). Its density at x is the change of variables summed over every z with
T(z) = x, which :func:`map_log_prob` finds by Newton's method:

.. math:: q(x) = \\sum_{z:\\, T(z) = x} \\frac{p_0(z)}{|\\det \\partial T / \\partial z|} .
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .model import GaussianFourierProjection, VelocityMLP, broadcast_time

__all__ = [
    "AverageVelocityMLP",
    "Instantaneous",
    "sample_times",
    "meanflow_target",
    "meanflow_loss",
    "generate",
    "MeanFlowMap",
    "EulerMap",
    "MapDensity",
    "jacobian_determinant",
    "map_log_prob",
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

    @classmethod
    def from_velocity(cls, velocity: VelocityMLP) -> "AverageVelocityMLP":
        """A network that starts as the trained velocity network ``velocity``:
        u(z, r, t) = v(z, r) for every t, because the weights that read the gap t - r
        start at zero and every other weight is copied. MeanFlow training then has only
        to learn how the jump differs from the velocity at its start."""
        size = velocity.fourier.W.value.shape[0]
        widths = (velocity.layer_in.out_features, velocity.down_1.dense.out_features,
                  velocity.down_2.dense.out_features)
        new = cls(velocity.dim, embedding_size=size, time_dim=velocity.time_in.out_features,
                  widths=widths, activation=velocity.activation, rngs=nnx.Rngs(0))
        nnx.update(new, nnx.state(velocity))  # every weight of the same name and shape
        kernel = velocity.time_in.kernel.value  # [2 size, time_dim]: features of r
        new.time_in.kernel.value = jnp.concatenate([kernel, jnp.zeros_like(kernel)], axis=0)
        return new

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


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class MeanFlowMap:
    """The MeanFlow sampler as a map z -> x: :func:`generate` with ``steps`` jumps. A
    pytree (``steps`` is static), so :func:`map_log_prob` compiles it once."""

    average: Any
    steps: int = field(default=1, metadata=dict(static=True))

    def __call__(self, z: jax.Array) -> jax.Array:
        return generate(self.average, z, self.steps)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class EulerMap:
    """Euler's method on dz/dt = v(z, t) from t = 0 to 1 in ``steps`` equal steps, as a
    map z -> x: what a few-step sampler of a flow computes. A pytree (``steps`` static)."""

    velocity: Any
    steps: int = field(default=1, metadata=dict(static=True))

    def __call__(self, z: jax.Array) -> jax.Array:
        h = 1.0 / self.steps
        for k in range(self.steps):
            z = z + h * self.velocity(z, jnp.float32(k * h))
        return z


@dataclass(frozen=True)
class MapDensity:
    """What :func:`map_log_prob` returns, for n points. ``log_prob`` [n]: log q(x)
    summed over the roots found (-inf where none was found); ``roots`` [n]: how many
    distinct z with T(z) = x were found; ``folded`` [n]: True where more than one root
    was found, or the roots' Jacobian determinants differ in sign; ``residual`` [n]: the
    largest ``|T(z) - x|`` over the roots kept (NaN where none was kept); ``z`` [n, d]:
    the root that gives q(x) its largest term, its *main root*, and ``main_share`` [n]
    the fraction of q(x) that term makes (NaN where none was kept)."""

    log_prob: np.ndarray
    roots: np.ndarray
    folded: np.ndarray
    residual: np.ndarray
    z: np.ndarray
    main_share: np.ndarray


def _jacobian(T: Callable) -> Callable:
    """z [n, d] -> the Jacobians dT/dz [n, d, d] of a map that acts row by row."""
    return jax.vmap(jax.jacfwd(lambda zz: T(zz[None])[0]))


@jax.jit
def jacobian_determinant(T: Callable, z: jax.Array) -> jax.Array:
    """det dT/dz [n] at the points z [n, d] of a row-by-row map T (a pytree, such as
    :class:`MeanFlowMap`). Where it changes sign, the map folds the plane over."""
    return jnp.linalg.det(_jacobian(T)(z))


@functools.partial(jax.jit, static_argnames="iterations")
def _newton(T: Callable, x: jax.Array, z: jax.Array, iterations: int):
    """Newton's method for T(z) = x, row by row (each a d x d linear solve). Returns the
    end points, their residuals ``|T(z) - x|`` and Jacobian determinants."""

    def value_and_jacobian(zz):  # one row: T(z) and dT/dz from one forward-mode pass
        value = lambda w: (T(w[None])[0],) * 2  # noqa: E731
        jac, out = jax.jacfwd(value, has_aux=True)(zz)
        return out, jac

    def step(z, _):
        out, jac = jax.vmap(value_and_jacobian)(z)
        return z - jnp.linalg.solve(jac, (out - x)[..., None])[..., 0], None

    z = jax.lax.scan(step, z, None, length=iterations)[0]
    out, jac = jax.vmap(value_and_jacobian)(z)
    return z, jnp.linalg.norm(out - x, axis=-1), jnp.linalg.det(jac)


def _solve(T: Callable, x: jax.Array, guesses: jax.Array, iterations: int, rows: int = 2304):
    """:func:`_newton` on the rows (x[i], guesses[i]) in blocks of ``rows`` (the last one
    padded), so that every call has one shape and the solve compiles once per map."""
    n = len(x)
    pad = (-n) % rows
    x = jnp.concatenate([x, jnp.broadcast_to(x[-1:], (pad, x.shape[1]))])
    guesses = jnp.concatenate([guesses, jnp.zeros((pad, x.shape[1]), guesses.dtype)])
    parts = [_newton(T, x[i:i + rows], guesses[i:i + rows], iterations)
             for i in range(0, n + pad, rows)]
    return [np.concatenate([np.asarray(p[k]) for p in parts])[:n] for k in range(3)]


def _collect(ends, residual, det, tol, merge):
    """One point's runs [k, d], residuals [k] and determinants [k] -> (log q, roots,
    folded, worst residual, main root, its share of q) over the runs that converged,
    merged."""
    kept: list[int] = []
    for j in np.flatnonzero(residual <= tol):
        if all(np.linalg.norm(ends[j] - ends[m]) > merge for m in kept):
            kept.append(j)
    if not kept:
        return -np.inf, 0, False, np.nan, np.full(ends.shape[1], np.nan), np.nan
    log_p0 = -0.5 * np.sum(ends[kept] ** 2, axis=1) - 0.5 * ends.shape[1] * np.log(2 * np.pi)
    terms = log_p0 - np.log(np.abs(det[kept]))
    signs = np.sign(det[kept])
    folded = len(kept) > 1 or bool(np.any(signs != signs[0]))
    log_q = np.logaddexp.reduce(terms)
    return (log_q, len(kept), folded, residual[kept].max(), ends[kept[int(np.argmax(terms))]],
            float(np.exp(terms.max() - log_q)))


def map_log_prob(T: Callable, x, *, starts: jax.Array | None = None, iterations: int = 20,
                 tol: float = 2e-6, merge: float = 1e-3, retry: int = 64) -> MapDensity:
    """log q(x) at the points x [n, d] of the samples T(z), z ~ N(0, I), of a map T.

    ``T`` maps z [m, d] to [m, d] row by row; pass a pytree (:class:`MeanFlowMap`,
    :class:`EulerMap`) so that the solve is compiled once per kind of map. Newton's
    method solves T(z) = x from every start: ``2 x - T(x)`` (exact when T is a shift)
    and each row of ``starts`` [k, d] (default: 8 points of N(0, I) from a fixed key,
    the same for every x). A run counts when it ends with ``|T(z) - x| <= tol``; runs
    that end within ``merge`` of each other are one root. Points left without a root
    get a second try from ``retry`` wider starts (drawn from N(0, 9 I)). The density
    sums ``p_0(z) / |det dT/dz|`` over the roots."""
    x = jnp.asarray(x, dtype=jnp.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must have shape [n, d] with n >= 1; got {x.shape}.")
    n, d = x.shape
    if starts is None:
        starts = jax.random.normal(jax.random.PRNGKey(0), (8, d))
    k = len(starts) + 1
    guesses = jnp.concatenate([(2.0 * x - T(x))[:, None],
                               jnp.broadcast_to(starts[None], (n, k - 1, d))], axis=1)
    ends, residual, det = _solve(T, jnp.repeat(x, k, axis=0), guesses.reshape(-1, d),
                                 iterations)  # row i * k + j: point i, start j
    found = [_collect(ends[i * k:(i + 1) * k], residual[i * k:(i + 1) * k],
                      det[i * k:(i + 1) * k], tol, merge) for i in range(n)]
    missing = [i for i in range(n) if found[i][1] == 0]
    if missing and retry > 0:
        wide = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (retry, d))
        ends, residual, det = _solve(T, jnp.repeat(x[jnp.asarray(missing)], retry, axis=0),
                                     jnp.tile(wide, (len(missing), 1)), iterations)
        for m, i in enumerate(missing):
            rows = slice(m * retry, (m + 1) * retry)
            found[i] = _collect(ends[rows], residual[rows], det[rows], tol, merge)
    return MapDensity(*(np.array(a) for a in zip(*found)))

