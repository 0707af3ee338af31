"""Additive counterparts for ablations: the VE and VP SDEs of Song et al. (2021), data in [-1, 1], and
GBM written additively in log space (``log_ve``).

All have a Gaussian kernel ``x_t = a_t x0 + s_t eps`` and a linear drift ``f(x, t) = c(t) x``,
so they share one implementation; the scores here are ordinary (Stein) scores ``grad log p``.
Shapes follow :mod:`dale_langevin.processes.base`: ``x`` is ``(B, ...)``, ``t`` is ``(B,)`` or scalar.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin.checks import check_choice, check_positive
from dale_langevin.processes.base import WEIGHTINGS, expand_time
from dale_langevin.processes.priors import GaussianPrior, data_moments


def _check_positive(**fields) -> None:
    for name, value in fields.items():
        check_positive(value, name)


class _LinearGaussianSDE:
    """Shared math of ``dx = c(t) x dt + g(t) dW`` with kernel ``N(a_t x0, s_t**2)``.

    Subclasses define ``mean_coeff`` (a_t), ``noise_std`` (s_t), ``drift_coeff`` (c(t)) and
    ``diffusion_sq`` (g(t)**2), each mapping ``t`` to an array of its shape.
    """

    prior_type: ClassVar[type] = GaussianPrior

    def perturb(self, rng: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """Exact sample ``a_t x0 + s_t eps``; shape of ``x0``."""
        eps = jax.random.normal(rng, x0.shape, x0.dtype)
        return expand_time(self.mean_coeff(t), x0) * x0 + expand_time(self.noise_std(t), x0) * eps

    def cond_score(self, x_t: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """``grad log p(x_t | x0) = -(x_t - a_t x0) / s_t**2``; shape of ``x_t``."""
        a, s = expand_time(self.mean_coeff(t), x_t), expand_time(self.noise_std(t), x_t)
        return -(x_t - a * x0) / s**2

    def score_from_noise(self, eps_hat: jax.Array, t: jax.Array) -> jax.Array:
        """The parametrisation: predicted noise -> score ``-eps_hat / s_t``; shape of ``eps_hat``."""
        return -eps_hat / expand_time(self.noise_std(t), eps_hat)

    def score_from_ordinary(self, s: jax.Array, x_t: jax.Array) -> jax.Array:
        """The ``score`` parametrisation: the ordinary score is already this process's score; returns ``s``."""
        del x_t
        return s

    def network_input(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """``x_t / sqrt(a_t**2 + s_t**2)``: unit scale for data of unit scale (VE reaches s_t = 50)."""
        a, s = expand_time(self.mean_coeff(t), x_t), expand_time(self.noise_std(t), x_t)
        return x_t / jnp.sqrt(a**2 + s**2)

    def loss_weight(self, t: jax.Array, weighting: str = "published") -> jax.Array:
        """``published`` and ``noise``: s_t**2 (Song et al.); ``likelihood``: g(t)**2; shape of ``t``."""
        check_choice(weighting, WEIGHTINGS, "weighting")
        if weighting == "likelihood":
            return self.diffusion_sq(t)
        return self.noise_std(t) ** 2

    def drift(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Forward drift ``f(x, t) = c(t) x``; shape of ``x``."""
        return expand_time(self.drift_coeff(t), x) * x

    def gaussian_coords(self, x: jax.Array) -> jax.Array:
        """``x`` itself: the kernel is Gaussian in the data domain; shape of ``x``."""
        return x

    def kernel_coeffs(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(a_t, std_t)`` of the kernel ``x_t = a_t x0 + std_t eps``; each of the shape of ``t``."""
        return self.mean_coeff(t), self.noise_std(t)

    def push_forward_moments(self, mean0, var0, t):
        """Mean and variance of ``X_t`` given those of ``X_0`` (any broadcastable shapes)."""
        a, s = self.mean_coeff(t), self.noise_std(t)
        return a * mean0, a**2 * var0 + s**2

    def fit_prior(self, x0, per_pixel: bool = True) -> GaussianPrior:
        """Gaussian fit of ``X_T`` from data ``(N, ...)``: loc/scale of shape ``x0.shape[1:]`` or ``()``."""
        mean, var = data_moments(np.asarray(x0), per_pixel)
        loc, var_t = self.push_forward_moments(mean, var, self.T)
        return GaussianPrior(loc=jnp.asarray(loc, jnp.float32), scale=jnp.sqrt(jnp.asarray(var_t, jnp.float32)))

    def encode(self, u: jax.Array) -> jax.Array:
        """Images in [0, 1] -> data in [-1, 1]."""
        return 2.0 * u - 1.0

    def decode(self, x: jax.Array) -> jax.Array:
        """Samples -> images in [0, 1], clamped."""
        return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VESDE(_LinearGaussianSDE):
    """Variance exploding: ``dx = sqrt(d sigma(t)**2 / dt) dW``, ``sigma(t) = smin (smax/smin)**(t/T)``.

    The kernel variance is ``sigma(t)**2 - sigma_min**2`` (exact for this SDE, zero at t = 0).
    """

    name: ClassVar[str] = "ve"

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    def __post_init__(self):
        _check_positive(**{"VESDE.sigma_min": self.sigma_min, "VESDE.sigma_max": self.sigma_max, "VESDE.T": self.T})
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"VESDE.sigma_max ({self.sigma_max}) must exceed VESDE.sigma_min ({self.sigma_min})")

    def _sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (jnp.asarray(t, jnp.float32) / self.T)

    def mean_coeff(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.float32))

    def noise_std(self, t):
        return jnp.sqrt(self._sigma(t) ** 2 - self.sigma_min**2)

    def drift_coeff(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.float32))

    def diffusion_sq(self, t):
        return 2.0 * self._sigma(t) ** 2 * math.log(self.sigma_max / self.sigma_min) / self.T


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class VPSDE(_LinearGaussianSDE):
    """Variance preserving: ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW``, beta linear in t."""

    name: ClassVar[str] = "vp"

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def __post_init__(self):
        _check_positive(**{"VPSDE.beta_min": self.beta_min, "VPSDE.beta_max": self.beta_max, "VPSDE.T": self.T})
        if self.beta_max < self.beta_min:
            raise ValueError(f"VPSDE.beta_max ({self.beta_max}) must be >= VPSDE.beta_min ({self.beta_min})")

    def _beta(self, t):
        return self.beta_min + (self.beta_max - self.beta_min) * jnp.asarray(t, jnp.float32) / self.T

    def _beta_integral(self, t):
        t = jnp.asarray(t, jnp.float32)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def mean_coeff(self, t):
        return jnp.exp(-0.5 * self._beta_integral(t))

    def noise_std(self, t):
        return jnp.sqrt(-jnp.expm1(-self._beta_integral(t)))

    def drift_coeff(self, t):
        return -0.5 * self._beta(t)

    def diffusion_sq(self, t):
        return self._beta(t)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class LogVESDE(_LinearGaussianSDE):
    """GBM written additively: a VE SDE ``dy = sigma dW`` on ``y = log(u + data_offset)``, for ablations.

    The kernel ``y_t = y0 + sigma sqrt(t) eps`` is the law of ``log X_t`` under :class:`~.gbm.GBM` with
    the same ``sigma``, ``T``, ``data_offset`` and the published ``mu = sigma**2 / 2`` (zero log drift).
    Its score is the Stein score in ``y``, which relates to GBM's Hyvarinen score by ``h = s_y - 1``;
    reverse Euler-Maruyama in ``y`` is then exactly the Dale-Langevin update, and the published DSM
    weighting ``s_t**2 = sigma**2 t`` is GBM's ``noise`` weighting ``v_t``. The network sees ``y`` itself,
    as GBM's sees ``log x``, so the two trainings are the same function of the network.
    """

    name: ClassVar[str] = "log_ve"

    sigma: float = 0.8
    T: float = 1.0
    data_offset: float = 1.0

    def __post_init__(self):
        _check_positive(
            **{"LogVESDE.sigma": self.sigma, "LogVESDE.T": self.T, "LogVESDE.data_offset": self.data_offset}
        )

    @classmethod
    def from_gbm(cls, gbm) -> LogVESDE:
        """The log-space VE whose kernel is ``gbm``'s in log space; ``ValueError`` unless ``gbm`` has the
        published drift (``mu=None``: zero log drift) and a constant volatility."""
        if gbm.schedule != "constant" or gbm.mu is not None:
            raise ValueError(
                f"log-space VE is GBM written additively only for schedule='constant' and mu=None (zero drift of "
                f"log X), not schedule={gbm.schedule!r}, mu={gbm.mu!r}"
            )
        return cls(sigma=gbm.sigma, T=gbm.T, data_offset=gbm.data_offset)

    def mean_coeff(self, t):
        return jnp.ones_like(jnp.asarray(t, jnp.float32))

    def noise_std(self, t):
        return self.sigma * jnp.sqrt(jnp.asarray(t, jnp.float32))

    def drift_coeff(self, t):
        return jnp.zeros_like(jnp.asarray(t, jnp.float32))

    def diffusion_sq(self, t):
        return jnp.full_like(jnp.asarray(t, jnp.float32), self.sigma**2)

    def network_input(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """``y_t`` unscaled (shape of ``x_t``): what GBM's network sees, ``log x_t``, at the same ``t``."""
        del t
        return x_t

    def encode(self, u: jax.Array) -> jax.Array:
        """Images in [0, 1] -> ``log(u + data_offset)``."""
        return jnp.log(u + self.data_offset)

    def decode(self, x: jax.Array) -> jax.Array:
        """Samples ``y`` -> images ``exp(y) - data_offset`` in [0, 1], clamped."""
        return jnp.clip(jnp.exp(x) - self.data_offset, 0.0, 1.0)
