"""Geometric Brownian motion, the multiplicative forward process, and its log-normal kernel.

Elementwise ``dX = mu(t) X dt + sigma(t) X dW`` on ``[0, T]``. With ``Y = log X``,
``dY = (mu - sigma**2 / 2) dt + sigma dW``, so ``log X_t | x0 ~ N(m_t, v_t)`` with

    m_t = log x0 + int_0^t (mu - sigma**2 / 2),     v_t = int_0^t sigma**2.

Both integrals are closed form for every schedule here. The Hyvarinen score is
``h(x, t) = x * grad_x log p_t(x)``; its conditional form is ``h(x_t | x0) = -1 - (log x_t - m_t) / v_t``.

Shapes: ``x0``/``x_t`` are ``(B, ...)``, ``t`` is ``(B,)`` or a scalar; per-time quantities have
the shape of ``t``, per-pixel ones the shape of ``x``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin.checks import check_choice, check_positive, is_number
from dale_langevin.processes.base import WEIGHTINGS, expand_time
from dale_langevin.processes.priors import LogNormalPrior, data_moments


# Each schedule: (sigma(t), int_0^t sigma(s)**2 ds), both exact.
def _constant_sigma(process: GBM, t):
    return jnp.full_like(t, process.sigma)


def _constant_var(process: GBM, t):
    return process.sigma**2 * t


def _linear_slope(process: GBM) -> float:
    return (process.sigma_end - process.sigma) / process.T


def _linear_sigma(process: GBM, t):
    return process.sigma + _linear_slope(process) * t


def _linear_var(process: GBM, t):
    s0, b = process.sigma, _linear_slope(process)
    return s0**2 * t + s0 * b * t**2 + b**2 * t**3 / 3.0


SCHEDULES: dict[str, tuple[Callable, Callable]] = {
    "constant": (_constant_sigma, _constant_var),
    "linear": (_linear_sigma, _linear_var),
}


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class GBM:
    """Geometric Brownian motion with an exactly integrable volatility schedule.

    Attributes:
      sigma: volatility; for ``schedule="linear"`` its value at ``t = 0``. Published: 0.8.
      mu: drift. ``None`` means ``mu(t) = sigma(t)**2 / 2``, i.e. zero drift of ``log X``
        (published). A number means a constant drift.
      T: terminal time (published: 1).
      schedule: ``"constant"`` (published) or ``"linear"`` (sigma moves linearly from ``sigma``
        at ``t = 0`` to ``sigma_end`` at ``t = T``).
      sigma_end: volatility at ``T``, only for ``schedule="linear"``.
      data_offset: images in [0, 1] are shifted by this to be positive (published: 1, so x0 in [1, 2]).

    Hashable and registered as a static pytree, so it can be passed to ``jit``/``vmap``/``pmap``
    as an ordinary argument.
    """

    sigma: float = 0.8
    mu: float | None = None
    T: float = 1.0
    schedule: str = "constant"
    sigma_end: float | None = None
    data_offset: float = 1.0

    name: ClassVar[str] = "gbm"
    prior_type: ClassVar[type] = LogNormalPrior

    def __post_init__(self):
        check_positive(self.sigma, "GBM.sigma")
        check_positive(self.T, "GBM.T")
        check_positive(self.data_offset, "GBM.data_offset")
        check_choice(self.schedule, tuple(SCHEDULES), "GBM.schedule")
        if self.schedule == "linear":
            check_positive(self.sigma_end, "GBM.sigma_end")
        elif self.sigma_end is not None:
            raise ValueError(f"GBM.sigma_end applies only to schedule='linear', not {self.schedule!r}")
        if self.mu is not None and not is_number(self.mu):
            raise ValueError(f"GBM.mu must be None or a finite number, got {self.mu!r}")

    # -- coefficients -------------------------------------------------------------------------
    def sigma_t(self, t: jax.Array) -> jax.Array:
        """Volatility ``sigma(t)``; shape of ``t``."""
        return SCHEDULES[self.schedule][0](self, jnp.asarray(t, jnp.float32))

    def mu_t(self, t: jax.Array) -> jax.Array:
        """Drift ``mu(t)``; shape of ``t``."""
        if self.mu is None:
            return 0.5 * self.sigma_t(t) ** 2
        return jnp.full_like(jnp.asarray(t, jnp.float32), self.mu)

    def log_var(self, t: jax.Array) -> jax.Array:
        """``v_t = int_0^t sigma(s)**2 ds``, the kernel's variance of ``log X_t``; shape of ``t``."""
        return SCHEDULES[self.schedule][1](self, jnp.asarray(t, jnp.float32))

    def log_drift(self, t: jax.Array) -> jax.Array:
        """``int_0^t (mu - sigma**2 / 2) ds``, the mean shift of ``log X_t``; shape of ``t``."""
        if self.mu is None:
            return jnp.zeros_like(jnp.asarray(t, jnp.float32))
        return self.mu * jnp.asarray(t, jnp.float32) - 0.5 * self.log_var(t)

    def time_from_log_var(self, v: jax.Array, iters: int = 48) -> jax.Array:
        """Inverse of :meth:`log_var` on ``[0, T]`` (bisection; ``v_t`` is strictly increasing); shape of ``v``."""
        v = jnp.asarray(v, jnp.float32)
        lo, hi = jnp.zeros_like(v), jnp.full_like(v, self.T)

        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            below = self.log_var(mid) < v
            return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

        lo, hi = jax.lax.fori_loop(0, iters, halve, (lo, hi))
        return 0.5 * (lo + hi)

    def log_mean(self, x0: jax.Array, t: jax.Array) -> jax.Array:
        """``m_t = log x0 + int_0^t (mu - sigma**2/2)``; shape of ``x0`` ``(B, ...)``."""
        return jnp.log(x0) + expand_time(self.log_drift(t), x0)

    # -- kernel -------------------------------------------------------------------------------
    def perturb(self, rng: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """Exact sample of ``X_t | x0``: ``exp(m_t + sqrt(v_t) eps)``; shape of ``x0``."""
        eps = jax.random.normal(rng, x0.shape, x0.dtype)
        return jnp.exp(self.log_mean(x0, t) + expand_time(jnp.sqrt(self.log_var(t)), x0) * eps)

    def cond_score(self, x_t: jax.Array, x0: jax.Array, t: jax.Array) -> jax.Array:
        """The M-DSM target, the conditional Hyvarinen score ``h(x_t | x0) = -1 - (log x_t - m_t) / v_t``; shape of ``x_t``."""
        return -1.0 - (jnp.log(x_t) - self.log_mean(x0, t)) / expand_time(self.log_var(t), x_t)

    def noise_std(self, t: jax.Array) -> jax.Array:
        """``sqrt(v_t)``, the kernel's standard deviation in log space; shape of ``t``."""
        return jnp.sqrt(self.log_var(t))

    def gaussian_coords(self, x: jax.Array) -> jax.Array:
        """``log x``, where the kernel is Gaussian: ``log x_t = log x0 + D(t) + sqrt(v_t) eps``; shape of ``x``."""
        return jnp.log(x)

    def kernel_coeffs(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(1, sqrt(v_t))``: in log space the signal keeps unit weight and the noise has std ``sqrt(v_t)``; shape of ``t``."""
        return jnp.ones_like(jnp.asarray(t, jnp.float32)), self.noise_std(t)

    def score_from_noise(self, eps_hat: jax.Array, t: jax.Array) -> jax.Array:
        """The parametrisation: log-space noise ``eps_hat`` -> Hyvarinen score ``-1 - eps_hat / sqrt(v_t)``.

        Since ``log x_t = m_t + sqrt(v_t) eps`` gives ``h(x_t | x0) = -1 - eps / sqrt(v_t)``, a
        network that predicts ``eps`` (unit scale at every t) yields the score this way.
        """
        return -1.0 - eps_hat / expand_time(self.noise_std(t), eps_hat)

    def score_from_ordinary(self, s: jax.Array, x_t: jax.Array) -> jax.Array:
        """The ``score`` parametrisation: ordinary score ``s = grad_x log p_t`` -> Hyvarinen ``h = x_t * s``."""
        return x_t * s

    def network_input(self, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """``log x_t``: the log domain is where the kernel is Gaussian and O(1) at every t."""
        del t
        return jnp.log(x_t)

    def loss_weight(self, t: jax.Array, weighting: str = "published") -> jax.Array:
        """M-DSM weighting: ``published`` v_t**2, ``noise`` v_t, ``likelihood`` sigma(t)**2; shape of ``t``."""
        check_choice(weighting, WEIGHTINGS, "weighting")
        v = self.log_var(t)
        return {"published": v**2, "noise": v, "likelihood": self.sigma_t(t) ** 2}[weighting]

    # -- reverse-time coefficients used by the samplers ------------------------------------------
    def log_drift_coeff(self, t: jax.Array) -> jax.Array:
        """``mu(t) - 1.5 sigma(t)**2``: the noise-free part of the Dale-Langevin log update; shape of ``t``."""
        return self.mu_t(t) - 1.5 * self.sigma_t(t) ** 2

    # -- prior and data ------------------------------------------------------------------------
    def push_forward_log_moments(self, mean0, var0, t):
        """Mean and variance of ``log X_t`` given those of ``log X_0`` (any broadcastable shapes)."""
        return mean0 + self.log_drift(t), var0 + self.log_var(t)

    def fit_prior(self, x0, per_pixel: bool = True) -> LogNormalPrior:
        """See :func:`fit_prior`."""
        return fit_prior(x0, self, per_pixel=per_pixel)

    def encode(self, u: jax.Array) -> jax.Array:
        """Images in [0, 1] -> positive data ``u + data_offset``."""
        return u + self.data_offset

    def decode(self, x: jax.Array) -> jax.Array:
        """Samples -> images in [0, 1]: shift back and clamp (samples land slightly outside)."""
        return jnp.clip(x - self.data_offset, 0.0, 1.0)


def fit_prior(x0, process: GBM, per_pixel: bool = True) -> LogNormalPrior:
    """Log-normal fit of ``X_T`` when ``X_0`` follows the data ``x0`` of shape ``(N, ...)``.

    ``log X_T ~ N(mean(log x0) + int_0^T (mu - sigma**2/2), var(log x0) + v_T)``, with mean and
    variance per pixel (``per_pixel=True``: loc/scale of shape ``x0.shape[1:]``, matching the first
    two moments of each pixel exactly) or over all pixels (one scalar pair, as published).
    Runs on the host, once per dataset; raises ``ValueError`` if any value is not > 0.
    """
    x0 = np.asarray(x0)
    if not np.all(np.isfinite(x0)) or not np.all(x0 > 0):
        bad = x0[~(np.isfinite(x0) & (x0 > 0))]
        raise ValueError(
            f"fit_prior needs finite data > 0 (GBM data are images shifted by data_offset="
            f"{process.data_offset}); found {bad.size} value(s) <= 0 or non-finite, e.g. {float(bad.flat[0])}"
        )
    mean, var = data_moments(np.log(x0.astype(np.float64)), per_pixel)
    loc, var_t = process.push_forward_log_moments(mean, var, process.T)
    return LogNormalPrior(loc=jnp.asarray(loc, jnp.float32), scale=jnp.sqrt(jnp.asarray(var_t, jnp.float32)))
