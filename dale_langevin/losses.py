"""Denoising score matching: the multiplicative M-DSM objective and its additive twin.

For GBM the target is the conditional Hyvarinen score and the published weighting is
``lambda(t) = v_t**2``, so the per-example loss is ``sum_pixels (v_t (h_pred - h(x_t | x0)))**2``.
The same code serves the VE/VP processes with their Stein-score targets (see
:mod:`dale_langevin.processes.base`).

Network parametrisation: a network sees ``process.network_input(x_t, t)`` (``log x_t`` for GBM)
and the noise level ``log std_t``, and predicts the standardised noise ``eps_hat`` of the kernel in
its Gaussian domain; :func:`network_score_fn` turns it into the score via
``process.score_from_noise`` (GBM: ``h = -1 - eps_hat / sqrt(v_t)``). The network never sees it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_choice, check_int, check_range
from dale_langevin.processes.base import WEIGHTINGS, DiffusionProcess, ScoreFn, expand_time

T_SAMPLINGS = ("grid", "uniform")


def _sum_per_example(a: jax.Array) -> jax.Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def dsm_per_example(
    score_pred: jax.Array,
    x_t: jax.Array,
    x0: jax.Array,
    t: jax.Array,
    process: DiffusionProcess,
    weighting: str = "published",
) -> jax.Array:
    """``sum_pixels lambda(t) (score_pred - cond_score(x_t | x0))**2``; inputs ``(B, ...)``, t ``(B,)``; returns ``(B,)``."""
    lam = expand_time(process.loss_weight(t, weighting), x_t)
    return _sum_per_example(lam * (score_pred - process.cond_score(x_t, x0, t)) ** 2)


def mesm_loss(
    h_pred: jax.Array, h_true: jax.Array, x: jax.Array, t: jax.Array, process, weighting: str = "published"
) -> jax.Array:
    """Explicit score matching ``mean_B sum_pixels lambda(t) (h_pred - h_true)**2``; scalar.

    ``h_true`` is the marginal score at ``(x, t)``; ``x`` only fixes the broadcast shape. M-DSM and
    M-ESM differ by a constant that does not depend on ``h_pred``.
    """
    lam = expand_time(process.loss_weight(t, weighting), x)
    return jnp.mean(_sum_per_example(lam * (h_pred - h_true) ** 2))


def check_settings(
    process: DiffusionProcess,
    *,
    weighting: str = "published",
    t_sampling: str = "grid",
    n_time_levels: int = 1000,
    t_min: float = 1e-3,
) -> None:
    """Raises ``ValueError`` naming the first bad loss setting (the keywords of :func:`dsm_loss`)."""
    check_choice(weighting, WEIGHTINGS, "weighting")
    check_choice(t_sampling, T_SAMPLINGS, "t_sampling")
    if t_sampling == "grid":
        check_int(n_time_levels, "n_time_levels", 2)
    else:
        check_range(t_min, "t_min", 0.0, process.T, low_open=True, high_open=True)


def sample_time(
    rng: jax.Array,
    batch: int,
    process: DiffusionProcess,
    t_sampling: str = "grid",
    n_time_levels: int = 1000,
    t_min: float = 1e-3,
) -> jax.Array:
    """Training times ``(batch,)``: ``grid`` draws ``T k / N`` for ``k`` uniform in ``{1..N-1}``, ``N =
    n_time_levels`` (published); ``uniform`` draws from ``U[t_min, T]``."""
    check_settings(process, t_sampling=t_sampling, n_time_levels=n_time_levels, t_min=t_min)
    if t_sampling == "grid":
        k = jax.random.randint(rng, (batch,), 1, n_time_levels)
        return process.T * k.astype(jnp.float32) / n_time_levels
    return jax.random.uniform(rng, (batch,), jnp.float32, t_min, process.T)


def _draw(rng: jax.Array, x0: jax.Array, process: DiffusionProcess, t_sampling: str, n_time_levels: int, t_min: float):
    """``(t, x_t)`` from one key for the batch, or from a batch of keys ``(B,)``, one per example."""
    if rng.ndim == 0:
        t_rng, x_rng = jax.random.split(rng)
        t = sample_time(t_rng, x0.shape[0], process, t_sampling, n_time_levels, t_min)
        return t, process.perturb(x_rng, x0, t)

    def one(key, x):
        t_rng, x_rng = jax.random.split(key)
        t = sample_time(t_rng, 1, process, t_sampling, n_time_levels, t_min)
        return t[0], process.perturb(x_rng, x[None], t)[0]

    return jax.vmap(one)(rng, x0)


def dsm_loss(
    rng: jax.Array,
    score_fn: ScoreFn,
    x0: jax.Array,
    process: DiffusionProcess,
    *,
    weighting: str = "published",
    t_sampling: str = "grid",
    n_time_levels: int = 1000,
    t_min: float = 1e-3,
) -> jax.Array:
    """Batch-mean denoising score-matching loss; ``x0`` ``(B, ...)``, returns a scalar.

    Draws ``t`` (see :func:`sample_time`) and ``x_t ~ p(x_t | x0)``, evaluates ``score_fn(x_t, t)``
    and averages :func:`dsm_per_example` over the batch. With a :class:`~dale_langevin.processes.gbm.GBM` this
    is the M-DSM objective of the paper.

    ``rng`` is one typed key, or a batch of typed keys ``(B,)`` giving each example its own draws
    (so a batch split over devices draws exactly what the whole batch would on one device).
    """
    if rng.ndim not in (0, 1) or (rng.ndim == 1 and rng.shape[0] != x0.shape[0]):
        raise ValueError(f"rng must be one typed key or one per example ({x0.shape[0]},), got shape {rng.shape}")
    t, x_t = _draw(rng, x0, process, t_sampling, n_time_levels, t_min)
    return jnp.mean(dsm_per_example(score_fn(x_t, t), x_t, x0, t, process, weighting))


def network_score_fn(net_fn: Callable[[jax.Array, jax.Array], jax.Array], process: DiffusionProcess) -> ScoreFn:
    """The documented parametrisation: a noise-predicting network -> ``score_fn(x_t, t)``.

    ``net_fn(inputs, noise_level)`` takes ``process.network_input(x_t, t)`` ``(B, ...)`` and
    ``log std_t`` ``(B,)`` and predicts the kernel's standardised noise ``eps_hat`` ``(B, ...)``;
    the score is ``process.score_from_noise(eps_hat, t)`` (GBM: ``h = -1 - eps_hat / sqrt(v_t)``).
    """

    def score_fn(x_t, t):
        eps_hat = net_fn(process.network_input(x_t, t), jnp.log(process.noise_std(t)))
        return process.score_from_noise(eps_hat, t)

    return score_fn
