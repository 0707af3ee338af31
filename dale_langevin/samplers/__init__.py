"""Reverse samplers, all behind one registry (:mod:`~dale_langevin.samplers.registry`).

Importing this package registers the built-in samplers:

| name | processes | module | network evaluations |
|---|---|---|---|
| ``dale_langevin`` | gbm | :mod:`~dale_langevin.samplers.sde` | ``n_steps * n_inner + denoise_steps`` |
| ``sign_agnostic`` | gbm | :mod:`~dale_langevin.samplers.sde` | ``n_steps * n_inner + denoise_steps`` |
| ``euler_maruyama`` | ve, vp | :mod:`~dale_langevin.samplers.sde` | ``n_steps * n_inner + denoise_steps`` |
| ``ode`` | gbm | :mod:`~dale_langevin.samplers.ode` | ``n_steps * (1 or 2) + denoise`` |
| ``ddim``, ``dpm2m``, ``dpm3m`` | gbm | :mod:`~dale_langevin.samplers.few_step` | ``n_steps + denoise_steps`` |

``sample(rng, score_fn, x_T, process, method=..., **settings)`` runs any of them.
"""

from __future__ import annotations

# isort: off
from dale_langevin.samplers import sde, ode, few_step  # noqa: F401  (registration, in the table's order)

# isort: on
from dale_langevin.samplers.registry import (
    Sampler,
    get,
    levels,
    names,
    network_evaluations,
    register,
    sample,
    unregister,
)
from dale_langevin.samplers.sde import dale_langevin_update, euler_maruyama_update, sign_agnostic_update

__all__ = [
    "Sampler",
    "levels",
    "dale_langevin_update",
    "euler_maruyama_update",
    "get",
    "names",
    "network_evaluations",
    "register",
    "sample",
    "sign_agnostic_update",
    "unregister",
]
