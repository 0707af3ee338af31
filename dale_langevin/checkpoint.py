"""Orbax checkpoints of the train state in ``WORKDIR/checkpoints``.

A checkpoint holds params, EMA params, optimiser state, step and the RNG key data, so a restarted
run continues the same trajectory. Every process calls ``save`` (Orbax coordinates multi-host writes).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, keep: int = 3) -> ocp.CheckpointManager:
    """A CheckpointManager over ``workdir/checkpoints`` keeping the last ``keep`` steps."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints") if "://" not in workdir else f"{workdir}/checkpoints"
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, wait: bool = False) -> None:
    """Saves an (unreplicated) state pytree at ``step``; asynchronous unless ``wait``."""
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait:
        mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, like: Any) -> Any | None:
    """The latest checkpoint restored into the structure, shapes and dtypes of ``like``; ``None`` if there is none."""
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
