"""Stochastic few-step samplers of GBM in log space: DDIM with ``eta`` (ancestral at 1) and SDE-DPM-Solver-2M.

With ``y = log x`` and ``z = y - D(t)`` (``D = int_0^t (mu - sigma**2/2)``, :meth:`GBM.log_drift`) the
forward process is variance exploding: ``z_t = y_0 + std_t eps`` with ``std_t**2 = v_t``. Given the
denoised estimate ``y0 = z + v_t (h + 1)`` (Tweedie in log space) and its noise
``eps = (z - y0) / std_t = -std_t (h + 1)``, the ``ddim`` step from ``t`` to ``s < t`` is

    z_s = y0 + sqrt(v_s - c**2) eps + c n,     c = eta std_s sqrt(1 - v_s / v_t),   n ~ N(0, I).

``eta = 0`` is deterministic and equals DPM-Solver-1 on the probability-flow ODE
(:mod:`dale_langevin.samplers.ode`); ``eta = 1`` draws from the Gaussian posterior
``z_s | z_t, y0 ~ N(y0 + (v_s/v_t)(z_t - y0), v_s (v_t - v_s) / v_t)`` (ancestral sampling, DDPM for
VE). ``dpm2m`` (second order, multistep) integrates the same reverse SDE exactly for ``y0`` linear
in ``-log std``, fitted through the last two estimates. Both cost one score evaluation per step and
move ``log x``, so outputs stay > 0. The grid is :func:`dale_langevin.samplers.ode.ode_time_grid` from ``T``
down to ``t_end > 0``, followed by ``denoise_steps`` Tweedie updates at ``t_end``
(:func:`tweedie_iterations`). Shapes: ``x`` ``(B, ...)``; ``score_fn(x, t)`` with ``t`` ``(B,)`` as in
:func:`dale_langevin.samplers.sample`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_int, check_range
from dale_langevin.processes.base import MultiplicativeProcess, ScoreFn
from dale_langevin.samplers import ode, registry
from dale_langevin.samplers.ode import denoised_log


def ddim_coefficients(std_t, std_s, eta):
    """``(a, c)`` of the step ``z_s = y0 + a (z_t - y0) + c n``: ``c = eta std_s sqrt(1 - v_s/v_t)``, ``a = sqrt(v_s - c**2) / std_t``.

    Scalars (or broadcastable arrays); ``a = std_s / std_t`` at ``eta = 0``, ``v_s / v_t`` at ``eta = 1``.
    """
    ratio_sq = (std_s / std_t) ** 2
    c = eta * std_s * jnp.sqrt(jnp.maximum(1.0 - ratio_sq, 0.0))
    a = jnp.sqrt(jnp.maximum(std_s**2 - c**2, 0.0)) / std_t
    return a, c


def ddim_step(z_t: jax.Array, y0: jax.Array, std_t, std_s, eta, noise: jax.Array) -> jax.Array:
    """One DDIM step in drift-free log space, ``z_s = y0 + a (z_t - y0) + c noise`` (see :func:`ddim_coefficients`); shape of ``z_t``.

    No network call: ``y0`` is the denoised estimate at ``t``, ``noise`` a standard normal draw.
    """
    a, c = ddim_coefficients(std_t, std_s, eta)
    return y0 + a * (z_t - y0) + c * noise


def check(
    process: MultiplicativeProcess, *, eta: float, n_steps: int, t_end: float, spacing: str, denoise_steps: int
) -> None:
    """Raises ``ValueError`` naming the first bad setting of :func:`ddim_sample` / :func:`dpm2m_sample`."""
    check_int(n_steps, "n_steps", 1)
    check_int(denoise_steps, "denoise_steps", 0)
    check_range(eta, "eta", 0.0, 1.0, why="(0: probability-flow ODE, 1: reverse SDE)")
    check_range(t_end, "t_end", 0.0, process.T, low_open=True, high_open=True, why="(the score is singular at 0)")
    ode.check_spacing(spacing)


def tweedie_iterations(y: jax.Array, t: float, score_fn: ScoreFn, process: MultiplicativeProcess, n: int) -> jax.Array:
    """``log x_0`` from ``y = log x_t`` ``(B, ...)`` by ``n`` Tweedie updates at the fixed time ``t``; shape of ``y``.

    In drift-free coordinates ``z = y - D(t)`` each update is ``z <- z + v_t (h + 1)``, i.e.
    ``z + v_t grad_z log p_t(z)``. One is the posterior mean of ``log X_0``; repeating it climbs to a
    mode of the ``t``-smoothed law, which sharpens strokes and clears background speckle like the
    Dale-Langevin sampler's noise-free final updates (the same update when their step equals
    ``t``). ``n = 0`` returns ``y`` unchanged. ``n`` score evaluations in one ``lax.scan``.
    """
    if n == 0:
        return y
    tb = jnp.full((y.shape[0],), t)
    drift = process.log_drift(t)
    z, _ = jax.lax.scan(lambda z, _: (denoised_log(z + drift, tb, score_fn, process), None), y - drift, None, length=n)
    return z


def ddim_sample(
    rng: jax.Array,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: MultiplicativeProcess,
    *,
    eta: float = 1.0,
    n_steps: int = 50,
    t_end: float = 5e-3,
    spacing: str = "log_std",
    denoise_steps: int = 10,
    return_trajectory: bool = False,
):
    """Runs ``n_steps`` DDIM steps from ``x_T`` ``(B, ...)`` at ``T`` down to ``t_end``; returns ``x_0`` ``(B, ...)``, > 0.

    Args:
      rng: a PRNG key, split into one key per step (under ``pmap``, one key per device).
      score_fn: the Hyvarinen score ``score_fn(x, t)``, ``x`` ``(B, ...)``, ``t`` ``(B,)``.
      x_T: start, > 0 (e.g. a fitted log-normal prior sample).
      process: the :class:`~dale_langevin.processes.gbm.GBM` forward process.
      eta: noise fraction in [0, 1]: 0 deterministic (= ``ode`` solver ``dpm1``), 1 ancestral.
      n_steps: steps on :func:`~dale_langevin.samplers.ode.ode_time_grid` (``spacing`` ``log_std`` or ``uniform``).
      t_end: the last grid time, > 0.
      denoise_steps: Tweedie updates at ``t_end`` (:func:`tweedie_iterations`): 1 is the posterior
        mean, more sharpen (10 as the demo's Dale-Langevin sampler), 0 returns the state at ``t_end``.
      return_trajectory: also return the state after every step, ``(n_steps, B, ...)``.

    Network evaluations: ``n_steps + denoise_steps`` (:func:`network_evaluations`). One ``lax.scan``.
    """
    check(process, eta=eta, n_steps=n_steps, t_end=t_end, spacing=spacing, denoise_steps=denoise_steps)
    ts = ode.ode_time_grid(process, n_steps, t_end, spacing)
    batch = x_T.shape[0]

    def body(y, inputs):
        t, s, key = inputs
        y0 = denoised_log(y, jnp.full((batch,), t), score_fn, process)
        noise = jax.random.normal(key, y.shape, y.dtype)
        z_s = ddim_step(y - process.log_drift(t), y0, process.noise_std(t), process.noise_std(s), eta, noise)
        y = z_s + process.log_drift(s)
        return y, (jnp.exp(y) if return_trajectory else None)

    keys = jax.random.split(rng, n_steps)
    y, trajectory = jax.lax.scan(body, jnp.log(x_T), (ts[:-1], ts[1:], keys))
    x = jnp.exp(tweedie_iterations(y, t_end, score_fn, process, denoise_steps))
    return (x, trajectory) if return_trajectory else x


def multistep_coefficients(std_t, std_s, eta):
    """``(a, b, g, c)`` of one SDE-DPM-Solver-2M step ``z_s = a z_t + b y0 + g slope + c n`` (scalars).

    The step integrates ``dz = (1 + eta**2) (z - y0) dstd / std`` (plus noise ``eta``), the reverse SDE
    family with the marginals of ``z``, exactly for ``y0`` linear in ``lambda = -log std``:
    ``a = r**k``, ``b = 1 - a``, ``g = h - b / k``, ``c = std_s sqrt(1 - r**(2 eta**2))`` with
    ``r = std_s / std_t``, ``h = log(std_t / std_s)``, ``k = 1 + eta**2``. ``slope`` is ``d y0 / d lambda``.
    """
    k = 1.0 + eta**2
    h = jnp.log(std_t / std_s)
    a = jnp.exp(-k * h)
    g = h - (1.0 - a) / k
    c = std_s * jnp.sqrt(jnp.maximum(-jnp.expm1(-2.0 * eta**2 * h), 0.0))
    return a, 1.0 - a, g, c


def dpm2m_sample(
    rng: jax.Array,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: MultiplicativeProcess,
    *,
    eta: float = 1.0,
    n_steps: int = 50,
    t_end: float = 5e-3,
    spacing: str = "log_std",
    denoise_steps: int = 10,
    return_trajectory: bool = False,
):
    """Second-order multistep stochastic sampler (SDE-DPM-Solver-2M in drift-free log space); ``x_0`` ``(B, ...)``, > 0.

    One score evaluation per step, like :func:`ddim_sample` (same arguments and grid): the denoised
    estimates of the last two steps give ``y0`` linear in ``lambda = -log std_t`` (the first step has
    only one: first order), which :func:`multistep_coefficients` integrates exactly. ``eta = 1``
    uses the reverse SDE (its first-order part is the ancestral step), ``eta = 0`` the
    probability-flow ODE (then it is DPM-Solver++(2M)); in between the SDE with noise scale ``eta``.
    Network evaluations: ``n_steps + denoise_steps``.
    """
    check(process, eta=eta, n_steps=n_steps, t_end=t_end, spacing=spacing, denoise_steps=denoise_steps)
    ts = ode.ode_time_grid(process, n_steps, t_end, spacing)
    batch = x_T.shape[0]
    lam = -jnp.log(process.noise_std(ts))
    # lambda gap to the previous step's time; the first step has none (1 avoids a 0/0 there)
    lam_gap = jnp.concatenate([jnp.ones((1,)), lam[1:-1] - lam[:-2]])
    first = jnp.arange(n_steps) == 0

    def body(carry, inputs):
        y, y0_prev = carry
        t, s, gap, is_first, key = inputs
        y0 = denoised_log(y, jnp.full((batch,), t), score_fn, process)
        slope = jnp.where(is_first, 0.0, (y0 - y0_prev) / gap)  # d y0 / d lambda, backward difference
        a, b, g, c = multistep_coefficients(process.noise_std(t), process.noise_std(s), eta)
        noise = jax.random.normal(key, y.shape, y.dtype)
        y = a * (y - process.log_drift(t)) + b * y0 + g * slope + c * noise + process.log_drift(s)
        return (y, y0), (jnp.exp(y) if return_trajectory else None)

    keys = jax.random.split(rng, n_steps)
    y_T = jnp.log(x_T)
    (y, _), trajectory = jax.lax.scan(body, (y_T, jnp.zeros_like(y_T)), (ts[:-1], ts[1:], lam_gap, first, keys))
    x = jnp.exp(tweedie_iterations(y, t_end, score_fn, process, denoise_steps))
    return (x, trajectory) if return_trajectory else x


def network_evaluations(*, n_steps: int, denoise_steps: int, **_) -> int:
    """Score evaluations per sample of :func:`ddim_sample` and :func:`dpm2m_sample`: ``n_steps + denoise_steps``."""
    return n_steps + denoise_steps


for _name, _fn in (("ddim", ddim_sample), ("dpm2m", dpm2m_sample)):
    registry.register(
        _name,
        _fn,
        processes=("gbm",),
        nfe=network_evaluations,
        check=check,
        label=lambda eta, _name=_name, **_: f"{_name} (eta {eta})",
    )
