"""Data parallelism, owned here and nowhere else: ``jax.pmap`` over the local devices.

Everything else in the package writes per-device code against the axis name :data:`AXIS` and
hands host arrays to these helpers: the data pipeline yields per-host batches ``(B_host, ...)``,
:func:`shard_batch` lays them out one slice per device, :func:`device_keys` derives one key per
device, :func:`unshard` gathers the result back. Moving to ``jit`` with shardings later changes
only this module. Layout: a replicated or sharded pytree has shape ``[n_local_devices, ...]``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "batch"


def force_host_devices(count: int) -> None:
    """Asks XLA for ``count`` CPU devices (one per core, so pmap uses every core on a CPU host).

    Must run before JAX initialises its backends; it has no effect on GPU/TPU devices and is
    skipped when ``XLA_FLAGS`` already sets a host device count. ``count <= 0`` means ``os.cpu_count()``.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    count = count if count > 0 else (os.cpu_count() or 1)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins this process to a multi-process JAX run (``jax.distributed.initialize``); before any device query.

    All ``None``: the cluster is auto-detected (TPU pod slices, SLURM, ...). Otherwise all three are
    given: ``HOST:PORT`` of process 0's coordinator, the number of processes and this one's index.
    CPU collectives go through gloo (the default CPU backend has none across processes); that
    setting touches only the CPU backend, so accelerator hosts are unaffected.
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("--coordinator_address, --num_processes and --process_id go together: give all three or none")
    if all(given):
        if not (isinstance(num_processes, int) and num_processes >= 1):
            raise ValueError(f"--num_processes must be an int >= 1, got {num_processes!r}")
        if not (isinstance(process_id, int) and 0 <= process_id < num_processes):
            raise ValueError(f"--process_id must lie in [0, {num_processes}), got {process_id!r}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def local_device_count() -> int:
    """Number of devices this process drives."""
    return jax.local_device_count()


def _sharding() -> NamedSharding:
    return NamedSharding(Mesh(np.asarray(jax.local_devices()), (AXIS,)), PartitionSpec(AXIS))


def replicate(tree: Any) -> Any:
    """Copies every leaf to each local device: leaf ``(...)`` -> ``[n_devices, ...]``."""
    n = jax.local_device_count()
    stacked = jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)), tree)
    return jax.device_put(stacked, _sharding())


def unreplicate(tree: Any) -> Any:
    """The first local device's copy of a replicated pytree, on the host: leaf ``[n_devices, ...]`` -> ``(...)`` numpy.

    Reads that device's buffer; no computation is dispatched (with several processes, indexing
    the global array ran a program that could wait behind another process's collective).
    """
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def _everywhere() -> NamedSharding:
    """Fully replicated over every device of every process."""
    return NamedSharding(Mesh(np.asarray(jax.devices()), (AXIS,)), PartitionSpec())


def global_replica(tree: Any) -> Any:
    """A host pytree (the same values in every process) as fully replicated arrays over all processes' devices.

    The form Orbax saves once for the whole run (a process-local array, such as a pmapped state's
    slice, cannot be saved with several processes). Leaf ``(...)`` -> global ``jax.Array`` ``(...)``.
    """
    sharding = _everywhere()
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


def replica_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` leaves of ``tree``'s shapes and dtypes with :func:`global_replica`'s sharding."""
    sharding = _everywhere()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def local_replica(tree: Any) -> Any:
    """This process's copy of a :func:`global_replica` pytree: each leaf on its first local device."""
    return jax.tree.map(lambda x: x.addressable_data(0), tree)


def shard(tree: Any) -> Any:
    """Places host arrays already shaped ``[n_devices, ...]`` one slice per device."""
    return jax.device_put(tree, _sharding())


def shard_batch(tree: Any) -> Any:
    """Splits a per-host batch over the local devices: leaf ``(B_host, ...)`` -> ``[n_devices, B_host / n_devices, ...]``.

    ``ValueError`` if ``B_host`` does not divide by the local device count.
    """
    n = jax.local_device_count()

    def split(x):
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] % n:
            raise ValueError(f"a per-host batch of leading size {x.shape[:1]} does not split over {n} local devices")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return shard(jax.tree.map(split, tree))


def unshard(x: jax.Array) -> np.ndarray:
    """The inverse of :func:`shard_batch` on the host: ``[n_devices, b, ...]`` -> ``(n_devices * b, ...)`` numpy."""
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)  # this process's devices, in order
    local = np.concatenate([np.asarray(s.data) for s in shards])
    return local.reshape(local.shape[0] * local.shape[1], *local.shape[2:])


def device_keys(rng: jax.Array) -> jax.Array:
    """One key per local device, ``[n_devices]``, from one key (``jax.random.split``), placed one per device."""
    return shard(jax.random.split(rng, jax.local_device_count()))


def per_device_batch(batch: int, field: str, *, local: bool = False) -> int:
    """``batch`` over all devices of all hosts (``local``: this host's devices) -> the per-device batch.

    ``ValueError`` naming ``field`` (a config path) unless ``batch`` is a positive multiple of that count.
    """
    n = jax.local_device_count() if local else jax.device_count()
    if not isinstance(batch, int) or batch <= 0 or batch % n:
        where = "local device count" if local else "device count"
        raise ValueError(f"{field}={batch!r} must be a positive multiple of the {where} {n}")
    return batch // n


def process_index() -> int:
    """This process's index among :func:`process_count` (0 in a single-process run)."""
    return jax.process_index()


def process_count() -> int:
    """Number of JAX processes in the run."""
    return jax.process_count()


def gather_processes(x: np.ndarray) -> np.ndarray:
    """Every process's ``x`` (same shape in each), stacked in process order: ``(...)`` -> ``(process_count, ...)``.

    A collective: every process must call it. One process: ``x[None]`` without communication.
    """
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def is_chief() -> bool:
    """True in process 0, the one that writes logs, grids and reports."""
    return jax.process_index() == 0


def chief_print(*args: Any, **kwargs: Any) -> None:
    """``print`` (flushed) in process 0 only: the ``log`` of work every process does alike (eval, ablations)."""
    if is_chief():
        print(*args, **kwargs, flush=True)


def device_rng(key: jax.Array, step: jax.Array) -> jax.Array:
    """Inside a pmapped function: a key unique to this device and step, ``fold_in(fold_in(key, device), step)``.

    The replicated ``key`` is never split inside pmap (that would give every device the same noise).
    """
    return jax.random.fold_in(jax.random.fold_in(key, jax.lax.axis_index(AXIS)), step)


def example_keys(key: jax.Array, step: jax.Array, local_batch: int) -> jax.Array:
    """Inside a pmapped function: one key per example ``(local_batch,)``, from its global batch index.

    ``fold_in(fold_in(key, step), device * local_batch + i)``: every device gets distinct keys, and
    the draws do not depend on how the global batch is split over devices.
    """
    first = jax.lax.axis_index(AXIS) * local_batch
    step_key = jax.random.fold_in(key, step)
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(first + jnp.arange(local_batch))


def pmean(tree: Any) -> Any:
    """Inside a pmapped function: the mean over devices of every leaf."""
    return jax.lax.pmean(tree, AXIS)


def pmap(
    fn: Callable, *, donate_argnums: tuple[int, ...] = (), static_broadcasted_argnums: tuple[int, ...] = ()
) -> Callable:
    """``jax.pmap`` over the local devices with this module's axis name."""
    return jax.pmap(
        fn, axis_name=AXIS, donate_argnums=donate_argnums, static_broadcasted_argnums=static_broadcasted_argnums
    )
