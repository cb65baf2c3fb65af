"""Images: scikit-learn's 8 x 8 handwritten digits, dequantised, and bits per dimension.

Taught in chapter 11 ("Images").

An image is D = side * side pixels with ``levels`` grey levels v in {0, ..., levels - 1}
(scikit-learn's digits: 64 pixels, 17 levels). Dequantisation adds uniform noise inside
each level and rescales to [-1, 1]:

.. math:: x = 2\\, \\frac{v + u}{L} - 1, \\qquad u \\sim U[0, 1)^D ,

so each image owns a box of side 2 / L, and the boxes tile [-1, 1)^D. A model density q
on x gives the discrete image v the probability of its box, and by Jensen's inequality

.. math:: \\log P(v) = \\log \\mathbb{E}_u\\big[(2/L)^D q(x)\\big]
          \\ge \\mathbb{E}_u[\\log q(x)] - D \\log (L / 2) .

In bits per dimension, -log2 P(v) / D, this is the upper bound

.. math:: \\text{bpd}(v) \\le \\frac{1}{\\log 2} \\Big( -\\frac{\\mathbb{E}_u[\\log q(x)]}{D}
          + \\log \\frac{L}{2} \\Big) ,

which is what :func:`bits_per_dim` computes from log q at one dequantised copy of each
image (one draw of u: an unbiased estimate of the bound's mean over a test set). The
uniform density on [-1, 1]^D gives log2 L bits, every level equally likely: 4.09 bits
for L = 17.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from .data import _generator

__all__ = [
    "DIGIT_LEVELS",
    "load_digits",
    "load_mnist",
    "stratified_split",
    "dequantize",
    "Dequantized",
    "quantize",
    "bits_per_dim",
    "GaussianBaseline",
    "fit_mixture_baseline",
    "nearest_distances",
]

DIGIT_LEVELS = 17  # scikit-learn's digits: grey levels 0 to 16


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: ``(images, labels)``, int64 [1797, 64] with levels
    0 to 16 (row by row, 0 = white) and int64 [1797] classes 0 to 9. Read from the
    installed package; nothing is downloaded."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return bunch.data.astype(np.int64), bunch.target.astype(np.int64)


def load_mnist() -> tuple[np.ndarray, np.ndarray]:
    """MNIST's 70,000 images of 28 x 28, ``(images int64 [n, 784] with levels 0 to 255,
    labels [n])``, for readers on a GPU runtime in Colab, through Keras (which Colab
    ships and which downloads the data once). Never used in CI."""
    try:
        from keras.datasets import mnist
    except ImportError as err:
        raise ImportError(
            "load_mnist needs Keras (installed in Colab); on another machine, use "
            "load_digits, or install keras and a backend for it."
        ) from err
    (x_a, y_a), (x_b, y_b) = mnist.load_data()
    images = np.concatenate([x_a, x_b]).reshape(-1, 28 * 28).astype(np.int64)
    return images, np.concatenate([y_a, y_b]).astype(np.int64)


def stratified_split(labels, fractions=(0.7, 0.15, 0.15),
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a train, validation and test split in which every class keeps its
    share: each class's indices are shuffled with ``seed`` and cut by ``fractions``."""
    labels = np.asarray(labels)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1; "
                         f"got {fractions}.")
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = int(round(fractions[0] * len(idx)))
        b = a + int(round(fractions[1] * len(idx)))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.append(chunk)
    return tuple(np.sort(np.concatenate(p)) for p in parts)


def dequantize(key: jax.Array, images, levels: int = DIGIT_LEVELS) -> np.ndarray:
    """float32 [n, D]: x = 2 (v + u) / levels - 1 with u ~ U[0, 1) per pixel, drawn from a
    NumPy generator seeded by ``key`` (the same key gives the same noise)."""
    v = np.asarray(images)
    if v.min() < 0 or v.max() > levels - 1:
        raise ValueError(f"grey levels must lie in 0..{levels - 1}; got {v.min()}..{v.max()}.")
    u = _generator(key).random(v.shape)
    return (2.0 * (v + u) / levels - 1.0).astype(np.float32)


@dataclass(frozen=True)
class Dequantized:
    """A training loss on grey levels: ``Dequantized(loss)(model, (v, labels), key)``
    dequantises the batch of levels v [n, D] with fresh uniform noise from ``key``, then
    calls ``loss(model, (x, labels), key)`` (for instance
    :class:`fm_helpers.guidance.LabelDropoutLoss`). Every step sees new noise, so the
    network cannot learn one fixed dequantised copy of each training image. Frozen, so
    equal settings reuse compiled training chunks."""

    loss: Any
    levels: int = DIGIT_LEVELS

    def __call__(self, model, batch, key: jax.Array):
        v, labels = batch
        key_u, key_loss = jax.random.split(key)
        x = 2.0 * (v + jax.random.uniform(key_u, v.shape, dtype=v.dtype)) / self.levels - 1.0
        return self.loss(model, (x, labels), key_loss)


def quantize(x, levels: int = DIGIT_LEVELS) -> np.ndarray:
    """The grey level whose box holds each value of x (the inverse of
    :func:`dequantize`), clipped to 0..levels - 1: int64, same shape."""
    v = np.floor((np.asarray(x, dtype=np.float64) + 1.0) / 2.0 * levels)
    return np.clip(v, 0, levels - 1).astype(np.int64)


def bits_per_dim(log_q, dim: int, levels: int = DIGIT_LEVELS) -> np.ndarray:
    """The bound on bits per dimension of each discrete image from log q(x) [n] at a
    dequantised copy x of it: (-log q / D + log(levels / 2)) / log 2."""
    return (-np.asarray(log_q, dtype=np.float64) / dim + np.log(levels / 2)) / np.log(2)


class GaussianBaseline:
    """A Gaussian with the training data's mean and full covariance (maximum likelihood),
    for dequantised images [n, D]: the simplest density with correlations."""

    def __init__(self, x):
        x = np.asarray(x, dtype=np.float64)
        self.mean = x.mean(axis=0)
        self.cov = np.cov(x, rowvar=False, bias=True)
        self._chol = np.linalg.cholesky(self.cov)

    def log_prob(self, x) -> np.ndarray:
        """log N(x; mean, cov) [n]."""
        z = np.linalg.solve(self._chol, (np.asarray(x, dtype=np.float64) - self.mean).T)
        d = self.mean.shape[0]
        half_log_det = np.log(np.diag(self._chol)).sum()
        return -0.5 * np.sum(z**2, axis=0) - half_log_det - 0.5 * d * np.log(2 * np.pi)


def fit_mixture_baseline(train_x, val_x, components=(1, 2, 4, 8, 16, 32),
                         seed: int = 0):
    """scikit-learn's ``GaussianMixture`` (full covariances) for each number of
    ``components``, fitted on ``train_x``; returns the one with the highest mean
    log-likelihood on ``val_x``, and the validation scores ``{k: mean log q}``."""
    from sklearn.mixture import GaussianMixture

    fitted, scores = {}, {}
    for k in components:
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4,
                              random_state=seed).fit(np.asarray(train_x, dtype=np.float64))
        fitted[k] = gmm
        scores[k] = float(gmm.score(np.asarray(val_x, dtype=np.float64)))
    best = max(scores, key=scores.get)
    return fitted[best], scores


def nearest_distances(x, reference, block: int = 512) -> np.ndarray:
    """The Euclidean distance from each row of x [n, D] to its nearest row of
    ``reference`` [m, D], float64 [n], computed in blocks of ``block`` rows."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    ref_sq = np.sum(ref**2, axis=1)
    out = np.empty(len(x))
    for start in range(0, len(x), block):
        part = x[start:start + block]
        sq = np.sum(part**2, axis=1)[:, None] - 2 * part @ ref.T + ref_sq[None, :]
        out[start:start + block] = np.sqrt(np.maximum(sq.min(axis=1), 0.0))
    return out
