"""Baselines for the log-likelihood of chapter 7: one Gaussian, and a kernel density estimate.

Taught in chapter 7 ("Density"). A model that cannot beat these on held-out data has
learned little.

Gaussian: the maximum-likelihood mean and covariance of the training set.
KDE: ``q(x) = (1/n) sum_i N(x; x_i, h^2 I)`` over the n training points x_i, with the
bandwidth h chosen by :func:`choose_bandwidth` on a validation set.
All three functions compute in float64 and return NumPy arrays.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

__all__ = ["gaussian_log_prob", "kde_log_prob", "choose_bandwidth"]


def gaussian_log_prob(train, x) -> np.ndarray:
    """Log-density [m] at x [m, d] of the Gaussian fitted to ``train`` [n, d] by maximum
    likelihood: the sample mean, and the covariance with divisor n (not n - 1)."""
    train = np.asarray(train, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    mean = train.mean(axis=0)
    cov = np.cov(train, rowvar=False, bias=True)
    d = train.shape[1]
    _, logdet = np.linalg.slogdet(cov)  # the sign is +1 for a non-singular covariance
    centred = x - mean
    maha = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(cov), centred)
    return -0.5 * (maha + logdet + d * np.log(2 * np.pi))


def kde_log_prob(train, x, bandwidth: float, block: int = 2048) -> np.ndarray:
    """Log-density [m] at x [m, d] of the Gaussian KDE of ``train`` [n, d] with bandwidth
    h = ``bandwidth``. The points x are taken ``block`` at a time, so the memory used
    stays near block x n x d floats."""
    train = np.asarray(train, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    d = train.shape[1]
    norm = np.log(len(train)) + 0.5 * d * np.log(2 * np.pi * bandwidth**2)
    out = []
    for i in range(0, len(x), block):
        sq = ((x[i : i + block, None, :] - train[None, :, :]) ** 2).sum(-1)
        out.append(logsumexp(-0.5 * sq / bandwidth**2, axis=1) - norm)
    return np.concatenate(out)


def choose_bandwidth(train, val, candidates=None) -> tuple[float, np.ndarray]:
    """``(h, scores)``: the bandwidth h among ``candidates`` with the highest mean
    log-likelihood of ``val`` under the KDE of ``train``, and that mean for every
    candidate [len(candidates)].

    The default candidates, 25 values spaced evenly on a log scale from 0.005 to 0.3,
    suit the course's data on [-1, 1]^2 (a pixel of the 64 x 64 image is 2/64 = 0.031
    wide). Check that the chosen h is not at either end of the candidates.
    """
    if candidates is None:
        candidates = np.geomspace(0.005, 0.3, 25)
    candidates = np.asarray(candidates, dtype=np.float64)
    scores = np.array([kde_log_prob(train, val, h).mean() for h in candidates])
    return float(candidates[int(np.argmax(scores))]), scores
