"""Networks, by config name: :data:`NETWORKS` (``config.model.name``), each a Flax linen module.

Every network maps ``(x (B, H, W, C), conditioning (B,), train=...)`` to an array of ``x``'s shape
and knows nothing of diffusion: what it is fed and how its output becomes a score is the
parametrisation in :mod:`dale_langevin.losses`. Its class attribute ``conditioning`` says what it is
told of the noise level: ``noise_level`` (a float, ``log std_t``) or ``level_index`` (an int32 index
into ``num_classes`` levels). ``config.model.<name>`` holds its fields (:func:`network_fields`).

* ``unet``: our time-conditional U-Net (:mod:`~dale_langevin.nets.unet`), small enough for a CPU;
* ``ncsnv2_deeper``: the RefineNet the paper used for the 28x28 sets (:mod:`~dale_langevin.nets.ncsnv2`);
* ``ncsnpp``: the NCSN++/DDPM++ U-Net the paper used for CIFAR-10 (:mod:`~dale_langevin.nets.ncsnpp`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from dale_langevin.nets.ncsnpp import NCSNpp
from dale_langevin.nets.ncsnv2 import NCSNv2Deeper
from dale_langevin.nets.unet import ScoreUNet

NETWORKS: dict[str, type] = {"unet": ScoreUNet, "ncsnv2_deeper": NCSNv2Deeper, "ncsnpp": NCSNpp}
_BUILDER_FIELDS = ("parent", "name", "dtype", "conv")  # set by the builder, not by a config


def conditioning_dtype(model) -> jnp.dtype:
    """The dtype of ``model``'s conditioning input: int32 for ``level_index`` networks, else float32."""
    return jnp.int32 if model.conditioning == "level_index" else jnp.float32


def network_fields(name: str) -> dict[str, Any]:
    """The configurable fields of network ``name`` with their class defaults (tuples for sequences)."""
    if name not in NETWORKS:
        raise ValueError(f"network must be one of {tuple(NETWORKS)}, got {name!r}")
    return {
        f.name: tuple(f.default) if isinstance(f.default, list) else f.default
        for f in dataclasses.fields(NETWORKS[name])
        if f.name not in _BUILDER_FIELDS and f.init
    }


__all__ = ["NETWORKS", "NCSNpp", "NCSNv2Deeper", "ScoreUNet", "conditioning_dtype", "network_fields"]
