"""The protocols of the forward processes: what losses and training need, and what each sampler family needs.

A training loop or an ablation script holds a ``DiffusionProcess`` and never asks which one it is:
:func:`dale_langevin.processes.get_process` builds one from a config field. Every process is
Gaussian in some domain (``log x`` for GBM, ``x`` itself for VE/VP), which is what makes the
interface small. The samplers ask for more: the multiplicative ones for the GBM coefficients
(:class:`MultiplicativeProcess`), Euler-Maruyama for an additive SDE's drift and diffusion
(:class:`AdditiveProcess`); the sampler registry records which process names each sampler takes.

Shapes: data ``x`` is ``(B, ...)``; time ``t`` is ``(B,)`` or a scalar and broadcasts against ``x``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp

# The callable every sampler consumes: ``score_fn(x (B, ...), t (B,)) -> (B, ...)``, the score the
# process's samplers use (Hyvarinen ``x * grad log p`` for GBM, Stein ``grad log p`` for VE/VP).
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]

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
    name: ClassVar[str]  # the config name: config.process.<name> holds the constructor's arguments
    prior_type: ClassVar[type]  # built as prior_type(loc, scale): LogNormalPrior or GaussianPrior

    def perturb(self, rng: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """Samples ``x_t ~ p(x_t | x0)`` exactly; same shape as ``x0``."""

    def cond_score(self, x_t: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """The conditional score target of denoising score matching; shape of ``x_t``."""

    def noise_std(self, t: jax.Array) -> jax.Array:
        """Standard deviation of the kernel in its Gaussian domain; shape of ``t``."""

    def score_from_noise(self, eps_hat: jax.Array, t: jax.Array) -> jax.Array:
        """The network parametrisation: predicted standardised noise -> score; shape of ``eps_hat``."""

    def score_from_ordinary(self, s: jax.Array, x_t: jax.Array) -> jax.Array:
        """The ``score`` parametrisation: the ordinary score ``grad_x log p_t`` at ``x_t`` -> this process's score."""

    def network_input(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """What the network sees of ``x_t``: an O(1)-scaled array of the same shape."""

    def loss_weight(self, t: jax.Array, weighting: str = "published") -> jax.Array:
        """``lambda(t)`` for a name in ``WEIGHTINGS``; shape of ``t``."""

    def fit_prior(self, x0: Any, per_pixel: bool = True) -> Any:
        """Fits the law at ``T`` from data ``(N, ...)``; returns an object with ``sample``/``log_prob``."""

    def gaussian_coords(self, x: jax.Array) -> jax.Array:
        """``x`` in the coordinates where the kernel is Gaussian and additive (``log x`` for GBM); shape of ``x``."""

    def kernel_coeffs(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(a_t, std_t)`` of the kernel ``y_t = a_t y_0 + (shift) + std_t eps`` in those coordinates; shape of ``t``."""

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


class MultiplicativeProcess(DiffusionProcess, Protocol):
    """What the multiplicative samplers (Dale-Langevin, sign-agnostic, the ODE, the few-step ones) call.

    GBM ``dX = mu(t) X dt + sigma(t) X dW``; every method maps ``t`` to an array of its shape.
    """

    def sigma_t(self, t: jax.Array) -> jax.Array:
        """Volatility ``sigma(t)``."""

    def mu_t(self, t: jax.Array) -> jax.Array:
        """Drift ``mu(t)``."""

    def log_var(self, t: jax.Array) -> jax.Array:
        """``v_t = int_0^t sigma**2``, the kernel's variance of ``log X_t``."""

    def log_drift(self, t: jax.Array) -> jax.Array:
        """``D(t) = int_0^t (mu - sigma**2 / 2)``, the kernel's mean shift of ``log X_t``."""

    def log_drift_coeff(self, t: jax.Array) -> jax.Array:
        """``mu(t) - 1.5 sigma(t)**2``, the noise-free part of the Dale-Langevin log update."""

    def time_from_log_var(self, v: jax.Array) -> jax.Array:
        """The inverse of :meth:`log_var` on ``[0, T]``."""


class AdditiveProcess(DiffusionProcess, Protocol):
    """What reverse Euler-Maruyama calls: ``dx = f(x, t) dt + g(t) dW``."""

    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Forward drift ``f(x, t)``; shape of ``x``."""

    def diffusion_sq(self, t: jax.Array) -> jax.Array:
        """``g(t)**2``; shape of ``t``."""
