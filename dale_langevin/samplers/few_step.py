"""Stochastic few-step samplers of GBM in log space: DDIM with ``eta`` (ancestral at 1), SDE-DPM-Solver-2M and -3M.

With ``y = log x`` and ``z = y - D(t)`` (``D = int_0^t (mu - sigma**2/2)``, :meth:`GBM.log_drift`) the
forward process is variance exploding: ``z_t = y_0 + std_t eps`` with ``std_t**2 = v_t``. Given the
denoised estimate ``y0 = z + v_t (h + 1)`` (Tweedie in log space) and its noise
``eps = (z - y0) / std_t = -std_t (h + 1)``, the ``ddim`` step from ``t`` to ``s < t`` is

    z_s = y0 + sqrt(v_s - c**2) eps + c n,     c = eta std_s sqrt(1 - v_s / v_t),   n ~ N(0, I).

``eta = 0`` is deterministic and equals DPM-Solver-1 on the probability-flow ODE
(:mod:`dale_langevin.samplers.ode`); ``eta = 1`` draws from the Gaussian posterior
``z_s | z_t, y0 ~ N(y0 + (v_s/v_t)(z_t - y0), v_s (v_t - v_s) / v_t)`` (ancestral sampling, DDPM for
VE). ``dpm2m`` and ``dpm3m`` (multistep, second and third order) integrate the same reverse SDE
exactly for ``y0`` a polynomial in ``-log std`` (linear, quadratic) fitted through the last two or
three estimates. All cost one score evaluation per step and move ``log x``, so outputs stay > 0. The
grid (:func:`time_grid`) runs from ``T`` down to ``t_end > 0``, followed by ``denoise_steps`` Tweedie
updates at ``t_end`` (:func:`tweedie_iterations`); :func:`ddim_on_grid` and :func:`multistep_on_grid`
take any grid as an array, so a notebook or a schedule search varies it without recompiling.
Shapes: ``x`` ``(B, ...)``; ``score_fn(x, t)`` with ``t`` ``(B,)`` as in
:func:`dale_langevin.samplers.sample`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_choice, check_int, check_range
from dale_langevin.processes.base import MultiplicativeProcess, ScoreFn
from dale_langevin.samplers import ode, registry
from dale_langevin.samplers.ode import denoised_log

SPACINGS = (*ode.SPACINGS, "power")
ORDERS = (1, 2, 3)


def time_grid(process: MultiplicativeProcess, n_steps: int, t_end: float, spacing: str = "log_std", rho: float = 7.0):
    """``n_steps + 1`` decreasing times from ``T`` to ``t_end`` ``(n_steps + 1,)``.

    ``uniform`` and ``log_std`` as :func:`dale_langevin.samplers.ode.ode_time_grid`; ``power``: equal
    steps of ``std_t ** (1 / rho)`` (Karras et al.'s grid), which is uniform in ``std`` at ``rho = 1``
    and tends to ``log_std`` as ``rho`` grows; a larger ``rho`` puts more steps at low noise.
    """
    if spacing != "power":
        return ode.ode_time_grid(process, n_steps, t_end, spacing)
    hi, lo = process.noise_std(process.T) ** (1.0 / rho), process.noise_std(t_end) ** (1.0 / rho)
    std = (hi + jnp.linspace(0.0, 1.0, n_steps + 1) * (lo - hi)) ** rho
    return process.time_from_log_var(std**2).at[0].set(process.T).at[-1].set(t_end)


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
    process: MultiplicativeProcess,
    *,
    eta: float,
    n_steps: int,
    t_end: float,
    spacing: str,
    rho: float,
    denoise_steps: int,
) -> None:
    """Raises ``ValueError`` naming the first bad setting of :func:`ddim_sample`, :func:`dpm2m_sample`, :func:`dpm3m_sample`."""
    check_int(n_steps, "n_steps", 1)
    check_int(denoise_steps, "denoise_steps", 0)
    check_range(eta, "eta", 0.0, 1.0, why="(0: probability-flow ODE, 1: reverse SDE)")
    check_range(t_end, "t_end", 0.0, process.T, low_open=True, high_open=True, why="(the score is singular at 0)")
    check_choice(spacing, SPACINGS, "spacing")
    check_range(rho, "rho", 0.0, float("inf"), low_open=True, high_open=True, why="(the power grid's exponent)")


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


def ddim_on_grid(
    rng: jax.Array,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: MultiplicativeProcess,
    ts: jax.Array,
    *,
    eta: float | jax.Array = 1.0,
    denoise_steps: int = 10,
    return_trajectory: bool = False,
):
    """DDIM steps along the decreasing times ``ts`` ``(n + 1,)`` (``ts[0]`` the start's time, ``ts[-1] > 0``), then
    ``denoise_steps`` Tweedie updates at ``ts[-1]``; returns ``x_0`` ``(B, ...)``, > 0 (and the trajectory
    ``(n, B, ...)`` if asked).

    ``ts`` and ``eta`` may be traced (one compilation serves every grid of the same length); nothing is
    checked here: :func:`ddim_sample` checks its settings and builds the grid. One ``lax.scan``.
    """
    batch, n_steps = x_T.shape[0], ts.shape[0] - 1

    def body(y, inputs):
        t, s, key = inputs
        y0 = denoised_log(y, jnp.full((batch,), t), score_fn, process)
        noise = jax.random.normal(key, y.shape, y.dtype)
        z_s = ddim_step(y - process.log_drift(t), y0, process.noise_std(t), process.noise_std(s), eta, noise)
        y = z_s + process.log_drift(s)
        return y, (jnp.exp(y) if return_trajectory else None)

    keys = jax.random.split(rng, n_steps)
    y, trajectory = jax.lax.scan(body, jnp.log(x_T), (ts[:-1], ts[1:], keys))
    x = jnp.exp(tweedie_iterations(y, ts[-1], score_fn, process, denoise_steps))
    return (x, trajectory) if return_trajectory else x


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
    rho: float = 7.0,
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
      n_steps: steps on :func:`time_grid`.
      t_end: the last grid time, > 0.
      spacing: the grid, ``log_std`` (equal steps of ``log std``), ``uniform`` in ``t`` or ``power``.
      rho: the ``power`` grid's exponent (ignored by the others).
      denoise_steps: Tweedie updates at ``t_end`` (:func:`tweedie_iterations`): 1 is the posterior
        mean, more sharpen (10 as the demo's Dale-Langevin sampler), 0 returns the state at ``t_end``.
      return_trajectory: also return the state after every step, ``(n_steps, B, ...)``.

    Network evaluations: ``n_steps + denoise_steps`` (:func:`network_evaluations`).
    """
    check(process, eta=eta, n_steps=n_steps, t_end=t_end, spacing=spacing, rho=rho, denoise_steps=denoise_steps)
    ts = time_grid(process, n_steps, t_end, spacing, rho)
    return ddim_on_grid(
        rng, score_fn, x_T, process, ts, eta=eta, denoise_steps=denoise_steps, return_trajectory=return_trajectory
    )


def multistep_coefficients(std_t, std_s, eta):
    """``(a, b, g, q, c)`` of one multistep step ``z_s = a z_t + b y0 + g y0' + q y0'' + c n`` (scalars).

    The step integrates ``dz = (1 + eta**2) (z - y0) dstd / std`` (plus noise ``eta``), the reverse SDE
    family with the marginals of ``z``, exactly for ``y0`` quadratic in ``lambda = -log std``, with
    ``y0'`` and ``y0''`` its first and second derivatives in ``lambda`` at ``t``:
    ``a = r**k``, ``b = 1 - a``, ``g = h - b / k``, ``q = h**2 / 2 - h / k + b / k**2`` and
    ``c = std_s sqrt(1 - r**(2 eta**2))``, with ``r = std_s / std_t``, ``h = log(std_t / std_s)``,
    ``k = 1 + eta**2`` (``g`` and ``q`` are ``int_0^h k e^{-k (h - u)} u^j / j! du``).
    """
    k = 1.0 + eta**2
    h = jnp.log(std_t / std_s)
    b = -jnp.expm1(-k * h)
    g = h - b / k
    q = 0.5 * h**2 - h / k + b / k**2
    c = std_s * jnp.sqrt(jnp.maximum(-jnp.expm1(-2.0 * eta**2 * h), 0.0))
    return 1.0 - b, b, g, q, c


def multistep_on_grid(
    rng: jax.Array,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: MultiplicativeProcess,
    ts: jax.Array,
    *,
    order: int = 2,
    eta: float | jax.Array = 1.0,
    denoise_steps: int = 10,
    return_trajectory: bool = False,
):
    """Multistep SDE-DPM-Solver of ``order`` 1-3 along the decreasing times ``ts`` ``(n + 1,)``, then ``denoise_steps``
    Tweedie updates at ``ts[-1]``; returns ``x_0`` ``(B, ...)``, > 0 (and the trajectory ``(n, B, ...)`` if asked).

    Step ``i`` fits ``y0`` (the denoised estimate) as a polynomial in ``lambda = -log std_t`` through the
    estimates of its last ``min(order, i + 1)`` steps (Newton's divided differences on the uneven
    ``lambda`` grid) and integrates it exactly (:func:`multistep_coefficients`): one score evaluation
    per step whatever the order. Order 1 is :func:`ddim_on_grid` at ``eta`` 0 and 1. ``ts`` and ``eta``
    may be traced; nothing is checked here (:func:`dpm2m_sample` does). One ``lax.scan``.
    """
    check_choice(order, ORDERS, "order")
    batch, n_steps = x_T.shape[0], ts.shape[0] - 1
    lam = -jnp.log(process.noise_std(ts))
    ones = jnp.ones((2,))
    # lambda gaps to the previous one and two estimates; 1 where there is none (the term is masked there)
    gap1 = jnp.concatenate([ones[:1], lam[1:-1] - lam[:-2]])
    gap2 = jnp.concatenate([ones, lam[2:-1] - lam[:-3]])[:n_steps]
    index = jnp.arange(n_steps)

    def body(carry, inputs):
        y, y0_prev, d1_prev = carry
        t, s, r1, r2, i, key = inputs
        y0 = denoised_log(y, jnp.full((batch,), t), score_fn, process)
        d1 = jnp.where((i >= 1) & (order >= 2), (y0 - y0_prev) / r1, 0.0)  # first divided difference
        dd = jnp.where((i >= 2) & (order >= 3), (d1 - d1_prev) / r2, 0.0)  # second divided difference
        # y0(lambda_t + u) = y0 + (d1 + dd r1) u + dd u^2: slope and second derivative at t
        a, b, g, q, c = multistep_coefficients(process.noise_std(t), process.noise_std(s), eta)
        noise = jax.random.normal(key, y.shape, y.dtype)
        z_s = a * (y - process.log_drift(t)) + b * y0 + g * (d1 + dd * r1) + q * (2.0 * dd) + c * noise
        y = z_s + process.log_drift(s)
        return (y, y0, d1), (jnp.exp(y) if return_trajectory else None)

    keys = jax.random.split(rng, n_steps)
    y_T = jnp.log(x_T)
    init = (y_T, jnp.zeros_like(y_T), jnp.zeros_like(y_T))
    (y, _, _), trajectory = jax.lax.scan(body, init, (ts[:-1], ts[1:], gap1, gap2, index, keys))
    x = jnp.exp(tweedie_iterations(y, ts[-1], score_fn, process, denoise_steps))
    return (x, trajectory) if return_trajectory else x


def _multistep_sample(order: int, doc: str):
    def sample(
        rng: jax.Array,
        score_fn: ScoreFn,
        x_T: jax.Array,
        process: MultiplicativeProcess,
        *,
        eta: float = 1.0,
        n_steps: int = 50,
        t_end: float = 5e-3,
        spacing: str = "log_std",
        rho: float = 7.0,
        denoise_steps: int = 10,
        return_trajectory: bool = False,
    ):
        check(process, eta=eta, n_steps=n_steps, t_end=t_end, spacing=spacing, rho=rho, denoise_steps=denoise_steps)
        ts = time_grid(process, n_steps, t_end, spacing, rho)
        return multistep_on_grid(
            rng,
            score_fn,
            x_T,
            process,
            ts,
            order=order,
            eta=eta,
            denoise_steps=denoise_steps,
            return_trajectory=return_trajectory,
        )

    sample.__name__ = sample.__qualname__ = f"dpm{order}m_sample"
    sample.__doc__ = doc
    return sample


dpm2m_sample = _multistep_sample(
    2,
    """Second-order multistep stochastic sampler (SDE-DPM-Solver-2M in drift-free log space); ``x_0`` ``(B, ...)``, > 0.

    One score evaluation per step, like :func:`ddim_sample` (same arguments and grid): the denoised
    estimates of the last two steps give ``y0`` linear in ``lambda = -log std_t`` (the first step has
    only one: first order), which :func:`multistep_coefficients` integrates exactly. ``eta = 1``
    uses the reverse SDE (its first-order part is the ancestral step), ``eta = 0`` the
    probability-flow ODE (then it is DPM-Solver++(2M)); in between the SDE with noise scale ``eta``.
    Network evaluations: ``n_steps + denoise_steps``. The core is :func:`multistep_on_grid`.
    """,
)
dpm3m_sample = _multistep_sample(
    3,
    """Third-order multistep stochastic sampler (SDE-DPM-Solver-3M in drift-free log space); ``x_0`` ``(B, ...)``, > 0.

    As :func:`dpm2m_sample` (same arguments, grid and cost), with ``y0`` quadratic in ``lambda`` through the
    last three estimates (the first two steps have fewer: first, then second order). At ``eta = 0``
    it is DPM-Solver++(3M) on the probability-flow ODE, third order. Network evaluations:
    ``n_steps + denoise_steps``.
    """,
)


def renoise_times(process: MultiplicativeProcess, n_steps: int, t_end: float, rho: float = 1.0) -> jax.Array:
    """The ``n_steps`` decreasing times ``(n_steps,)`` at which :func:`renoise_sample` denoises: the first
    ``n_steps`` points of the ``power`` grid from ``T`` to ``t_end`` (:func:`time_grid`), so ``rho = 1`` spaces
    them evenly in ``std`` (``std_T``, ``(n-1)/n std_T``, ... at ``t_end -> 0``)."""
    return time_grid(process, n_steps, t_end, "power", rho)[:-1]


def renoise_states(rng: jax.Array, score_fn: ScoreFn, x_T: jax.Array, process: MultiplicativeProcess, ts: jax.Array):
    """The chain of :func:`renoise_on_times` before its last denoising: ``log x_{t_i}`` at every time ``ts`` ``(n,)``,
    ``(n, B, ...)`` (``states[0] = log x_T``); ``n - 1`` score evaluations in one ``lax.scan``.

    Step ``i`` takes the Tweedie estimate ``y0 = E[log X_0 | x_{t_i}]`` (:func:`~dale_langevin.samplers.ode.denoised_log`)
    and draws ``x_{t_{i+1}} ~ p(x_{t_{i+1}} | x_0 = exp(y0))``: ``log x = y0 + D(t_{i+1}) + std_{t_{i+1}} n``, with the
    ``i + 1``-th of ``n`` keys split from ``rng``. A distilled student is trained on these states
    (:func:`dale_langevin.distillation.student_inputs`).
    """
    batch = x_T.shape[0]
    keys = jax.random.split(rng, ts.shape[0])
    y_T = jnp.log(x_T)

    def body(y, inputs):
        t, s, key = inputs
        y0 = denoised_log(y, jnp.full((batch,), t), score_fn, process)
        y_s = y0 + process.log_drift(s) + process.noise_std(s) * jax.random.normal(key, y0.shape, y0.dtype)
        return y_s, y_s

    _, later = jax.lax.scan(body, y_T, (ts[:-1], ts[1:], keys[1:]))
    return jnp.concatenate([y_T[None], later], axis=0)


def renoise_on_times(rng: jax.Array, score_fn: ScoreFn, x_T: jax.Array, process: MultiplicativeProcess, ts: jax.Array):
    """Denoise, then re-noise by the forward kernel, at each of the decreasing times ``ts`` ``(n,)``; ``x_0`` ``(B, ...)``, > 0.

    The chain is :func:`renoise_states`; the output is ``exp(y0)`` of the Tweedie estimate at the last time,
    so ``x_0 = x_{t_i} exp(g)`` with ``g = y0 - log x_{t_i}``: positive by construction. ``len(ts)`` score
    evaluations. This is the multistep sampling of a distilled student (:mod:`dale_langevin.distillation`), which is
    trained so that each ``y0`` is a sample of the data law, not its mean; on a teacher it averages.
    """
    y = renoise_states(rng, score_fn, x_T, process, ts)[-1]
    return jnp.exp(denoised_log(y, jnp.full((x_T.shape[0],), ts[-1]), score_fn, process))


def check_renoise(process: MultiplicativeProcess, *, n_steps: int, t_end: float, rho: float) -> None:
    """Raises ``ValueError`` naming the first bad setting of :func:`renoise_sample`."""
    check_int(n_steps, "n_steps", 1)
    check_range(t_end, "t_end", 0.0, process.T, low_open=True, high_open=True, why="(the grid's end)")
    check_range(rho, "rho", 0.0, float("inf"), low_open=True, high_open=True, why="(the power grid's exponent)")


def renoise_sample(
    rng: jax.Array,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: MultiplicativeProcess,
    *,
    n_steps: int = 4,
    t_end: float = 2e-3,
    rho: float = 1.0,
):
    """``n_steps`` denoise-and-re-noise steps from ``x_T`` ``(B, ...)`` at ``T`` (:func:`renoise_on_times` on
    :func:`renoise_times`); returns ``x_0`` ``(B, ...)``, > 0. The sampler of a distilled student: its settings
    must be the ones it was distilled with (``config.distill`` copies them). Network evaluations: ``n_steps``.
    """
    check_renoise(process, n_steps=n_steps, t_end=t_end, rho=rho)
    return renoise_on_times(rng, score_fn, x_T, process, renoise_times(process, n_steps, t_end, rho))


def network_evaluations(*, n_steps: int, denoise_steps: int, **_) -> int:
    """Score evaluations per sample of :func:`ddim_sample`, :func:`dpm2m_sample`, :func:`dpm3m_sample`: ``n_steps + denoise_steps``."""
    return n_steps + denoise_steps


for _name, _fn in (("ddim", ddim_sample), ("dpm2m", dpm2m_sample), ("dpm3m", dpm3m_sample)):
    registry.register(
        _name,
        _fn,
        processes=("gbm",),
        nfe=network_evaluations,
        check=check,
        label=lambda eta, _name=_name, **_: f"{_name} (eta {eta})",
    )
registry.register(
    "renoise",
    renoise_sample,
    processes=("gbm",),
    nfe=lambda n_steps, **_: n_steps,
    check=check_renoise,
    label=lambda n_steps, **_: f"renoise ({n_steps} steps)",
)
