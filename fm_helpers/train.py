"""Training: Optax Adam on the Flow Matching loss, many steps fused in one ``lax.scan``.

Taught in chapter 5 ("Training").

The network is a Flax NNX module and the optimiser an ``nnx.Optimizer``: both are
objects that change in place, which reads naturally in a step. A Python loop that calls a
compiled step once per iteration pays a fixed price per call on top of the step's
arithmetic: Python runs the loop body and hands the arrays of the model and the optimiser
to XLA and back. :func:`fit` compiles a whole chunk of steps
(``chunk_size``) into one XLA program with ``jax.lax.scan``, so that price is paid once
per chunk; between chunks it advances the progress bar and evaluates the validation loss
on fixed noise. A chunk works on ``nnx.split((model, optimizer))``: the structure, a
static argument, and the arrays, the carry of the scan; each step rebuilds the objects
with ``nnx.merge``, takes its step in place, and hands the arrays on with ``nnx.state``.
Split and merge run while JAX traces the step, not in the compiled program. How much
fusing saves depends on the step and the machine: the benchmarks page
(``benchmarks/results/latest.md``) times the fused scan against one compiled call per
step at batch 256 and 32, and chapter 5 fits a fixed and a per-sample cost to both.

A step draws ``batch_size`` training points with replacement, fresh noise x_0 and times
t, and takes one Adam step on :func:`fm_helpers.loss.flow_matching_loss`, or, with a
``coupling`` other than the independent one, on the same loss with noise and data
paired by it (:mod:`fm_helpers.couplings`), or on fixed pairs (reflow, chapter 8), or
on another objective given as ``loss`` (MeanFlow's). Everything
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

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization
from tqdm import tqdm

from .couplings import Coupling, independent, reflow_pairs
from .loss import conditional_loss, flow_matching_loss, sample_path
from .model import VelocityMLP
from .parallel import DATA, batch_sharding, replicate

__all__ = [
    "FINAL_LR_FRACTION",
    "History",
    "adam",
    "create_model",
    "create_optimizer",
    "make_train_step",
    "make_train_chunk",
    "fit",
    "reflow",
    "save_state",
    "load_state",
]

# The cosine schedule ends at this fraction of the peak learning rate (optax's ``alpha``).
# Chapter 5's sweep: a decay beats a constant rate; decaying to 0 ends close to 5%.
FINAL_LR_FRACTION = 0.05

# A step: (model, optimizer, key, data) -> (key, loss), updating model and optimizer in place.
StepFn = Callable[[nnx.Module, nnx.Optimizer, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


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
    ``make_train_chunk(256, 200, sigma_min=0.0)`` return the same object."""
    signature = inspect.signature(make)
    remembered = functools.lru_cache(maxsize=16)(make)

    @functools.wraps(make)
    def get(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return remembered(*bound.args)

    return get


@_cached
def adam(learning_rate: float = 1e-3, steps: int | None = None) -> optax.GradientTransformation:
    """Optax's Adam. Without ``steps`` the learning rate is constant; with ``steps`` it
    follows a cosine decay from ``learning_rate`` to ``FINAL_LR_FRACTION`` (5%) of it over
    ``steps`` steps and stays there afterwards. The same arguments return the same
    object: it is part of an optimizer's structure, and equal structures let a compiled
    chunk be reused."""
    schedule = (
        learning_rate
        if steps is None
        else optax.cosine_decay_schedule(
            learning_rate, decay_steps=steps, alpha=FINAL_LR_FRACTION
        )
    )
    return optax.adam(schedule)


def create_model(key: jax.Array | int, dim: int = 2) -> VelocityMLP:
    """The course's network, :class:`~fm_helpers.model.VelocityMLP`, for points in ``dim``
    dimensions, with parameters drawn from ``key`` (a PRNG key or an int seed)."""
    return VelocityMLP(dim, rngs=nnx.Rngs(key))


def create_optimizer(
    model: nnx.Module, learning_rate: float = 1e-3, steps: int | None = None
) -> nnx.Optimizer:
    """An ``nnx.Optimizer`` with :func:`adam` for the ``nnx.Param`` variables of
    ``model`` (its Fourier frequencies are not parameters, so they stay fixed)."""
    return nnx.Optimizer(model, adam(learning_rate, steps), wrt=nnx.Param)


def make_train_step(
    batch_size: int, sigma_min: float = 0.0, coupling: Coupling = independent,
    loss: Callable | None = None, batch_sharding: jax.sharding.Sharding | None = None,
) -> StepFn:
    """One training step ``(model, optimizer, key, data) -> (key, loss)``, not compiled. It
    draws a batch of ``data`` with replacement, noise and times, pairs noise and data
    with ``coupling`` (:mod:`fm_helpers.couplings`; the default keeps the pairs as
    drawn, which is :func:`~fm_helpers.loss.flow_matching_loss`), takes one optimiser
    step on the Flow Matching loss (updating ``model`` and ``optimizer`` in place) and
    returns the key to pass to the next step, and the loss.

    ``data`` may also be a tuple ``(x0, x1)`` of fixed pairs, both [n, d] (reflow's
    pairs of noise and the point a flow carries it to): the step then draws rows of
    both, and times, and ``coupling`` is not used. ``loss(model, batch, key)``, if given,
    replaces the Flow Matching loss (for instance
    :func:`fm_helpers.meanflow.meanflow_loss`): it gets the batch (the same rows of
    every array of ``data``: the points, or a tuple ``(x1, labels)`` for
    :class:`fm_helpers.guidance.LabelDropoutLoss`) and draws its own noise and times
    from ``key``; ``coupling`` and ``sigma_min`` are then not used.

    ``batch_sharding`` (chapter 12), if given, is where each array of the batch is
    placed: ``fm_helpers.parallel.batch_sharding(mesh)`` splits its rows across
    devices, and the compiler splits the work that follows from them (noise, times, the
    network's activations) the same way and sums the gradient across devices. The
    numbers drawn are the same as without it."""

    def take(a: jax.Array, idx: jax.Array) -> jax.Array:
        if batch_sharding is None:
            return a[idx]
        return jax.lax.with_sharding_constraint(a[idx], batch_sharding)

    def step(model: nnx.Module, optimizer: nnx.Optimizer, key: jax.Array, data):
        key, key_batch, key_loss = jax.random.split(key, 3)
        num_rows = jax.tree_util.tree_leaves(data)[0].shape[0]  # every array has n rows
        idx = jax.random.randint(key_batch, (batch_size,), 0, num_rows)
        if loss is not None:  # another objective, on the same batches (of every array)
            batch = jax.tree_util.tree_map(lambda a: take(a, idx), data)
            batch_loss = lambda m: loss(m, batch, key_loss)  # noqa: E731
        elif isinstance(data, tuple):  # fixed pairs (x0, x1), row by row: reflow
            t = jax.random.uniform(key_loss, (batch_size,), dtype=data[1].dtype)
            x0, x1 = take(data[0], idx), take(data[1], idx)
            batch_loss = lambda m: conditional_loss(m, x0, x1, t, sigma_min)  # noqa: E731
        elif coupling is independent:  # the step chapter 5 writes by hand, op for op
            x1 = take(data, idx)
            batch_loss = lambda m: flow_matching_loss(m, x1, key_loss, sigma_min)  # noqa: E731
        else:  # the same noise and times, paired anew
            path = sample_path(key_loss, take(data, idx), sigma_min)
            x0, x1 = coupling(jax.random.fold_in(key_loss, 1), path.x_0, path.x_1)
            batch_loss = lambda m: conditional_loss(m, x0, x1, path.t, sigma_min)  # noqa: E731
        value, grads = nnx.value_and_grad(batch_loss)(model)
        optimizer.update(model, grads)
        return key, value

    return step


@_cached
def make_train_chunk(
    batch_size: int, num_steps: int, sigma_min: float = 0.0, coupling: Coupling = independent,
    loss: Callable | None = None, batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable:
    """``num_steps`` training steps fused into one compiled ``lax.scan``:
    ``(graphdef, state, key, data) -> (state, key, losses[num_steps])``, where
    ``graphdef, state = nnx.split((model, optimizer))``, and ``graphdef`` is a static
    argument; ``data`` as for :func:`make_train_step`. It takes the steps that
    ``num_steps`` calls of :func:`make_train_step` would take (the same batches, noise and
    times). The same arguments return the same
    compiled function, so what it compiled is reused.

    With ``num_steps=1`` there is no loop: the one step is compiled alone. That is the
    setting for convolutional networks on the CPU (chapter 11): on XLA's CPU backend the
    U-Net's training step ran about 13 times slower inside a loop (0.93 s a step in a
    ``lax.scan``, 0.070 s compiled alone, batch 128, measured on the course's machine),
    which outweighs the saving on dispatch many times over."""
    step = make_train_step(batch_size, sigma_min, coupling, loss, batch_sharding)

    @functools.partial(jax.jit, static_argnums=0)
    def chunk(graphdef: nnx.GraphDef, state: nnx.State, key: jax.Array, data):
        def body(carry, _):
            state, key = carry
            model, optimizer = nnx.merge(graphdef, state)
            key, value = step(model, optimizer, key, data)
            return (nnx.state((model, optimizer)), key), value

        if num_steps == 1:  # no loop around the step
            (state, key), value = body((state, key), None)
            return state, key, value[None]
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


def _chunk_sizes(steps: int, chunk_size: int) -> list[int]:
    """``steps`` cut into chunks of ``chunk_size``, and a shorter last one if needed."""
    chunk = min(chunk_size, steps)
    return [chunk] * (steps // chunk) + ([steps % chunk] if steps % chunk else [])


def _validation_loss(graphdef, val, key, sigma_min) -> Callable:
    """The loss on the validation points ``val`` with noise and times drawn once from
    ``key``, as a jitted function of the training state."""
    key_x0, key_t = jax.random.split(key)
    x0 = jax.random.normal(key_x0, val.shape)
    t = jax.random.uniform(key_t, (val.shape[0],))

    @jax.jit
    def val_loss(state):
        model, _ = nnx.merge(graphdef, state)
        return conditional_loss(model, x0, val, t, sigma_min)

    return val_loss


def _train_chunks(runners, sizes, state, key, data, val_loss, bar, after_chunk=None):
    """Run the compiled chunks in turn; returns the final state, the losses and the
    validation curve, and the seconds spent in the chunks alone. ``after_chunk(done,
    state)``, if given, runs after each chunk (outside the timed part)."""
    losses, val_steps, val_losses = [], [], []
    run_seconds, done = 0.0, 0
    for n in sizes:
        tick = time.perf_counter()
        state, key, chunk_losses = runners[n](state, key, data)
        losses.append(np.asarray(chunk_losses))  # waits for the chunk to finish
        run_seconds += time.perf_counter() - tick
        done += n
        if val_loss is not None:
            val_steps.append(done)
            val_losses.append(float(val_loss(state)))
        if after_chunk is not None:
            after_chunk(done, state)
        bar.set_postfix(loss=f"{losses[-1].mean():.3f}", refresh=False)
        bar.update(n)
    return state, (losses, val_steps, val_losses), run_seconds


def fit(
    train_points: Any,
    *,
    steps: int,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    seed: int = 0,
    val_points: Any = None,
    progress: bool = True,
    model: nnx.Module | None = None,
    sigma_min: float = 0.0,
    chunk_size: int = 500,
    coupling: Coupling = independent,
    noise_points: Any = None,
    loss: Callable | None = None,
    labels: Any = None,
    callback: Callable[[int, nnx.Module], None] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[nnx.Module, History]:
    """Train a velocity network with Flow Matching and return ``(model, history)``.

    Without ``model`` the network is ``create_model(key, dim)`` with a key drawn from
    ``seed``. A given ``model`` (an ``nnx.Module`` called as ``model(x, t)``) is the
    starting point and is left unchanged: the trained network returned is a new object,
    and ``seed`` then draws only the batches, noise and times. Adam's learning rate
    decays from ``learning_rate`` as in :func:`adam` with ``steps``. Steps run
    ``chunk_size`` at a time inside one compiled ``lax.scan`` (a last, shorter chunk
    when ``chunk_size`` does not divide ``steps``); every chunk length is compiled before
    training starts. Between chunks the progress bar (on stdout, or one updated line in
    a notebook) and the validation loss (on noise and times drawn once, so the curve is
    smooth) are updated. A second call with a network of the same structure, the same
    batch size, chunk lengths, learning rate, steps and data shape reuses the compiled
    chunks; its ``compile_seconds`` then counts only the validation loss. ``coupling``
    pairs each batch's noise and data points (:mod:`fm_helpers.couplings`); the
    validation loss keeps its pairs as drawn. ``noise_points`` [n, d], if given, are
    fixed noise points paired row by row with ``train_points`` (reflow's pairs, from
    :func:`fm_helpers.couplings.reflow_pairs`): each step draws rows of both instead of
    fresh noise, and ``coupling`` must then be the default. ``loss(model, batch, key)``
    replaces the Flow Matching loss (see :func:`make_train_step`); give the ``model``
    it trains, and no ``val_points`` (the validation loss is Flow Matching's).
    ``labels`` [n], integer classes of ``train_points`` (chapter 10), go with such a
    loss: each batch then hands it ``(x1, labels)``, rows drawn together.
    ``callback(steps_done, model)``, if given, is called after every chunk with a copy
    of the network trained so far (to draw samples during training, say); its time is
    not counted in ``steps_per_second``. ``mesh`` (chapter 12), if given, trains
    data-parallel on its devices: the network, the optimiser state and the data are
    copied to every device, and each step's batch is split across the mesh's
    ``"data"`` axis (``batch_size`` must be a multiple of its size). The steps draw the
    same numbers as without a mesh; the losses differ only by float32 rounding.
    """
    if steps < 1 or batch_size < 1 or chunk_size < 1:
        raise ValueError("steps, batch_size and chunk_size must be positive integers.")
    start = time.perf_counter()
    data = _check_points(train_points, "train_points")
    if noise_points is not None:
        noise = _check_points(noise_points, "noise_points")
        if noise.shape != data.shape:
            raise ValueError(
                f"noise_points {noise.shape} must be paired row by row with train_points "
                f"{data.shape}: the same shape."
            )
        if coupling is not independent:
            raise ValueError("fixed pairs (noise_points) are already paired: leave coupling.")
    if loss is not None and (val_points is not None or noise_points is not None
                             or coupling is not independent):
        raise ValueError("a custom loss draws its own noise: give no val_points, "
                         "noise_points or coupling with it.")
    if labels is not None:
        labels = np.asarray(labels)
        if loss is None or labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
            raise ValueError(
                f"labels must be integers of shape [{data.shape[0]}] (one per training "
                f"point), given with a loss that takes them; got {labels.shape}, "
                f"{labels.dtype}, loss={loss!r}."
            )
    key_init, key_train, key_val = jax.random.split(jax.random.PRNGKey(seed), 3)
    if model is None:
        model = create_model(key_init, data.shape[1])
    optimizer = create_optimizer(model, learning_rate, steps)
    graphdef, state = nnx.split((model, optimizer))

    val_loss = None
    if val_points is not None:
        val = _check_points(val_points, "val_points")
        if val.shape[1] != data.shape[1]:
            raise ValueError(
                f"val_points have d={val.shape[1]}, train_points d={data.shape[1]}."
            )
        val_loss = _validation_loss(graphdef, val, key_val, sigma_min)

    if noise_points is not None:
        data = (noise, data)  # the chunks take fixed pairs as one pytree
    if labels is not None:
        data = (data, jnp.asarray(labels, dtype=jnp.int32))  # rows drawn with the points
    sharding = None  # where each step's batch goes: one device unless a mesh is given
    if mesh is not None:
        if batch_size % mesh.shape[DATA]:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the "
                             f"{mesh.shape[DATA]} devices of the mesh's data axis.")
        sharding = batch_sharding(mesh)
        state, data = replicate(state, mesh), replicate(data, mesh)
    # Compile every program before training, so that no timed chunk includes compiling.
    sizes = _chunk_sizes(steps, chunk_size)
    tick = time.perf_counter()
    runners = {
        n: make_train_chunk(batch_size, n, sigma_min, coupling, loss, sharding)
        .lower(graphdef, state, key_train, data)
        .compile()
        for n in sorted(set(sizes))
    }
    if val_loss is not None:
        val_loss = val_loss.lower(state).compile()
    compile_seconds = time.perf_counter() - tick

    bar_file = _DisplayLine() if progress and _in_jupyter_kernel() else sys.stdout
    with tqdm(
        total=steps, disable=not progress, file=bar_file, desc="training", unit="step"
    ) as bar:
        after_chunk = None
        if callback is not None:
            after_chunk = lambda done, st: callback(done, nnx.merge(graphdef, st)[0])  # noqa: E731
        state, (losses, val_steps, val_losses), run_seconds = _train_chunks(
            runners, sizes, state, key_train, data, val_loss, bar, after_chunk
        )
    trained, _ = nnx.merge(graphdef, state)
    history = History(
        loss=np.concatenate(losses),
        val_steps=np.asarray(val_steps, dtype=int),
        val_loss=np.asarray(val_losses),
        seconds=time.perf_counter() - start,
        compile_seconds=compile_seconds,
        steps_per_second=steps / run_seconds,
    )
    return trained, history


def reflow(model: nnx.Module, keys, *, num_pairs: int, steps: int, batch_size: int = 256,
           learning_rate: float = 1e-3, seed: int = 0,
           chunk_size: int = 500) -> list[tuple[nnx.Module, History]]:
    """Rounds of reflow (chapter 8) from the trained velocity network ``model``: one round
    per key of ``keys``. Round k draws ``num_pairs`` pairs (x0, psi(x0)) from the current
    network with :func:`fm_helpers.couplings.reflow_pairs` and its key, then trains on them
    with :func:`fit` from the current network's weights, with seed ``seed + k`` (k = 1, 2,
    ...). Returns ``(model, history)`` of every round; ``model`` is left unchanged."""
    rounds, parent = [], model
    for k, key in enumerate(keys, start=1):
        x0, x1 = reflow_pairs(parent, key, num_pairs)
        parent, history = fit(x1, noise_points=x0, model=parent, steps=steps,
                              batch_size=batch_size, learning_rate=learning_rate,
                              seed=seed + k, progress=False, chunk_size=chunk_size)
        rounds.append((parent, history))
    return rounds


def save_state(path: str | Path, model: nnx.Module) -> None:
    """Write every array of ``model`` (``nnx.state(model)``, as nested dicts) to ``path``
    with msgpack, through Flax's serialization: no pickle, so loading runs no code."""
    pure = nnx.to_pure_dict(nnx.state(model))
    Path(path).write_bytes(serialization.msgpack_serialize(pure))


def load_state(path: str | Path, model: nnx.Module) -> nnx.Module:
    """Read arrays written by :func:`save_state` into ``model`` (in place) and return it.
    ``model`` gives the structure and shapes: a network built like the one saved."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no saved state at {path}; write one with save_state first.")
    state = nnx.state(model)
    template = nnx.to_pure_dict(state)
    loaded = serialization.msgpack_restore(path.read_bytes())
    shapes = lambda tree: jax.tree_util.tree_map(jnp.shape, tree)  # noqa: E731
    if shapes(template) != shapes(loaded):
        raise ValueError(
            f"{path} holds arrays of other names or shapes than this model; "
            "build the model with the settings of the one that was saved."
        )
    nnx.replace_by_pure_dict(state, loaded)
    nnx.update(model, state)
    return model
