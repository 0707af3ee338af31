"""Closed-form test beds: i.i.d. mixture data whose marginals stay mixtures of the same kind.

* :class:`LogNormalMixture` for GBM: if ``log X_0 ~ sum_k w_k N(a_k, b_k**2)`` per coordinate, then
  ``log X_t ~ sum_k w_k N(a_k + int_0^t (mu - sigma**2/2), b_k**2 + v_t)``, so the exact Hyvarinen
  score is ``h(x, t) = d/dy log p_Y(y) - 1`` at ``y = log x``.
* :class:`GaussianMixture` for the additive processes (VE, VP, log-space VE): if
  ``X_0 ~ sum_k w_k N(m_k, s_k**2)``, then ``X_t ~ sum_k w_k N(a_t m_k, a_t**2 s_k**2 + std_t**2)``,
  and the exact Stein score is that mixture's ``d/dx log p``.

Used by the tests, the demo and notebooks to check samplers against the truth.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin.processes.base import AdditiveProcess
from dale_langevin.processes.gbm import GBM


def _checked_mixture(weights, means, stds, names: tuple[str, str, str]):
    """``(weights, means, stds)`` as float32 ``(K,)`` arrays; ``ValueError`` unless they share one shape,
    the weights are > 0 and sum to 1, and the stds are > 0 (``names`` name the three in the messages)."""
    w, m, s = (jnp.asarray(a, jnp.float32) for a in (weights, means, stds))
    if not (w.ndim == 1 and w.shape == m.shape == s.shape):
        raise ValueError(f"{', '.join(names)} must share one shape (K,), got {w.shape}, {m.shape}, {s.shape}")
    if np.any(np.asarray(w) <= 0) or abs(float(w.sum()) - 1.0) > 1e-5 or np.any(np.asarray(s) <= 0):
        raise ValueError(f"weights must be > 0 and sum to 1, {names[2]} must be > 0")
    return w, m, s


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weights", "log_means", "log_stds"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LogNormalMixture:
    """Per-coordinate law of ``X`` with ``log X ~ sum_k weights[k] N(log_means[k], log_stds[k]**2)``; fields ``(K,)``."""

    weights: jax.Array
    log_means: jax.Array
    log_stds: jax.Array

    @classmethod
    def create(cls, weights, log_means, log_stds) -> LogNormalMixture:
        """Validates and converts; weights must be positive and sum to 1."""
        w, m, s = _checked_mixture(weights, log_means, log_stds, ("weights", "log_means", "log_stds"))
        return cls(w, m, s)

    def sample(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Draws ``X_0`` of ``shape``; every coordinate i.i.d. and > 0."""
        k_rng, z_rng = jax.random.split(rng)
        k = jax.random.categorical(k_rng, jnp.log(self.weights), shape=shape)
        return jnp.exp(self.log_means[k] + self.log_stds[k] * jax.random.normal(z_rng, shape))

    def marginal(self, process: GBM, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Component log-means and log-variances of ``X_t``; each of shape ``t.shape + (K,)``."""
        t = jnp.asarray(t, jnp.float32)[..., None]
        return process.push_forward_log_moments(self.log_means, self.log_stds**2, t)

    def sample_marginal(self, rng: jax.Array, process: GBM, t: float, shape: tuple[int, ...]) -> jax.Array:
        """Draws ``X_t`` of ``shape`` at a scalar time ``t`` exactly (no simulation)."""
        m, v = self.marginal(process, t)
        return LogNormalMixture(self.weights, m, jnp.sqrt(v)).sample(rng, shape)

    def hyvarinen(self, x: jax.Array, process: GBM, t: jax.Array) -> jax.Array:
        """Exact marginal Hyvarinen score ``x * grad_x log p_t(x)``; ``x`` ``(B, ...)``, ``t`` ``(B,)`` or scalar."""
        y, logits, m, v = self._components(x, process, t)
        r = jax.nn.softmax(logits, axis=-1)
        return jnp.sum(r * (-(y - m) / v), axis=-1) - 1.0

    def score_fn(self, process: GBM):
        """The exact Hyvarinen score as a sampler-ready ``score_fn(x, t)``, ``x`` ``(B, ...)``, ``t`` ``(B,)``."""
        return lambda x, t: self.hyvarinen(x, process, t)

    def log_prob(self, x: jax.Array, process: GBM, t: jax.Array) -> jax.Array:
        """Exact marginal log density of ``X_t`` at ``x > 0`` (elementwise, with the ``-log x`` Jacobian)."""
        y, logits, _, _ = self._components(x, process, t)
        return jax.nn.logsumexp(logits, axis=-1) - y[..., 0]

    def _components(self, x, process, t):
        """``y = log x`` and per-component log weights + Gaussian log densities, ``x.shape + (K,)``."""
        t = jnp.asarray(t, jnp.float32)
        m, v = self.marginal(process, t)  # t.shape + (K,)
        if t.ndim:  # (B, K) -> (B, 1, ..., 1, K)
            m = m.reshape(m.shape[:1] + (1,) * (x.ndim - 1) + m.shape[1:])
            v = v.reshape(m.shape)
        y = jnp.log(x)[..., None]
        logits = jnp.log(self.weights) + jax.scipy.stats.norm.logpdf(y, m, jnp.sqrt(v))
        return y, logits, m, v


@functools.partial(jax.tree_util.register_dataclass, data_fields=["weights", "means", "stds"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Per-coordinate law ``X ~ sum_k weights[k] N(means[k], stds[k]**2)`` of additive-process data; fields ``(K,)``."""

    weights: jax.Array
    means: jax.Array
    stds: jax.Array

    @classmethod
    def create(cls, weights, means, stds) -> GaussianMixture:
        """Validates and converts; weights must be positive and sum to 1, stds positive."""
        w, m, s = _checked_mixture(weights, means, stds, ("weights", "means", "stds"))
        return cls(w, m, s)

    def sample(self, rng: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Draws ``X_0`` of ``shape``; every coordinate i.i.d."""
        k_rng, z_rng = jax.random.split(rng)
        k = jax.random.categorical(k_rng, jnp.log(self.weights), shape=shape)
        return self.means[k] + self.stds[k] * jax.random.normal(z_rng, shape)

    def marginal(self, process: AdditiveProcess, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Component means and variances of ``X_t``; each of shape ``t.shape + (K,)``."""
        t = jnp.asarray(t, jnp.float32)[..., None]
        return process.push_forward_moments(self.means, self.stds**2, t)

    def sample_marginal(self, rng: jax.Array, process: AdditiveProcess, t: float, shape: tuple[int, ...]) -> jax.Array:
        """Draws ``X_t`` of ``shape`` at a scalar time ``t`` exactly (no simulation)."""
        m, v = self.marginal(process, t)
        return GaussianMixture(self.weights, m, jnp.sqrt(v)).sample(rng, shape)

    def score(self, x: jax.Array, process: AdditiveProcess, t: jax.Array) -> jax.Array:
        """Exact marginal Stein score ``grad_x log p_t(x)``, shape of ``x``; ``x`` ``(B, ...)``, ``t`` ``(B,)`` or scalar."""
        t = jnp.asarray(t, jnp.float32)
        m, v = self.marginal(process, t)
        if t.ndim:  # (B, K) -> (B, 1, ..., 1, K)
            m = m.reshape(m.shape[:1] + (1,) * (x.ndim - 1) + m.shape[1:])
            v = v.reshape(m.shape)
        y = x[..., None]
        r = jax.nn.softmax(jnp.log(self.weights) + jax.scipy.stats.norm.logpdf(y, m, jnp.sqrt(v)), axis=-1)
        return jnp.sum(r * (-(y - m) / v), axis=-1)

    def score_fn(self, process: AdditiveProcess):
        """The exact Stein score as a sampler-ready ``score_fn(x, t)``, ``x`` ``(B, ...)``, ``t`` ``(B,)``."""
        return lambda x, t: self.score(x, process, t)


def _component_stats(y: np.ndarray, w, m, s) -> dict[str, np.ndarray]:
    """Assigns each value of ``y`` ``(N,)`` to its most responsible component; weights, means, stds ``(K,)``."""
    w, m, s = (np.asarray(a, np.float64) for a in (w, m, s))
    logits = np.log(w) - np.log(s) - 0.5 * ((y[:, None] - m) / s) ** 2
    k = np.argmax(logits, axis=1)
    K = len(w)
    counts = np.bincount(k, minlength=K)
    means = np.array([y[k == j].mean() if counts[j] else np.nan for j in range(K)])
    stds = np.array([y[k == j].std() if counts[j] > 1 else np.nan for j in range(K)])
    return {"weights": counts / max(len(y), 1), "means": means, "stds": stds}


def recovery_stats(x: jax.Array, mixture: LogNormalMixture | GaussianMixture) -> dict[str, np.ndarray]:
    """Per-component weight, mean and std of samples ``x`` (any shape, i.i.d. coordinates).

    Each coordinate is assigned to its most responsible component under ``mixture`` at ``t = 0``.
    For a :class:`LogNormalMixture` the statistics are of ``log x`` (keys ``log_means``/``log_stds``),
    and non-positive values count as bad; for a :class:`GaussianMixture` of ``x`` (``means``/``stds``).
    Returns numpy arrays of shape ``(K,)`` and ``bad_fraction``, the fraction of values left out.
    """
    x = np.asarray(x, np.float64).ravel()
    if isinstance(mixture, GaussianMixture):
        bad = ~np.isfinite(x)
        stats = _component_stats(x[~bad], mixture.weights, mixture.means, mixture.stds)
        return {**stats, "bad_fraction": bad.mean()}
    bad = ~np.isfinite(x) | (x <= 0)
    stats = _component_stats(np.log(x[~bad]), mixture.weights, mixture.log_means, mixture.log_stds)
    return {
        "weights": stats["weights"],
        "log_means": stats["means"],
        "log_stds": stats["stds"],
        "bad_fraction": bad.mean(),
    }
