"""Reverse-time samplers: the two multiplicative updates of the paper and additive Euler-Maruyama.

One step goes from ``t`` to ``t - dt``; ``h`` is the score the process's samplers consume
(Hyvarinen ``x * grad log p`` for GBM), ``z ~ N(0, I)`` is passed in so every update is a
deterministic pure function. Shapes: ``x``, ``h``, ``z`` are ``(B, ...)``; ``t`` is ``(B,)``.

- Dale-Langevin (sign preserving, an exponentiated-gradient step; Euler-Maruyama in log space):
  ``x * exp(dt sigma**2 h - dt (mu - 1.5 sigma**2) + sigma sqrt(dt) z)``
- Sign-agnostic (Euler-Maruyama in the ambient space):
  ``x * (1 + dt (2 sigma**2 - mu) + dt sigma**2 h + sigma sqrt(dt) z)``
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from dale_langevin.process import DiffusionProcess, check_choice, expand_time

UpdateFn = Callable[..., jax.Array]


def dale_langevin_update(x: jax.Array, h: jax.Array, t: jax.Array, dt, z: jax.Array, sde) -> jax.Array:
    """Dale-Langevin step ``x * exp(dt sigma**2 h - dt (mu - 1.5 sigma**2) + sigma sqrt(dt) z)``; shape of ``x``.

    A multiplicative update by a positive factor: no coordinate ever changes sign.
    """
    s = expand_time(sde.sigma_t(t), x)
    c = expand_time(sde.log_drift_coeff(t), x)
    return x * jnp.exp(dt * s**2 * h - dt * c + s * jnp.sqrt(dt) * z)


def sign_agnostic_update(x: jax.Array, h: jax.Array, t: jax.Array, dt, z: jax.Array, sde) -> jax.Array:
    """Sign-agnostic step ``x * (1 + dt (2 sigma**2 - mu) + dt sigma**2 h + sigma sqrt(dt) z)``; shape of ``x``."""
    s = expand_time(sde.sigma_t(t), x)
    m = expand_time(sde.mu_t(t), x)
    return x * (1.0 + dt * (2.0 * s**2 - m) + dt * s**2 * h + s * jnp.sqrt(dt) * z)


def euler_maruyama_update(x: jax.Array, score: jax.Array, t: jax.Array, dt, z: jax.Array, sde) -> jax.Array:
    """Reverse Euler-Maruyama step of an additive SDE: ``x - dt (f - g**2 score) + g sqrt(dt) z``; shape of ``x``."""
    g2 = expand_time(sde.diffusion_sq(t), x)
    return x - dt * (sde.drift(x, t) - g2 * score) + jnp.sqrt(g2 * dt) * z


UPDATES: dict[str, UpdateFn] = {
    "dale_langevin": dale_langevin_update,
    "sign_agnostic": sign_agnostic_update,
    "euler_maruyama": euler_maruyama_update,
}


def _validate(sde, method, n_steps, t_end, step_size, n_inner, noise_decay, denoise_steps) -> None:
    check_choice(method, tuple(sde.sampler_methods), f"method for {type(sde).__name__}")
    for name, value, low in (("n_steps", n_steps, 1), ("n_inner", n_inner, 1), ("denoise_steps", denoise_steps, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not 0.0 <= t_end < sde.T:
        raise ValueError(f"t_end must lie in [0, T={sde.T}), got {t_end}")
    if step_size is not None and not step_size > 0:
        raise ValueError(f"step_size must be > 0 or None, got {step_size}")
    if not 0.0 < noise_decay <= 1.0:
        raise ValueError(f"noise_decay must lie in (0, 1], got {noise_decay}")


def time_grid(sde: DiffusionProcess, n_steps: int, t_end: float = 0.0) -> jax.Array:
    """The levels the sampler visits, ``(n_steps,)``: ``T, T - d, ..., t_end + d`` with ``d = (T - t_end) / n_steps``."""
    d = (sde.T - t_end) / n_steps
    return sde.T - d * jnp.arange(n_steps, dtype=jnp.float32)


def sample(
    rng: jax.Array,
    hyv_fn: Callable[[jax.Array, jax.Array], jax.Array],
    x_T: jax.Array,
    sde: DiffusionProcess,
    *,
    method: str = "dale_langevin",
    n_steps: int = 1000,
    t_end: float = 0.0,
    step_size: float | None = None,
    n_inner: int = 1,
    noise_decay: float = 1.0,
    denoise_steps: int = 0,
    return_trajectory: bool = False,
):
    """Runs the reverse process from ``x_T`` ``(B, ...)`` at time ``T`` down to ``t_end``; returns ``x_0`` ``(B, ...)``.

    Args:
      rng: a PRNG key; under ``pmap`` pass one key per device. Noise of level ``i``, inner
        iteration ``j`` uses ``fold_in(fold_in(rng, i), j)``.
      hyv_fn: ``hyv_fn(x, t)`` with ``x`` ``(B, ...)`` and ``t`` ``(B,)`` returns the score the
        method consumes (the Hyvarinen score for GBM). Closed over, so the whole call jit-compiles.
      x_T: start, e.g. a prior sample; for GBM it must be > 0 for ``dale_langevin``.
      sde: the process (a :class:`~dale_langevin.gbm.GBM` for the multiplicative methods).
      method: one of ``sde.sampler_methods``: ``"dale_langevin"`` or ``"sign_agnostic"`` for GBM,
        ``"euler_maruyama"`` for VE/VP.
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
    _validate(sde, method, n_steps, t_end, step_size, n_inner, noise_decay, denoise_steps)
    update = UPDATES[method]
    levels = time_grid(sde, n_steps, t_end)
    dt = (sde.T - t_end) / n_steps if step_size is None else step_size
    batch = x_T.shape[0]

    def step(x, t, z):
        tb = jnp.full((batch,), t, jnp.float32)
        return update(x, hyv_fn(x, tb), tb, dt, z, sde)

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
