"""The probability-flow ODE of GBM in log space: deterministic samplers and exact likelihoods.

With ``y = log x`` the forward process is additive, ``dy = b(t) dt + sigma(t) dW`` with
``b = mu - sigma**2 / 2``, and its Stein score is ``h + 1`` (``h`` the Hyvarinen score). The
probability-flow ODE, whose marginals equal the SDE's, is therefore

    dy/dt = b(t) - (sigma(t)**2 / 2) (h(e^y, t) + 1).

Writing ``y~ = y - D(t)`` (``D = int_0^t b``) and ``eps = -std_t (h + 1)`` (the network's noise
prediction, ``std_t = sqrt(v_t)``), it is ``dy~ = eps d std_t``: the first-order exponential
integrator (DDIM / DPM-Solver-1) is exact when ``eps`` is constant along the step.

Solvers (``solver=``), all on a grid from ``T`` down to ``t_end > 0`` (the score is singular at 0):
``euler`` (1 evaluation per step), ``heun`` (2), ``dpm1`` (1), ``dpm2`` (2, midpoint in log std).
Shapes: ``x`` ``(B, ...)``; ``score_fn(x, t)`` with ``t`` ``(B,)`` as in :func:`dale_langevin.samplers.sample`.
Registered as the sampler ``ode``; :func:`log_likelihood` gives exact likelihoods through the same flow.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from dale_langevin.checks import check_choice, check_int, check_range
from dale_langevin.processes.base import MultiplicativeProcess, ScoreFn, expand_time
from dale_langevin.samplers import registry

SOLVERS = ("euler", "heun", "dpm1", "dpm2")
SPACINGS = ("uniform", "log_std")
EVALS_PER_STEP = {"euler": 1, "heun": 2, "dpm1": 1, "dpm2": 2}


def flow_drift(y: jax.Array, t: jax.Array, score_fn: ScoreFn, process: MultiplicativeProcess) -> jax.Array:
    """``dy/dt = mu - sigma**2/2 - (sigma**2/2)(h + 1)`` at ``y = log x`` ``(B, ...)``, ``t`` ``(B,)``; shape of ``y``."""
    s2 = expand_time(process.sigma_t(t) ** 2, y)
    b = expand_time(process.mu_t(t), y) - 0.5 * s2
    return b - 0.5 * s2 * (score_fn(jnp.exp(y), t) + 1.0)


def noise_from_hyvarinen(h: jax.Array, t: jax.Array, process: MultiplicativeProcess) -> jax.Array:
    """``eps = -std_t (h + 1)``: the inverse of ``GBM.score_from_noise``; shape of ``h``."""
    return -expand_time(process.noise_std(t), h) * (h + 1.0)


def check_spacing(spacing: str) -> None:
    """Raises ``ValueError`` unless ``spacing`` is one of :data:`SPACINGS`."""
    check_choice(spacing, SPACINGS, "spacing")


def ode_time_grid(process: MultiplicativeProcess, n_steps: int, t_end: float, spacing: str = "log_std") -> jax.Array:
    """``n_steps + 1`` decreasing times from ``T`` to ``t_end`` ``(n_steps + 1,)``.

    ``uniform`` in t, or ``log_std``: geometric in ``std_t`` (equal steps of log std, where the
    solution changes evenly; fewer steps are wasted at high noise).
    """
    check_spacing(spacing)
    if spacing == "uniform":
        return jnp.linspace(process.T, t_end, n_steps + 1, dtype=jnp.float32)
    log_std = jnp.linspace(jnp.log(process.noise_std(process.T)), jnp.log(process.noise_std(t_end)), n_steps + 1)
    ts = process.time_from_log_var(jnp.exp(2.0 * log_std))
    return ts.at[0].set(process.T).at[-1].set(t_end)


def _step(solver: str, y, t, s, score_fn: ScoreFn, process: MultiplicativeProcess):
    """One step of ``solver`` from time ``t`` to ``s < t`` (scalars) for ``y`` ``(B, ...)``."""
    batch = y.shape[0]
    tb, sb = jnp.full((batch,), t), jnp.full((batch,), s)
    if solver in ("euler", "heun"):
        k1 = flow_drift(y, tb, score_fn, process)
        y_next = y - (t - s) * k1
        if solver == "euler":
            return y_next
        return y - 0.5 * (t - s) * (k1 + flow_drift(y_next, sb, score_fn, process))

    def eps(y, tt):
        return noise_from_hyvarinen(score_fn(jnp.exp(y), tt), tt, process)

    std_t, std_s = process.noise_std(t), process.noise_std(s)
    shift = process.log_drift(s) - process.log_drift(t)  # y = y~ + D(t)
    if solver == "dpm1":
        return y + shift + (std_s - std_t) * eps(y, tb)
    std_m = jnp.sqrt(std_t * std_s)
    m = process.time_from_log_var(std_m**2)
    y_m = y + (process.log_drift(m) - process.log_drift(t)) + (std_m - std_t) * eps(y, tb)
    return y + shift + (std_s - std_t) * eps(y_m, jnp.full((batch,), m))


def denoised_log(y: jax.Array, t: jax.Array, score_fn: ScoreFn, process: MultiplicativeProcess) -> jax.Array:
    """Tweedie's posterior mean of ``log X_0`` given ``log X_t = y`` ``(B, ...)``, ``t`` ``(B,)``: ``y - D(t) + v_t (h + 1)``.

    In log space the kernel is Gaussian, so this is Tweedie's formula; one score evaluation.
    """
    return (
        y - expand_time(process.log_drift(t), y) + expand_time(process.log_var(t), y) * (score_fn(jnp.exp(y), t) + 1.0)
    )


def check(
    process: MultiplicativeProcess, *, solver: str, n_steps: int, t_end: float, spacing: str, denoise: bool
) -> None:
    """Raises ``ValueError`` naming the first bad setting of :func:`ode_sample`."""
    check_choice(solver, SOLVERS, "solver")
    check_int(n_steps, "n_steps", 1)
    check_range(
        t_end,
        "t_end",
        0.0,
        process.T,
        low_open=True,
        high_open=True,
        why="for ODE solvers (the score is singular at 0)",
    )
    check_spacing(spacing)
    check_choice(denoise, (True, False), "denoise")


def ode_sample(
    rng: jax.Array | None,
    score_fn: ScoreFn,
    x_T: jax.Array,
    process: MultiplicativeProcess,
    *,
    solver: str = "dpm2",
    n_steps: int = 20,
    t_end: float = 1e-3,
    spacing: str = "log_std",
    denoise: bool = True,
    return_trajectory: bool = False,
):
    """Integrates the probability-flow ODE from ``x_T`` ``(B, ...)`` at ``T`` down to ``t_end``; returns ``x_0``.

    Deterministic: ``rng`` is unused (the registry's signature; ``None`` is fine). ``solver`` is
    one of :data:`SOLVERS` on :func:`ode_time_grid` (``spacing``); ``denoise`` appends one Tweedie
    step (:func:`denoised_log`) at ``t_end``. Network evaluations: ``n_steps *
    EVALS_PER_STEP[solver] + denoise``. One ``lax.scan`` over the steps.
    """
    del rng
    check(process, solver=solver, n_steps=n_steps, t_end=t_end, spacing=spacing, denoise=denoise)
    ts = ode_time_grid(process, n_steps, t_end, spacing)

    def body(y, ts_pair):
        y = _step(solver, y, ts_pair[0], ts_pair[1], score_fn, process)
        return y, (jnp.exp(y) if return_trajectory else None)

    y, trajectory = jax.lax.scan(body, jnp.log(x_T), (ts[:-1], ts[1:]))
    if denoise:
        y = denoised_log(y, jnp.full((y.shape[0],), t_end), score_fn, process)
    x = jnp.exp(y)
    return (x, trajectory) if return_trajectory else x


def network_evaluations(*, solver: str, n_steps: int, denoise: bool = True, **_) -> int:
    """Score evaluations per sample of :func:`ode_sample`: ``n_steps * EVALS_PER_STEP[solver] + denoise``."""
    return n_steps * EVALS_PER_STEP[solver] + int(denoise)


registry.register(
    "ode",
    ode_sample,
    processes=("gbm",),
    nfe=network_evaluations,
    check=check,
    label=lambda solver, **_: f"ode ({solver})",
)


def _divergence(f: Callable[[jax.Array], jax.Array], y: jax.Array, probe: jax.Array | None) -> jax.Array:
    """``div f`` per example ``(B,)``: exact (one JVP per coordinate) if ``probe`` is None, else Hutchinson.

    The exact path perturbs one coordinate of every example at once, so it assumes ``f`` treats
    examples independently (true of a per-example network and of the analytic scores).
    """
    if probe is not None:
        _, jz = jax.jvp(f, (y,), (probe,))
        return jnp.sum((probe * jz).reshape(y.shape[0], -1), axis=1)
    flat = y.reshape(y.shape[0], -1)
    eye = jnp.eye(flat.shape[1], dtype=y.dtype)

    def column(e):  # d f_i / d y_i for the coordinate picked by e, every example at once
        _, je = jax.jvp(f, (y,), (jnp.broadcast_to(e, flat.shape).reshape(y.shape),))
        return jnp.sum((je.reshape(flat.shape) * e), axis=1)

    return jnp.sum(jax.vmap(column)(eye), axis=0)


def log_likelihood(
    rng: jax.Array | None,
    score_fn: ScoreFn,
    x0: jax.Array,
    process: MultiplicativeProcess,
    prior,
    *,
    n_steps: int = 100,
    t_min: float = 1e-3,
    probe: jax.Array | None = None,
) -> jax.Array:
    """``log p(x0)`` in nats per example ``(B,)`` through the probability-flow ODE (instantaneous change of variables).

    Integrates ``y`` and ``int div f dt`` forward from ``t_min`` to ``T`` with Heun's method on a
    ``log_std`` grid, then ``log p_Y(y0) = log p_T(y_T) + int div f``, and returns the density of
    ``X = e^Y`` at ``x0`` (``- sum log x0``). ``prior.log_prob(x)`` is the elementwise density of
    ``X_T`` in x space (e.g. a fitted :class:`~dale_langevin.processes.priors.LogNormalPrior`). ``rng`` draws one
    Rademacher probe per example for Hutchinson's trace estimator; ``None`` computes the exact
    divergence (one JVP per coordinate: small data only); ``probe`` (the shape of ``x0``) gives the
    probes instead of drawing them from ``rng`` (e.g. one key per example, whatever the batch).
    This is the density of ``X_{t_min}``, which approaches that of ``X_0`` as ``t_min -> 0``.
    """
    y0 = jnp.log(x0)
    if probe is None and rng is not None:
        probe = jax.random.rademacher(rng, y0.shape, y0.dtype)
    ts = ode_time_grid(process, n_steps, t_min, "log_std")[::-1]  # increasing

    def rhs(y, t):
        f = lambda y: flow_drift(y, jnp.full((y.shape[0],), t), score_fn, process)
        return f(y), _divergence(f, y, probe)

    def body(carry, pair):
        y, acc = carry
        t, s = pair
        k1, d1 = rhs(y, t)
        y_pred = y + (s - t) * k1
        k2, d2 = rhs(y_pred, s)
        return (y + 0.5 * (s - t) * (k1 + k2), acc + 0.5 * (s - t) * (d1 + d2)), None

    (y_T, div_integral), _ = jax.lax.scan(body, (y0, jnp.zeros(y0.shape[0])), (ts[:-1], ts[1:]))
    per_example = lambda a: jnp.sum(a.reshape(a.shape[0], -1), axis=1)
    log_p_yT = per_example(prior.log_prob(jnp.exp(y_T)) + y_T)  # x-space density times the Jacobian e^y
    return log_p_yT + div_integral - per_example(y0)


def bits_per_dim(log_px: jax.Array, n_dims: int, pixel_scale: float = 255.0) -> jax.Array:
    """Bits per dimension of pixel values ``u`` with ``x = offset + u / pixel_scale``: ``-(log p_x - D log scale) / (D ln 2)``."""
    return -(log_px - n_dims * jnp.log(pixel_scale)) / (n_dims * jnp.log(2.0))
