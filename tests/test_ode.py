"""Probability-flow ODE: exact-score recovery, convergence order, likelihood against the closed form."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin import GBM, LogNormalMixture, LogNormalPrior, recovery_stats
from dale_langevin.samplers import ode

SDE = GBM()
MIXTURE = LogNormalMixture.create([0.3, 0.7], [-0.5, 0.5], [0.1, 0.1])
HYV = MIXTURE.score_fn(SDE)


@pytest.mark.parametrize("sde", [GBM(), GBM(sigma=0.3, mu=0.1, schedule="linear", sigma_end=1.2)])
def test_time_from_log_var_inverts_log_var(sde):
    t = jnp.linspace(0.0, sde.T, 11)
    np.testing.assert_allclose(sde.time_from_log_var(sde.log_var(t)), t, atol=1e-5)
    grid = ode.ode_time_grid(sde, 8, 1e-3)
    chex.assert_shape(grid, (9,))
    assert float(grid[0]) == sde.T and float(grid[-1]) == pytest.approx(1e-3)
    np.testing.assert_allclose(
        np.diff(np.log(np.asarray(sde.noise_std(grid)))),
        np.log(sde.noise_std(1e-3) / sde.noise_std(sde.T)) / 8,
        rtol=1e-3,
    )


def test_flow_drift_matches_hyvarinen_and_noise_forms():
    x = MIXTURE.sample_marginal(jax.random.key(0), SDE, 0.4, (16, 3))
    t = jnp.full((16,), 0.4)
    h = HYV(x, t)
    eps = ode.noise_from_hyvarinen(h, t, SDE)
    np.testing.assert_allclose(SDE.score_from_noise(eps, t), h, rtol=1e-5, atol=1e-5)
    # dy/dt = dD/dt + (d std/dt) eps; D = 0 by default, d std/dt = sigma^2 / (2 std)
    ref = (0.64 / (2 * SDE.noise_std(0.4))) * eps
    np.testing.assert_allclose(ode.flow_drift(jnp.log(x), t, HYV, SDE), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("solver, n_steps", [("euler", 200), ("heun", 25), ("dpm1", 50), ("dpm2", 12)])
def test_ode_samplers_recover_the_mixture(solver, n_steps):
    x_T = MIXTURE.sample_marginal(jax.random.key(1), SDE, SDE.T, (1024, 8))
    run = jax.jit(functools.partial(ode.ode_sample, None, HYV, process=SDE, solver=solver, n_steps=n_steps))
    x0 = run(x_T=x_T)
    chex.assert_tree_all_finite(x0)
    stats = recovery_stats(x0, MIXTURE)
    n = x0.size
    w, m, s = (np.asarray(a) for a in (MIXTURE.weights, MIXTURE.log_means, MIXTURE.log_stds))
    # Monte Carlo (4 standard errors) plus a discretisation allowance of 0.01 (the SDE test's).
    np.testing.assert_array_less(np.abs(stats["weights"] - w), 4 * np.sqrt(w * (1 - w) / n) + 0.01)
    np.testing.assert_array_less(np.abs(stats["log_means"] - m), 4 * s / np.sqrt(w * n) + 0.01)
    np.testing.assert_array_less(np.abs(stats["log_stds"] - s), 4 * s / np.sqrt(2 * w * n) + 0.01)
    assert ode.network_evaluations(solver=solver, n_steps=n_steps) == n_steps * ode.EVALS_PER_STEP[solver] + 1


@pytest.fixture(scope="module")
def convergence():
    """Mean |log x - log x_ref| after 10, 20 and 40 steps of each solver (log_std grid, no denoising)."""
    x_T = MIXTURE.sample_marginal(jax.random.key(2), SDE, SDE.T, (64, 4))
    solve = lambda solver, n: jnp.log(ode.ode_sample(None, HYV, x_T, SDE, solver=solver, n_steps=n, denoise=False))
    ref = solve("dpm2", 800)
    return {s: [float(jnp.mean(jnp.abs(solve(s, n) - ref))) for n in (10, 20, 40)] for s in ode.SOLVERS}


@pytest.mark.parametrize("solver, order", [("euler", 1), ("dpm1", 1), ("heun", 2), ("dpm2", 2)])
def test_convergence_order(convergence, solver, order):
    e = convergence[solver]
    ratios = [e[0] / e[1], e[1] / e[2]]  # halving the step divides the error by about 2**order
    np.testing.assert_array_less(0.75 * 2**order, ratios)
    np.testing.assert_array_less(ratios, 1.35 * 2**order)


def test_second_order_beats_first_order_at_equal_evaluations(convergence):
    # 10 steps of dpm2 or heun (20 evaluations) against 20 Euler steps (20 evaluations).
    assert convergence["dpm2"][0] < convergence["euler"][1] / 5
    assert convergence["heun"][0] < convergence["euler"][1]


def test_denoised_log_is_the_posterior_mean_in_log_space():
    # For log-normal data the posterior of log X_0 given X_t is Gaussian with a known mean.
    single = LogNormalMixture.create([1.0], [0.3], [0.2])
    t = jnp.full((5,), 0.2)
    x = single.sample_marginal(jax.random.key(3), SDE, 0.2, (5, 2))
    v0, vt = 0.04, float(SDE.log_var(0.2))
    post_mean = 0.3 + v0 / (v0 + vt) * (jnp.log(x) - 0.3)
    np.testing.assert_allclose(
        ode.denoised_log(jnp.log(x), t, single.score_fn(SDE), SDE), post_mean, rtol=1e-4, atol=1e-5
    )


def _exact_log_density(x, mixture, sde, t):
    return jnp.sum(mixture.log_prob(x, sde, t).reshape(x.shape[0], -1), axis=1)


@pytest.mark.parametrize("sde", [GBM(), GBM(sigma=0.5, mu=0.2)])
def test_likelihood_matches_closed_form(sde):
    mixture = LogNormalMixture.create([0.4, 0.6], [-0.3, 0.4], [0.15, 0.1])
    x0 = mixture.sample(jax.random.key(4), (32, 3))
    m_T, v_T = mixture.marginal(sde, sde.T)
    prior_T = LogNormalMixture(mixture.weights, m_T, jnp.sqrt(v_T))

    class ExactPrior:  # the exact law at T, elementwise in x space
        @staticmethod
        def log_prob(x):
            return prior_T.log_prob(x, sde, 0.0)

    hyv = mixture.score_fn(sde)
    t_min = 1e-3
    exact = _exact_log_density(x0, mixture, sde, t_min)
    # Heun on 100 steps: measured max error 0.005 nats at 120 steps, second order in the steps.
    est = jax.jit(lambda x: ode.log_likelihood(None, hyv, x, sde, ExactPrior, n_steps=100, t_min=t_min))(x0)
    np.testing.assert_allclose(est, exact, atol=0.02)
    # Hutchinson: unbiased, so the batch mean matches within its Monte Carlo error.
    hutch = ode.log_likelihood(jax.random.key(5), hyv, x0, sde, ExactPrior, n_steps=100, t_min=t_min)
    diff = np.asarray(hutch - est)
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(diff.size) + 1e-3


def test_likelihood_with_fitted_prior_and_bits_per_dim():
    single = LogNormalMixture.create([1.0], [0.4], [0.2])
    x0 = single.sample(jax.random.key(6), (16, 4))
    m_T, v_T = single.marginal(SDE, SDE.T)
    prior = LogNormalPrior(m_T[0], jnp.sqrt(v_T[0]))  # a single log-normal is its own exact prior
    est = ode.log_likelihood(None, single.score_fn(SDE), x0, SDE, prior, n_steps=40)
    np.testing.assert_allclose(est, _exact_log_density(x0, single, SDE, 1e-3), atol=0.05)
    bpd = ode.bits_per_dim(est, 4)
    np.testing.assert_allclose(bpd, -(est - 4 * np.log(255.0)) / (4 * np.log(2.0)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(solver="rk45"), "solver"),
        (dict(t_end=0.0), "t_end"),
        (dict(n_steps=0), "n_steps"),
        (dict(spacing="cosine"), "spacing"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ode.ode_sample(None, HYV, jnp.ones((2, 2)), SDE, **kwargs)
