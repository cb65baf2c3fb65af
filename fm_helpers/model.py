"""The velocity network v_theta(x, t), as Flax NNX modules.

Taught in chapter 3 ("The velocity network").

The original notebook calls its network a U-Net. It is a fully connected network (an
MLP) whose decoder layers also see the matching encoder layer's output (skip
connections): the "U" shape without any convolution or down-sampling. Here it is called
what it is, :class:`VelocityMLP`. Two bugs of the original are fixed:

1. The last layer had ``features=x.shape[-1]`` applied *after* a concatenation, so it
   returned 128 numbers per point instead of d; here the output width is the input width d.
2. The time embedding was squeezed to ``x.shape[-1]`` (= 2) features before it
   conditioned every layer; here it has ``time_dim`` features (64 by default).

The original drew 256 Fourier frequencies (512 features); 64 are used here. Chapter 3
shows that the extra frequencies add almost no new function of time: the feature bank of
256 spans about as many independent ones (effective rank 12 to 13) as that of 64 (11 to 13).

The hidden activation defaults to SiLU instead of the original's ReLU: a ReLU network is
piecewise linear, so its Jacobian (and the divergence used for log-likelihoods in chapter 7)
jumps across kinks, which makes adaptive ODE solvers take many small steps (chapter 3,
exercise 4, measures it). Pass ``activation=jax.nn.relu`` to get the original behaviour.

The modules are written with Flax NNX: a module holds its parameters, is built with an
``nnx.Rngs`` and is called as ``model(x, t)``. A module is also a pytree (Flax 0.11 and
later) whose leaves are its arrays. So a network is itself a velocity ``(x, t) -> v`` for
:mod:`fm_helpers.sample` and :mod:`fm_helpers.density`: they hand it to Diffrax's compiled
solve as an input, its parameters are read at every call, and another network of the same
structure runs the same compiled program.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "broadcast_time",
    "FourierWeights",
    "GaussianFourierProjection",
    "TimeDense",
    "VelocityMLP",
]


def broadcast_time(t: jax.Array, n: int) -> jax.Array:
    """A time given as a scalar, [n] or [n, 1], as a vector of shape [n]."""
    t = jnp.asarray(t, dtype=jnp.float32)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, n)):
        raise ValueError(f"t must be a scalar, [n] or [n, 1] with n = {n}; got {t.shape}.")
    return jnp.broadcast_to(t, (n,))


class FourierWeights(nnx.Variable):
    """The frequencies of :class:`GaussianFourierProjection`: a variable that is not an
    ``nnx.Param``, so gradients and optimisers (which take ``nnx.Param``) leave it fixed."""


class GaussianFourierProjection(nnx.Module):
    """Random Fourier features of time (Tancik et al., 2020).

    .. math:: \\gamma(t) = [\\sin(2\\pi W t), \\cos(2\\pi W t)], \\quad W_k \\sim N(0, \\text{scale}^2)

    ``W`` is drawn once, from ``rngs``, and never trained (a :class:`FourierWeights`).
    Maps t [n] to [n, 2 * embedding_size].
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0, *, rngs: nnx.Rngs):
        self.W = FourierWeights(scale * jax.random.normal(rngs.params(), (embedding_size,)))

    def __call__(self, t: jax.Array) -> jax.Array:
        angles = 2.0 * jnp.pi * t[:, None] * self.W.value[None, :]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeDense(nnx.Module):
    """A dense layer whose output is shifted by a linear function of the time embedding:
    ``y = W x + b + U e(t)``."""

    def __init__(self, in_features: int, out_features: int, time_dim: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(in_features, out_features, rngs=rngs)
        self.time = nnx.Linear(time_dim, out_features, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, t_emb: jax.Array) -> jax.Array:
        return self.dense(x) + self.time(t_emb)


class VelocityMLP(nnx.Module):
    """The original notebook's skip-connection MLP, fixed: maps x [n, d] and t to v [n, d].

    With ``widths = (w1, w2, w3)`` (64, 128, 256 by default): x -> w1 -> w2 -> w3 on the
    way in; on the way out w3 -> w2, joined (concatenated) with the w2 layer of the way
    in, -> w1, joined with the w1 layer, then a dense layer back to d. Every layer after
    the first is shifted by the time embedding (see :class:`TimeDense`). ``t`` is a
    scalar, [n] or [n, 1].
    """

    def __init__(
        self,
        dim: int = 2,
        *,
        widths: Sequence[int] = (64, 128, 256),
        time_dim: int = 64,
        embedding_size: int = 64,
        fourier_scale: float = 1.0,
        activation: Callable[[jax.Array], jax.Array] = nnx.silu,
        rngs: nnx.Rngs,
    ):
        if len(widths) != 3:
            raise ValueError(f"widths must be three layer widths (w1, w2, w3); got {widths}.")
        w1, w2, w3 = (int(w) for w in widths)
        self.dim = dim
        self.activation = activation
        self.fourier = GaussianFourierProjection(embedding_size, fourier_scale, rngs=rngs)
        self.time_in = nnx.Linear(2 * embedding_size, time_dim, rngs=rngs)
        self.time_out = nnx.Linear(time_dim, time_dim, rngs=rngs)
        self.layer_in = nnx.Linear(dim, w1, rngs=rngs)
        self.down_1 = TimeDense(w1, w2, time_dim, rngs=rngs)
        self.down_2 = TimeDense(w2, w3, time_dim, rngs=rngs)
        self.up_1 = TimeDense(w3, w2, time_dim, rngs=rngs)
        self.up_2 = TimeDense(2 * w2, w1, time_dim, rngs=rngs)
        self.layer_out = nnx.Linear(2 * w1, dim, rngs=rngs)  # bug 1 fixed: d outputs

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        self._check(x)
        return self.body(x, self.embed(self.fourier(broadcast_time(t, x.shape[0]))))

    def embed(self, features: jax.Array) -> jax.Array:
        """Fourier features of time [n, k] to the embedding [n, time_dim] every layer gets."""
        return self.time_out(nnx.silu(self.time_in(features)))

    def _check(self, x: jax.Array) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [n, {self.dim}]; got {x.shape}.")

    def body(self, x: jax.Array, e: jax.Array) -> jax.Array:
        """The layers after the time embedding: x [n, d] and the embedding e [n, time_dim]
        (bug 2 fixed: time_dim features, not d) to the output [n, d]."""
        act = self.activation
        h1 = act(self.layer_in(x))
        h2 = act(self.down_1(h1, e))
        h = act(self.down_2(h2, e))
        h = jnp.concatenate([act(self.up_1(h, e)), h2], axis=-1)
        h = jnp.concatenate([act(self.up_2(h, e)), h1], axis=-1)
        return self.layer_out(h)
