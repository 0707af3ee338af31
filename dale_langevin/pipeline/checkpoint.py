"""Orbax checkpoints: a manager over a folder the work directory names, save and restore of one pytree.

The train state (params, EMA params, optimiser state, step, RNG key data) is saved in
``Workdir.checkpoints`` so a restarted run continues the same trajectory; the evaluation
classifier uses the same functions under ``Workdir.classifier``. Every process calls ``save``
(Orbax coordinates multi-host writes).
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath


def manager(directory: epath.Path, keep: int = 3) -> ocp.CheckpointManager:
    """A CheckpointManager over ``directory`` (absolute or ``gs://``) keeping the last ``keep`` steps."""
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, wait: bool = False) -> None:
    """Saves an (unreplicated) state pytree at ``step``; asynchronous unless ``wait``."""
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    if wait:
        mngr.wait_until_finished()


def restore_latest(mngr: ocp.CheckpointManager, like: Any) -> Any | None:
    """The latest checkpoint restored into the structure, shapes and dtypes of ``like``; ``None`` if there is none.

    ``like`` may be concrete arrays or ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``). Every
    leaf is restored onto this process's first device, whatever the device count of the run that
    saved it (Orbax would otherwise insist on the saved topology).
    """
    step = mngr.latest_step()
    if step is None:
        return None
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract))
