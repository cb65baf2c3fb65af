"""Baselines for the log-likelihood of chapter 7: one Gaussian, and a kernel density estimate.

A model that cannot beat these on held-out data has learned little.

Gaussian: the maximum-likelihood mean and covariance of the training set.
KDE: ``q(x) = (1/n) sum_i N(x; x_i, h^2 I)`` over the training points, with the bandwidth
h chosen on the validation set.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

__all__ = ["gaussian_log_prob", "kde_log_prob", "choose_bandwidth"]


def gaussian_log_prob(train, x) -> np.ndarray:
    """log-density at x [m, d] of the Gaussian fitted to ``train`` [n, d] by maximum likelihood."""
    train = np.asarray(train, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    mean = train.mean(axis=0)
    cov = np.cov(train, rowvar=False, bias=True)
    d = train.shape[1]
    sign, logdet = np.linalg.slogdet(cov)
    centred = x - mean
    maha = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(cov), centred)
    return -0.5 * (maha + logdet + d * np.log(2 * np.pi))


def kde_log_prob(train, x, bandwidth: float, block: int = 2048) -> np.ndarray:
    """log-density at x [m, d] of the Gaussian KDE of ``train`` [n, d] with bandwidth h."""
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
    """The bandwidth among ``candidates`` with the best mean validation log-likelihood,
    and that mean for every candidate."""
    candidates = np.geomspace(0.005, 0.3, 25) if candidates is None else np.asarray(candidates)
    scores = np.array([kde_log_prob(train, val, h).mean() for h in candidates])
    return float(candidates[int(np.argmax(scores))]), scores
