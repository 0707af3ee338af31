"""The paper authors' published sampler settings and prior constants, per dataset.

Read from the configs of the authors' PyTorch code (see ``docs/reproduction.md``). The samplers
run ``N = 1000`` levels with a tuned step size ``delta``, ``L`` updates per level and a per-level
noise annealing factor. :func:`settings` returns them for ``config.sampling.<method>``, rescaled to
``n_steps`` levels so that the total annealing (``decay**N``) and the ratio of the step to the
level spacing (``delta / (T / N)``) are kept.

:data:`PRIORS` holds the published log-normal priors at ``T``: one scalar ``(loc, scale)`` pair for
the grayscale sets, one per channel for CIFAR-10 (``log X_T ~ N(loc, scale**2)``). The authors also
start from class averages pushed to ``T`` with those constants used as the GBM drift and volatility
(:func:`authors_push_forward`), not with the exact kernel.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_choice, check_int

PUBLISHED_LEVELS = 1000

# dataset -> sampler -> (delta, L, anneal) at N = 1000 levels.
PUBLISHED: dict[str, dict[str, tuple[float, int, float]]] = {
    "mnist": {"dale_langevin": (6.165e-4, 1, 0.995), "sign_agnostic": (1.438e-4, 4, 0.995)},
    "fashion_mnist": {"dale_langevin": (5.86e-4, 1, 0.995), "sign_agnostic": (1.468e-3, 3, 0.9995)},
    "kmnist": {"dale_langevin": (2.113e-4, 3, 0.995), "sign_agnostic": (2.113e-4, 3, 1.0)},
    "cifar10": {"dale_langevin": (1.142e-4, 6, 0.9995), "sign_agnostic": (1.142e-4, 6, 0.995)},
}

# dataset -> sampler -> (delta, L, anneal, final noise-free steps) of the runs that start from class
# averages. The anneal is not given separately: the sampler's own is used. CIFAR-10's entry does not
# name its sampler; it is read as Dale-Langevin's (the paper's main sampler).
CLASS_AVERAGE: dict[str, dict[str, tuple[float, int, float, int]]] = {
    "kmnist": {"sign_agnostic": (3.36e-4, 2, 1.0, 0)},
    "cifar10": {"dale_langevin": (2e-4, 4, 0.9995, 25)},
}

# dataset -> (loc, scale) of log X_T: scalars, or one value per channel.
PRIORS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1565,), (0.8353,)),
    "fashion_mnist": ((0.2771,), (0.8428,)),
    "kmnist": ((0.2140,), (0.8290,)),
    "cifar10": ((0.4075, 0.3785, 0.3693), (0.8016, 0.8004, 0.8005)),
}

# The embedded digits are an MNIST subset: they take MNIST's published settings.
ALIASES = {"embedded_mnist": "mnist"}


def dataset_key(dataset: str) -> str:
    """The table key of ``dataset`` (``embedded_mnist`` reads MNIST's rows)."""
    return ALIASES.get(dataset, dataset)


def settings(
    dataset: str, method: str, n_steps: int = PUBLISHED_LEVELS, T: float = 1.0, *, class_average: bool = False
) -> dict:
    """``{"step_size", "n_inner", "noise_decay"}`` of the published ``method`` for ``dataset`` at
    ``n_steps`` levels; ``class_average``: the settings of its class-average runs, with their
    ``denoise_steps`` (noise-free final updates) as well."""
    dataset = dataset_key(dataset)
    table = CLASS_AVERAGE if class_average else PUBLISHED
    what = "class-average settings" if class_average else "published settings"
    check_choice(dataset, tuple(table), f"{what} dataset")
    check_choice(method, tuple(table[dataset]), f"{what} sampler for {dataset}")
    check_int(n_steps, "n_steps", 1)
    delta, n_inner, decay, *final = table[dataset][method]
    scale = PUBLISHED_LEVELS / n_steps
    out = {"step_size": delta * scale * T, "n_inner": n_inner, "noise_decay": float(decay**scale)}
    return {**out, "denoise_steps": final[0]} if class_average else out


def prior(dataset: str) -> tuple[jax.Array, jax.Array]:
    """The published ``(loc, scale)`` of ``log X_T`` for ``dataset``: shapes ``()`` or ``(C,)`` (per channel)."""
    dataset = dataset_key(dataset)
    check_choice(dataset, tuple(PRIORS), "published prior dataset")
    loc, scale = (jnp.asarray(v, jnp.float32) for v in PRIORS[dataset])
    return (loc[0], scale[0]) if loc.shape == (1,) else (loc, scale)


def authors_push_forward(rng: jax.Array, x0: jax.Array, loc: jax.Array, scale: jax.Array, T: float = 1.0) -> jax.Array:
    """The authors' class-average start: ``x0 exp((loc - scale**2 / 2) T + scale sqrt(T) z)``, ``z ~ N(0, I)``.

    GBM with the fitted prior's ``loc`` as drift and ``scale`` as volatility (for MNIST a log shift of
    -0.19 and a log std of 0.835), in place of the exact kernel of the trained process. ``x0``
    ``(B, H, W, C)``; ``loc``/``scale`` scalars or ``(C,)``; returns the shape of ``x0``, all > 0.
    """
    z = jax.random.normal(rng, x0.shape, jnp.float32)
    return x0 * jnp.exp((loc - 0.5 * scale**2) * T + scale * jnp.sqrt(T) * z)
