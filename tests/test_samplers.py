"""Samplers: exact-score recovery of a log-normal mixture, Dale's law, published extras, pmap/jit."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin import GBM, VESDE, VPSDE, LogNormalMixture, recovery_stats, sample
from dale_langevin.samplers.sde import (
    dale_langevin_update,
    euler_maruyama_update,
    sign_agnostic_update,
    time_grid,
)

SDE = GBM()
MIXTURE = LogNormalMixture.create([0.3, 0.7], [-0.5, 0.5], [0.1, 0.1])
SHAPE = (1024, 8)  # 8192 i.i.d. coordinates


def _exact_hyv(x, t):
    return MIXTURE.hyvarinen(x, SDE, t)


@functools.cache
def _recovered(method: str, n_steps: int):
    x_T = MIXTURE.sample_marginal(jax.random.key(0), SDE, SDE.T, SHAPE)
    run = jax.jit(functools.partial(sample, score_fn=_exact_hyv, process=SDE, method=method, n_steps=n_steps))
    return run(jax.random.key(1), x_T=x_T)


@pytest.mark.parametrize("n_steps", [1000, 200])
@pytest.mark.parametrize("method", ["dale_langevin", "sign_agnostic"])
def test_exact_score_recovers_lognormal_mixture(method, n_steps):
    x0 = _recovered(method, n_steps)
    chex.assert_shape(x0, SHAPE)
    chex.assert_tree_all_finite(x0)
    stats = recovery_stats(x0, MIXTURE)
    n = x0.size
    w, m, s = (np.asarray(a) for a in (MIXTURE.weights, MIXTURE.log_means, MIXTURE.log_stds))
    assert stats["bad_fraction"] == 0.0
    # Monte Carlo standard errors of each component's weight, log-mean and log-std (n_k = w n
    # coordinates). Discretisation: Euler's O(dt) bias, which near t = 0 (stiffness sigma^2 / b^2 =
    # 64) inflates the component std by up to about 32 dt relative, so the std bound is one-sided.
    # Measured over 6 seeds x both samplers x {200, 1000} levels, the correct code's largest errors
    # are 0.0077 in a weight (1.5 SE), 0.0048 in a log-mean, and log-stds 0.0003 to 0.0116 above s;
    # with the noise term 10% low, weights are off by up to 0.020-0.038 and at 1000 levels every
    # log-std is 0.0046-0.009 below s (bounds for the w = 0.3 component at 1000 levels: 0.015,
    # 0.008, -0.0043 and +0.0089).
    se_w, se_m, se_s = np.sqrt(w * (1 - w) / n), s / np.sqrt(w * n), s / np.sqrt(2 * w * n)
    bias = 32 * s / n_steps
    np.testing.assert_array_less(np.abs(stats["weights"] - w), 3 * se_w)
    np.testing.assert_array_less(np.abs(stats["log_means"] - m), 4 * se_m)
    np.testing.assert_array_less(-3 * se_s, stats["log_stds"] - s)
    np.testing.assert_array_less(stats["log_stds"] - s, 4 * se_s + bias)


def test_recovery_check_has_power():
    # The unmodified prior start does not pass the same check: the sampler does the work.
    x_T = MIXTURE.sample_marginal(jax.random.key(0), SDE, SDE.T, SHAPE)
    assert np.max(np.abs(recovery_stats(x_T, MIXTURE)["log_stds"] - 0.1)) > 0.1


@pytest.mark.parametrize("sde", [GBM(), GBM(sigma=0.2, schedule="linear", sigma_end=2.0)])
@pytest.mark.parametrize("dt", [1e-4, 1e-3, 1e-2])
def test_dale_langevin_update_obeys_dales_law(sde, dt):
    keys = jax.random.split(jax.random.key(2), 4)
    shape = (256, 16)
    magnitude = jnp.exp(jax.random.uniform(keys[0], shape, minval=jnp.log(1e-3), maxval=jnp.log(1e3)))
    sign = jnp.where(jnp.arange(shape[1]) % 2 == 0, 1.0, -1.0)  # Dale: each sign is kept, + and -
    x = magnitude * sign
    h = jax.random.uniform(keys[1], shape, minval=-1e3, maxval=1e3).at[:, :2].set(jnp.array([1e3, -1e3]))
    z = 3.0 * jax.random.normal(keys[2], shape)
    t = jax.random.uniform(keys[3], shape[:1], maxval=sde.T)
    x_next = dale_langevin_update(x, h, t, dt, z, sde)
    chex.assert_tree_all_finite(x_next)
    np.testing.assert_array_equal(jnp.sign(x_next), jnp.sign(x))
    assert bool(jnp.all(jnp.abs(x_next) > 0))
    if dt == 1e-2:  # the sign-agnostic step does flip signs here: the property is not trivial
        assert bool(jnp.any(jnp.sign(sign_agnostic_update(x, h, t, dt, z, sde)) != jnp.sign(x)))


def test_updates_match_paper_formulas():
    sde = GBM(sigma=0.7, mu=0.1)
    x = jnp.array([[1.2, 0.5]])
    h, z, t, dt = jnp.array([[0.3, -2.0]]), jnp.array([[0.4, -1.1]]), jnp.array([0.5]), 1e-2
    s2, mu = 0.49, 0.1
    dl = x * jnp.exp(dt * s2 * h - dt * (mu - 1.5 * s2) + 0.7 * np.sqrt(dt) * z)
    sa = x * (1 + dt * (2 * s2 - mu) + dt * s2 * h + 0.7 * np.sqrt(dt) * z)
    np.testing.assert_allclose(dale_langevin_update(x, h, t, dt, z, sde), dl, rtol=1e-6)
    np.testing.assert_allclose(sign_agnostic_update(x, h, t, dt, z, sde), sa, rtol=1e-6)
    # Without noise the log-drifts differ by the Ito correction sigma^2 dt / 2, which the noise of the
    # ambient step, E log(1 + sigma sqrt(dt) z) = -sigma^2 dt / 2 + O(dt^2), gives back.
    zero, dt = jnp.zeros_like(z), 1e-3
    gap = jnp.log(sign_agnostic_update(x, h, t, dt, zero, sde) / dale_langevin_update(x, h, t, dt, zero, sde))
    np.testing.assert_allclose(gap, 0.5 * s2 * dt, rtol=2e-2)


def test_euler_maruyama_update_matches_the_reverse_sde_formula():
    # VP: f = -beta(t) x / 2, g^2 = beta(t) = 0.1 + 19.9 t; reverse step x - dt (f - g^2 s) + g sqrt(dt) z.
    sde = VPSDE()
    x, s, z = jnp.array([[1.2, -0.5]]), jnp.array([[0.3, -2.0]]), jnp.array([[0.4, -1.1]])
    t, dt = jnp.array([0.5]), 1e-2
    beta = 0.1 + 19.9 * 0.5
    want = x - dt * (-0.5 * beta * x - beta * s) + np.sqrt(beta * dt) * z
    np.testing.assert_allclose(euler_maruyama_update(x, s, t, dt, z, sde), want, rtol=1e-6)


def test_time_grid_in_closed_form():
    np.testing.assert_allclose(time_grid(SDE, 4), [1.0, 0.75, 0.5, 0.25], rtol=1e-6)
    np.testing.assert_allclose(time_grid(SDE, 4, t_end=0.2), [1.0, 0.8, 0.6, 0.4], rtol=1e-6)
    np.testing.assert_allclose(time_grid(GBM(T=2.0), 2, t_end=0.5), [2.0, 1.25], rtol=1e-6)


def test_default_step_is_the_level_spacing_down_to_t_end():
    """``step_size=None`` uses d = (T - t_end) / n_steps, with t_end set too."""
    x_T = MIXTURE.sample_marginal(jax.random.key(12), SDE, SDE.T, (8, 3))
    got = sample(jax.random.key(13), _exact_hyv, x_T, SDE, n_steps=4, t_end=0.2)
    ref = _reference_loop(jax.random.key(13), _exact_hyv, x_T, SDE, "dale_langevin", 4, 0.2, 1, 1.0, 0, t_end=0.2)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_one_step_is_one_update_at_T():
    x_T = MIXTURE.sample_marginal(jax.random.key(14), SDE, SDE.T, (8, 3))
    z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(jax.random.key(15), 0), 0), x_T.shape)
    t = jnp.full((8,), SDE.T)
    want = dale_langevin_update(x_T, _exact_hyv(x_T, t), t, SDE.T, z, SDE)
    np.testing.assert_allclose(sample(jax.random.key(15), _exact_hyv, x_T, SDE, n_steps=1), want, rtol=1e-6)


def _reference_loop(rng, hyv_fn, x, sde, method, n_steps, step_size, n_inner, noise_decay, denoise_steps, t_end=0.0):
    """Plain Python loop with the documented semantics, for comparison with the scan."""
    update = {"dale_langevin": dale_langevin_update, "sign_agnostic": sign_agnostic_update}[method]
    levels = np.asarray(time_grid(sde, n_steps, t_end))
    tb = lambda t: jnp.full((x.shape[0],), t, jnp.float32)
    for i, t in enumerate(levels):
        for j in range(n_inner):
            z = noise_decay**i * jax.random.normal(jax.random.fold_in(jax.random.fold_in(rng, i), j), x.shape)
            x = update(x, hyv_fn(x, tb(t)), tb(t), step_size, z, sde)
    for _ in range(denoise_steps):
        x = update(x, hyv_fn(x, tb(levels[-1])), tb(levels[-1]), step_size, jnp.zeros_like(x), sde)
    return x


@pytest.mark.parametrize("method", ["dale_langevin", "sign_agnostic"])
def test_published_extras_match_reference_loop(method):
    kwargs = dict(method=method, n_steps=4, step_size=0.03, n_inner=3, noise_decay=0.5, denoise_steps=2)
    x_T = MIXTURE.sample_marginal(jax.random.key(3), SDE, SDE.T, (16, 3))
    got = sample(jax.random.key(4), _exact_hyv, x_T, SDE, **kwargs)
    ref = _reference_loop(jax.random.key(4), _exact_hyv, x_T, SDE, **kwargs)
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_network_evaluations_and_trajectory():
    calls = []

    def counting_hyv(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return _exact_hyv(x, t)

    x_T = MIXTURE.sample_marginal(jax.random.key(3), SDE, SDE.T, (4, 2))
    x0, traj = sample(
        jax.random.key(5), counting_hyv, x_T, SDE, n_steps=5, n_inner=2, denoise_steps=3, return_trajectory=True
    )
    jax.effects_barrier()
    assert len(calls) == 5 * 2 + 3
    chex.assert_shape(traj, (5, 4, 2))
    assert not np.allclose(traj[-1], x0)  # the denoising steps moved the last state


def test_jit_and_eager_agree():
    x_T = MIXTURE.sample_marginal(jax.random.key(6), SDE, SDE.T, (32, 4))
    run = functools.partial(sample, score_fn=_exact_hyv, process=SDE, n_steps=50, n_inner=2)
    np.testing.assert_allclose(jax.jit(run)(jax.random.key(7), x_T=x_T), run(jax.random.key(7), x_T=x_T), rtol=1e-5)


def test_pmap_gives_distinct_per_device_samples(n_devices):
    assert n_devices >= 2, "conftest forces 2 host devices"
    x_T = jnp.broadcast_to(MIXTURE.sample_marginal(jax.random.key(8), SDE, SDE.T, (8, 4)), (n_devices, 8, 4))
    keys = jax.random.split(jax.random.key(9), n_devices)
    run = functools.partial(sample, score_fn=_exact_hyv, process=SDE, n_steps=20)
    out = jax.pmap(run)(keys, x_T=x_T)
    chex.assert_shape(out, (n_devices, 8, 4))
    assert not np.allclose(out[0], out[1])  # same start, per-device noise
    np.testing.assert_allclose(out[1], jax.jit(run)(keys[1], x_T=x_T[1]), rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="euler_maruyama"), "supports processes"),
        (dict(method="nonsense"), "unknown sampler"),
        (dict(n_steps=0), "n_steps"),
        (dict(n_steps=10.0), "n_steps"),
        (dict(n_inner=0), "n_inner"),
        (dict(denoise_steps=-1), "denoise_steps"),
        (dict(t_end=1.0), "t_end"),
        (dict(step_size=0.0), "step_size"),
        (dict(step_size=float("inf")), "step_size"),
        (dict(noise_decay=0.0), "noise_decay"),
        (dict(noise_decay=1.5), "noise_decay"),
    ],
)
def test_bad_arguments_raise(kwargs, message, raises_naming):
    with raises_naming(message):
        sample(jax.random.key(0), _exact_hyv, jnp.ones((2, 2)), SDE, **kwargs)


@pytest.mark.parametrize("sde", [VESDE(sigma_max=20.0), VPSDE()])
def test_additive_euler_maruyama_recovers_gaussian(sde):
    # Gaussian data N(m, s^2) per coordinate: the marginal is N(a m, a^2 s^2 + std^2), score exact.
    m0, s0 = 0.3, 0.2

    def score(x, t):
        mean, var = sde.push_forward_moments(m0, s0**2, t[:, None])
        return -(x - mean) / var

    mean_T, var_T = sde.push_forward_moments(m0, s0**2, sde.T)
    x_T = mean_T + jnp.sqrt(var_T) * jax.random.normal(jax.random.key(10), (4096, 2))
    x0 = jax.jit(functools.partial(sample, score_fn=score, process=sde, method="euler_maruyama", n_steps=500))(
        jax.random.key(11), x_T=x_T
    )
    n = x0.size
    assert abs(float(x0.mean()) - m0) < 4 * s0 / np.sqrt(n) + 0.01
    assert abs(float(x0.std()) - s0) < 4 * s0 / np.sqrt(2 * n) + 0.01
    np.testing.assert_allclose(
        euler_maruyama_update(x_T, jnp.zeros_like(x_T), jnp.ones(4096), 1e-3, jnp.zeros_like(x_T), sde),
        x_T - 1e-3 * sde.drift(x_T, jnp.ones(4096)),
        rtol=1e-6,
    )
