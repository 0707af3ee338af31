"""Distillation (DMD) into a few-step multiplicative student: the closed-form 1-D log-normal case, the student's
sampler, positivity, and the pipeline (``--mode=distill``: run, resume, sample, errors)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_train import tiny_config

from dale_langevin import distillation, losses, samplers
from dale_langevin.main import run
from dale_langevin.pipeline import checkpoint, config as config_lib, distill, state as state_lib
from dale_langevin.pipeline.workdir import Workdir
from dale_langevin.processes.base import expand_time
from dale_langevin.processes.gbm import GBM
from dale_langevin.samplers import few_step
from dale_langevin.samplers.ode import denoised_log

PROCESS = GBM()
M, S = -0.5, 0.3  # the data: log X_0 ~ N(M, S^2) per pixel
SHAPE = (4, 4, 1)
V_T = float(PROCESS.log_var(PROCESS.T))  # the log-space noise variance at T (0.64)


def lognormal_score(mean, var):
    """The exact Hyvarinen score of ``X_t`` when ``log X_0 ~ N(mean, var)``: ``z_t = log x - D(t) ~ N(mean, var + v_t)``."""

    def score_fn(x, t):
        z = jnp.log(x) - expand_time(PROCESS.log_drift(t), x)
        return -(z - mean) / (var + expand_time(PROCESS.log_var(t), x)) - 1.0

    return score_fn


def exact_map():
    """The monotone map of the prior at T onto the data, in log space: ``y0 = a + b z_T``."""
    b = S / np.sqrt(S**2 + V_T)
    return M * (1 - b), b


def prior_z(key, batch):
    """Drift-free ``z_T = log x_T - D(T)`` under the exact law at T, ``(batch, *SHAPE)``."""
    return M + np.sqrt(S**2 + V_T) * jax.random.normal(key, (batch, *SHAPE))


def distil_affine(seed: int, learned_fake: bool, steps: int, batch: int = 256, lr: float = 0.02, fake_updates: int = 5):
    """DMD on the affine student ``y0 = a + b z_T`` from the teacher's Tweedie map; the fake score is exact for the
    student's law, or (``learned_fake``) the log-normal family's ``(alpha, beta)`` fitted online by M-DSM."""
    v_T = V_T
    beta0 = S**2 / (S**2 + v_T)  # the teacher's posterior mean at T: the student's start
    theta = dict(a=jnp.float32(M * (1 - beta0)), b=jnp.float32(beta0))
    fake = dict(alpha=jnp.float32(M), beta=jnp.float32(S))  # the fake network starts at the teacher, as in the pipeline
    tx, fake_tx = optax.adam(lr), optax.adam(0.05)
    opt, fake_opt = tx.init(theta), fake_tx.init(fake)
    real = lognormal_score(M, S**2)

    @jax.jit
    def step(theta, opt, fake, fake_opt, key):
        k_start, k_dmd, k_fake = jax.random.split(key, 3)
        z_T = prior_z(k_start, batch)

        def student_loss(th):
            y0 = th["a"] + th["b"] * z_T
            if learned_fake:
                fake_fn = lognormal_score(fake["alpha"], fake["beta"] ** 2)
            else:
                a, b = jax.lax.stop_gradient((th["a"], th["b"]))  # the student's law: N(a + b M, b^2 (S^2 + v_T))
                fake_fn = lognormal_score(a + b * M, b**2 * (S**2 + v_T))
            return distillation.dmd_loss(k_dmd, y0, PROCESS, real, fake_fn)[0], y0

        grads, y0 = jax.grad(student_loss, has_aux=True)(theta)
        updates, opt = tx.update(grads, opt, theta)
        theta = optax.apply_updates(theta, updates)
        if learned_fake:
            x0 = jnp.exp(jax.lax.stop_gradient(y0))
            for j in range(fake_updates):
                fake_grads = jax.grad(
                    lambda f, j=j: losses.dsm_loss(
                        jax.random.fold_in(k_fake, j), lognormal_score(f["alpha"], f["beta"] ** 2), x0, PROCESS
                    )
                )(fake)
                updates, fake_opt = fake_tx.update(fake_grads, fake_opt, fake)
                fake = optax.apply_updates(fake, updates)
        return theta, opt, fake, fake_opt

    key = jax.random.key(seed)
    for i in range(steps):
        theta, opt, fake, fake_opt = step(theta, opt, fake, fake_opt, jax.random.fold_in(key, i))
    return float(theta["a"]), float(theta["b"])


def test_dmd_learns_the_exact_map_with_the_exact_fake_score():
    # The direction vanishes only where the student's law is the data's; there the noise vanishes too,
    # so Adam lands on the exact map to float precision (measured: 4e-8 over 8 seeds). 1e-3 leaves room.
    a_star, b_star = exact_map()
    for seed in (0, 1):
        a, b = distil_affine(seed, learned_fake=False, steps=300)
        np.testing.assert_allclose([a, b], [a_star, b_star], atol=1e-3)


def test_dmd_learns_the_exact_map_with_an_online_fake_score():
    # The pipeline's algorithm: the fake score is fitted by M-DSM to the student's samples (5 updates per
    # student update) while the student follows DMD. Start: b = 0.12 (the teacher's blurred posterior
    # mean) against b* = 0.35. Measured over seeds 0-7: |error| <= 0.0055 after 400 steps; 0.015 leaves room.
    # With one fake update and lr 0.01 the pair still circles the map by about 0.013 (the lag of the fake score).
    a_star, b_star = exact_map()
    a, b = distil_affine(0, learned_fake=True, steps=400, lr=0.005)
    np.testing.assert_allclose([a, b], [a_star, b_star], atol=0.015)


def test_dmd_direction_is_normalised_fake_minus_real():
    y0, real, fake = jnp.array([[1.0, 3.0], [0.0, 0.0]]), jnp.array([[0.0, 1.0], [0.5, -0.5]]), jnp.zeros((2, 2))
    d = distillation.dmd_direction(y0, real, fake)
    chex.assert_trees_all_close(d, jnp.array([[0.0, -1.0 / 1.5], [-1.0, 1.0]]))


def test_dmd_loss_gradient_is_the_direction():
    key = jax.random.key(0)
    y0 = M + S * jax.random.normal(key, (8, *SHAPE))
    real, fake = lognormal_score(M, S**2), lognormal_score(0.0, 0.5)
    grad = jax.grad(lambda y: distillation.dmd_loss(key, y, PROCESS, real, fake)[0])(y0)
    # the direction from the same draws, recomputed by hand: the GBM kernel in log space
    t_key, n_key = jax.random.split(key)
    t = PROCESS.T * jax.random.uniform(t_key, (8,), jnp.float32, 0.02, 0.98)
    y_t = (
        y0
        + expand_time(PROCESS.log_drift(t), y0)
        + expand_time(PROCESS.noise_std(t), y0) * jax.random.normal(n_key, y0.shape)
    )
    want = (
        distillation.dmd_direction(y0, denoised_log(y_t, t, real, PROCESS), denoised_log(y_t, t, fake, PROCESS))
        / y0.shape[0]
    )
    chex.assert_trees_all_close(grad, want, rtol=1e-5, atol=1e-7)


def test_renoise_one_step_is_the_posterior_mean_at_T():
    key = jax.random.key(1)
    x_T = jnp.exp(prior_z(key, 16) + PROCESS.log_drift(PROCESS.T))
    out = few_step.renoise_sample(key, lognormal_score(M, S**2), x_T, PROCESS, n_steps=1)
    v_T = PROCESS.log_var(PROCESS.T)
    want = M + S**2 / (S**2 + v_T) * (jnp.log(x_T) - PROCESS.log_drift(PROCESS.T) - M)
    chex.assert_trees_all_close(jnp.log(out), want, rtol=1e-5, atol=1e-5)


def test_renoise_times_are_even_in_std_and_nested():
    ts4 = few_step.renoise_times(PROCESS, 4, 2e-3)
    std = np.asarray(PROCESS.noise_std(ts4))
    np.testing.assert_allclose(np.diff(std), np.diff(std)[0], rtol=2e-3)
    assert float(ts4[0]) == PROCESS.T
    # a 4-step student's times include those of 2 and 1 steps, so it samples at 1, 2 and 4 NFE
    np.testing.assert_allclose(few_step.renoise_times(PROCESS, 2, 2e-3), ts4[::2], rtol=2e-3)


def test_student_inputs_follow_the_student_sampler():
    # The chain the student is trained on is its own sampler's: at the last index, one more denoising
    # of student_inputs' state gives renoise_on_times' output under the same key.
    key = jax.random.key(2)
    score_fn = lognormal_score(0.1, 0.2)
    ts = few_step.renoise_times(PROCESS, 3, 2e-3)
    x_T = jnp.exp(prior_z(jax.random.key(3), 5) + PROCESS.log_drift(PROCESS.T))
    y, t = distillation.student_inputs(key, x_T, ts, score_fn, PROCESS, jnp.full((5,), 2))
    chex.assert_trees_all_close(t, jnp.full((5,), ts[2]))
    out = few_step.renoise_on_times(key, score_fn, x_T, PROCESS, ts)
    chex.assert_trees_all_close(jnp.exp(denoised_log(y, t, score_fn, PROCESS)), out, rtol=1e-5)
    y0, t0 = distillation.student_inputs(key, x_T, ts, score_fn, PROCESS, jnp.array([0, 1, 2, 0, 1]))
    chex.assert_trees_all_close(y0[0], jnp.log(x_T[0]))
    chex.assert_trees_all_close(t0, ts[jnp.array([0, 1, 2, 0, 1])])


def test_the_student_chain_re_noises_by_the_forward_kernel():
    # A score whose Tweedie estimate is the constant C everywhere: the state at t_1 is then a draw of
    # p(x_{t_1} | x_0 = e^C), log x ~ N(C + D(t_1), v_{t_1}). Monte Carlo over 4,096 x 16 pixels: standard
    # errors 0.0023 (mean) and 0.0017 (std) at std_{t_1} = 0.6; 6 standard errors allowed.
    c = 0.3

    def constant_denoiser(x, t):
        z = jnp.log(x) - expand_time(PROCESS.log_drift(t), x)
        return (c - z) / expand_time(PROCESS.log_var(t), x) - 1.0

    ts = few_step.renoise_times(PROCESS, 4, 2e-3)
    x_T = jnp.exp(jax.random.normal(jax.random.key(6), (4096, *SHAPE)))
    y, t = distillation.student_inputs(jax.random.key(7), x_T, ts, constant_denoiser, PROCESS, jnp.ones(4096, int))
    std1 = float(PROCESS.noise_std(ts[1]))
    assert abs(float(jnp.mean(y)) - (c + float(PROCESS.log_drift(ts[1])))) < 6 * std1 / np.sqrt(y.size)
    assert abs(float(jnp.std(y)) - std1) < 6 * std1 / np.sqrt(2 * y.size)
    out = few_step.renoise_sample(jax.random.key(7), constant_denoiser, x_T, PROCESS, n_steps=4)
    chex.assert_trees_all_close(out, jnp.full_like(out, np.exp(c)), rtol=1e-4)


def test_renoise_outputs_stay_positive_under_wild_scores():
    # scores of either sign and far from any data's (|h| up to 8): the output is exp(y0), never <= 0, as
    # long as y0 stays inside float32's exp range
    wild = lambda x, t: 5.0 * jnp.sin(20.0 * jnp.log(x)) - 3.0
    x_T = jnp.exp(jax.random.normal(jax.random.key(4), (8, *SHAPE)))
    out = samplers.sample(jax.random.key(5), wild, x_T, PROCESS, method="renoise", n_steps=4)
    assert bool(jnp.all(out > 0)) and bool(jnp.all(jnp.isfinite(out)))
    assert samplers.network_evaluations("renoise", {"n_steps": 3}) == 3


@pytest.mark.parametrize(
    "field, value",
    [("distill.t_min", 0.0), ("distill.t_max", 1.5), ("distill.fake_updates", 0), ("distill.ema", 1.0)],
)
def test_bad_distill_settings_are_named(field, value, raises_naming):
    c = tiny_config(**{field: value})
    with raises_naming(f"config.{field}"):
        config_lib.validate(c)


# --- the pipeline: a 2-step teacher, a 4-step student, 4 DMD steps -----------------------------------------

STUDENT = {
    "distill.fake_updates": 2,  # the loop, at half the compile time of the default 4
    "distill.n_iters": 4,
    "distill.batch_size": 4,
    "distill.log_every": 2,
    "distill.ckpt_every": 2,
    "sampling.method": "renoise",
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from dale_langevin.pipeline import train

    workdir = str(tmp_path_factory.mktemp("teacher"))
    # two steps, no sample grid: the student only needs a checkpoint of the tiny network
    train.train_and_evaluate(
        tiny_config(**{"training.n_iters": 2, "training.ckpt_every": 2, "training.sample_every": 0}), workdir
    )
    return workdir


def student_config(teacher_workdir, **overrides):
    return tiny_config(**{**STUDENT, "distill.teacher_workdir": teacher_workdir, **overrides})


@pytest.fixture(scope="module")
def student(teacher, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("student"))
    c = student_config(teacher)
    metrics = distill.distill(c, workdir)
    return c, workdir, metrics


@pytest.mark.slow
def test_distill_writes_a_student_that_samples_positive(student):
    c, workdir, metrics = student
    assert all(np.isfinite(v) for v in metrics.values())
    wd = Workdir(workdir)
    assert sorted(checkpoint.manager(wd.checkpoints).all_steps()) == [2, 4]
    restored = state_lib.restore_latest(c, workdir)
    assert isinstance(restored, state_lib.DistillState) and int(restored.step) == 4
    assert int(state_lib.restore_latest(c, workdir, max_step=3).step) == 2  # an earlier checkpoint, for benchmarks
    with pytest.raises(FileNotFoundError, match="at or before step 1"):
        state_lib.restore_latest(c, workdir, max_step=1)
    # the student's own config.json says it is a student: sampling needs no teacher on the command line
    summary = run(tiny_config(**STUDENT), workdir, "sample")
    assert summary["method"] == "renoise" and summary["network_evaluations"] == 4 and summary["non_finite"] == 0
    raw = np.load(wd.samples_npz)["raw"]
    assert raw.shape == (6, 28, 28, 1) and np.all(raw > 0)


@pytest.mark.slow
def test_distill_moves_the_student_from_the_teacher(student, teacher):
    c, workdir, _ = student
    s = state_lib.restore_latest(c, workdir)
    t = state_lib.restore_latest(tiny_config(), teacher)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s.params, t.ema_params)
    assert max(jax.tree.leaves(moved)) > 0
    fake_moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s.fake_params, t.ema_params)
    assert max(jax.tree.leaves(fake_moved)) > 0


@pytest.mark.slow
def test_distill_resume_continues_the_same_trajectory(student, teacher, tmp_path):
    c, workdir, _ = student
    resumed = str(tmp_path / "resumed")
    distill.distill(student_config(teacher, **{"distill.n_iters": 2}), resumed)
    distill.distill(c, resumed)
    a, b = state_lib.restore_latest(c, workdir), state_lib.restore_latest(c, resumed)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(a.fake_params, b.fake_params, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_distill_refuses_a_changed_student_on_resume(student, teacher, tmp_path):
    _, workdir, _ = student
    with pytest.raises(ValueError, match=r"config\.distill\.lr"):
        distill.distill(student_config(teacher, **{"distill.lr": 3e-4, "distill.n_iters": 6}), workdir)


def test_distill_errors_name_the_fix(tmp_path):
    # every check comes before the teacher is read, so no trained teacher is needed (and the test stays fast)
    with pytest.raises(ValueError, match="distill.teacher_workdir"):
        distill.distill(tiny_config(), str(tmp_path / "s"))
    same = str(tmp_path / "t")
    with pytest.raises(ValueError, match="must differ"):
        distill.distill(student_config(same), same)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        distill.distill(student_config(str(tmp_path / "empty")), str(tmp_path / "s2"))
