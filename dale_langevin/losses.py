"""Denoising score matching: the multiplicative M-DSM objective and its additive twin.

For GBM the target is the conditional Hyvarinen score and the published weighting is
``lambda(t) = v_t**2``, so the per-example loss is ``sum_pixels (v_t (h_pred - h(x_t | x0)))**2``.
The same code serves the VE/VP processes with their Stein-score targets (see
:mod:`dale_langevin.processes.base`).

Network parametrisations (:class:`Parametrisation`; ``config.model.parametrisation``), the one place
where a network's output becomes the score the samplers consume; the networks never see either:

* ``log_noise`` (ours, the default): the network sees ``process.network_input(x_t, t)`` (``log x_t``
  for GBM) and predicts the standardised noise ``eps_hat`` of the kernel in its Gaussian domain;
  the score is ``process.score_from_noise(eps_hat, t)`` (GBM: ``h = -1 - eps_hat / sqrt(v_t)``).
* ``score`` (the paper authors'): the network sees ``x_t`` itself and outputs the ordinary score
  ``s = grad_x log p_t(x_t)``; the score is ``process.score_from_ordinary(s, x_t)`` (GBM: the
  Hyvarinen score ``h = x_t s``; VE/VP: ``s``). Its M-DSM target ``s = h(x_t | x0) / x_t`` grows as
  ``1 / (x_t v_t)`` at small ``t``, where ``log_noise``'s stays of unit scale.

The noise level reaches the network as ``conditioning``: ``noise_level`` (``log std_t``, a float,
for the U-Net and NCSN++) or ``level_index`` (the integer index ``k - 1`` of the level ``t = T k / K``
nearest to ``t``, ``K = n_levels``, for NCSNv2's per-level conditional normalisation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_choice, check_int, check_range
from dale_langevin.processes.base import WEIGHTINGS, DiffusionProcess, ScoreFn, expand_time

T_SAMPLINGS = ("grid", "uniform")
PARAMETRISATIONS = ("log_noise", "score")
CONDITIONINGS = ("noise_level", "level_index")


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


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Parametrisation:
    """How a network's output becomes the score, and how it is told the noise level (see the module docstring).

    Attributes:
      kind: ``log_noise`` (predict the kernel's standardised noise from ``network_input(x_t)``) or
        ``score`` (predict the ordinary score from ``x_t``).
      conditioning: ``noise_level`` (``log std_t``, float ``(B,)``) or ``level_index`` (int32 ``(B,)``
        in ``[0, n_levels)``).
      n_levels: the number of levels ``K`` a ``level_index`` network embeds (``t = T k / K``,
        ``k = 1..K``); unused for ``noise_level``.

    Hashable and a static pytree, so it can key compiled functions and pass through ``jit``.
    """

    kind: str = "log_noise"
    conditioning: str = "noise_level"
    n_levels: int = 1000

    def __post_init__(self):
        check_choice(self.kind, PARAMETRISATIONS, "parametrisation")
        check_choice(self.conditioning, CONDITIONINGS, "conditioning")
        check_int(self.n_levels, "n_levels", 1)


DEFAULT_PARAMETRISATION = Parametrisation()  # log_noise, conditioned on log std_t


def network_conditioning(t: jax.Array, process: DiffusionProcess, param: Parametrisation) -> jax.Array:
    """What a network is given for the noise level at times ``t`` ``(B,)``: ``log std_t`` (float32) or
    the level index ``clip(round(t K / T), 1, K) - 1`` (int32); shape ``(B,)``.

    The index maps the training grid's ``t = T k / K`` (``k = 1..K-1``) and a ``K``-level sampler's
    ``t = T k / K`` (``k = 1..K``) to ``k - 1`` exactly; other times go to the nearest level.
    """
    if param.conditioning == "noise_level":
        return jnp.log(process.noise_std(t))
    k = jnp.round(jnp.asarray(t, jnp.float32) * (param.n_levels / process.T)).astype(jnp.int32)
    return jnp.clip(k, 1, param.n_levels) - 1


def network_score_fn(
    net_fn: Callable[[jax.Array, jax.Array], jax.Array],
    process: DiffusionProcess,
    param: Parametrisation = DEFAULT_PARAMETRISATION,
) -> ScoreFn:
    """The documented parametrisation: a network ``net_fn(inputs, conditioning)`` -> ``score_fn(x_t, t)``.

    ``net_fn`` takes ``(B, ...)`` inputs and the conditioning ``(B,)`` of :func:`network_conditioning`
    and returns ``(B, ...)``. With ``param.kind == "log_noise"`` the inputs are
    ``process.network_input(x_t, t)`` and the output is the noise ``eps_hat``, turned into
    ``process.score_from_noise(eps_hat, t)`` (GBM: ``h = -1 - eps_hat / sqrt(v_t)``); with ``"score"``
    the inputs are ``x_t`` and the output the ordinary score ``s``, turned into
    ``process.score_from_ordinary(s, x_t)`` (GBM: ``h = x_t s``).
    """

    def score_fn(x_t, t):
        cond = network_conditioning(t, process, param)
        if param.kind == "score":
            return process.score_from_ordinary(net_fn(x_t, cond), x_t)
        return process.score_from_noise(net_fn(process.network_input(x_t, t), cond), t)

    return score_fn
