"""The small protocol shared by the multiplicative (GBM) and additive (VE/VP) diffusion processes.

A training loop or an ablation script holds a ``DiffusionProcess`` and never asks which one it is:
``get_process(name, **kwargs)`` builds one from a config field. Every process is Gaussian in some
domain (``log x`` for GBM, ``x`` itself for VE/VP), which is what makes the interface small.

Shapes: data ``x`` is ``(B, ...)``; time ``t`` is ``(B,)`` or a scalar and broadcasts against ``x``.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol

import jax
import jax.numpy as jnp

# Named M-DSM/DSM weightings lambda(t); every process implements all three.
#   published:  the paper's choice (GBM: v_t**2; VE/VP: std_t**2 as in Song et al. 2021)
#   noise:      std_t**2, which makes the loss the MSE of the predicted (log-space) noise
#   likelihood: g(t)**2, the squared diffusion coefficient (likelihood weighting)
WEIGHTINGS = ("published", "noise", "likelihood")


class DiffusionProcess(Protocol):
    """What losses, samplers and training need from a forward process.

    ``score`` means the quantity the samplers consume: the Hyvarinen score ``x * grad log p`` for
    GBM, the ordinary (Stein) score ``grad log p`` for the additive processes.
    """

    T: float
    sampler_methods: ClassVar[tuple[str, ...]]
    prior_type: ClassVar[type]  # built as prior_type(loc, scale): LogNormalPrior or GaussianPrior

    def perturb(self, rng: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """Samples ``x_t ~ p(x_t | x0)`` exactly; same shape as ``x0``."""

    def cond_score(self, x_t: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """The conditional score target of denoising score matching; shape of ``x_t``."""

    def noise_std(self, t: jax.Array) -> jax.Array:
        """Standard deviation of the kernel in its Gaussian domain; shape of ``t``."""

    def score_from_noise(self, eps_hat: jax.Array, t: jax.Array) -> jax.Array:
        """The network parametrisation: predicted standardised noise -> score; shape of ``eps_hat``."""

    def network_input(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """What the network sees of ``x_t``: an O(1)-scaled array of the same shape."""

    def loss_weight(self, t: jax.Array, weighting: str = "published") -> jax.Array:
        """``lambda(t)`` for a name in ``WEIGHTINGS``; shape of ``t``."""

    def fit_prior(self, x0: Any, per_pixel: bool = True) -> Any:
        """Fits the law at ``T`` from data ``(N, ...)``; returns an object with ``sample``/``log_prob``."""

    def encode(self, u: jax.Array) -> jax.Array:
        """Maps images in [0, 1] into the process's data domain."""

    def decode(self, x: jax.Array) -> jax.Array:
        """Maps process samples back to images in [0, 1] (clamped)."""


def expand_time(t: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes ``t`` of shape ``(B,)`` to ``(B, 1, ..., 1)`` so it broadcasts against ``x`` ``(B, ...)``.

    A scalar ``t`` is returned unchanged.
    """
    t = jnp.asarray(t)
    if t.ndim == 0:
        return t
    if t.ndim > x.ndim or x.shape[: t.ndim] != t.shape:
        raise ValueError(f"time of shape {t.shape} does not lead the data shape {x.shape}")
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim))


def check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    """Raises ``ValueError`` naming ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def get_process(name: str, **kwargs) -> DiffusionProcess:
    """Builds a process from a config name: ``"gbm"`` (multiplicative), ``"ve"`` or ``"vp"`` (additive)."""
    from dale_langevin import additive, gbm  # local: those modules import this one

    factories: dict[str, Callable[..., DiffusionProcess]] = {
        "gbm": gbm.GBM,
        "ve": additive.VESDE,
        "vp": additive.VPSDE,
    }
    check_choice(name, tuple(factories), "process name")
    return factories[name](**kwargs)
