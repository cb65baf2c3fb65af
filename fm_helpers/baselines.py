"""Baselines for the log-likelihood of chapter 7: one Gaussian, and a kernel density estimate.

Taught in chapter 7 ("Density"). A model that cannot beat these on held-out data has
learned little.

Gaussian: the maximum-likelihood mean and covariance of the training set.
KDE: ``q(x) = (1/n) sum_i N(x; x_i, h^2 I)`` over the n training points x_i, with the
bandwidth h chosen by :func:`choose_bandwidth` on a validation set.
These three functions compute in float64 and return NumPy arrays.

:func:`seed_study` repeats chapter 7's comparison of the flow with the KDE over several
training seeds; the benchmarks run it, and the chapter reads its results.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from scipy.special import logsumexp

__all__ = ["gaussian_log_prob", "kde_log_prob", "choose_bandwidth", "seed_study"]


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


def _mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values)))


def seed_study(
    seeds: Iterable[int] = (0, 1, 2, 3, 4),
    *,
    n_train: int = 500,
    n_val: int = 2000,
    n_test: int = 2000,
    steps: int = 3000,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
) -> dict:
    """Chapter 7's comparison of the flow with the KDE, once per training seed.

    The data are the chapter's: ``n_train + n_val + n_test`` points drawn from the
    two-moons :class:`~fm_helpers.data.ImageDensity` with ``jax.random.PRNGKey(0)`` and
    cut by :func:`~fm_helpers.data.split` with seed 0. The KDE's bandwidth is chosen on
    the validation points among :func:`choose_bandwidth`'s default candidates. For each
    seed the flow is ``train.fit(train, steps=steps, batch_size=batch_size,
    learning_rate=learning_rate, seed=seed)``, and ``density.log_prob`` (exact
    divergence, adaptive Tsit5, default tolerances) evaluates it at the test points
    followed by the training points, in one solve.

    Returns plain numbers, ready for JSON: ``settings`` (the arguments), ``entropy`` (of
    the image), ``kde`` (its ``bandwidth``, and the mean and standard error of its test
    NLL and KL gap), and ``runs``, one record per seed: the mean and standard error
    (``..._se``) over the test points of ``test_nll`` (``-log q``), ``kl_gap``
    (``log p - log q``, paired) and ``margin_over_kde`` (``log q - log q_kde``, paired),
    the same for ``train_nll`` over the training points, and the ``seconds`` the seed
    took (training and evaluation, compilation included).
    """
    import jax

    from . import data, density, train

    seeds = [int(s) for s in seeds]
    truth = data.ImageDensity(data.load_image())
    n = n_train + n_val + n_test
    points = np.asarray(truth.sample(jax.random.PRNGKey(0), n))
    fractions = np.array([n_train, n_val, n_test]) / n
    train_x, val_x, test_x = data.split(points, tuple(fractions), seed=0)
    log_p = np.asarray(truth.log_prob(test_x), dtype=np.float64)
    h, _ = choose_bandwidth(train_x, val_x)
    log_q_kde = kde_log_prob(train_x, test_x, h)
    kde_nll, kde_nll_se = _mean_se(-log_q_kde)
    kde_kl, kde_kl_se = _mean_se(log_p - log_q_kde)
    eval_x = np.concatenate([test_x, train_x])  # as in the chapter: one solve

    runs = []
    for seed in seeds:
        start = time.perf_counter()
        net, _ = train.fit(train_x, steps=steps, batch_size=batch_size,
                             learning_rate=learning_rate, seed=seed, progress=False)
        log_q = density.log_prob(net, eval_x).log_prob
        log_q = np.asarray(log_q, dtype=np.float64)
        test, training = log_q[: len(test_x)], log_q[len(test_x):]
        record = {"seed": seed}
        for name, values in [("test_nll", -test), ("kl_gap", log_p - test),
                             ("margin_over_kde", test - log_q_kde),
                             ("train_nll", -training)]:
            record[name], record[f"{name}_se"] = _mean_se(values)
        record["seconds"] = time.perf_counter() - start
        runs.append(record)

    return {
        "settings": {"seeds": seeds, "n_train": n_train, "n_val": n_val,
                     "n_test": n_test, "steps": steps, "batch_size": batch_size,
                     "learning_rate": learning_rate},
        "entropy": float(truth.entropy()),
        "kde": {"bandwidth": h, "test_nll": kde_nll, "test_nll_se": kde_nll_se,
                "kl_gap": kde_kl, "kl_gap_se": kde_kl_se},
        "runs": runs,
    }
