"""A convolutional U-Net velocity field for small images, class-conditional.

Taught in chapter 11 ("Images").

The original notebook called a fully connected network a U-Net (chapter 3). This is
one: convolutions on the image grid, a *down* path that halves the resolution twice
(8 x 8 -> 4 x 4 -> 2 x 2 for the course's digits), an *up* path back, and *skip
connections* that join each level of the up path to the same level of the down path by
concatenating channels. Every block is a residual block,

.. math:: h \\mapsto h + \\mathrm{Conv}(\\mathrm{SiLU}(\\mathrm{GN}(
          (1 + s(e))\\, \\mathrm{Conv}(\\mathrm{SiLU}(\\mathrm{GN}(h))) + b(e))) ,

whose middle is scaled and shifted by (s, b), two linear functions of the embedding e of
time and class: every block hears the time and the class. GN is GroupNorm. The class
enters as in :class:`fm_helpers.guidance.ConditionalVelocityMLP`, through a learned
embedding with one extra row for the null class, so label dropout and
:class:`fm_helpers.guidance.GuidedVelocity` work unchanged.

The network takes flat images, x [n, side * side], and returns velocities of the same
shape, so :mod:`fm_helpers.sample`, :mod:`fm_helpers.density` and
:func:`fm_helpers.train.fit` use it as they use the 2D networks.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .model import GaussianFourierProjection, broadcast_time

__all__ = ["lecun_normal", "ResidualBlock", "ConditionalUNet"]

_TRUNCATED_STD = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]


@partial(jax.jit, static_argnums=(1, 2))
def _scaled_slice(draws: jax.Array, shape: tuple[int, ...], std: float) -> jax.Array:
    return draws[: math.prod(shape)].reshape(shape) * std


def lecun_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
    """Flax's default kernel initialiser (LeCun: a normal truncated to two standard
    deviations, scaled to variance 1 / fan_in, fan_in = the product of all axes but the
    last), drawn in a way that is quick to compile, with the same numbers.

    On the CPU, XLA compiles the random number generator again for every new shape it
    draws, about a second each: Flax's own initialiser spends some 12 s building this
    network. Here every kernel is the start of one draw of a fixed length (the next
    power of two, at least 2 ** 15), so the generator compiles once per length; the
    slice and the scaling are cheap to compile. JAX's default Threefry is
    *partitionable* (each number depends only on the key and its index), so a longer
    draw begins with the shorter one: the kernels are exactly Flax's."""
    shape = tuple(int(s) for s in shape)
    size = math.prod(shape)
    length = max(1 << 15, 1 << (size - 1).bit_length())
    draws = jax.random.truncated_normal(key, -2.0, 2.0, (length,), dtype)
    # The scale in float32, as Flax computes it, so that the last bit agrees too.
    fan_in = np.float32(math.prod(shape[:-1]))
    std = float(np.sqrt(np.float32(1.0) / fan_in) / np.float32(_TRUNCATED_STD))
    return _scaled_slice(draws, shape, std)


class ResidualBlock(nnx.Module):
    """GroupNorm, SiLU, 3x3 conv; scale and shift by the embedding; GroupNorm, SiLU, 3x3
    conv; plus the input (through a 1x1 conv when the channel count changes)."""

    def __init__(self, in_channels: int, out_channels: int, embed_dim: int, groups: int,
                 *, rngs: nnx.Rngs):
        init = {"kernel_init": lecun_normal, "rngs": rngs}
        self.norm_1 = nnx.GroupNorm(in_channels, num_groups=groups, rngs=rngs)
        self.conv_1 = nnx.Conv(in_channels, out_channels, (3, 3), **init)
        self.film = nnx.Linear(embed_dim, 2 * out_channels, **init)
        self.norm_2 = nnx.GroupNorm(out_channels, num_groups=groups, rngs=rngs)
        self.conv_2 = nnx.Conv(out_channels, out_channels, (3, 3), **init)
        self.skip = (nnx.Conv(in_channels, out_channels, (1, 1), **init)
                     if in_channels != out_channels else None)

    def __call__(self, h: jax.Array, e: jax.Array) -> jax.Array:
        """h [n, H, W, in_channels], e [n, embed_dim] -> [n, H, W, out_channels]."""
        y = self.conv_1(nnx.silu(self.norm_1(h)))
        scale, shift = jnp.split(self.film(e)[:, None, None, :], 2, axis=-1)
        y = y * (1 + scale) + shift
        y = self.conv_2(nnx.silu(self.norm_2(y)))
        return y + (h if self.skip is None else self.skip(h))


def _down(h: jax.Array) -> jax.Array:
    """Halve the resolution by averaging 2x2 patches."""
    n, height, width, ch = h.shape
    return h.reshape(n, height // 2, 2, width // 2, 2, ch).mean(axis=(2, 4))


def _up(h: jax.Array) -> jax.Array:
    """Double the resolution by repeating each pixel 2x2 (nearest neighbour)."""
    return jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)


class ConditionalUNet(nnx.Module):
    """v(x, t, c) for flat images x [n, side * side] (one channel), t a scalar or [n],
    and classes c in [0, num_classes], where ``num_classes`` is the null class.

    ``channels = (c1, c2, c3)`` are the widths at side, side/2 and side/4. The default,
    (16, 32, 32), is sized for a CPU: about 108,000 parameters, and a training step of
    batch 128 in about 54 ms on the course's 2-core machine (against about 150 ms for
    (32, 64, 64)). ``side`` must be divisible by 4."""

    def __init__(self, side: int = 8, *, num_classes: int = 10,
                 channels: Sequence[int] = (16, 32, 32), embed_dim: int = 64,
                 groups: int = 8, rngs: nnx.Rngs):
        if side % 4:
            raise ValueError(f"side must be divisible by 4 (two halvings); got {side}.")
        c1, c2, c3 = (int(c) for c in channels)
        self.side, self.num_classes = int(side), int(num_classes)
        init = {"kernel_init": lecun_normal, "rngs": rngs}
        self.fourier = GaussianFourierProjection(embed_dim // 2, 1.0, rngs=rngs)
        self.class_embed = nnx.Embed(self.num_classes + 1, embed_dim, rngs=rngs)
        self.embed_1 = nnx.Linear(2 * embed_dim, embed_dim, **init)
        self.embed_2 = nnx.Linear(embed_dim, embed_dim, **init)
        self.conv_in = nnx.Conv(1, c1, (3, 3), **init)
        self.down_1 = ResidualBlock(c1, c1, embed_dim, groups, rngs=rngs)
        self.down_2 = ResidualBlock(c1, c2, embed_dim, groups, rngs=rngs)
        self.middle = ResidualBlock(c2, c3, embed_dim, groups, rngs=rngs)
        self.up_2 = ResidualBlock(c3 + c2, c2, embed_dim, groups, rngs=rngs)
        self.up_1 = ResidualBlock(c2 + c1, c1, embed_dim, groups, rngs=rngs)
        self.norm_out = nnx.GroupNorm(c1, num_groups=groups, rngs=rngs)
        self.conv_out = nnx.Conv(c1, 1, (3, 3), **init)

    @property
    def null(self) -> int:
        """The null class's label, ``num_classes`` (it stands for "no class")."""
        return self.num_classes

    @property
    def dim(self) -> int:
        return self.side * self.side

    def embed(self, t: jax.Array, c: jax.Array) -> jax.Array:
        """The embedding e [n, embed_dim] of time and class that every block hears."""
        joined = jnp.concatenate([self.fourier(t), self.class_embed(c)], axis=-1)
        return self.embed_2(nnx.silu(self.embed_1(joined)))

    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be flat images [n, {self.dim}]; got {x.shape}.")
        n = x.shape[0]
        c = jnp.broadcast_to(jnp.asarray(c, dtype=jnp.int32), (n,))
        e = self.embed(broadcast_time(t, n), c)
        h = self.conv_in(x.reshape(n, self.side, self.side, 1))
        skip_1 = self.down_1(h, e)  # side x side, c1
        skip_2 = self.down_2(_down(skip_1), e)  # side/2, c2
        h = self.middle(_down(skip_2), e)  # side/4, c3
        h = self.up_2(jnp.concatenate([_up(h), skip_2], axis=-1), e)  # side/2, c2
        h = self.up_1(jnp.concatenate([_up(h), skip_1], axis=-1), e)  # side, c1
        return self.conv_out(nnx.silu(self.norm_out(h))).reshape(n, self.dim)
