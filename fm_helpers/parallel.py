"""Many devices: a mesh, arrays placed on it, and per-shard couplings.

Taught in chapter 12 ("When one device is not enough").

JAX runs one program across devices when its inputs carry a *sharding*: a
``jax.sharding.Mesh`` names the devices' axes (here ``"data"``, and ``"model"`` for
parameter sharding), and a ``NamedSharding(mesh, P(...))`` says which axis of an array
is split along which axis of the mesh (``P()``: a full copy on every device). ``jit``
then compiles one program for all devices and inserts the communication the program
needs, such as the all-reduce that sums the gradient's per-device parts.

Data parallelism here is two annotations: the training state and the data are
replicated (:func:`replicate`), and each step's batch is split along ``"data"``
(``fit(..., mesh=mesh)``, through ``batch_sharding`` of
:func:`fm_helpers.train.make_train_step`). A jitted program's values do not depend on
how its inputs are split, random numbers included (JAX's
``jax_threefry_partitionable``, on by default, lets each device generate its own part
of them), so a sharded run draws the same batches, noise and times as a single-device
one; only the order of the sums differs. Sampling and the log-density need only their
points split (:func:`shard_rows`) and the network replicated.

:func:`per_shard` is the other tool: ``jax.shard_map`` runs a function on each
device's shard alone, with no communication unless the function asks for it. Minibatch
OT (chapter 8) done per shard pairs each device's points among themselves only.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from .couplings import Coupling

__all__ = ["DATA", "MODEL", "devices", "make_mesh", "batch_sharding", "replicated",
           "replicate", "shard_rows", "per_shard", "bytes_per_device"]

DATA, MODEL = "data", "model"  # the mesh's axis names


def devices(n: int) -> list[jax.Device]:
    """``n`` devices: the default backend's if it has that many (a TPU's cores, several
    GPUs), otherwise the CPU's, which need ``jax.config.update("jax_num_cpu_devices",
    n)`` before JAX first runs anything."""
    for backend in (jax.default_backend(), "cpu"):
        found = jax.devices(backend)
        if len(found) >= n:
            return list(found[:n])
    raise RuntimeError(
        f"{n} devices asked for, but {jax.default_backend()} has "
        f"{len(jax.devices())} and the CPU {len(jax.devices('cpu'))}. Call "
        f'jax.config.update("jax_num_cpu_devices", {n}) before JAX first runs '
        "(restart the kernel), or set XLA_FLAGS=--xla_force_host_platform_device_count="
        f"{n}."
    )


def make_mesh(shape: Sequence[int] = (8,), axis_names: Sequence[str] = (DATA,)) -> Mesh:
    """A mesh of ``prod(shape)`` devices (from :func:`devices`) laid out as ``shape``,
    with one name per axis: ``make_mesh((8,))`` for data parallelism,
    ``make_mesh((4, 2), (DATA, MODEL))`` to shard parameters too."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(axis_names) or min(shape) < 1:
        raise ValueError(f"one positive size per axis name; got {shape} for {axis_names}.")
    found = devices(int(np.prod(shape)))
    return Mesh(np.array(found).reshape(shape), tuple(axis_names))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split along the mesh's ``"data"`` axis, the rest of each row whole."""
    return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of ``tree`` copied to every device of ``mesh``. An NNX module is
    changed in place (its state moved) and returned."""
    if isinstance(tree, nnx.Module):
        nnx.update(tree, jax.device_put(nnx.state(tree), replicated(mesh)))
        return tree
    return jax.device_put(tree, replicated(mesh))


def shard_rows(x: Any, mesh: Mesh) -> jax.Array:
    """``x`` [n, ...] split by rows across the ``"data"`` axis: each device holds
    n / k consecutive rows, for k devices on that axis (n must be a multiple of k)."""
    x = jax.numpy.asarray(x)
    k = mesh.shape[DATA]
    if x.ndim < 1 or x.shape[0] % k:
        raise ValueError(
            f"{x.shape[0] if x.ndim else 'a scalar'} rows cannot be split evenly across "
            f"{k} devices; use a multiple of {k}."
        )
    return jax.device_put(x, batch_sharding(mesh))


def per_shard(coupling: Coupling, mesh: Mesh) -> Coupling:
    """``coupling`` applied to each device's shard of the batch alone (``jax.shard_map``
    over ``"data"``): device k pairs its n / K noise points with its own n / K data
    points. Each shard gets its own key (``key`` folded with the device's index)."""

    def local(key, x0, x1):
        key = jax.random.fold_in(key, jax.lax.axis_index(DATA))
        return coupling(key, x0, x1)

    rows = P(DATA)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), rows, rows),
                         out_specs=(rows, rows), check_vma=False)


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
    """How many bytes of ``tree``'s arrays each device holds (its shards, copies
    included)."""
    held: dict[jax.Device, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held
