"""The additive baselines against closed forms, GBM written additively (log-space VE), and the matched-SNR rule."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin import (
    GBM,
    VESDE,
    VPSDE,
    GaussianMixture,
    LogNormalMixture,
    LogVESDE,
    dsm_loss,
    dsm_per_example,
    network_score_fn,
    recovery_stats,
    sample,
)
from dale_langevin.processes import snr
from dale_langevin.samplers.sde import dale_langevin_update, euler_maruyama_update

ADDITIVE = [VESDE(), VESDE(sigma_max=2.25), VPSDE(), LogVESDE()]
IDS = ["ve50", "ve_snr", "vp", "log_ve"]


# -- DSM at the exact score of Gaussian data ----------------------------------------------------------
@pytest.mark.parametrize("sde", ADDITIVE, ids=IDS)
@pytest.mark.parametrize("t", [0.02, 0.3, 1.0])
def test_dsm_loss_at_the_exact_score_of_gaussian_data(sde, t):
    # Data N(m, s0^2) per pixel: X_t ~ N(a m, a^2 s0^2 + std^2), and E[cond | x_t] is the exact score, so
    # DSM(exact) = lambda (E|cond|^2 - E|score|^2) = lambda (1/std^2 - 1/(a^2 s0^2 + std^2)) per pixel; with the
    # published lambda = std^2 that is a^2 s0^2 / (a^2 s0^2 + std^2). A constant offset c of the score adds
    # lambda c^2 per pixel. Monte Carlo over 4096 x 16 pixels; the bound is 5 standard errors of the estimate.
    m0, s0, n, d = 0.3, 0.4, 4096, 16
    x0 = m0 + s0 * jax.random.normal(jax.random.key(0), (n, d))
    tt = jnp.full((n,), t)
    x_t = sde.perturb(jax.random.key(1), x0, tt)
    mean, var = sde.push_forward_moments(m0, s0**2, t)
    exact = -(x_t - mean) / var
    lam, a2 = float(sde.loss_weight(jnp.asarray(t))), float(sde.mean_coeff(t)) ** 2
    assert np.isclose(lam, float(sde.noise_std(t)) ** 2, rtol=1e-5)  # the published weighting
    per_example = np.asarray(dsm_per_example(exact, x_t, x0, tt, sde))
    want = d * a2 * s0**2 / (a2 * s0**2 + lam)
    assert abs(per_example.mean() - want) < 5 * per_example.std() / np.sqrt(n)
    shifted = np.asarray(dsm_per_example(exact + 0.5, x_t, x0, tt, sde))
    gap = shifted - per_example
    assert abs(gap.mean() - d * lam * 0.25) < 5 * gap.std() / np.sqrt(n) + 1e-6 * d * lam


# -- Euler-Maruyama recovers a Gaussian mixture from its exact score ----------------------------------
# Two narrow modes at -1 and +1 (the ink and paper of [-1, 1] images), weights 0.8 / 0.2.
MIX = GaussianMixture.create([0.8, 0.2], [-1.0, 1.0], [0.05, 0.05])
LOG_MIX = GaussianMixture.create([0.8, 0.2], [0.05, 0.6], [0.1, 0.1])  # log(u + 1): u near 0 and near 1


def _mixture(sde) -> GaussianMixture:
    return LOG_MIX if isinstance(sde, LogVESDE) else MIX


@functools.cache
def _em(sde, n_steps, denoise_steps):
    mixture = _mixture(sde)
    mean0 = float(jnp.sum(mixture.weights * mixture.means))
    var0 = float(jnp.sum(mixture.weights * (mixture.stds**2 + mixture.means**2))) - mean0**2
    mean_T, var_T = sde.push_forward_moments(mean0, var0, sde.T)  # the per-pixel Gaussian prior fit
    x_T = mean_T + jnp.sqrt(var_T) * jax.random.normal(jax.random.key(2), (1024, 8))
    run = functools.partial(
        sample, score_fn=mixture.score_fn(sde), process=sde, method="euler_maruyama", n_steps=n_steps
    )
    return jax.jit(functools.partial(run, denoise_steps=denoise_steps))(jax.random.key(3), x_T=x_T)


@pytest.mark.parametrize("sde", ADDITIVE, ids=IDS)
@pytest.mark.parametrize("n_steps", [100, 1000])
def test_euler_maruyama_recovers_a_gaussian_mixture(sde, n_steps):
    mixture = _mixture(sde)
    x0 = _em(sde, n_steps, 0)
    chex.assert_tree_all_finite(x0)
    stats = recovery_stats(x0, mixture)
    w, m, s = (np.asarray(a) for a in (mixture.weights, mixture.means, mixture.stds))
    n = x0.size
    # Standard errors of each component's weight, mean and std (w n coordinates), plus Euler's O(dt) bias,
    # which near t = 0 (stiffness g^2 / s^2 up to 256 for log-VE) widens the components, so the std bound
    # is one-sided. Measured on the correct code over 4 seeds: weights within 2.4 SE; means within 2.8 SE
    # except log-VE at 100 levels (4.9 SE, 0.12 s); stds from -1.4 SE to +25% of s at 100 levels (VP,
    # log-VE) and to +4.8% at 1000. The bounds: 3.5 SE, 4 SE + 15 s / n_steps, and [-3.5 SE, 4 SE + 30 s /
    # n_steps] (at 1000 levels a noise term 10% low puts the stds 5-10% low, far below the lower bound).
    se_w, se_m, se_s = np.sqrt(w * (1 - w) / n), s / np.sqrt(w * n), s / np.sqrt(2 * w * n)
    np.testing.assert_array_less(np.abs(stats["weights"] - w), 3.5 * se_w)
    np.testing.assert_array_less(np.abs(stats["means"] - m), 4 * se_m + 15 * s / n_steps)
    np.testing.assert_array_less(-3.5 * se_s, stats["stds"] - s)
    np.testing.assert_array_less(stats["stds"] - s, 4 * se_s + 30 * s / n_steps)


@pytest.mark.parametrize("sde", ADDITIVE, ids=IDS)
def test_the_ablations_sampler_settings_keep_the_modes(sde):
    # 100 levels and 10 noise-free final updates, as in configs/ablation_cpu.py: the modes stay where they are.
    mixture = _mixture(sde)
    stats = recovery_stats(_em(sde, 100, 10), mixture)
    w, m, s = (np.asarray(a) for a in (mixture.weights, mixture.means, mixture.stds))
    np.testing.assert_array_less(np.abs(stats["weights"] - w), 0.02)
    np.testing.assert_array_less(np.abs(stats["means"] - m), 0.01)
    np.testing.assert_array_less(stats["stds"], 1.5 * s)  # the final updates denoise: no wider than 100 levels alone


def test_gaussian_mixture_score_is_grad_log_density():
    sde = VPSDE()
    x = jax.random.normal(jax.random.key(4), (5, 3))
    t = jnp.linspace(0.05, 1.0, 5)

    def log_p(x):
        m, v = MIX.marginal(sde, t)  # (5, K)
        comp = jax.scipy.stats.norm.logpdf(x[..., None], m[:, None], jnp.sqrt(v)[:, None])
        return jnp.sum(jax.nn.logsumexp(jnp.log(MIX.weights) + comp, axis=-1))

    np.testing.assert_allclose(MIX.score(x, sde, t), jax.grad(log_p)(x), rtol=1e-4, atol=1e-5)


# -- log-space VE: GBM written additively ------------------------------------------------------------
def test_log_ve_kernel_is_gbms_in_log_space():
    gbm, lve = GBM(), LogVESDE()
    u = jax.random.uniform(jax.random.key(5), (4096, 8))
    t = jax.random.uniform(jax.random.key(6), (4096,), minval=0.01, maxval=1.0)
    x0, y0 = gbm.encode(u), lve.encode(u)
    np.testing.assert_allclose(y0, jnp.log(x0), rtol=1e-6)
    np.testing.assert_allclose(lve.decode(y0), gbm.decode(x0), atol=1e-6)
    # In distribution, from independent draws: the standardised log-space residuals of both are N(0, 1).
    r_gbm = (jnp.log(gbm.perturb(jax.random.key(7), x0, t)) - jnp.log(x0)) / gbm.noise_std(t)[:, None]
    r_lve = (lve.perturb(jax.random.key(8), y0, t) - y0) / lve.noise_std(t)[:, None]
    n = r_gbm.size
    for r in (r_gbm, r_lve):
        assert abs(float(r.mean())) < 5 / np.sqrt(n) and abs(float(r.std()) - 1) < 5 / np.sqrt(2 * n)
    # Two-sample Kolmogorov-Smirnov on the log samples at one t: the 0.1% critical value.
    t1 = jnp.full((4096,), 0.5)
    a = np.sort(np.asarray(jnp.log(gbm.perturb(jax.random.key(9), x0, t1))).ravel())
    b = np.sort(np.asarray(lve.perturb(jax.random.key(10), y0, t1)).ravel())
    grid = np.concatenate([a, b])
    ks = np.max(np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size))
    assert ks < 1.95 * np.sqrt(2 / a.size)
    # Same key, same noise: the samples agree to float rounding.
    np.testing.assert_allclose(
        jnp.log(gbm.perturb(jax.random.key(9), x0, t1)), lve.perturb(jax.random.key(9), y0, t1), atol=1e-5
    )


def test_euler_maruyama_in_log_space_is_the_dale_langevin_update():
    # h = s_y - 1 (Hyvarinen score from the log-space Stein score); then log of Dale-Langevin = EM in y.
    gbm, lve = GBM(), LogVESDE()
    k = jax.random.split(jax.random.key(11), 4)
    y = jax.random.normal(k[0], (6, 5))
    s_y = 3 * jax.random.normal(k[1], (6, 5))
    t = jax.random.uniform(k[2], (6,), minval=0.01, maxval=1.0)
    z = jax.random.normal(k[3], (6, 5))
    for dt in (1e-3, 0.01, 0.05):
        em = euler_maruyama_update(y, s_y, t, dt, z, lve)
        dl = dale_langevin_update(jnp.exp(y), s_y - 1.0, t, dt, z, gbm)
        np.testing.assert_allclose(em, jnp.log(dl), rtol=1e-5, atol=1e-5)


def test_log_ve_sampler_follows_dale_langevin_on_the_same_mixture():
    # The same data as log-normal (GBM) and Gaussian-in-log (log-VE) mixtures; the same keys give the same
    # trajectory, so the two samplers' outputs agree sample by sample.
    gbm, lve = GBM(), LogVESDE()
    lnm = LogNormalMixture.create(LOG_MIX.weights, LOG_MIX.means, LOG_MIX.stds)
    y_T = LOG_MIX.sample_marginal(jax.random.key(12), lve, lve.T, (256, 4))
    kw = dict(n_steps=100, denoise_steps=10)
    y0 = sample(jax.random.key(13), LOG_MIX.score_fn(lve), y_T, lve, method="euler_maruyama", **kw)
    x0 = sample(jax.random.key(13), lnm.score_fn(gbm), jnp.exp(y_T), gbm, method="dale_langevin", **kw)
    np.testing.assert_allclose(y0, jnp.log(x0), atol=2e-4)


def test_log_ve_training_loss_is_gbms_noise_weighted_mdsm():
    # The same network, keys and data: log-VE's DSM (published weighting std^2 = v_t) equals GBM's M-DSM with
    # the noise weighting v_t, in value and gradient, under the log_noise parametrisation.
    gbm, lve = GBM(), LogVESDE()
    u = jax.random.uniform(jax.random.key(14), (16, 4, 4, 1))
    w = 0.1 * jax.random.normal(jax.random.key(15), (16, 16))

    def loss(w, process, weighting, x0):
        def net(x, cond):  # a linear "network" of the input and the noise level
            flat = x.reshape(x.shape[0], -1)
            return (flat @ w + cond[:, None]).reshape(x.shape)

        score_fn = network_score_fn(net, process)
        keys = jax.random.split(jax.random.key(16), x0.shape[0])
        return dsm_loss(keys, score_fn, x0, process, weighting=weighting)

    l_gbm, g_gbm = jax.value_and_grad(loss)(w, gbm, "noise", gbm.encode(u))
    l_lve, g_lve = jax.value_and_grad(loss)(w, lve, "published", lve.encode(u))
    np.testing.assert_allclose(l_lve, l_gbm, rtol=1e-5)
    np.testing.assert_allclose(g_lve, g_gbm, rtol=1e-4, atol=1e-6)
    assert not np.isclose(float(loss(w, gbm, "published", gbm.encode(u))), float(l_gbm), rtol=1e-3)


def test_log_ve_rejects_bad_fields():
    for field in ("sigma", "T", "data_offset"):
        with pytest.raises(ValueError, match=f"LogVESDE.{field}"):
            LogVESDE(**{field: 0.0})


# -- the matched-SNR rule -----------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_matched_sigma_max_of_binary_images_is_the_closed_form(p):
    # Binary pixels: Var[2u - 1] = 4 p (1 - p), Var[log(u + 1)] = log(2)^2 p (1 - p), so
    # sigma_max^2 = sigma_min^2 + 4 v_T / log(2)^2 whatever p (the module docstring).
    u = (jax.random.uniform(jax.random.key(17), (2000, 28, 28, 1)) < p).astype(jnp.float32)
    gbm = GBM(sigma=0.8)
    want = np.sqrt(0.01**2 + 4 * 0.64 / np.log(2) ** 2)
    got = snr.matched_ve_sigma_max(u, gbm, sigma_min=0.01)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(snr.terminal_snr(VESDE(sigma_max=got), u), snr.terminal_snr(gbm, u), rtol=1e-5)
    np.testing.assert_allclose(snr.terminal_snr(gbm, u), np.log(2) ** 2 * np.var(np.asarray(u)) / 0.64, rtol=1e-5)


def test_terminal_snr_of_each_process_is_its_formula():
    u = jax.random.uniform(jax.random.key(18), (500, 6))
    vp, ve, lve = VPSDE(), VESDE(), LogVESDE(sigma=0.5)
    var_x, var_y = np.var(np.asarray(2 * u - 1, np.float64)), np.var(np.log(np.asarray(u, np.float64) + 1))
    a2 = np.exp(-(0.1 + 0.5 * 19.9))  # VP: a_T^2 = exp(-int beta), std_T^2 = 1 - a_T^2
    np.testing.assert_allclose(snr.terminal_snr(vp, u), a2 * var_x / (1 - a2), rtol=1e-4)
    np.testing.assert_allclose(snr.terminal_snr(ve, u), var_x / (50.0**2 - 0.01**2), rtol=1e-5)
    np.testing.assert_allclose(snr.terminal_snr(lve, u), var_y / 0.25, rtol=1e-5)
    np.testing.assert_allclose(snr.terminal_snr(GBM(sigma=0.5), u), var_y / 0.25, rtol=1e-5)
    with pytest.raises(ValueError, match="terminal SNR"):
        snr.matched_ve_sigma_max(jnp.zeros((10, 3)), GBM())
    with pytest.raises(ValueError, match="sigma_min"):
        snr.matched_ve_sigma_max(u, GBM(), sigma_min=0.0)


def test_gaussian_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError, match="one shape"):
        GaussianMixture.create([1.0], [0.0, 1.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture.create([0.5, 0.6], [0.0, 1.0], [0.1, 0.1])
    with pytest.raises(ValueError, match="stds must be > 0"):
        GaussianMixture.create([0.5, 0.5], [0.0, 1.0], [0.1, 0.0])


def test_log_ve_from_gbm_needs_zero_log_drift_and_constant_volatility():
    assert LogVESDE.from_gbm(GBM(sigma=0.5, T=2.0, data_offset=0.5)) == LogVESDE(sigma=0.5, T=2.0, data_offset=0.5)
    for gbm in (GBM(mu=0.1), GBM(schedule="linear", sigma_end=1.0)):
        with pytest.raises(ValueError, match="schedule='constant' and mu=None"):
            LogVESDE.from_gbm(gbm)


@pytest.mark.parametrize("sde", ADDITIVE, ids=IDS)
def test_kernel_solves_the_sdes_moment_equations(sde):
    # For dx = c(t) x dt + g(t) dW the kernel N(a_t x0, std_t^2) has a' = c a and (std^2)' = 2 c std^2 + g^2.
    t = jnp.linspace(0.02, sde.T, 25)
    da = jax.vmap(jax.grad(lambda t: sde.mean_coeff(t)))(t)
    dvar = jax.vmap(jax.grad(lambda t: sde.noise_std(t) ** 2))(t)
    np.testing.assert_allclose(da, sde.drift_coeff(t) * sde.mean_coeff(t), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        dvar, 2 * sde.drift_coeff(t) * sde.noise_std(t) ** 2 + sde.diffusion_sq(t), rtol=1e-3, atol=1e-5
    )
    np.testing.assert_allclose((sde.mean_coeff(0.0), sde.noise_std(0.0)), (1.0, 0.0), atol=1e-6)
