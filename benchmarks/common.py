"""What the sections share: the run's sizes and context (the problem, trained models,
results computed once), and timing helpers."""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from fm_helpers.data import ImageDensity, load_image
from fm_helpers.metrics import energy_distance, mean_pairwise_distance
from fm_helpers.train import History, create_model, fit
from sections import Section

ROOT = Path(__file__).resolve().parents[1]
BATCH = 256  # batch size of every model trained for quality (budget, nfe, density)


@dataclass(frozen=True)
class Config:
    """Sizes that several sections use; a section's own sizes are kept in its module."""

    quick: bool
    n_train: int  # training points, drawn once from the image density
    n_test: int  # test points (energy distance, and NLL on the first n_nll of them)
    n_nll: int
    n_samples: int  # samples scored against the test set
    budgets: tuple[int, ...]  # training steps; the largest is the model that nfe and density use
    learning_rate: float


FULL = Config(quick=False, n_train=50_000, n_test=20_000, n_nll=5_000, n_samples=20_000,
              budgets=(1_000, 3_000, 10_000, 30_000), learning_rate=3e-3)
QUICK = Config(quick=True, n_train=10_000, n_test=2_000, n_nll=1_000, n_samples=2_000,
               budgets=(300, 1_000), learning_rate=3e-3)


@dataclass
class Context:
    """One run: its sizes, log and sections, and what they compute once and share. A section
    asks here for a trained model or another section's results, and gets them whether or
    not the section that usually computes them ran first."""

    cfg: Config
    sections: dict[str, Section]
    log: Callable[[str], None] = print
    _memo: dict = field(default_factory=dict, repr=False)

    @cached_property
    def density(self) -> ImageDensity:
        """The problem: the shipped image as a density, with exact samples and entropy."""
        return ImageDensity(load_image())

    @cached_property
    def train(self) -> jax.Array:  # drawn once per run, with a fixed seed
        return self.density.sample(jax.random.PRNGKey(101), self.cfg.n_train)

    @cached_property
    def test(self) -> jax.Array:
        return self.density.sample(jax.random.PRNGKey(202), self.cfg.n_test)

    def once(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(self, *args)``, computed at most once in this run."""
        key = (fn, *args)
        if key not in self._memo:
            self._memo[key] = fn(self, *args)
        return self._memo[key]

    def results(self, name: str) -> dict:
        """The results of section ``name``, measured now if this run has not yet."""
        return self.once(self.sections[name].run)

    def trained(self, steps: int) -> tuple[nnx.Module, History]:
        """``fit``'s model and history after ``steps`` steps, trained at most once per run."""
        return self.once(_train, steps)

    def energy_distance(self, samples: Any) -> float:
        """fm_helpers.metrics.energy_distance of ``samples`` to the first n_samples test points."""
        test, within = self.once(_test_set)
        return energy_distance(samples, test, b_within=within)


def _train(ctx: Context, steps: int) -> tuple[nnx.Module, History]:
    # fit decays the learning rate over ``steps``: each budget is its own run from seed 0
    return fit(ctx.train, steps=steps, batch_size=BATCH, learning_rate=ctx.cfg.learning_rate, seed=0, progress=False)


def _test_set(ctx: Context) -> tuple[np.ndarray, float]:
    # the test points' own mean pairwise distance, O(n^2): computed once per run
    test = np.asarray(ctx.test[: ctx.cfg.n_samples])
    return test, mean_pairwise_distance(test, test, same=True)


def fresh_model() -> nnx.Module:
    """The course network (VelocityMLP defaults) from seed 0: where every throughput
    measurement starts, so that NNX, Linen and PyTorch train the same weights."""
    return create_model(jax.random.PRNGKey(0))


def seconds(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(result, wall seconds)`` of ``fn(*args)``, waiting for JAX's asynchronous results."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


def xla_flops(jitted: Any, *args: Any) -> float:
    """XLA's count of floating-point operations in one call of ``jitted(*args)``."""
    cost = jitted.lower(*args).compile().cost_analysis()
    return float((cost if isinstance(cost, dict) else cost[0])["flops"])  # a list of dicts in older JAX


def median(values: Any) -> float:
    return float(statistics.median(values))
