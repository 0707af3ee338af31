"""The GBM forward process: kernel moments against SDE simulation, closed-form integrals, scores, priors."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from dale_langevin import GBM, LogNormalPrior, fit_prior

SCHEDULES = {
    "constant": GBM(),
    "constant_mu": GBM(sigma=0.6, mu=0.1),
    "linear": GBM(sigma=0.3, schedule="linear", sigma_end=1.2),
    "linear_mu": GBM(sigma=1.0, mu=-0.2, schedule="linear", sigma_end=0.4, T=2.0),
}


def _simulate_em(sde: GBM, rng, x0, n_steps, save_at):
    """Fine Euler-Maruyama of dX = mu X dt + sigma X dW in the ambient space; log X at ``save_at`` steps."""
    dt = sde.T / n_steps

    def step(x, inputs):
        k, key = inputs
        t = k * dt
        z = jax.random.normal(key, x.shape)
        x = x * (1.0 + sde.mu_t(t) * dt + sde.sigma_t(t) * jnp.sqrt(dt) * z)
        return x, jnp.log(x)

    keys = jax.random.split(rng, n_steps)
    _, logs = jax.lax.scan(step, x0, (jnp.arange(n_steps, dtype=jnp.float32), keys))
    return logs[jnp.asarray(save_at) - 1]


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_kernel_moments_match_euler_maruyama_simulation(name):
    sde = SCHEDULES[name]
    n_paths, n_steps = 20_000, 1_000
    x0 = jax.random.uniform(jax.random.key(0), (n_paths,), minval=1.0, maxval=2.0)
    save_at = [300, 700, 1000]
    logs = jax.jit(_simulate_em, static_argnums=(0, 3, 4))(sde, jax.random.key(1), x0, n_steps, tuple(save_at))
    dt = sde.T / n_steps
    # Euler-Maruyama's weak error in log X is O(dt); bound it generously by the largest sigma**4.
    s_max = max(float(sde.sigma_t(0.0)), float(sde.sigma_t(sde.T)))
    em_bias = 5.0 * s_max**4 * dt
    for k, log_xt in zip(save_at, logs):
        t = k * dt
        centred = np.asarray(log_xt - sde.log_mean(x0[None], jnp.full((1,), t))[0], np.float64)
        v = float(sde.log_var(t))
        se_mean, se_var = np.sqrt(v / n_paths), v * np.sqrt(2.0 / (n_paths - 1))
        assert abs(centred.mean()) < 4 * se_mean + em_bias, (name, t, centred.mean())
        assert abs(centred.var() - v) < 4 * se_var + em_bias, (name, t, centred.var(), v)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_integrals_match_quadrature(name):
    sde = SCHEDULES[name]
    for t in (0.0, 0.37 * sde.T, sde.T):
        v_quad = scipy.integrate.quad(lambda s: float(sde.sigma_t(s)) ** 2, 0.0, t)[0]
        d_quad = scipy.integrate.quad(lambda s: float(sde.mu_t(s) - 0.5 * sde.sigma_t(s) ** 2), 0.0, t)[0]
        np.testing.assert_allclose(float(sde.log_var(t)), v_quad, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(float(sde.log_drift(t)), d_quad, rtol=1e-5, atol=1e-6)


def test_default_is_published_setting():
    sde = GBM()
    assert (sde.sigma, sde.mu, sde.T, sde.schedule, sde.data_offset) == (0.8, None, 1.0, "constant", 1.0)
    t = jnp.array([0.25, 1.0])
    np.testing.assert_allclose(sde.mu_t(t), 0.32 * np.ones(2), rtol=1e-6)  # mu = sigma**2 / 2
    np.testing.assert_allclose(sde.log_drift(t), np.zeros(2), atol=1e-7)  # zero drift of log X
    np.testing.assert_allclose(sde.log_var(t), 0.64 * np.asarray(t), rtol=1e-6)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_perturb_matches_kernel_moments(name):
    sde = SCHEDULES[name]
    n = 50_000
    x0 = jnp.full((n, 2), 1.5)
    t = jnp.full((n,), 0.6 * sde.T)
    log_xt = np.asarray(jnp.log(sde.perturb(jax.random.key(3), x0, t)), np.float64)
    m, v = float(sde.log_mean(x0[:1], t[:1])[0, 0]), float(sde.log_var(0.6 * sde.T))
    assert abs(log_xt.mean() - m) < 4 * np.sqrt(v / log_xt.size)
    assert abs(log_xt.var() - v) < 4 * v * np.sqrt(2.0 / log_xt.size)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_cond_score_is_x_times_grad_of_kernel_log_density(name):
    sde = SCHEDULES[name]
    keys = jax.random.split(jax.random.key(4), 3)
    x0 = jax.random.uniform(keys[0], (5, 3, 2), minval=1.0, maxval=2.0)
    t = jax.random.uniform(keys[1], (5,), minval=0.05, maxval=sde.T)
    x_t = sde.perturb(keys[2], x0, t)

    def kernel_log_density(x):
        prior = LogNormalPrior(sde.log_mean(x0, t), jnp.sqrt(sde.log_var(t))[:, None, None])
        return jnp.sum(prior.log_prob(x))

    h_autodiff = x_t * jax.grad(kernel_log_density)(x_t)
    h = sde.cond_score(x_t, x0, t)
    chex.assert_shape(h, x0.shape)
    np.testing.assert_allclose(h, h_autodiff, rtol=2e-4, atol=2e-4)
    # Same density from scipy's independent log-normal (guards the shared prior code).
    scale = np.sqrt(np.asarray(sde.log_var(t)))[:, None, None]
    ref = scipy.stats.lognorm.logpdf(np.asarray(x_t), s=scale, scale=np.exp(np.asarray(sde.log_mean(x0, t))))
    np.testing.assert_allclose(kernel_log_density(x_t), ref.sum(), rtol=1e-4)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(sigma=0.0), "GBM.sigma"),
        (dict(sigma=-0.8), "GBM.sigma"),
        (dict(sigma=float("nan")), "GBM.sigma"),
        (dict(T=0.0), "GBM.T"),
        (dict(schedule="cosine"), "GBM.schedule"),
        (dict(schedule="linear"), "GBM.sigma_end"),
        (dict(schedule="linear", sigma_end=-1.0), "GBM.sigma_end"),
        (dict(sigma_end=1.0), "GBM.sigma_end"),
        (dict(mu=float("inf")), "GBM.mu"),
        (dict(data_offset=0.0), "GBM.data_offset"),
    ],
)
def test_invalid_fields_raise_naming_the_field(kwargs, field, raises_naming):
    with raises_naming(field):
        GBM(**kwargs)


def test_unknown_weighting_is_named(raises_naming):
    with raises_naming("weighting"):
        GBM().loss_weight(jnp.array([0.5]), "snr")


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_time_from_log_var_inverts_log_var(name):
    sde = SCHEDULES[name]
    t = jnp.linspace(0.0, sde.T, 33)
    # Bisection to float32 resolution: measured at most 3 ulps of T (linear_mu); allowed 8.
    ulp = np.finfo(np.float32).eps * sde.T
    np.testing.assert_allclose(sde.time_from_log_var(sde.log_var(t)), t, rtol=0, atol=8 * ulp)
    chex.assert_shape(sde.time_from_log_var(jnp.zeros((2, 3))), (2, 3))


def test_gbm_is_hashable_static_argument():
    assert hash(GBM()) == hash(GBM(sigma=0.8)) and GBM() == GBM(sigma=0.8)
    f = jax.jit(lambda t, sde: sde.log_var(t))
    np.testing.assert_allclose(f(1.0, GBM(sigma=0.5)), 0.25, rtol=1e-6)
    np.testing.assert_allclose(f(1.0, GBM(sigma=1.0)), 1.0, rtol=1e-6)  # a new sde retraces
    with pytest.raises(dataclasses.FrozenInstanceError):
        GBM().sigma = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("per_pixel", [True, False])
def test_fit_prior_matches_pushed_forward_data(per_pixel):
    sde = GBM(sigma=0.5, mu=0.3)
    n = 40_000
    loc0 = jnp.array([[0.1, 0.5], [0.9, 0.2]])
    x0 = jnp.exp(loc0 + 0.2 * jax.random.normal(jax.random.key(5), (n, 2, 2)))
    prior = fit_prior(x0, sde, per_pixel=per_pixel)
    chex.assert_shape(prior.loc, (2, 2) if per_pixel else ())
    # Reference: push the data forward with the exact kernel, take the moments of log X_T.
    log_xT = np.asarray(jnp.log(sde.perturb(jax.random.key(6), x0, jnp.full((n,), sde.T))), np.float64)
    axis = 0 if per_pixel else None
    mean, std = log_xT.mean(axis=axis), log_xT.std(axis=axis)
    count = n if per_pixel else log_xT.size
    np.testing.assert_allclose(prior.loc, mean, atol=4 * std.max() / np.sqrt(count))
    np.testing.assert_allclose(prior.scale, std, atol=4 * std.max() * np.sqrt(0.5 / count))
    chex.assert_trees_all_close(sde.fit_prior(x0, per_pixel=per_pixel), prior)  # method == function


@pytest.mark.parametrize("bad", [0.0, -0.3, float("nan")])
def test_fit_prior_rejects_non_positive_data(bad):
    x0 = np.full((4, 3), 0.5)  # values in (0, 1) are valid: only <= 0 or non-finite are refused
    fit_prior(x0 * np.linspace(0.1, 1.9, 4)[:, None], GBM())
    x0[2, 1] = bad
    with pytest.raises(ValueError, match=rf"> 0 .*found 1 value\(s\) <= 0 or non-finite, e\.g\. {bad!r}"):
        fit_prior(x0, GBM())


def test_fit_prior_is_per_pixel_by_default():
    x0 = jnp.exp(jax.random.normal(jax.random.key(7), (16, 3, 2)))
    chex.assert_shape(fit_prior(x0, GBM()).loc, (3, 2))
    chex.assert_shape(GBM().fit_prior(x0).loc, (3, 2))


@pytest.mark.parametrize(
    "sde", [GBM(), GBM(sigma=0.7, mu=0.1), GBM(sigma=0.2, schedule="linear", sigma_end=2.0)], ids=str
)
def test_log_drift_coefficient_in_closed_form(sde):
    """``mu(t) - 1.5 sigma(t)**2``: the reverse sampler's log-drift, written out per schedule."""
    t = jnp.array([0.0, 0.3, 1.0])
    sigma = sde.sigma + ((sde.sigma_end or sde.sigma) - sde.sigma) * np.asarray(t) / sde.T
    mu = 0.5 * sigma**2 if sde.mu is None else sde.mu
    np.testing.assert_allclose(sde.log_drift_coeff(t), mu - 1.5 * sigma**2, rtol=1e-6)


def test_fit_prior_needs_two_examples():
    with pytest.raises(ValueError, match="at least 2 examples"):
        fit_prior(np.ones((1, 3)), GBM())


def test_lognormal_prior_sample_and_log_prob():
    prior = LogNormalPrior(loc=jnp.array([0.2, -0.4]), scale=jnp.array([0.5, 0.9]))
    x = prior.sample(jax.random.key(7), (20_000, 2))
    chex.assert_shape(x, (20_000, 2))
    assert bool(jnp.all(x > 0))
    np.testing.assert_allclose(jnp.log(x).mean(0), prior.loc, atol=4 * 0.9 / np.sqrt(20_000))
    ref = scipy.stats.lognorm.logpdf(np.asarray(x[:5]), s=np.asarray(prior.scale), scale=np.exp(np.asarray(prior.loc)))
    np.testing.assert_allclose(prior.log_prob(x[:5]), ref, rtol=1e-4, atol=1e-5)


def test_encode_decode_round_trip():
    sde = GBM()
    u = jax.random.uniform(jax.random.key(8), (4, 5, 5, 1))
    x = sde.encode(u)
    assert float(x.min()) >= 1.0 and float(x.max()) <= 2.0
    np.testing.assert_allclose(sde.decode(x), u, atol=1e-6)
    np.testing.assert_array_equal(sde.decode(jnp.array([0.5, 2.5])), jnp.array([0.0, 1.0]))  # clamped


def test_linear_schedule_endpoints_and_total_variance_in_closed_form():
    process = GBM(sigma=0.5, schedule="linear", sigma_end=1.5, T=2.0)
    np.testing.assert_allclose(process.sigma_t(jnp.array([0.0, 2.0])), [0.5, 1.5], rtol=1e-6)
    # int_0^T (s0 + (s1 - s0) t / T)^2 dt = T (s0^2 + s0 s1 + s1^2) / 3
    np.testing.assert_allclose(process.log_var(2.0), 2.0 * (0.25 + 0.75 + 2.25) / 3.0, rtol=1e-6)
