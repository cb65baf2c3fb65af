"""Conditional generation and classifier-free guidance, on labelled data of known density.

Taught in chapter 10 ("Guidance").

Data come in K classes: class c has weight pi_c and an exact density p(x | c) (a picture,
as in chapter 2), and the unlabelled data follow their mixture p(x) = sum_c pi_c p(x | c).
A conditional velocity network v(x, t, c) is trained with the Flow Matching loss on
pairs (x_1, c), with each label replaced by a *null class* with probability
``drop_prob`` (label dropout), so that one network learns both the conditional field
v(x, t, c) and the unconditional one v(x, t, null). Classifier-free guidance (Ho and
Salimans, 2022) samples with

.. math:: \\tilde v_w(x, t, c) = v(x, t, \\varnothing) + w \\, (v(x, t, c) - v(x, t, \\varnothing)),

which is the unconditional field at w = 0 and the conditional one at w = 1. At t = 1
the scores combine as those of the *tilted density*

.. math:: \\pi_w(x \\mid c) \\propto p(x \\mid c)^w \\, p(x)^{1 - w},

and guidance is often said to sample it. It does not, in general: at every t < 1 the
guided field mixes the fields of the noisy marginals p_t(x | c) and p_t(x), and the
noisy tilted densities are not those of one path ending at pi_w. Chapter 10 measures
the difference, with pi_w computed exactly on the pixel grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.special import logsumexp

from .couplings import _assignment, squared_distances
from .data import ImageDensity, _generator, load_image
from .loss import conditional_loss
from .metrics import off_support
from .model import VelocityMLP, broadcast_time

__all__ = [
    "SHAPES",
    "SHAPE_WEIGHTS",
    "LabelledMixture",
    "ConditionalVelocityMLP",
    "drop_labels",
    "LabelDropoutLoss",
    "ConditionalVelocity",
    "GuidedVelocity",
    "precision",
    "coverage",
    "APART",
    "ot_within_classes",
]

# The three pictures of scripts/make_three_shapes.py, and the weights of their classes.
SHAPES = ("disc", "square", "triangle")
SHAPE_WEIGHTS = (0.5, 0.3, 0.2)
# The extra cost of pairing across classes in ot_within_classes: far above any
# squared distance between noise and data, so no such pair is ever chosen.
APART = 1e6


class LabelledMixture:
    """K classes on the same pixel grid: class c has weight ``weights[c]`` and the exact
    density ``classes[c]`` (an :class:`~fm_helpers.data.ImageDensity`); the unlabelled
    density is their mixture. Points are [n, 2]; labels are integers in [0, K)."""

    def __init__(self, classes: Sequence[ImageDensity], weights: Sequence[float]):
        weights = np.asarray(weights, dtype=np.float64)
        if len(classes) < 2 or weights.shape != (len(classes),):
            raise ValueError(f"need two or more classes and one weight each; got "
                             f"{len(classes)} classes and weights of shape {weights.shape}.")
        if np.any(weights <= 0) or abs(weights.sum() - 1.0) > 1e-9:
            raise ValueError(f"weights must be positive and sum to 1; got {weights}.")
        if len({c.probs.shape for c in classes}) != 1:
            raise ValueError("every class must be a picture of the same size.")
        self.classes = list(classes)
        self.weights = weights

    @classmethod
    def three_shapes(cls) -> "LabelledMixture":
        """Chapter 10's data: a disc, a square and a triangle that overlap in part, with
        weights 0.5, 0.3 and 0.2 (the pictures ship inside the package)."""
        folder = resources.files("fm_helpers") / "assets"
        classes = [ImageDensity(load_image(folder / f"shape_{name}.png")) for name in SHAPES]
        return cls(classes, SHAPE_WEIGHTS)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @functools.cached_property
    def _mixture(self) -> ImageDensity:
        return ImageDensity.from_probs(sum(w * c.probs for w, c in zip(self.weights, self.classes)))

    def mixture(self) -> ImageDensity:
        """The unlabelled density p(x) = sum_c pi_c p(x | c), as one picture (built once,
        on the first call: every tilted density needs it)."""
        return self._mixture

    def sample(self, key: jax.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(x [n, 2] float32, c [n] int32)``: each label drawn with probability pi_c,
        then a point from its class. The same key gives the same draw."""
        rng = _generator(key)
        labels = rng.choice(self.num_classes, size=int(n), p=self.weights).astype(np.int32)
        x = np.zeros((int(n), 2), dtype=np.float32)
        for c, density in enumerate(self.classes):
            rows = np.flatnonzero(labels == c)
            if rows.size:
                x[rows] = np.asarray(density.sample(jax.random.fold_in(key, c), rows.size))
        return x, labels

    def class_log_probs(self, x) -> np.ndarray:
        """log p(x | c) for every class, float64 [n, K] (``-inf`` off a class)."""
        return np.stack([c.log_prob(np.asarray(x)) for c in self.classes], axis=1)

    def log_prob(self, x, labels=None) -> np.ndarray:
        """Exact log p(x | c_i) [n] for the labels ``labels`` [n], or, without labels,
        the mixture's log p(x) [n]."""
        per_class = self.class_log_probs(x)
        if labels is None:
            with np.errstate(divide="ignore"):
                return logsumexp(per_class + np.log(self.weights), axis=1)
        labels = np.broadcast_to(np.asarray(labels), (per_class.shape[0],))
        return per_class[np.arange(per_class.shape[0]), labels]

    def posterior(self, x) -> np.ndarray:
        """p(c | x) [n, K], by Bayes' rule (rows of points off every class are NaN)."""
        joint = self.class_log_probs(x) + np.log(self.weights)
        with np.errstate(invalid="ignore"):
            return np.exp(joint - logsumexp(joint, axis=1, keepdims=True))

    def entropies(self) -> np.ndarray:
        """The conditional entropies H(x | c) in nats, [K]."""
        return np.array([c.entropy() for c in self.classes])

    def tilted(self, c: int, w: float) -> ImageDensity:
        """pi_w(x | c), proportional to p(x | c)^w p(x)^(1 - w), normalised on the grid.

        The densities are constant on each pixel, so the normaliser is an exact sum over
        the pixels. It is computed in logs, so that tiny masses stay exact. For w > 0 it
        lives where p(x | c) > 0 (p(x) is positive there too); at w = 0 it is p(x)."""
        if w < 0:
            raise ValueError(f"w must be >= 0 (p(x | c)^w is infinite off class c); got {w}.")
        if w == 0:
            return self.mixture()
        log_c = self.classes[c].log_density_image
        log_p = self.mixture().log_density_image
        support = np.isfinite(log_c)
        log_t = np.where(support, w * np.where(support, log_c, 0.0)
                         + (1 - w) * np.where(support, log_p, 0.0), -np.inf)
        return ImageDensity.from_probs(np.exp(log_t - log_t[support].max()))


class ConditionalVelocityMLP(VelocityMLP):
    """:class:`~fm_helpers.model.VelocityMLP` with a class: ``v(x, t, c)``.

    The class enters where time does. A learned embedding of c (``class_dim``
    numbers, from ``nnx.Embed``) is joined to the Fourier features of t, and the joined
    vector goes through the time embedding's layers to every layer of the network. The
    embedding has ``num_classes + 1`` rows: the last, ``null``, is the null class of
    label dropout, which the network reads as "no class": v(x, t, null) is the
    unconditional field."""

    def __init__(self, dim: int = 2, *, num_classes: int, class_dim: int = 16,
                 embedding_size: int = 64, time_dim: int = 64, rngs: nnx.Rngs, **kwargs):
        super().__init__(dim, embedding_size=embedding_size, time_dim=time_dim, rngs=rngs,
                         **kwargs)
        self.num_classes = int(num_classes)
        self.class_embed = nnx.Embed(self.num_classes + 1, class_dim, rngs=rngs)
        self.time_in = nnx.Linear(2 * embedding_size + class_dim, time_dim, rngs=rngs)

    @property
    def null(self) -> int:
        """The null class's label, ``num_classes`` (it stands for "no class")."""
        return self.num_classes

    def __call__(self, x: jax.Array, t: jax.Array, c: jax.Array) -> jax.Array:
        self._check(x)
        n = x.shape[0]
        c = jnp.broadcast_to(jnp.asarray(c, dtype=jnp.int32), (n,))
        features = jnp.concatenate([self.fourier(broadcast_time(t, n)), self.class_embed(c)],
                                   axis=-1)
        return self.body(x, self.embed(features))


def drop_labels(key: jax.Array, labels: jax.Array, drop_prob: float, null: int) -> jax.Array:
    """``labels`` [n] with each one replaced by ``null`` with probability ``drop_prob``."""
    dropped = jax.random.uniform(key, labels.shape) < drop_prob
    return jnp.where(dropped, null, labels)


@dataclass(frozen=True)
class LabelDropoutLoss:
    """The conditional Flow Matching loss with label dropout, as
    ``loss(model, (x1, labels), key)`` for :func:`fm_helpers.train.fit`'s ``loss``:
    noise x_0, times t and dropped labels drawn from ``key``, and the mean of
    ||v(x_t, t, c) - (x_1 - x_0)||^2 with x_t = (1 - t) x_0 + t x_1. With
    ``ot_within_classes`` noise and data are first paired by
    :func:`ot_within_classes`. A frozen dataclass, so equal settings are equal
    objects and reuse compiled training chunks."""

    drop_prob: float = 0.2
    ot_within_classes: bool = False

    def __call__(self, model: ConditionalVelocityMLP, batch, key: jax.Array) -> jax.Array:
        x1, labels = batch
        key_x0, key_t, key_drop = jax.random.split(key, 3)
        x0 = jax.random.normal(key_x0, x1.shape, dtype=x1.dtype)
        if self.ot_within_classes:  # labels[perm] == labels: pairs stay in their class
            x1 = x1[ot_within_classes(x0, x1, labels)]
        t = jax.random.uniform(key_t, (x1.shape[0],), dtype=x1.dtype)
        c = drop_labels(key_drop, labels, self.drop_prob, model.null)
        return conditional_loss(lambda x, s: model(x, s, c), x0, x1, t)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class ConditionalVelocity:
    """The field v(x, t, c) of one class (or of the null class: the unconditional field)
    as a velocity ``(x, t) -> [n, d]``: what :class:`GuidedVelocity` is at w = 1 (or
    w = 0), in one call of the network on n rows instead of 2n. ``labels`` is a scalar
    or [n], a pytree leaf like :class:`GuidedVelocity`'s."""

    model: Any
    labels: jax.Array

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        c = jnp.broadcast_to(jnp.asarray(self.labels, dtype=jnp.int32), (x.shape[0],))
        return self.model(x, t, c)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class GuidedVelocity:
    """The guided field v(x, t, null) + w (v(x, t, c) - v(x, t, null)) as a velocity
    ``(x, t) -> [n, d]`` for :mod:`fm_helpers.sample` and :mod:`fm_helpers.density`.

    ``labels`` and ``w`` are scalars or [n] (one class and one weight per point), and
    they are pytree leaves: a compiled solve runs every class and every w without
    compiling again. The two fields come from one call of the network on 2n rows."""

    model: Any
    labels: jax.Array
    w: jax.Array

    def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
        n = x.shape[0]
        c = jnp.broadcast_to(jnp.asarray(self.labels, dtype=jnp.int32), (n,))
        both = self.model(jnp.concatenate([x, x]), t,
                          jnp.concatenate([c, jnp.full((n,), self.model.null)]))
        v_c, v_null = both[:n], both[n:]
        w = jnp.broadcast_to(jnp.asarray(self.w, dtype=x.dtype), (n,))[:, None]
        return v_null + w * (v_c - v_null)


def precision(density: ImageDensity, x) -> float:
    """The share of the points ``x`` [n, 2] where ``density`` is positive: inside its
    support."""
    return 1.0 - float(np.mean(off_support(density, x)))


def coverage(density: ImageDensity, x, block: int = 4) -> float:
    """The share of ``density``'s mass that lies in blocks of ``block`` x ``block``
    pixels holding at least one of the points ``x`` [n, 2]: the part of the class that
    the points reach. Blocks, not pixels, so that a few hundred exact samples reach
    nearly all of it; it still grows with n, so compare it with exact samples of the
    same number."""
    rows, cols, inside = density.cell_index(np.asarray(x))
    height, width = density.probs.shape
    if height % block or width % block:
        raise ValueError(f"block {block} must divide the picture's size {height} x {width}.")
    hit = np.zeros((height // block, width // block), dtype=bool)
    hit[rows[inside] // block, cols[inside] // block] = True
    mass = density.probs.reshape(height // block, block, width // block, block).sum(axis=(1, 3))
    return float(mass[hit].sum())


def ot_within_classes(x0: jax.Array, x1: jax.Array, labels: jax.Array) -> jax.Array:
    """Chapter 8's minibatch OT kept within each class: the permutation ``perm`` [n] that
    pairs noise point i with data point ``perm[i]``.

    Noise point i keeps the class of the data point it was drawn with, ``labels[i]``;
    ``perm`` minimises the total squared distance among the permutations that move data
    points only within their class (pairs across classes cost ``APART`` more). So
    each class's noise is still an independent draw from N(0, I), whereas OT over the
    whole batch hands each class the noise nearest to it. Solved on the host by SciPy,
    through ``jax.pure_callback``, so it runs inside a compiled training step."""
    cost = squared_distances(x0, x1) + APART * (labels[:, None] != labels[None, :])
    shape = jax.ShapeDtypeStruct((x0.shape[0],), jnp.int32)
    return jax.pure_callback(_assignment, shape, cost, vmap_method="sequential")
