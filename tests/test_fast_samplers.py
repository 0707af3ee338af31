"""Stochastic few-step samplers (DDIM with eta, SDE-DPM-Solver-2M/3M): recovery, orders, grids, exact chain moments, config."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin import GBM, LogNormalMixture, recovery_stats, samplers
from dale_langevin.pipeline import config as config_lib, generate
from dale_langevin.samplers import few_step as fast, ode

SDE = GBM()
DRIFT_SDE = GBM(sigma=0.5, mu=0.2)  # nonzero log drift D(t): exercises the z = y - D(t) shift
MIXTURE = LogNormalMixture.create([0.3, 0.7], [-0.5, 0.5], [0.1, 0.1])
SOLVERS = ("ddim", "dpm2m", "dpm3m")


def _run(sampler, rng, hyv, x_T, sde, **kwargs):
    """``sampler`` compiled as one program (faster than op-by-op dispatch); keyword arguments static."""
    return jax.jit(functools.partial(sampler, score_fn=hyv, process=sde, **kwargs))(rng, x_T=x_T)


def _ode(hyv, x_T, sde, **kwargs):
    return jax.jit(functools.partial(ode.ode_sample, None, hyv, process=sde, **kwargs))(x_T=x_T)


def _assert_recovers(x0):
    chex.assert_tree_all_finite(x0)
    stats = recovery_stats(x0, MIXTURE)
    assert stats["bad_fraction"] == 0.0 and bool(jnp.all(x0 > 0))
    n = x0.size
    w, m, s = (np.asarray(a) for a in (MIXTURE.weights, MIXTURE.log_means, MIXTURE.log_stds))
    # Monte Carlo (4 standard errors) plus the ODE tests' discretisation allowance of 0.01.
    np.testing.assert_array_less(np.abs(stats["weights"] - w), 4 * np.sqrt(w * (1 - w) / n) + 0.01)
    np.testing.assert_array_less(np.abs(stats["log_means"] - m), 4 * s / np.sqrt(w * n) + 0.01)
    np.testing.assert_array_less(np.abs(stats["log_stds"] - s), 4 * s / np.sqrt(2 * w * n) + 0.01)


# ddim at 50 steps; the multistep solvers at 20 (measured: within 0.01 already at 10).
@pytest.mark.parametrize(
    "solver, sde, eta, n_steps",
    [
        ("ddim", SDE, 1.0, 50),
        ("ddim", DRIFT_SDE, 0.5, 50),
        ("dpm2m", SDE, 1.0, 20),
        ("dpm2m", DRIFT_SDE, 0.5, 20),
        ("dpm3m", SDE, 1.0, 20),
        ("dpm3m", DRIFT_SDE, 0.5, 20),
    ],
    ids=["ddim-ancestral", "ddim-half-drift", "dpm2m-sde", "dpm2m-half-drift", "dpm3m-sde", "dpm3m-half-drift"],
)
def test_fast_samplers_recover_the_mixture(solver, sde, eta, n_steps):
    x_T = MIXTURE.sample_marginal(jax.random.key(1), sde, sde.T, (1024, 8))
    x0 = _run(
        samplers.get(solver).fn,
        jax.random.key(2),
        MIXTURE.score_fn(sde),
        x_T,
        sde,
        eta=eta,
        n_steps=n_steps,
        t_end=1e-3,
        denoise_steps=1,
    )
    chex.assert_shape(x0, x_T.shape)
    _assert_recovers(x0)


def test_eta_zero_is_dpm1():
    sde = DRIFT_SDE
    hyv = MIXTURE.score_fn(sde)
    x_T = MIXTURE.sample_marginal(jax.random.key(3), sde, sde.T, (16, 4))
    kw = dict(eta=0.0, n_steps=15, t_end=1e-3, denoise_steps=1)
    ddim = _run(fast.ddim_sample, jax.random.key(4), hyv, x_T, sde, **kw)
    dpm1 = _ode(hyv, x_T, sde, solver="dpm1", n_steps=15)
    np.testing.assert_allclose(jnp.log(ddim), jnp.log(dpm1), atol=2e-5)
    # the key matters only when eta > 0
    chex.assert_trees_all_equal(ddim, _run(fast.ddim_sample, jax.random.key(5), hyv, x_T, sde, **kw))
    assert not np.allclose(ddim, _run(fast.ddim_sample, jax.random.key(4), hyv, x_T, sde, **{**kw, "eta": 1.0}))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm2m_first_step_is_ddim(eta):
    # One step has no previous estimate: first order, and at eta 0 or 1 the same step as ddim.
    hyv = MIXTURE.score_fn(DRIFT_SDE)
    x_T = MIXTURE.sample_marginal(jax.random.key(3), DRIFT_SDE, DRIFT_SDE.T, (16, 4))
    kw = dict(eta=eta, n_steps=1, t_end=0.3, denoise_steps=0)
    np.testing.assert_allclose(
        _run(fast.dpm2m_sample, jax.random.key(8), hyv, x_T, DRIFT_SDE, **kw),
        _run(fast.ddim_sample, jax.random.key(8), hyv, x_T, DRIFT_SDE, **kw),
        rtol=1e-5,
    )


def test_dpm2m_is_second_order_on_the_flow():
    # eta = 0: DPM-Solver++(2M) on the probability-flow ODE. Halving the step divides the error by
    # about 4 (measured 3.7), against 2 for dpm1, at one evaluation per step like dpm1.
    x_T = MIXTURE.sample_marginal(jax.random.key(2), SDE, SDE.T, (32, 4))
    hyv = MIXTURE.score_fn(SDE)
    ref = jnp.log(_ode(hyv, x_T, SDE, solver="dpm2", n_steps=200, denoise=False))  # error ~1e-5

    def error(n):
        x = _run(fast.dpm2m_sample, jax.random.key(0), hyv, x_T, SDE, eta=0.0, n_steps=n, t_end=1e-3, denoise_steps=0)
        return float(jnp.mean(jnp.abs(jnp.log(x) - ref)))

    e = [error(n) for n in (10, 20, 40)]
    ratios = np.array([e[0] / e[1], e[1] / e[2]])
    np.testing.assert_array_less(3.0, ratios)
    np.testing.assert_array_less(ratios, 5.4)
    assert e[1] < 1e-3  # dpm1 at 20 steps: 7.6e-3 (tests/test_ode.py checks its first order)


def _grid_with_tiny_start(sde, n, t_end=1e-3):
    """A ``log_std`` grid of ``n`` steps after two tiny ones (lambda + 2e-3 each): the multistep solvers' lower-order
    first steps then add almost no error, so the error shows the order of the multistep formula itself."""
    lam_T = -jnp.log(sde.noise_std(sde.T))
    start = lam_T + jnp.array([0.0, 2e-3, 4e-3])
    lam = jnp.concatenate([start, jnp.linspace(start[-1], -jnp.log(sde.noise_std(t_end)), n + 1)[1:]])
    return sde.time_from_log_var(jnp.exp(-2.0 * lam)).at[0].set(sde.T).at[-1].set(t_end)


def test_dpm3m_is_third_order_after_its_start():
    # eta = 0 (DPM-Solver++(3M) on the flow). After its start, halving the step divides the error by
    # about 8 (measured 6.5 and 7.3; dpm2m on the same grids 3.9). From T directly the first-order
    # first step's O(h^2) error dominates and both tend to 4 (the order a lower-order start allows).
    x_T = MIXTURE.sample_marginal(jax.random.key(2), SDE, SDE.T, (32, 4))
    hyv = MIXTURE.score_fn(SDE)
    run = jax.jit(
        lambda ts, order: fast.multistep_on_grid(
            jax.random.key(0), hyv, x_T, SDE, ts, order=order, eta=0.0, denoise_steps=0
        ),
        static_argnums=1,
    )
    ref = jnp.log(run(_grid_with_tiny_start(SDE, 320), 3))  # error ~1e-8 (8^-3 of the 40-step one)

    def ratios(order):
        e = [float(jnp.mean(jnp.abs(jnp.log(run(_grid_with_tiny_start(SDE, n), order)) - ref))) for n in (10, 20, 40)]
        return np.array([e[0] / e[1], e[1] / e[2]]), e

    r3, e3 = ratios(3)
    r2, e2 = ratios(2)
    np.testing.assert_array_less(6.0, r3)
    np.testing.assert_array_less(r3, 9.5)
    np.testing.assert_array_less(r2, 4.6)  # the same test has power: second order fails it
    assert e3[2] < e2[2] / 5


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_dpm3m_starts_as_dpm2m(eta):
    # Its first two steps have at most two estimates: the same steps as dpm2m; the third differs.
    hyv = MIXTURE.score_fn(DRIFT_SDE)
    x_T = MIXTURE.sample_marginal(jax.random.key(3), DRIFT_SDE, DRIFT_SDE.T, (16, 4))
    ts = fast.time_grid(DRIFT_SDE, 6, 0.05)
    run = jax.jit(
        lambda ts, order: fast.multistep_on_grid(
            jax.random.key(8), hyv, x_T, DRIFT_SDE, ts, order=order, eta=eta, denoise_steps=0
        ),
        static_argnums=1,
    )
    np.testing.assert_allclose(run(ts[:3], 3), run(ts[:3], 2), rtol=1e-6)
    assert not np.allclose(run(ts[:4], 3), run(ts[:4], 2), rtol=1e-4)


def test_multistep_coefficients_integrate_the_polynomial():
    # g and q are int_0^h k e^{-k(h-u)} u^j / j! du for j = 1, 2 (a dense trapezoid rule checks the closed forms),
    # and a + b = 1: a constant y0 = z is a fixed point.
    for eta in (0.0, 0.5, 1.0):
        a, b, g, q, c = (float(v) for v in fast.multistep_coefficients(0.8, 0.3, eta))
        k, h = 1.0 + eta**2, np.log(0.8 / 0.3)
        u = np.linspace(0.0, h, 200_001)
        kernel = k * np.exp(-k * (h - u))
        np.testing.assert_allclose(g, np.trapezoid(kernel * u, u), rtol=1e-6)
        np.testing.assert_allclose(q, np.trapezoid(kernel * u**2 / 2, u), rtol=1e-5)
        np.testing.assert_allclose((a, a + b), (np.exp(-k * h), 1.0), rtol=1e-6)
        np.testing.assert_allclose(c, 0.3 * np.sqrt(1 - (0.3 / 0.8) ** (2 * eta**2)), rtol=1e-6, atol=1e-7)


def test_power_grid():
    ts = fast.time_grid(SDE, 8, 5e-3, "power", rho=7.0)
    chex.assert_shape(ts, (9,))
    np.testing.assert_allclose((ts[0], ts[-1]), (SDE.T, 5e-3), rtol=1e-6)
    assert bool(jnp.all(jnp.diff(ts) < 0))
    # rho = 1: equal steps of std; a large rho: the log_std grid; rho = 7 lies between (smaller last step of std)
    std1 = SDE.noise_std(fast.time_grid(SDE, 8, 5e-3, "power", rho=1.0))
    np.testing.assert_allclose(jnp.diff(std1), jnp.full((8,), jnp.diff(std1)[0]), rtol=1e-3)
    np.testing.assert_allclose(
        fast.time_grid(SDE, 8, 5e-3, "power", rho=1e4), fast.time_grid(SDE, 8, 5e-3, "log_std"), rtol=2e-3
    )
    last = [
        float(SDE.noise_std(g[-2]) - SDE.noise_std(g[-1]))
        for g in (fast.time_grid(SDE, 8, 5e-3, sp) for sp in ("log_std", "power"))
    ]
    assert last[1] > last[0] and float(std1[-2] - std1[-1]) > last[1]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_grid_cores_equal_the_samplers_and_compile_once(order):
    # The samplers are their grid core on time_grid; a jitted core with the grid as an argument serves
    # every grid of one length from one compilation (what a schedule search needs).
    hyv = MIXTURE.score_fn(DRIFT_SDE)
    x_T = MIXTURE.sample_marginal(jax.random.key(3), DRIFT_SDE, DRIFT_SDE.T, (16, 4))
    kw = dict(eta=0.7, n_steps=5, t_end=0.02, spacing="power", rho=3.0, denoise_steps=2)
    sampler = {1: fast.ddim_sample, 2: fast.dpm2m_sample, 3: fast.dpm3m_sample}[order]
    on_grid = fast.ddim_on_grid if order == 1 else functools.partial(fast.multistep_on_grid, order=order)
    core = jax.jit(lambda ts, eta: on_grid(jax.random.key(8), hyv, x_T, DRIFT_SDE, ts, eta=eta, denoise_steps=2))
    ts = fast.time_grid(DRIFT_SDE, 5, 0.02, "power", 3.0)
    np.testing.assert_allclose(core(ts, 0.7), _run(sampler, jax.random.key(8), hyv, x_T, DRIFT_SDE, **kw), rtol=1e-5)
    other = core(fast.time_grid(DRIFT_SDE, 5, 0.05, "log_std"), 0.3)
    assert core._cache_size() == 1 and not np.allclose(other, core(ts, 0.7))
    if order == 1:
        np.testing.assert_allclose(  # order 1 of the multistep core is ddim at eta 0 and 1
            jax.jit(
                lambda ts: fast.multistep_on_grid(
                    jax.random.key(8), hyv, x_T, DRIFT_SDE, ts, order=1, eta=1.0, denoise_steps=2
                )
            )(ts),
            core(ts, 1.0),
            rtol=1e-5,
        )


def test_tweedie_iterations_climb_to_the_mode():
    # Log-normal data N(a, b2) in log space: each update shrinks z - a by b2 / (b2 + v_t) (closed form),
    # so one update is the posterior mean (ode.denoised_log) and repeated ones approach the mode a.
    single = LogNormalMixture.create([1.0], [0.3], [0.2])
    sde, t = DRIFT_SDE, 0.2
    hyv = single.score_fn(sde)
    x = single.sample_marginal(jax.random.key(9), sde, t, (8, 3))
    y = jnp.log(x)
    iterate = jax.jit(fast.tweedie_iterations, static_argnums=(1, 2, 3, 4))
    np.testing.assert_allclose(iterate(y, t, hyv, sde, 1), ode.denoised_log(y, jnp.full((8,), t), hyv, sde), atol=1e-5)
    shrink = 0.04 / (0.04 + float(sde.log_var(t)))
    z = y - float(sde.log_drift(t))
    np.testing.assert_allclose(iterate(y, t, hyv, sde, 3), 0.3 + (z - 0.3) * shrink**3, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_equal(iterate(y, t, hyv, sde, 0), y)  # 0: the state at t as it is


def test_ddim_step_is_the_gaussian_posterior_at_eta_one():
    std_t, std_s = 0.7, 0.3
    a, c = fast.ddim_coefficients(std_t, std_s, 1.0)
    np.testing.assert_allclose(a, std_s**2 / std_t**2, rtol=1e-6)
    np.testing.assert_allclose(c**2, std_s**2 * (std_t**2 - std_s**2) / std_t**2, rtol=1e-6)
    a0, c0 = fast.ddim_coefficients(std_t, std_s, 0.0)
    np.testing.assert_allclose((a0, c0), (std_s / std_t, 0.0), atol=1e-7)
    # any eta keeps the total variance of z_s given y0: a**2 v_t + c**2 = v_s
    for eta in (0.0, 0.3, 1.0):
        a, c = fast.ddim_coefficients(std_t, std_s, eta)
        np.testing.assert_allclose(a**2 * std_t**2 + c**2, std_s**2, rtol=1e-6)


def _chain_log_variance(sde, ts, b2, eta):
    """Exact variance of z along the DDIM chain for N(a, b2) data in log space and the exact score.

    Tweedie is linear here, y0_hat - a = k_t (z_t - a) with k_t = b2 / (b2 + v_t), so
    Var z_s = (k_t + a_ts (1 - k_t))**2 Var z_t + c_ts**2, starting from the exact b2 + v_T.
    """
    std = np.asarray(sde.noise_std(ts), np.float64)
    var = [b2 + std[0] ** 2]
    for std_t, std_s in zip(std[:-1], std[1:]):
        a, c = (float(u) for u in fast.ddim_coefficients(std_t, std_s, eta))
        k = b2 / (b2 + std_t**2)
        var.append((k + a * (1 - k)) ** 2 * var[-1] + c**2)
    return np.array(var)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_intermediate_marginal_matches_closed_form(eta):
    # Log-normal data: log X_0 ~ N(0.3, 0.2**2). The chain's mean stays exact (0.3 + D(t)); its
    # variance follows the linear recursion above, and approaches the true b**2 + v_t as steps shrink.
    sde, n_steps, k = DRIFT_SDE, 40, 25
    single = LogNormalMixture.create([1.0], [0.3], [0.2])
    x_T = single.sample_marginal(jax.random.key(6), sde, sde.T, (4096, 8))
    _, traj = jax.jit(
        functools.partial(
            fast.ddim_sample,
            score_fn=single.score_fn(sde),
            process=sde,
            eta=eta,
            t_end=1e-3,
            n_steps=n_steps,
            return_trajectory=True,
        )
    )(jax.random.key(7), x_T=x_T)
    chex.assert_shape(traj, (n_steps, 4096, 8))
    ts = ode.ode_time_grid(sde, n_steps, 1e-3)
    t = ts[k + 1]  # the state after step k
    y = np.asarray(jnp.log(traj[k]), np.float64).ravel()
    n, b2 = y.size, 0.04
    chain_var = _chain_log_variance(sde, ts, b2, eta)[k + 1]
    exact_var = b2 + float(sde.log_var(t))
    assert abs(y.mean() - (0.3 + float(sde.log_drift(t)))) < 4 * np.sqrt(chain_var / n)
    assert abs(y.var() - chain_var) < 4 * chain_var * np.sqrt(2 / n)
    # the discretisation deficit is small at 40 steps and shrinks with more steps
    fine_var = _chain_log_variance(sde, ode.ode_time_grid(sde, 4 * n_steps, 1e-3), b2, eta)[4 * (k + 1)]
    assert 0 < exact_var - chain_var < 0.1 * exact_var  # 7.5% (eta 1), 4.4% (eta 0.5) at 40 steps
    assert 0 < exact_var - fine_var < (exact_var - chain_var) / 2
    # the check has power: the start's variance is far from the marginal's
    assert abs(float(jnp.var(jnp.log(x_T))) - exact_var) > 50 * 4 * chain_var * np.sqrt(2 / n)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eta=1.5), "eta"),
        (dict(eta=-0.1), "eta"),
        (dict(eta=float("nan")), "eta"),
        (dict(n_steps=0), "n_steps"),
        (dict(n_steps=2.0), "n_steps"),
        (dict(denoise_steps=-1), "denoise_steps"),
        (dict(t_end=0.0), "t_end"),
        (dict(spacing="cosine"), "spacing"),
        (dict(spacing="power", rho=0.0), "rho"),
        (dict(rho=float("inf")), "rho"),
    ],
)
def test_bad_arguments(solver, kwargs, message):
    with pytest.raises(ValueError, match=message):
        samplers.get(solver).fn(jax.random.key(0), MIXTURE.score_fn(SDE), jnp.ones((2, 2)), SDE, **kwargs)


def _config(method="ddim", **settings):
    c = config_lib.default_config()
    c.data.dataset = "embedded_mnist"
    c.sampling.method = method
    c.sampling[method].update(settings)
    return c


@pytest.mark.parametrize("method", SOLVERS)
def test_config_accepts_fast_samplers_and_counts_evaluations(method):
    c = _config(method, eta=0.5, n_steps=40, denoise_steps=10)
    config_lib.validate(c)
    assert generate.network_evaluations(c) == 50 == fast.network_evaluations(n_steps=40, denoise_steps=10)
    assert generate.network_evaluations(c, {"n_steps": 15}) == 25


@pytest.mark.parametrize(
    "field, value",
    [
        ("eta", 1.01),
        ("eta", -0.5),
        ("t_end", 0.0),
        ("t_end", 1.0),
        ("denoise_steps", -1),
        ("n_steps", 0),
        ("spacing", "cosine"),
        ("rho", -1.0),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"config\.sampling\.ddim\.{field}"):
        config_lib.validate(_config(**{field: value}))


def tiny_model(c):
    """``(process, model, params, stats)`` for config ``c`` shrunk in place to a tiny U-Net (8 channels) and sampling
    batch 4: random weights drawn by numpy (no per-leaf compiles) and a unit per-pixel prior for 28x28x1 images."""
    c.sampling.batch_size = 4
    c.model.unet.update(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
    process, model = config_lib.make_process(c), config_lib.make_model(c)
    shape = (28, 28, 1)
    like = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,)), train=False))
    leaves, treedef = jax.tree.flatten(like)
    draw = np.random.default_rng(0)
    params = jax.tree.unflatten(treedef, [(0.05 * draw.standard_normal(a.shape)).astype(a.dtype) for a in leaves])
    stats = dict(
        pixel_loc=np.zeros(shape, np.float32),
        pixel_scale=np.ones(shape, np.float32),
        scalar_loc=np.float32(0.0),
        scalar_scale=np.float32(1.0),
        class_means=np.ones((10, *shape), np.float32),
    )
    return process, model, params, stats


def test_generate_runs_the_fast_samplers():
    # The pipeline path, pmapped over the test's 2 host devices, with a tiny U-Net and random weights
    # (numpy draws: no per-leaf compiles). Same key, so the same starts for every run below.
    c = _config(n_steps=3)
    process, model, params, stats = tiny_model(c)
    config_lib.validate(c)
    shape = (28, 28, 1)

    def raw(method, **settings):
        c.sampling.method = method
        c.sampling[method].update(settings)
        images, raw, labels = generate.generate(c, process, model, params, stats, jax.random.key(1), 6)
        chex.assert_shape((images, raw), (6, *shape))
        chex.assert_tree_all_finite(raw)
        assert np.all(raw > 0) and images.min() >= 0 and images.max() <= 1 and np.all(labels == -1)
        return raw

    # ddim at eta 0 with one Tweedie step is the ODE's dpm1: equal only if eta, t_end and
    # denoise_steps all reach the sampler (the defaults are 1, 5e-3 and 10).
    ddim = raw("ddim", eta=0.0, t_end=0.02, denoise_steps=1)
    dpm1 = raw("ode", solver="dpm1", n_steps=3, t_end=0.02)
    np.testing.assert_allclose(np.log(ddim), np.log(dpm1), atol=2e-5)

    # A second call with the same settings reuses the compiled sampler (no new trace) and repeats the draw.
    before = generate._pmapped_sampler.cache_info()
    np.testing.assert_array_equal(raw("ode", solver="dpm1", n_steps=3, t_end=0.02), dpm1)
    after = generate._pmapped_sampler.cache_info()
    assert (after.hits, after.misses) == (before.hits + 1, before.misses)


def test_ddim_is_gbm_only():
    c = _config()
    c.process.name = "ve"
    with pytest.raises(ValueError, match=r"config\.sampling\.method"):
        config_lib.validate(c)
