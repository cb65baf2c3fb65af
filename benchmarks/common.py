"""What every benchmark shares: the problem (the shipped two-moons image as a density),
fixed seeds, the run size (full or --quick) and small timing helpers."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from fm_helpers.data import ImageDensity, load_image  # noqa: E402
from fm_helpers.metrics import energy_distance, mean_pairwise_distance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Config:
    """Sizes of one run. ``full()`` is what ``make bench`` runs; ``quick()`` is for development."""

    quick: bool
    n_train: int  # training points drawn once from the image density
    n_test: int  # test points (energy distance, and NLL on the first n_nll of them)
    n_nll: int
    # 1. training throughput
    batches: tuple[int, ...]
    rounds: int
    seconds_per_measure: float  # each method runs about this long per round
    chunk: int  # steps per fused lax.scan call (fit's default chunk_size)
    # 2. quality against budget
    budgets: tuple[int, ...]
    budget_lr: float
    # 3. NFE against quality
    n_samples: int
    fixed_steps: dict
    # 4. density cost
    n_density: int
    dims: tuple[int, ...]
    n_scaling: int
    scaling_steps: int

    @staticmethod
    def full() -> "Config":
        return Config(
            quick=False, n_train=50_000, n_test=20_000, n_nll=5_000,
            batches=(256, 32), rounds=3, seconds_per_measure=2.0, chunk=500,
            budgets=(1_000, 3_000, 10_000, 30_000), budget_lr=3e-3,
            n_samples=20_000,
            fixed_steps={"euler": (1, 2, 4, 8, 16, 32, 64), "midpoint": (1, 2, 4, 8, 16),
                         "heun": (1, 2, 4, 8, 16), "tsit5": (1, 2, 3, 4)},
            n_density=10_000, dims=(2, 8, 32, 128), n_scaling=256, scaling_steps=8,
        )

    @staticmethod
    def quick_() -> "Config":
        return Config(
            quick=True, n_train=10_000, n_test=2_000, n_nll=1_000,
            batches=(256, 32), rounds=2, seconds_per_measure=0.5, chunk=500,
            budgets=(300, 1_000), budget_lr=3e-3,
            n_samples=2_000,
            fixed_steps={"euler": (2, 8), "midpoint": (2, 8), "heun": (2, 8), "tsit5": (1, 2)},
            n_density=2_000, dims=(2, 8, 32), n_scaling=128, scaling_steps=8,
        )


@dataclass
class Problem:
    """The shipped image as a density, with training and test points drawn from it."""

    density: ImageDensity
    entropy: float
    train: jax.Array
    test: jax.Array


def make_problem(cfg: Config) -> Problem:
    density = ImageDensity(load_image())
    train = density.sample(jax.random.PRNGKey(101), cfg.n_train)
    test = density.sample(jax.random.PRNGKey(202), cfg.n_test)
    return Problem(density, density.entropy(), train, test)


class EnergyToTest:
    """fm_helpers.metrics.energy_distance of sample sets to one fixed test set, with the
    test set's own mean pairwise distance computed once."""

    def __init__(self, test):
        self.test = np.asarray(test)
        self.within_test = mean_pairwise_distance(self.test, self.test, same=True)

    def __call__(self, samples) -> float:
        return energy_distance(samples, self.test, b_within=self.within_test)


def seconds(fn, *args, **kwargs):
    """``(result, wall seconds)`` of ``fn(*args)``, waiting for JAX's asynchronous results."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


def median(values) -> float:
    return float(statistics.median(values))


def as_float(x) -> float:
    return float(np.asarray(x))
