"""Reverse-time SDE samplers: the two multiplicative updates of the paper and additive Euler-Maruyama.

One step goes from ``t`` to ``t - dt``; ``h`` is the score the process's samplers consume
(Hyvarinen ``x * grad log p`` for GBM), ``z ~ N(0, I)`` is passed in so every update is a
deterministic pure function. Shapes: ``x``, ``h``, ``z`` are ``(B, ...)``; ``t`` is ``(B,)``.

- Dale-Langevin (sign preserving, an exponentiated-gradient step; Euler-Maruyama in log space):
  ``x * exp(dt sigma**2 h - dt (mu - 1.5 sigma**2) + sigma sqrt(dt) z)``
- Sign-agnostic (Euler-Maruyama in the ambient space):
  ``x * (1 + dt (2 sigma**2 - mu) + dt sigma**2 h + sigma sqrt(dt) z)``

All three run through :func:`reverse_sde` (one ``lax.scan`` over the levels) and are registered as
``dale_langevin``, ``sign_agnostic`` (GBM) and ``euler_maruyama`` (VE, VP, log-space VE).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_int, check_range
from dale_langevin.processes.base import AdditiveProcess, DiffusionProcess, MultiplicativeProcess, ScoreFn, expand_time
from dale_langevin.samplers import registry

UpdateFn = Callable[..., jax.Array]  # (x, score, t, dt, z, process) -> x at t - dt


def dale_langevin_update(
    x: jax.Array, h: jax.Array, t: jax.Array, dt, z: jax.Array, process: MultiplicativeProcess
) -> jax.Array:
    """Dale-Langevin step ``x * exp(dt sigma**2 h - dt (mu - 1.5 sigma**2) + sigma sqrt(dt) z)``; shape of ``x``.

    A multiplicative update by a positive factor: no coordinate ever changes sign.
    """
    s = expand_time(process.sigma_t(t), x)
    c = expand_time(process.log_drift_coeff(t), x)
    return x * jnp.exp(dt * s**2 * h - dt * c + s * jnp.sqrt(dt) * z)


def sign_agnostic_update(
    x: jax.Array, h: jax.Array, t: jax.Array, dt, z: jax.Array, process: MultiplicativeProcess
) -> jax.Array:
    """Sign-agnostic step ``x * (1 + dt (2 sigma**2 - mu) + dt sigma**2 h + sigma sqrt(dt) z)``; shape of ``x``."""
    s = expand_time(process.sigma_t(t), x)
    m = expand_time(process.mu_t(t), x)
    return x * (1.0 + dt * (2.0 * s**2 - m) + dt * s**2 * h + s * jnp.sqrt(dt) * z)


def euler_maruyama_update(
    x: jax.Array, score: jax.Array, t: jax.Array, dt, z: jax.Array, process: AdditiveProcess
) -> jax.Array:
    """Reverse Euler-Maruyama step of an additive SDE: ``x - dt (f - g**2 score) + g sqrt(dt) z``; shape of ``x``."""
    g2 = expand_time(process.diffusion_sq(t), x)
    return x - dt * (process.drift(x, t) - g2 * score) + jnp.sqrt(g2 * dt) * z


def check(
    process: DiffusionProcess,
    *,
    n_steps: int,
    t_end: float,
    step_size: float | None,
    n_inner: int,
    noise_decay: float,
    denoise_steps: int,
) -> None:
    """Raises ``ValueError`` naming the first bad setting of :func:`reverse_sde`."""
    check_int(n_steps, "n_steps", 1)
    check_int(n_inner, "n_inner", 1)
    check_int(denoise_steps, "denoise_steps", 0)
    check_range(t_end, "t_end", 0.0, process.T, high_open=True)
    if step_size is not None:
        check_range(step_size, "step_size", 0.0, float("inf"), low_open=True, high_open=True, why="or None")
    check_range(noise_decay, "noise_decay", 0.0, 1.0, low_open=True)


def time_grid(process: DiffusionProcess, n_steps: int, t_end: float = 0.0) -> jax.Array:
    """The levels the sampler visits, ``(n_steps,)``: ``T, T - d, ..., t_end + d`` with ``d = (T - t_end) / n_steps``."""
    d = (process.T - t_end) / n_steps
    return process.T - d * jnp.arange(n_steps, dtype=jnp.float32)


def reverse_sde(
    rng: jax.Array,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: DiffusionProcess,
    *,
    update: UpdateFn,
    n_steps: int = 1000,
    t_end: float = 0.0,
    step_size: float | None = None,
    n_inner: int = 1,
    noise_decay: float = 1.0,
    denoise_steps: int = 0,
    return_trajectory: bool = False,
):
    """Runs the reverse process with ``update`` from ``x_T`` ``(B, ...)`` at ``T`` down to ``t_end``; returns ``x_0`` ``(B, ...)``.

    Args:
      rng: a PRNG key; under ``pmap`` pass one key per device. Noise of level ``i``, inner
        iteration ``j`` uses ``fold_in(fold_in(rng, i), j)``.
      score_fn: ``score_fn(x, t)`` with ``x`` ``(B, ...)`` and ``t`` ``(B,)`` returns the score the
        update consumes (the Hyvarinen score for GBM). Closed over, so the whole call jit-compiles.
      x_T: start, e.g. a prior sample; for GBM it must be > 0 for ``dale_langevin``.
      process: the forward process (a :class:`~dale_langevin.processes.gbm.GBM` for the
        multiplicative updates, VE/VP/log-space VE for Euler-Maruyama).
      update: one of :func:`dale_langevin_update`, :func:`sign_agnostic_update`, :func:`euler_maruyama_update`.
      n_steps: number of time levels ``T, T - d, ..., t_end + d`` with ``d = (T - t_end) / n_steps``.
      t_end: the time the last step lands on (0 by default).
      step_size: the ``dt`` of each update. ``None`` uses ``d``, which makes the sampler a plain
        Euler-Maruyama discretisation of the reverse SDE; the published samplers tune it separately.
      n_inner: updates per level, all at that level's ``t`` (the published ``L``).
      noise_decay: the noise of level ``i`` is multiplied by ``noise_decay**i`` (published
        annealing, e.g. 0.995); 1 disables it.
      denoise_steps: noise-free updates appended at the last level's time (the published final
        "Tweedie" iterations; the score is not evaluated at ``t = 0``, where it is singular).
      return_trajectory: also return the state after every level, ``(n_steps, B, ...)``.

    Network evaluations: ``n_steps * n_inner + denoise_steps``. One ``lax.scan`` over the levels.
    """
    check(
        process,
        n_steps=n_steps,
        t_end=t_end,
        step_size=step_size,
        n_inner=n_inner,
        noise_decay=noise_decay,
        denoise_steps=denoise_steps,
    )
    levels = time_grid(process, n_steps, t_end)
    dt = (process.T - t_end) / n_steps if step_size is None else step_size
    batch = x_T.shape[0]

    def step(x, t, z):
        tb = jnp.full((batch,), t, jnp.float32)
        return update(x, score_fn(x, tb), tb, dt, z, process)

    def level(x, inputs):
        i, t = inputs
        noise_scale = jnp.asarray(noise_decay, jnp.float32) ** i
        level_key = jax.random.fold_in(rng, i)

        def inner(x, j):
            z = noise_scale * jax.random.normal(jax.random.fold_in(level_key, j), x.shape, x.dtype)
            return step(x, t, z), None

        x, _ = jax.lax.scan(inner, x, jnp.arange(n_inner))
        return x, (x if return_trajectory else None)

    x, trajectory = jax.lax.scan(level, x_T, (jnp.arange(n_steps), levels))
    if denoise_steps:
        zeros = jnp.zeros_like(x)
        x, _ = jax.lax.scan(lambda x, _: (step(x, levels[-1], zeros), None), x, None, length=denoise_steps)
    return (x, trajectory) if return_trajectory else x


def network_evaluations(*, n_steps: int, n_inner: int, denoise_steps: int, **_) -> int:
    """Score evaluations per sample of :func:`reverse_sde`: ``n_steps * n_inner + denoise_steps``."""
    return n_steps * n_inner + denoise_steps


# The samplers whose published reverse loop counts network evaluations as authors_loop_evaluations does.
AUTHORS_LOOP = ("dale_langevin", "sign_agnostic")


def authors_loop_evaluations(*, n_steps: int, n_inner: int, denoise_steps: int, **_) -> int:
    """Network evaluations per sample of the paper authors' reverse loop at the same settings:
    ``n_steps * (n_inner + 1) + denoise_steps``.

    Their loop evaluates the network ``L + 1`` times per level (``L = n_inner``) and discards one
    evaluation, so the count the paper's tables imply is one per level above :func:`network_evaluations`.
    """
    return n_steps * (n_inner + 1) + denoise_steps


# name -> (update, the process names it supports); each is registered as a sampler of its own.
UPDATES: dict[str, tuple[UpdateFn, tuple[str, ...]]] = {
    "dale_langevin": (dale_langevin_update, ("gbm",)),
    "sign_agnostic": (sign_agnostic_update, ("gbm",)),
    "euler_maruyama": (euler_maruyama_update, ("ve", "vp", "log_ve")),
}
for _name, (_update, _processes) in UPDATES.items():
    registry.register(
        _name,
        functools.partial(reverse_sde, update=_update),
        processes=_processes,
        nfe=network_evaluations,
        check=check,
    )
