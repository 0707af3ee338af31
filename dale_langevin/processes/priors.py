"""Priors at the terminal time T: log-normal (multiplicative) and Gaussian (additive).

Both are pytrees (``loc`` and ``scale`` are leaves), so a fitted prior can be passed into
``jit``/``pmap`` like any array. ``loc``/``scale`` are scalars (one pair for the whole image, as
published) or per-pixel arrays of the data's event shape, e.g. ``(H, W, C)``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.tree_util.register_dataclass, data_fields=["loc", "scale"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class GaussianPrior:
    """Elementwise normal law ``N(loc, scale**2)``; ``loc``/``scale`` broadcast to the sample's trailing dims."""

    loc: jax.Array
    scale: jax.Array

    def sample(self, rng: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        """Draws an array of ``shape`` (e.g. ``(B, H, W, C)``)."""
        z = jax.random.normal(rng, shape, dtype)
        return (jnp.asarray(self.loc, dtype) + jnp.asarray(self.scale, dtype) * z).astype(dtype)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Elementwise log density, same shape as ``x``; sum over pixels for the joint density."""
        return jax.scipy.stats.norm.logpdf(x, self.loc, self.scale)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["loc", "scale"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LogNormalPrior:
    """Elementwise log-normal law: ``log X ~ N(loc, scale**2)``, so every sample is > 0."""

    loc: jax.Array
    scale: jax.Array

    def sample(self, rng: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        """Draws a strictly positive array of ``shape`` (e.g. ``(B, H, W, C)``)."""
        return jnp.exp(GaussianPrior(self.loc, self.scale).sample(rng, shape, dtype))

    def log_prob(self, x: jax.Array) -> jax.Array:
        """Elementwise log density of ``x > 0`` (includes the ``-log x`` Jacobian), shape of ``x``."""
        logx = jnp.log(x)
        return jax.scipy.stats.norm.logpdf(logx, self.loc, self.scale) - logx


def data_moments(y: np.ndarray, per_pixel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of ``y`` of shape ``(N, ...)`` over the data axis (``per_pixel``) or all axes.

    Accumulates in float64 on the host: the prior is fitted once, from the whole training set.
    Returns arrays of shape ``y.shape[1:]`` (per pixel) or ``()``.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim < 1 or y.shape[0] < 2:
        raise ValueError(f"fit_prior needs at least 2 examples along axis 0, got shape {y.shape}")
    axis = 0 if per_pixel else None
    return y.mean(axis=axis), y.var(axis=axis)
