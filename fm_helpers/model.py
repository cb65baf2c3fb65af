"""The velocity network v_theta(x, t).

Taught in chapter 3 ("The velocity network").

The original notebook calls this a U-Net. It is a fully connected network (an MLP) whose
decoder layers also see the matching encoder layer's output (skip connections): the
"U" shape without any convolution or down-sampling. Two bugs of the original are fixed:

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
exercise 4, measures it).
Pass ``activation=nn.relu`` to get the original behaviour.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["GaussianFourierProjection", "TimeDense", "VelocityUNet", "ModelVelocity", "velocity_fn"]


def _as_time_vector(t: jax.Array, n: int) -> jax.Array:
    """Broadcast a scalar, [n] or [n, 1] time to shape [n]."""
    t = jnp.asarray(t, dtype=jnp.float32)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim > 1:
        raise ValueError(f"t must be a scalar, [n] or [n, 1]; got shape {t.shape}.")
    return jnp.broadcast_to(t, (n,))


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of time (Tancik et al., 2020).

    .. math:: \\gamma(t) = [\\sin(2\\pi W t), \\cos(2\\pi W t)], \\quad W_k \\sim N(0, \\text{scale}^2)

    ``W`` is drawn at initialisation and never trained (its gradient is stopped).
    Maps t [n] to [n, 2 * embedding_size].
    """

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        angles = 2.0 * jnp.pi * t[:, None] * jax.lax.stop_gradient(w)[None, :]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class TimeDense(nn.Module):
    """A dense layer whose output is shifted by a linear function of the time embedding:
    ``y = W x + b + U e(t)``."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, t_emb: jax.Array) -> jax.Array:
        return nn.Dense(self.features)(x) + nn.Dense(self.features, use_bias=False)(t_emb)


class VelocityUNet(nn.Module):
    """The original notebook's skip-connection MLP, fixed: maps x [n, d] and t to v [n, d].

    Encoder widths 64 -> 128 -> 256, decoder 128 -> 64, with the decoder's layers
    concatenated to the encoder's layers of the same width, then a dense layer back to d.
    Every layer after the first is shifted by the time embedding (see :class:`TimeDense`).
    """

    widths: Sequence[int] = (64, 128, 256)
    time_dim: int = 64
    embedding_size: int = 64
    fourier_scale: float = 1.0
    activation: Callable[[jax.Array], jax.Array] = nn.silu

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"x must have shape [n, d]; got {x.shape}.")
        act = self.activation
        t_emb = GaussianFourierProjection(self.embedding_size, self.fourier_scale)(
            _as_time_vector(t, x.shape[0])
        )
        t_emb = nn.Dense(self.time_dim)(nn.silu(nn.Dense(self.time_dim)(t_emb)))

        h = act(nn.Dense(self.widths[0])(x))
        skips = [h]
        for width in self.widths[1:]:  # encoder: 128, 256
            h = act(TimeDense(width)(h, t_emb))
            skips.append(h)
        skips.pop()  # the widest layer has no partner
        for skip in reversed(skips):  # decoder: 128 (+ skip), 64 (+ skip)
            h = act(TimeDense(skip.shape[-1])(h, t_emb))
            h = jnp.concatenate([h, skip], axis=-1)
        return nn.Dense(x.shape[-1])(h)  # bug 1 fixed: d outputs, not h.shape[-1]


class ModelVelocity(eqx.Module):
    """A trained network as the function ``velocity(x, t)`` that solvers integrate.

    It is an Equinox module, so ``params`` are leaves of a pytree: Diffrax's jit sees
    them as inputs rather than constants, and a new set of parameters does not recompile.
    """

    apply_fn: Callable[..., jax.Array] = eqx.field(static=True)
    params: Any

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        return self.apply_fn({"params": self.params}, x, _as_time_vector(t, x.shape[0]))


def velocity_fn(state: Any, params: Any = None) -> ModelVelocity:
    """``velocity(x, t)`` from a ``TrainState`` (``velocity_fn(state)``), or from a module
    and its parameters (``velocity_fn(model, params)``)."""
    if params is None:
        return ModelVelocity(state.apply_fn, state.params)
    return ModelVelocity(state.apply, params)
