"""Data parallelism, owned here and nowhere else: ``jax.pmap`` over the local devices.

Everything else in the package writes per-device code against the axis name :data:`AXIS` through
these helpers, so moving to ``jit`` with shardings later changes only this module.
Leading axis convention: a replicated or sharded pytree has shape ``[n_local_devices, ...]``.
"""

from __future__ import annotations

import os
from typing import Any, Callable

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
    """The first device's copy of a replicated pytree: leaf ``[n_devices, ...]`` -> ``(...)``."""
    return jax.tree.map(lambda x: x[0], tree)


def shard(tree: Any) -> Any:
    """Places host arrays already shaped ``[n_devices, ...]`` one slice per device."""
    return jax.device_put(tree, _sharding())


def check_divisible(global_batch: int, field: str = "config.training.batch_size") -> int:
    """Per-device batch for a global batch over all devices of all hosts; ``ValueError`` naming ``field`` if uneven."""
    n = jax.device_count()
    if global_batch <= 0 or global_batch % n:
        raise ValueError(f"{field}={global_batch} must be a positive multiple of the device count {n}")
    return global_batch // n


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


def pmap(fn: Callable, *, donate_argnums: tuple[int, ...] = (), static_broadcasted_argnums: tuple[int, ...] = ()) -> Callable:
    """``jax.pmap`` over the local devices with this module's axis name."""
    return jax.pmap(
        fn, axis_name=AXIS, donate_argnums=donate_argnums, static_broadcasted_argnums=static_broadcasted_argnums
    )
