"""Training: Optax Adam on the Flow Matching loss, many steps fused in one ``lax.scan``.

Taught in chapter 5 ("Training").

A Python loop that calls a jit-compiled step once per iteration pays a fixed price per
call on top of the step's arithmetic: Python runs the loop body and JAX hands the
``TrainState``'s arrays to XLA and back. :func:`fit` compiles a whole chunk of steps
(``chunk_size``) into one XLA program with ``jax.lax.scan``, so that price is paid once
per chunk; between chunks it advances the progress bar and evaluates the validation loss
on fixed noise. How much this saves depends on the step: on the two-core CPU of the
benchmarks page (``benchmarks/results/latest.md``), a fused step of this network takes
about 2.9 ms at batch 256 and the loop adds about 0.31 ms (11%); at batch 32 a fused step
takes about 0.95 ms and the loop adds about 0.27 ms (28%). Chapter 5 measures both on
your machine and fits a fixed and a per-sample cost to them.

A step draws ``batch_size`` training points with replacement, fresh noise x_0 and times
t, and takes one Adam step on :func:`fm_helpers.loss.flow_matching_loss`. Everything
random comes from ``jax.random`` keys split from ``seed``, so the same seed gives the same
parameters, bit for bit, on the same machine and versions.
"""

from __future__ import annotations

import functools
import inspect
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
    "FINAL_LR_FRACTION",
    "History",
    "create_train_state",
    "make_train_step",
    "make_train_chunk",
    "fit",
    "save_params",
    "load_params",
]

# The cosine schedule ends at this fraction of the peak learning rate (optax's ``alpha``).
# Chapter 5's sweep: a decay beats a constant rate; decaying to 0 ends close to 5%.
FINAL_LR_FRACTION = 0.05

# The network that create_train_state and fit use when no model is given. One shared
# instance, so that its apply function, part of every TrainState's structure, is the same
# object from call to call, and compiled programs can be reused.
_DEFAULT_MODEL = VelocityUNet()

StepFn = Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, jax.Array, jax.Array]]


@dataclass
class History:
    """What :func:`fit` measured. ``loss[k]`` is the training loss of step k + 1 (a
    one-batch estimate, so it is noisy); ``val_loss[j]`` is the loss on the validation set
    with fixed noise and times after ``val_steps[j]`` steps.

    ``seconds`` is the wall time of the whole call (set-up, compilation, training,
    validation, progress bar). ``compile_seconds`` is the part spent compiling, ahead of
    time, the training chunks (one program per distinct chunk length) and the validation
    loss. ``steps_per_second`` is the number of steps divided by the time spent running
    the compiled chunks alone: it excludes compilation, validation and the progress bar,
    whatever ``steps`` and ``chunk_size`` are."""

    loss: np.ndarray
    val_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    val_loss: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0
    compile_seconds: float = 0.0
    steps_per_second: float = 0.0


def _cached(make: Callable) -> Callable:
    """``make(...)`` remembered for the last 16 distinct calls. Calls are compared after
    their defaults are filled in, so ``make_train_chunk(256, 200)`` and
    ``make_train_chunk(256, 200, sigma_min=0.0)`` return the same object. A call with an
    argument that cannot be hashed (such as a module with a list among its fields) makes
    a new one."""
    signature = inspect.signature(make)
    remembered = functools.lru_cache(maxsize=16)(make)

    @functools.wraps(make)
    def get(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        try:
            hash(bound.args)
        except TypeError:
            return make(*bound.args)
        return remembered(*bound.args)

    return get


@_cached
def _compiled_init(model: nn.Module) -> Callable:
    return jax.jit(model.init)


@_cached
def _adam(learning_rate: float, steps: int | None) -> optax.GradientTransformation:
    schedule = (
        learning_rate
        if steps is None
        else optax.cosine_decay_schedule(
            learning_rate, decay_steps=steps, alpha=FINAL_LR_FRACTION
        )
    )
    return optax.adam(schedule)


def create_train_state(
    key: jax.Array,
    model: nn.Module | None = None,
    *,
    dim: int = 2,
    learning_rate: float = 1e-3,
    steps: int | None = None,
) -> TrainState:
    """Initialise the network and an Adam optimiser. Without ``steps`` the learning rate
    is constant; with ``steps`` it follows a cosine decay from ``learning_rate`` to
    ``FINAL_LR_FRACTION`` (5%) of it over ``steps`` steps and stays there afterwards.

    ``model.init`` runs under ``jax.jit``, compiled once per model; networks that compare
    equal share that program. The first call costs about as much as running the
    initialisers op by op, unless ``jax.jit(model.init)`` was already compiled elsewhere
    for this very object (JAX caches what it traced by the function it wraps, here the
    bound method; chapter 5 relies on this). Later calls cost almost nothing, and the
    values are the same. The optimiser is built once per ``(learning_rate, steps)``.
    Two states made with the same model and settings therefore have the same structure,
    and a compiled training chunk accepts both without compiling again.
    """
    model = _DEFAULT_MODEL if model is None else model
    params = _compiled_init(model)(key, jnp.zeros((1, dim)), jnp.zeros((1,)))["params"]
    tx = _adam(learning_rate, steps)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def make_train_step(batch_size: int, sigma_min: float = 0.0) -> StepFn:
    """One training step ``(state, key, data) -> (state, key, loss)``, not yet jitted.
    The key it returns is the one to pass to the next step."""

    def step(state: TrainState, key: jax.Array, data: jax.Array):
        key, key_batch, key_loss = jax.random.split(key, 3)
        idx = jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])
        loss, grads = jax.value_and_grad(
            lambda p: flow_matching_loss(state.apply_fn, p, data[idx], key_loss, sigma_min)
        )(state.params)
        return state.apply_gradients(grads=grads), key, loss

    return step


@_cached
def make_train_chunk(batch_size: int, num_steps: int, sigma_min: float = 0.0) -> StepFn:
    """``num_steps`` training steps fused into one jit-compiled ``lax.scan``:
    ``(state, key, data) -> (state, key, losses[num_steps])``, the steps (batches, noise
    and times) that ``num_steps`` calls of :func:`make_train_step` would take. The same
    arguments return the same jitted function, so what it compiled is reused."""
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
        raise ValueError(
            f"{name} must be a finite array of shape [n, d] with n >= 1; got {arr.shape}."
        )
    return jnp.asarray(arr)


def _in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")  # only loaded when we run under IPython
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and hasattr(shell, "kernel")


class _DisplayLine:
    """A file for tqdm inside a Jupyter kernel: the bar is one display output that every
    refresh replaces. Written to stdout instead, each refresh is a separate piece of the
    cell's output, and a rendered page (myst-nb, with or without ``nb_merge_streams``)
    puts every piece on a line of its own."""

    encoding = "utf-8"  # lets tqdm draw its bar with Unicode blocks

    def __init__(self) -> None:
        from IPython.display import display

        self._handle = display({"text/plain": ""}, raw=True, display_id=True)

    def write(self, text: str) -> None:
        line = text.split("\r")[-1].rstrip()  # tqdm writes "\r" + bar + padding
        if line:
            self._handle.update({"text/plain": line}, raw=True)

    def flush(self) -> None:
        pass


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

    The network (``VelocityUNet()`` unless ``model`` is given) starts from parameters
    drawn from ``seed``; Adam's learning rate decays from ``learning_rate`` as in
    :func:`create_train_state` with ``steps``. Steps run ``chunk_size`` at a time inside
    one compiled ``lax.scan`` (a last, shorter chunk when ``chunk_size`` does not divide
    ``steps``); every chunk length is compiled before training starts. Between chunks the
    progress bar (on stdout, or one updated line in a notebook) and the validation loss
    (on noise and times drawn once, so the curve is smooth) are updated. A second call
    with the same model, batch size, chunk lengths, learning rate, steps and data shape
    reuses the compiled chunks; its ``compile_seconds`` then counts only the validation
    loss. So does a first call whose chunk ``make_train_chunk(batch_size, n)`` was
    compiled before, for a state from :func:`create_train_state` with the same model,
    learning rate and ``steps`` and for data of the same shape.
    """
    if steps < 1 or batch_size < 1 or chunk_size < 1:
        raise ValueError("steps, batch_size and chunk_size must be positive integers.")
    start = time.perf_counter()
    data = _check_points(train_points, "train_points")
    key_init, key_train, key_val = jax.random.split(jax.random.PRNGKey(seed), 3)
    state = create_train_state(
        key_init, model, dim=data.shape[1], learning_rate=learning_rate, steps=steps
    )

    val_loss_fn = None
    if val_points is not None:
        val = _check_points(val_points, "val_points")
        if val.shape[1] != data.shape[1]:
            raise ValueError(
                f"val_points have d={val.shape[1]}, train_points d={data.shape[1]}."
            )
        key_x0, key_t = jax.random.split(key_val)
        x0_val = jax.random.normal(key_x0, val.shape)
        t_val = jax.random.uniform(key_t, (val.shape[0],))

        def val_loss(params):
            return conditional_loss(state.apply_fn, params, x0_val, val, t_val, sigma_min)

        val_loss_fn = jax.jit(val_loss)

    chunk = min(chunk_size, steps)
    sizes = [chunk] * (steps // chunk) + ([steps % chunk] if steps % chunk else [])
    # Compile every program before training, so that no timed chunk includes compiling.
    tick = time.perf_counter()
    runners = {}
    for n in sorted(set(sizes)):
        runner = make_train_chunk(batch_size, n, sigma_min)
        runners[n] = runner.lower(state, key_train, data).compile()
    if val_loss_fn is not None:
        val_loss_fn = val_loss_fn.lower(state.params).compile()
    compile_seconds = time.perf_counter() - tick

    losses, val_steps, val_losses = [], [], []
    run_seconds, done = 0.0, 0
    bar_file = _DisplayLine() if progress and _in_jupyter_kernel() else sys.stdout
    with tqdm(
        total=steps, disable=not progress, file=bar_file, desc="training", unit="step"
    ) as bar:
        for n in sizes:
            tick = time.perf_counter()
            state, key_train, chunk_losses = runners[n](state, key_train, data)
            losses.append(np.asarray(chunk_losses))  # waits for the chunk to finish
            run_seconds += time.perf_counter() - tick
            done += n
            if val_loss_fn is not None:
                val_steps.append(done)
                val_losses.append(float(val_loss_fn(state.params)))
            bar.set_postfix(loss=f"{losses[-1].mean():.3f}", refresh=False)
            bar.update(n)
    history = History(
        loss=np.concatenate(losses),
        val_steps=np.asarray(val_steps, dtype=int),
        val_loss=np.asarray(val_losses),
        seconds=time.perf_counter() - start,
        compile_seconds=compile_seconds,
        steps_per_second=steps / run_seconds,
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
