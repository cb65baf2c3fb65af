"""Training: Optax Adam on the Flow Matching loss, many steps fused in one ``lax.scan``.

Taught in chapter 5 ("Training").

On a CPU a step of this small network takes tens of microseconds of arithmetic, and a
Python loop that calls a jitted step once per iteration spends a comparable time
dispatching it. :func:`fit` compiles a whole chunk of steps (``chunk_size``) into one
XLA program with ``jax.lax.scan``, so Python only runs once per chunk, where it also
advances the progress bar and evaluates the validation loss on fixed noise.

A step draws ``batch_size`` training points with replacement, fresh noise x_0 and times
t, and takes one Adam step on :func:`fm_helpers.loss.flow_matching_loss`. Everything
random comes from ``jax.random`` keys split from ``seed``, so the same seed gives the same
parameters, bit for bit, on the same machine and versions.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training.train_state import TrainState
from tqdm import tqdm

from .loss import conditional_loss, flow_matching_loss
from .model import VelocityUNet

__all__ = [
    "History",
    "create_train_state",
    "make_train_step",
    "make_train_chunk",
    "fit",
    "save_params",
    "load_params",
]

StepFn = Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, jax.Array, jax.Array]]


@dataclass
class History:
    """What :func:`fit` measured. ``loss[k]`` is the training loss of step k + 1 (a
    one-batch estimate, so it is noisy); ``val_loss[j]`` is the loss on the validation set
    with fixed noise and times after ``val_steps[j]`` steps."""

    loss: np.ndarray
    val_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0  # wall time of the whole fit, compilation included
    steps_per_second: float = 0.0  # measured on the chunks after the first (no compilation)


def create_train_state(
    key: jax.Array,
    model: nn.Module | None = None,
    *,
    dim: int = 2,
    learning_rate: float = 1e-3,
    steps: int | None = None,
) -> TrainState:
    """Initialise the network and an Adam optimiser. With ``steps`` given, the learning
    rate follows a cosine decay from ``learning_rate`` to 5% of it over ``steps`` steps."""
    model = VelocityUNet() if model is None else model
    params = model.init(key, jnp.zeros((1, dim)), jnp.zeros((1,)))["params"]
    schedule = (
        learning_rate
        if steps is None
        else optax.cosine_decay_schedule(learning_rate, decay_steps=steps, alpha=0.05)
    )
    return TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(schedule))


def make_train_step(batch_size: int, sigma_min: float = 0.0) -> StepFn:
    """One training step ``(state, key, data) -> (state, key, loss)``, not yet jitted."""

    def step(state: TrainState, key: jax.Array, data: jax.Array):
        key, key_batch, key_loss = jax.random.split(key, 3)
        idx = jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])
        loss, grads = jax.value_and_grad(
            lambda p: flow_matching_loss(state.apply_fn, p, data[idx], key_loss, sigma_min)
        )(state.params)
        return state.apply_gradients(grads=grads), key, loss

    return step


def make_train_chunk(batch_size: int, num_steps: int, sigma_min: float = 0.0) -> StepFn:
    """``num_steps`` training steps fused into one jit-compiled ``lax.scan``:
    ``(state, key, data) -> (state, key, losses[num_steps])``."""
    step = make_train_step(batch_size, sigma_min)

    @jax.jit
    def chunk(state: TrainState, key: jax.Array, data: jax.Array):
        def body(carry, _):
            state, key = carry
            state, key, loss = step(state, key, data)
            return (state, key), loss

        (state, key), losses = jax.lax.scan(body, (state, key), None, length=num_steps)
        return state, key, losses

    return chunk


def _check_points(points: Any, name: str) -> jax.Array:
    arr = np.asarray(points, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite array of shape [n, d] with n >= 1; got {arr.shape}.")
    return jnp.asarray(arr)


def fit(
    train_points: Any,
    *,
    steps: int,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
    val_points: Any = None,
    progress: bool = True,
    model: nn.Module | None = None,
    sigma_min: float = 0.0,
    chunk_size: int = 500,
) -> tuple[TrainState, History]:
    """Train a velocity network with Flow Matching and return ``(state, history)``.

    Steps run ``chunk_size`` at a time inside one compiled ``lax.scan``; the progress bar
    and the validation loss (on noise and times drawn once, so the curve is smooth)
    are updated between chunks.
    """
    if steps < 1 or batch_size < 1 or chunk_size < 1:
        raise ValueError("steps, batch_size and chunk_size must be positive integers.")
    data = _check_points(train_points, "train_points")
    key_init, key_train, key_val = jax.random.split(jax.random.PRNGKey(seed), 3)
    state = create_train_state(
        key_init, model, dim=data.shape[1], learning_rate=learning_rate, steps=steps
    )

    val_loss_fn = None
    if val_points is not None:
        val = _check_points(val_points, "val_points")
        if val.shape[1] != data.shape[1]:
            raise ValueError(f"val_points have d={val.shape[1]}, train_points d={data.shape[1]}.")
        key_x0, key_t = jax.random.split(key_val)
        x0_val = jax.random.normal(key_x0, val.shape)
        t_val = jax.random.uniform(key_t, (val.shape[0],))
        val_loss_fn = jax.jit(
            lambda params: conditional_loss(state.apply_fn, params, x0_val, val, t_val, sigma_min)
        )

    chunk = min(chunk_size, steps)
    sizes = [chunk] * (steps // chunk) + ([steps % chunk] if steps % chunk else [])
    runners = {n: make_train_chunk(batch_size, n, sigma_min) for n in set(sizes)}
    losses, val_steps, val_losses, times = [], [], [], []
    start = time.perf_counter()
    done = 0
    with tqdm(total=steps, disable=not progress, file=sys.stdout, desc="training", unit="step") as bar:
        for n in sizes:
            tick = time.perf_counter()
            state, key_train, chunk_losses = runners[n](state, key_train, data)
            losses.append(np.asarray(chunk_losses))  # waits for the chunk to finish
            times.append((n, time.perf_counter() - tick))
            done += n
            if val_loss_fn is not None:
                val_steps.append(done)
                val_losses.append(float(val_loss_fn(state.params)))
            bar.update(n)
            bar.set_postfix(loss=f"{losses[-1].mean():.3f}")
    seconds = time.perf_counter() - start
    timed = times[1:] if len(times) > 1 else times
    history = History(
        loss=np.concatenate(losses),
        val_steps=np.asarray(val_steps, dtype=int),
        val_loss=np.asarray(val_losses),
        seconds=seconds,
        steps_per_second=sum(n for n, _ in timed) / sum(s for _, s in timed),
    )
    return state, history


def save_params(path: str | Path, params: Any) -> None:
    """Write parameters with Flax's msgpack serialization (no pickle)."""
    Path(path).write_bytes(serialization.to_bytes(params))


def load_params(path: str | Path, target: Any) -> Any:
    """Read parameters written by :func:`save_params`; ``target`` gives the tree structure
    and shapes (for example freshly initialised parameters of the same model)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no parameter file at {path}; save one with save_params first.")
    return serialization.from_bytes(target, path.read_bytes())
