"""Distribution-matching distillation (DMD) of a GBM score model into a few-step multiplicative student.

The student is a network of the teacher's architecture and parametrisation, started from the
teacher's weights. It is sampled by :func:`dale_langevin.samplers.few_step.renoise_sample`: at each of
its ``n`` times ``t_i`` it gives ``y0 = E_student[log X_0 | x_{t_i}]`` (Tweedie in log space), and
``x_0 = exp(y0) = x_{t_i} exp(g)``, so every output is positive (Dale's law). Distillation trains it
so that ``exp(y0)`` is a *sample* of the teacher's law rather than its conditional mean.

Why distribution matching, not consistency or progressive distillation: those learn the map of the
probability-flow ODE, and the ODE of our models scores FID near 60 at any NFE against about 36 for
the SDE samplers (``docs/ablation_cpu.md``); a student of the ODE cannot beat it. DMD (Yin et al.,
2024) matches the law the teacher's *score* describes. For a student sample ``y0`` it draws
``t`` and the forward kernel's noise, ``z_t = y0 + std_t n`` in drift-free log space (GBM is
variance exploding there), and descends ``KL(p^student_t || p^teacher_t)`` along the sample: its
gradient in ``z`` is ``s_fake(z_t) - s_real(z_t)``. With Tweedie, ``s(z) = (y0_hat(z) - z) / v_t``, so
the direction is ``(y0_fake - y0_real) / v_t``; as in DMD it is normalised per example by
``mean |y0 - y0_real|`` instead of ``v_t``. The fake score is a second network, started from the
teacher and trained online by M-DSM on the student's samples (:func:`dale_langevin.losses.dsm_loss`).

Shapes: ``y0`` and ``x`` ``(B, ...)``; times ``(B,)``; ``score_fn(x, t)`` as in :mod:`dale_langevin.samplers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_range
from dale_langevin.processes.base import MultiplicativeProcess, ScoreFn, expand_time
from dale_langevin.samplers import few_step
from dale_langevin.samplers.ode import denoised_log


def check_time_range(t_min: float, t_max: float) -> None:
    """Raises ``ValueError`` unless ``0 < t_min < t_max <= 1`` (fractions of ``T`` the DMD times are drawn from)."""
    check_range(t_min, "distill.t_min", 0.0, 1.0, low_open=True, high_open=True, why="(a fraction of T)")
    check_range(t_max, "distill.t_max", t_min, 1.0, low_open=True, why="(a fraction of T above distill.t_min)")


def dmd_direction(y0: jax.Array, y0_real: jax.Array, y0_fake: jax.Array, eps: float = 1e-4) -> jax.Array:
    """The DMD step direction ``(y0_fake - y0_real) / mean_pixels |y0 - y0_real|`` per example; ``(B, ...)``.

    ``y0`` is the student's sample (log space), ``y0_real`` and ``y0_fake`` the teacher's and the fake
    network's denoised estimates of its noised copy. The normaliser (floored at ``eps``) makes the step
    size independent of the noise level, as DMD's weighting does.
    """
    w = jnp.mean(jnp.abs(y0 - y0_real).reshape(y0.shape[0], -1), axis=1)
    return (y0_fake - y0_real) / expand_time(jnp.maximum(w, eps), y0)


def dmd_loss(
    rng: jax.Array,
    y0: jax.Array,
    process: MultiplicativeProcess,
    real_score_fn: ScoreFn,
    fake_score_fn: ScoreFn,
    *,
    t_min: float = 0.02,
    t_max: float = 0.98,
) -> tuple[jax.Array, dict]:
    """The DMD surrogate loss of student samples ``y0 = log x_0`` ``(B, ...)``; returns ``(scalar, aux)``.

    Draws ``t ~ U[t_min T, t_max T]`` per example and ``log x_t = y0 + D(t) + std_t n`` (the GBM kernel,
    with ``y0`` held fixed), and returns ``0.5 mean_B sum_pixels (y0 - sg(y0 - d))**2`` with ``d`` the
    :func:`dmd_direction`: its gradient in ``y0`` is ``d``, the (normalised) gradient of
    ``KL(p^student_t || p^teacher_t)``. ``aux`` holds ``t`` ``(B,)`` and ``direction_norm`` (mean over
    the batch of the per-example RMS of ``d``).
    """
    batch = y0.shape[0]
    t_rng, n_rng = jax.random.split(rng)
    t = process.T * jax.random.uniform(t_rng, (batch,), jnp.float32, t_min, t_max)
    y0_fixed = jax.lax.stop_gradient(y0)
    noise = jax.random.normal(n_rng, y0.shape, y0.dtype)
    y_t = y0_fixed + expand_time(process.log_drift(t), y0) + expand_time(process.noise_std(t), y0) * noise
    y0_real = jax.lax.stop_gradient(denoised_log(y_t, t, real_score_fn, process))
    y0_fake = jax.lax.stop_gradient(denoised_log(y_t, t, fake_score_fn, process))
    d = dmd_direction(y0_fixed, y0_real, y0_fake)
    target = jax.lax.stop_gradient(y0 - d)
    loss = 0.5 * jnp.mean(jnp.sum(((y0 - target) ** 2).reshape(batch, -1), axis=1))
    rms = jnp.sqrt(jnp.mean((d**2).reshape(batch, -1), axis=1))
    return loss, {"t": t, "direction_norm": jnp.mean(rms)}


def student_inputs(
    rng: jax.Array, x_T: jax.Array, ts: jax.Array, score_fn: ScoreFn, process: MultiplicativeProcess, index: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Where the student is trained: ``(log x_{t_i}, t_i)`` with ``i = index`` ``(B,)`` per example; ``((B, ...), (B,))``.

    Runs the student's own sampler (:func:`~dale_langevin.samplers.few_step.renoise_states` with ``score_fn``
    the current student) from ``x_T`` over the times ``ts`` ``(n,)`` without gradients, so step ``i`` is
    trained on the states it meets when sampling (DMD2's backward simulation). ``n - 1`` score
    evaluations; ``rng`` draws the same re-noising the sampler would with that key.
    """
    states = jax.lax.stop_gradient(few_step.renoise_states(rng, score_fn, x_T, process, ts))  # (n, B, ...)
    y = jnp.take_along_axis(states, index.reshape(1, x_T.shape[0], *([1] * (x_T.ndim - 1))), axis=0)[0]
    return y, ts[index]
