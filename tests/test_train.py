"""Training pipeline: config validation, pmap equivalence, end-to-end run, checkpoint resume, sampling."""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dale_langevin import samplers
from dale_langevin.pipeline import checkpoint, config as config_lib, generate, parallel, state as state_lib, train
from dale_langevin.pipeline.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str):
    return config_lib.load_config_file(ROOT / "configs" / f"{name}.py")


# The demo config shrunk to seconds: 8-channel two-level U-Net, batch 8. A dict, so that the same
# settings can be given to ``main`` as command-line overrides.
TINY = {
    "model.unet.channels": 8,
    "model.unet.channel_mult": (1, 2),
    "training.batch_size": 8,
    "training.n_iters": 6,
    "training.log_every": 2,
    "training.ckpt_every": 3,
    "training.sample_every": 6,
    "training.sample_grid_steps": 2,
    "optim.warmup_steps": 2,
    "sampling.dale_langevin.n_steps": 5,
    "sampling.dale_langevin.denoise_steps": 2,
    "sampling.n_samples": 6,
    "sampling.batch_size": 4,
    "eval.inception": "off",  # a networked machine would otherwise fetch 88 MB of Inception weights
}


def tiny_config(**overrides):
    """The demo config with :data:`TINY` and then ``overrides`` applied."""
    c = load_config("demo")
    c.update_from_flattened_dict({**TINY, **overrides})
    return c


def main_flags(settings: dict) -> list[str]:
    """``--config.<field>=<value>`` flags for ``python -m dale_langevin.main``."""
    return [f"--config.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in settings.items()]


@pytest.mark.parametrize("name", ["default", "mnist", "fmnist", "kmnist", "cifar10", "demo"])
def test_shipped_configs_validate(name):
    c = load_config(name)
    config_lib.validate(c)
    assert c.process.gbm.sigma == 0.8 and c.process.gbm.mu is None and c.training.n_time_levels == 1000


def test_published_settings_in_fmnist_config():
    c = load_config("fmnist")
    assert (c.optim.lr, c.optim.beta1, c.optim.eps, c.training.batch_size, c.ema.decay) == (1e-4, 0.9, 1e-8, 128, 0.999)
    dl, sa = c.sampling.dale_langevin, c.sampling.sign_agnostic
    assert (dl.n_steps, dl.step_size, dl.n_inner, dl.noise_decay) == (1000, 5.86e-4, 1, 0.995)
    assert (sa.n_steps, sa.step_size, sa.n_inner, sa.noise_decay) == (1000, 1.468e-3, 3, 0.9995)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"data.dataset": "imagenet"}, "config.data.dataset"),
        ({"data.read_threads": -1}, "config.data.read_threads"),
        ({"training.batch_size": 7}, "config.training.batch_size"),
        ({"process.name": "cld"}, "config.process.name"),
        ({"process.gbm.sigma": -1.0}, "config.process.gbm.sigma must be"),
        ({"sampling.method": "euler_maruyama"}, "config.sampling.method"),
        ({"sampling.method": "ode", "sampling.ode.solver": "rk4"}, "config.sampling.ode.solver"),
        ({"sampling.method": "ode", "sampling.ode.t_end": 0.0}, "config.sampling.ode.t_end"),
        ({"sampling.method": "nonsense"}, "config.sampling.method"),
        ({"sampling.dale_langevin.noise_decay": 2.0}, "config.sampling.dale_langevin.noise_decay"),
        ({"sampling.dale_langevin.n_inner": 0}, "config.sampling.dale_langevin.n_inner"),
        (
            {"training.sample_grid_steps": 0},
            "config.training.sample_grid_steps=0 makes the periodic grids' sampler invalid: n_steps",
        ),  # the grids' sampler
        ({"training.n_time_levels": 1}, "config.training.n_time_levels"),
        ({"training.t_sampling": "uniform", "training.t_min": 1.0}, "config.training.t_min"),
        ({"optim.beta2": 1.0}, "config.optim.beta2"),
        ({"sampling.start": "zeros"}, "config.sampling.start"),
        ({"training.weighting": "v3"}, "config.training.weighting"),
        ({"model.unet.channel_mult": (1, 2, 2, 2, 2)}, "config.model.unet is invalid"),
        ({"model.name": "resnet"}, "config.model.name"),
        ({"model.parametrisation": "eps"}, "config.model.parametrisation"),
        ({"model.name": "ncsnpp", "model.ncsnpp.ch_mult": (1, 2, 2, 2)}, "config.model.ncsnpp is invalid"),  # 28 / 8
        ({"model.name": "ncsnpp", "model.ncsnpp.embedding": "rope"}, "config.model.ncsnpp is invalid"),
        ({"model.name": "ncsnv2_deeper", "model.ncsnv2_deeper.ngf": 0}, "config.model.ncsnv2_deeper.ngf"),
        ({"model.name": "ncsnpp", "model.ncsnpp.dropout": 1.0}, "config.model.ncsnpp.dropout"),
        ({"ema.decay": 1.0}, "config.ema.decay"),
        ({"sampling.batch_size": 3}, "config.sampling.batch_size"),
    ],
)
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        config_lib.validate(tiny_config(**overrides))


def test_missing_field_is_named():
    c = tiny_config()
    del c.training["t_min"]
    with pytest.raises(ValueError, match=r"config\.training\.t_min"):
        config_lib.validate(c)
    c = tiny_config()
    del c.sampling.dale_langevin["n_inner"]  # the selected sampler's group is required, field by field
    with pytest.raises(ValueError, match=r"config\.sampling\.dale_langevin\.n_inner"):
        config_lib.validate(c)
    c = tiny_config()
    del c.sampling["ode"]  # groups of samplers the config does not select are not
    config_lib.validate(c)


def test_unknown_and_renamed_fields_are_refused():
    c = tiny_config()
    with c.unlocked():
        c.sampling.n_steps = 200  # the shared field of an earlier schema
        c.training.weightng = "noise"
    with pytest.raises(ValueError, match=r"config\.sampling\.n_steps \(now config\.sampling\.<method>\.n_steps\)"):
        config_lib.validate(c)
    assert sorted(config_lib.unknown_fields(c)) == ["sampling.n_steps", "training.weightng"]
    c = tiny_config()
    with c.unlocked():
        c.data.shuffle_buffer = 10_000  # the tf.data pipeline's field, gone with Grain
    with pytest.raises(ValueError, match=r"config\.data\.shuffle_buffer \(removed: .*full permutation"):
        config_lib.validate(c)


def test_required_fields_derive_from_the_defaults():
    required = set(config_lib.required_fields(config_lib.default_config()))
    assert {"training.t_min", "sampling.dale_langevin.n_inner", "process.gbm.sigma", "eval.inception_url"} <= required
    assert not any(p.startswith(("sampling.ode.", "process.ve.")) for p in required)
    assert set(config_lib.default_config().sampling) >= set(samplers.names())


def test_additive_config_validates():
    config_lib.validate(tiny_config(**{"process.name": "vp", "sampling.method": "euler_maruyama"}))
    with pytest.raises(ValueError, match=r"config\.sampling\.method"):  # the ODE sampler is GBM's
        config_lib.validate(tiny_config(**{"process.name": "vp", "sampling.method": "ode"}))
    log_ve = {"process.name": "log_ve", "sampling.method": "euler_maruyama"}
    config_lib.validate(tiny_config(**log_ve))
    with pytest.raises(ValueError, match=r"config\.process\.log_ve\.sigma"):
        config_lib.make_process(tiny_config(**log_ve, **{"process.log_ve.sigma": -1.0}))
    with pytest.raises(ValueError, match=r"config\.sampling\.method"):  # Dale-Langevin is GBM's, even in log space
        config_lib.validate(tiny_config(**{**log_ve, "sampling.method": "dale_langevin"}))


def test_learning_rate_warmup_starts_above_zero():
    _, schedule = state_lib.make_optimizer(1e-3, 4, 1.0, 0.9, 0.999, 1e-8)
    np.testing.assert_allclose([schedule(n) for n in range(6)], [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)
    _, constant = state_lib.make_optimizer(1e-3, 0, 1.0, 0.9, 0.999, 1e-8)
    assert float(constant(0)) == pytest.approx(1e-3)


def test_ema_warmup_schedule():
    steps = jnp.arange(0, 20_000, 7)
    d = state_lib.ema_decay(steps, 0.999, True)
    np.testing.assert_allclose(d[0], 0.1)
    assert bool(jnp.all(jnp.diff(d) >= 0)) and float(d[-1]) == pytest.approx(0.999)
    assert float(state_lib.ema_decay(jnp.asarray(0), 0.999, False)) == pytest.approx(0.999)


def test_pmap_step_equals_single_device_step_on_full_batch(n_devices):
    """The real train step: 2 devices x B/2 (pmap) gives the update of 1 device x B."""
    c = tiny_config()
    _, _, step_fn, state = state_lib.build(c)
    images = config_lib.make_process(c).encode(jax.random.uniform(jax.random.key(0), (8, 28, 28, 1)))
    # One device, whole batch: vmap over an axis of size 1 carries the same collectives as pmap.
    single, single_metrics = jax.jit(jax.vmap(step_fn, axis_name=parallel.AXIS))(
        jax.tree.map(lambda x: x[None], state), {"images": images[None]}
    )
    multi, multi_metrics = parallel.pmap(step_fn)(parallel.replicate(state), parallel.shard_batch({"images": images}))
    np.testing.assert_allclose(multi_metrics["loss"][0], single_metrics["loss"][0], rtol=1e-5)
    # Averaged, not summed, over devices (Adam's first step hides the scale; the norm does not).
    np.testing.assert_allclose(multi_metrics["grad_norm"][0], single_metrics["grad_norm"][0], rtol=1e-5)
    chex.assert_trees_all_close(
        parallel.unreplicate(multi.params), parallel.unreplicate(single.params), rtol=1e-4, atol=1e-6
    )
    chex.assert_trees_all_equal(parallel.unreplicate(multi), jax.tree.map(lambda x: x[1], multi))  # replicas agree
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), parallel.unreplicate(multi.params), state.params)
    assert any(jax.tree.leaves(moved))  # the step did update (only the zero-initialised output layer, at first)


def test_train_step_is_adam_and_ema_on_the_mdsm_gradient_in_closed_form():
    """One step by hand: per-example keys fold(fold(loss key, step), i), clipped Adam at the warm-up lr, EMA."""
    from dale_langevin.losses import dsm_loss, network_score_fn

    c = tiny_config(**{"model.unet.dropout": 0.0, "optim.grad_clip": 0.05, "optim.lr": 20.0})
    process, model, step_fn, state = state_lib.build(c)
    images = process.encode(jax.random.uniform(jax.random.key(0), (8, 28, 28, 1)))
    new, metrics = jax.jit(jax.vmap(step_fn, axis_name=parallel.AXIS))(
        jax.tree.map(lambda x: x[None], state), {"images": images[None]}
    )
    new, metrics = jax.tree.map(lambda x: x[0], (new, metrics))

    loss_key = jax.random.split(jax.random.wrap_key_data(state.rng))[0]
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(loss_key, 0), i) for i in range(8)])

    def loss_fn(params):
        score = network_score_fn(lambda inp, level: model.apply(params, inp, level, train=True), process)
        return dsm_loss(keys, score, images, process, **config_lib.loss_settings(c))

    loss, g = jax.value_and_grad(loss_fn)(state.params)
    norm = float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g))))
    assert norm > 0.05  # so the clipping is exercised
    g = jax.tree.map(lambda x: x * 0.05 / norm, g)
    lr = c.optim.lr / c.optim.warmup_steps  # warm-up: the first update moves at lr / warmup_steps
    b1, b2, eps = c.optim.beta1, c.optim.beta2, c.optim.eps
    # Adam's first step: m_hat = g, v_hat = g**2.
    adam = jax.tree.map(lambda p, x: p - lr * x / (np.sqrt((1 - b2) * x**2 / (1 - b2)) + eps), state.params, g)
    decay = min(c.ema.decay, 1.0 / 10.0)  # (1 + n) / (10 + n) at n = 0
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.params, adam)

    assert int(new.step) == 1
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
    np.testing.assert_allclose(metrics["lr"], lr, rtol=1e-6)
    chex.assert_trees_all_close(new.params, adam, rtol=1e-4, atol=1e-7)
    chex.assert_trees_all_close(new.ema_params, ema, rtol=1e-4, atol=1e-7)
    param_norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(adam)))
    np.testing.assert_allclose(metrics["param_norm"], param_norm, rtol=1e-5)
    # The norm after the update: a step of lr = 10 moves it far beyond float32 rounding (at 1e-3, 6e-8 of it).
    before = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(state.params)))
    assert abs(param_norm - before) > 100 * 1e-5 * param_norm, (param_norm, before)
    # Adam's state advances: its first moment is (1 - b1) g of the clipped gradient.
    chex.assert_trees_all_close(optax.tree.get(new.opt_state, "mu"), jax.tree.map(lambda x: (1 - b1) * x, g), rtol=1e-4)
    chex.assert_trees_all_equal(new.rng, state.rng)  # keys are folded with the step, never split off the state


def test_train_step_applies_dropout_with_the_device_and_step_key():
    """Dropout is on in the loss, keyed ``fold(fold(dropout key, device), step)``."""
    from dale_langevin.losses import dsm_loss, network_score_fn

    c = tiny_config(**{"model.unet.dropout": 0.3})
    process, model, step_fn, state = state_lib.build(c)
    # Away from the initialisation, whose zero output layer hides what comes before it.
    leaves, treedef = jax.tree.flatten(state.params)
    noise = [0.05 * jax.random.normal(jax.random.key(i), x.shape) for i, x in enumerate(leaves)]
    state = state.replace(params=jax.tree.unflatten(treedef, [x + n for x, n in zip(leaves, noise)]))
    images = process.encode(jax.random.uniform(jax.random.key(2), (8, 28, 28, 1)))
    _, metrics = jax.jit(jax.vmap(step_fn, axis_name=parallel.AXIS))(
        jax.tree.map(lambda x: x[None], state), {"images": images[None]}
    )
    loss_key, dropout_key = jax.random.split(jax.random.wrap_key_data(state.rng))
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(loss_key, 0), i) for i in range(8)])
    dropout_rng = jax.random.fold_in(jax.random.fold_in(dropout_key, 0), 0)  # device 0, step 0

    def loss(**apply_kwargs):
        net = lambda inp, level: model.apply(state.params, inp, level, **apply_kwargs)
        return dsm_loss(keys, network_score_fn(net, process), images, process, **config_lib.loss_settings(c))

    with_dropout = loss(train=True, rngs={"dropout": dropout_rng})
    np.testing.assert_allclose(metrics["loss"][0], with_dropout, rtol=1e-5)
    assert abs(float(with_dropout) - float(loss(train=False))) > 1e-3 * abs(float(with_dropout))


def test_grad_clip_zero_disables_clipping():
    """``grad_clip=0`` is plain Adam (a clip at norm 0 would zero every update)."""
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([30.0, -40.0, 5.0])}
    tx, _ = state_lib.make_optimizer(1e-2, 0, 0.0, 0.9, 0.999, 1e-8)
    plain = optax.adam(1e-2, b1=0.9, b2=0.999, eps=1e-8)
    got, _ = tx.update(grads, tx.init(params), params)
    want, _ = plain.update(grads, plain.init(params), params)
    chex.assert_trees_all_close(got, want, rtol=1e-6)
    clipped, _ = state_lib.make_optimizer(1e-2, 0, 1.0, 0.9, 0.999, 1e-8)
    # Adam's first step is scale-free (m_hat / sqrt(v_hat) = sign(g)); the second shows the clip.
    state = clipped.init(params)
    for g in (grads, {"w": jnp.array([0.1, 0.1, 0.1])}):
        upd_clip, state = clipped.update(g, state, params)
    pstate = plain.init(params)
    for g in (grads, {"w": jnp.array([0.1, 0.1, 0.1])}):
        upd_plain, pstate = plain.update(g, pstate, params)
    assert not np.allclose(upd_clip["w"], upd_plain["w"])


def test_two_pmap_steps_equal_two_single_device_steps(n_devices):
    """A second step: Adam's moments, the step-folded keys and every layer's gradient now matter."""
    c = tiny_config(**{"model.unet.dropout": 0.0})
    _, _, step_fn, state = state_lib.build(c)
    images = config_lib.make_process(c).encode(jax.random.uniform(jax.random.key(1), (2, 8, 28, 28, 1)))
    single_fn = jax.jit(jax.vmap(step_fn, axis_name=parallel.AXIS))
    multi_fn = parallel.pmap(step_fn)
    single, multi = jax.tree.map(lambda x: x[None], state), parallel.replicate(state)
    for batch in images:
        single, single_metrics = single_fn(single, {"images": batch[None]})
        multi, multi_metrics = multi_fn(multi, parallel.shard_batch({"images": batch}))
    for name in ("loss", "grad_norm", "param_norm"):
        np.testing.assert_allclose(multi_metrics[name][0], single_metrics[name][0], rtol=1e-4, err_msg=name)
    one, many = jax.tree.map(lambda x: x[0], single), parallel.unreplicate(multi)
    assert int(many.step) == 2
    # Conv biases that feed a GroupNorm get gradients that cancel to rounding level, and Adam turns
    # those into steps of up to lr: there the two runs differ by 0.25% of lr (measured 4.9e-6 at
    # lr 2e-3); any other difference (keys, averaging, moments) moves every layer by O(lr).
    atol = 0.01 * float(single_metrics["lr"][0])
    chex.assert_trees_all_close(many.params, one.params, rtol=1e-4, atol=atol)
    chex.assert_trees_all_close(many.ema_params, one.ema_params, rtol=1e-4, atol=atol)


def test_devices_draw_different_noise(n_devices):
    keys = parallel.pmap(lambda k: jax.random.normal(parallel.device_rng(jax.random.wrap_key_data(k), 3), (4,)))(
        parallel.replicate(jax.random.key_data(jax.random.key(0)))
    )
    assert not np.allclose(keys[0], keys[1])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Six steps on the embedded digits, checkpoints at 3 and 6."""
    workdir = str(tmp_path_factory.mktemp("run"))
    c = tiny_config()
    metrics = train.train_and_evaluate(c, workdir)
    return c, workdir, metrics


def test_end_to_end_training_writes_everything(trained_run):
    c, workdir, metrics = trained_run
    assert np.isfinite(metrics["loss"]) and metrics["images_per_sec"] > 0
    wd = Workdir(workdir)
    assert sorted(checkpoint.manager(wd.checkpoints).all_steps()) == [3, 6]
    assert json.load(open(os.path.join(workdir, "config.json")))["data"]["dataset"] == "embedded_mnist"
    stats = np.load(str(wd.start_stats))
    chex.assert_shape([stats["pixel_loc"], stats["class_means"]], [(28, 28, 1), (10, 28, 28, 1)])
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    assert os.listdir(os.path.join(workdir, "samples")) == ["step_0000006.png"]  # training.sample_every = 6
    logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [m["step"] for m in logged] == [2, 4, 6] and logged[-1]["loss"] == pytest.approx(metrics["loss"])


def test_sample_mode_writes_npz_and_png(trained_run):
    c, workdir, _ = trained_run
    summary = generate.sample_and_save(c, workdir)
    assert summary["network_evaluations"] == 5 + 2 and summary["step"] == 6
    with np.load(os.path.join(workdir, "samples.npz")) as f:
        chex.assert_shape(f["images"], (6, 28, 28, 1))
        assert f["images"].min() >= 0.0 and f["images"].max() <= 1.0
        assert np.all(f["raw"] > 0)  # Dale-Langevin keeps GBM samples positive
    from PIL import Image

    assert Image.open(os.path.join(workdir, "samples.png")).size[0] > 28 * 2


def _toy_sampler(rng, score_fn, x_T, process, *, n_steps: int = 2, step: float = 0.01):
    """A toy sampler: ``n_steps`` noise-free multiplicative score steps at ``t = T / 2``."""
    del rng
    t = jnp.full((x_T.shape[0],), process.T / 2)
    x = x_T
    for _ in range(n_steps):
        x = x * jnp.exp(step * score_fn(x, t))
    return x


def _toy_check(process, *, n_steps, step):
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")


def test_a_sampler_registered_in_one_place_runs_through_sample_mode(trained_run):
    """Registering is the only edit a new sampler needs: its config group, checks, count and main's sample mode follow."""
    from dale_langevin import main

    _, workdir, _ = trained_run
    samplers.register(
        "toy_steps", _toy_sampler, processes=("gbm",), nfe=lambda n_steps, step: n_steps, check=_toy_check
    )
    try:
        c = tiny_config(**{"sampling.method": "toy_steps"})
        assert c.sampling.toy_steps.to_dict() == {"n_steps": 2, "step": 0.01}
        c.sampling.toy_steps.n_steps = 3
        summary = main.run(c, workdir, "sample")
        assert (summary["method"], summary["network_evaluations"], summary["settings"]) == (
            "toy_steps",
            3,
            {"n_steps": 3, "step": 0.01},
        )
        with np.load(os.path.join(workdir, "samples.npz")) as f:
            chex.assert_shape(f["raw"], (6, 28, 28, 1))
            chex.assert_tree_all_finite(f["raw"])
        c.sampling.toy_steps.step = -1.0
        with pytest.raises(ValueError, match=r"config\.sampling\.toy_steps\.step must be > 0"):
            config_lib.validate(c)
        with pytest.raises(ValueError, match="already registered"):
            samplers.register("toy_steps", _toy_sampler, processes=("gbm",), nfe=lambda **_: 0)
    finally:
        samplers.unregister("toy_steps")
    assert "toy_steps" not in config_lib.default_config().sampling


def test_ode_sampling_mode(trained_run, tmp_path):
    c, workdir, _ = trained_run
    c = tiny_config(**{"sampling.method": "ode", "sampling.ode.solver": "heun", "sampling.ode.n_steps": 3})
    summary = generate.sample_and_save(c, workdir)
    assert summary["network_evaluations"] == 3 * 2 + 1
    with np.load(os.path.join(workdir, "samples.npz")) as f:
        chex.assert_tree_all_finite(f["raw"])
        assert np.all(f["raw"] > 0)


def test_class_average_start_is_labelled(trained_run):
    c, workdir, _ = trained_run
    c = tiny_config(**{"sampling.start": "class_average"})
    process = config_lib.make_process(c)
    stats = generate.start_stats(c, process, workdir)
    x_T, labels = generate.initial_state(jax.random.key(0), process, stats, "class_average", 12)
    np.testing.assert_array_equal(labels, np.arange(12) % 10)
    assert bool(jnp.all(x_T > 0))


def test_resume_continues_the_same_trajectory(trained_run, tmp_path):
    """Train 3 steps, stop, restart to 6: same state as the uninterrupted 6-step run."""
    c, workdir, _ = trained_run
    resumed = str(tmp_path / "resumed")
    train.train_and_evaluate(tiny_config(**{"training.n_iters": 3}), resumed)
    train.train_and_evaluate(tiny_config(), resumed)
    _, _, _, like = state_lib.build(c)
    full = checkpoint.restore_latest(checkpoint.manager(Workdir(workdir).checkpoints), like)
    again = checkpoint.restore_latest(checkpoint.manager(Workdir(resumed).checkpoints), like)
    assert int(again.step) == 6
    curve = lambda d: {m["step"]: m["loss"] for m in map(json.loads, open(os.path.join(d, "metrics.jsonl")))}
    full_curve, resumed_curve = curve(workdir), curve(resumed)
    assert {2, 4, 6} <= set(resumed_curve)  # the first leg also logs its last step, 3
    np.testing.assert_allclose([resumed_curve[s] for s in (2, 4, 6)], [full_curve[s] for s in (2, 4, 6)], rtol=1e-5)
    chex.assert_trees_all_close(again.params, full.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(again.ema_params, full.ema_params, rtol=1e-5, atol=1e-6)


def _copy_run(workdir, tmp_path) -> str:
    copy = str(tmp_path / "copy")
    shutil.copytree(workdir, copy)
    return copy


def test_resume_with_a_changed_model_or_batch_is_refused_naming_the_fields(trained_run, tmp_path):
    _, workdir, _ = trained_run
    copy = _copy_run(workdir, tmp_path)
    with pytest.raises(
        ValueError, match=r"config\.model\.unet\.channels: 8 -> 16(.|\n)*config\.training\.batch_size: 8 -> 16"
    ):
        train.train_and_evaluate(tiny_config(**{"model.unet.channels": 16, "training.batch_size": 16}), copy)
    assert json.load(open(os.path.join(copy, "config.json")))["model"]["unet"]["channels"] == 8  # not overwritten
    # Fields that leave the trajectory alone may change; a flag lets a changed batch through.
    train.train_and_evaluate(tiny_config(**{"training.log_every": 3, "sampling.dale_langevin.n_steps": 9}), copy)
    train.train_and_evaluate(tiny_config(**{"training.batch_size": 16, "training.allow_resume_changes": True}), copy)


def test_a_run_of_the_retired_tf_data_stream_is_not_resumed_on_the_grain_stream():
    c = tiny_config()
    assert config_lib.resume_differences(c.to_dict(), c) == []
    old = c.to_dict()
    old["data"] = {k: v for k, v in old["data"].items() if k != "read_threads"} | {"shuffle_buffer": 10_000}
    assert config_lib.resume_differences(old, c) == ["config.data.shuffle_buffer: 10000 -> None"]


def test_a_restart_drops_the_logged_steps_it_lost(trained_run, tmp_path):
    """Lose the step-6 checkpoint: the restart resumes at 3, drops the log lines of 4 and 6, and logs them again."""
    _, workdir, _ = trained_run
    copy = _copy_run(workdir, tmp_path)
    shutil.rmtree(os.path.join(copy, "checkpoints", "6"))
    original = [json.loads(line) for line in open(os.path.join(copy, "metrics.jsonl"))]
    train.train_and_evaluate(tiny_config(), copy)
    logged = [json.loads(line) for line in open(os.path.join(copy, "metrics.jsonl"))]
    assert [m["step"] for m in logged] == [2, 4, 6]
    np.testing.assert_allclose([m["loss"] for m in logged], [m["loss"] for m in original], rtol=1e-5)


def test_a_damaged_start_statistics_cache_is_rebuilt(trained_run, tmp_path):
    c, workdir, _ = trained_run
    copy = _copy_run(workdir, tmp_path)
    path = os.path.join(copy, "start_stats.npz")
    good = dict(np.load(path))
    with open(path, "r+b") as f:
        f.truncate(100)
    stats = generate.start_stats(c, config_lib.make_process(c), copy)
    assert set(good) == set(generate.STATS_KEYS)  # the cache holds the fits; the published constants come on top
    chex.assert_trees_all_close({k: stats[k] for k in good}, good)
    chex.assert_trees_all_close(dict(np.load(path)), good)  # and written again


def test_a_checkpoint_restores_on_another_device_count(trained_run, tmp_path):
    """Written by this 2-device process, sampled by a 1-device one."""
    _, workdir, _ = trained_run
    copy = _copy_run(workdir, tmp_path)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import jax; assert jax.local_device_count() == 1\n"
        "from test_train import tiny_config\n"
        "from dale_langevin.pipeline import generate\n"
        "print('restored step', generate.sample_and_save(tiny_config(), sys.argv[2])['step'])\n"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "tests"), copy], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "restored step 6" in out.stdout


def _damage(step_dir: pathlib.Path, how: str) -> None:
    data = sorted((step_dir / "default" / "ocdbt.process_0" / "d").iterdir(), key=lambda p: p.stat().st_size)
    if how == "truncated data":
        with open(data[-1], "r+b") as f:
            f.truncate(data[-1].stat().st_size // 2)
    elif how == "empty metadata":
        (step_dir / "default" / "_METADATA").write_text("")
    elif how == "arrays deleted":
        for path in data:
            path.unlink()


# Orbax leaves the failed restore's TensorStore read futures unawaited; their GC warnings are noise here.
_UNAWAITED = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_UNAWAITED
@pytest.mark.parametrize("how", ["truncated data", "empty metadata", "arrays deleted"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_step(trained_run, tmp_path, capsys, how):
    c, workdir, _ = trained_run
    copy = _copy_run(workdir, tmp_path)
    _damage(pathlib.Path(copy) / "checkpoints" / "6", how)
    restored = state_lib.restore_latest(c, copy)  # what sample and eval modes use: read-only
    assert int(restored.step) == 3
    out = capsys.readouterr().out
    assert "Checkpoint step 6 in" in out and "does not restore" in out and "Restored step 3 instead" in out
    assert sorted(os.listdir(os.path.join(copy, "checkpoints"))) == ["3", "6"]  # sampling moves nothing


@_UNAWAITED
def test_training_sets_a_damaged_checkpoint_aside_and_redoes_its_steps(trained_run, tmp_path, capsys):
    c, workdir, _ = trained_run
    copy = _copy_run(workdir, tmp_path)
    _damage(pathlib.Path(copy) / "checkpoints" / "6", "truncated data")
    train.train_and_evaluate(tiny_config(), copy)
    out = capsys.readouterr().out
    assert "Moved it aside to" in out and "Resuming at step 3/6" in out
    names = sorted(os.listdir(os.path.join(copy, "checkpoints")))
    assert names[:2] == ["3", "6"] and len(names) == 3 and names[2].startswith("6.damaged-")
    _, _, _, like = state_lib.build(c)
    again = checkpoint.restore_latest(checkpoint.manager(Workdir(copy).checkpoints), like)
    full = checkpoint.restore_latest(checkpoint.manager(Workdir(workdir).checkpoints), like)
    chex.assert_trees_all_close(again.params, full.params, rtol=1e-5, atol=1e-6)


@_UNAWAITED
def test_no_restorable_checkpoint_lists_each_step(trained_run, tmp_path):
    c, workdir, _ = trained_run
    copy = _copy_run(workdir, tmp_path)
    for step in ("3", "6"):
        _damage(pathlib.Path(copy) / "checkpoints" / step, "empty metadata")
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint in .* restores:\n  step 6: .*\n  step 3: "):
        state_lib.restore_latest(c, copy)


@pytest.mark.parametrize("mode", ["sample", "eval"])
def test_sample_and_eval_on_an_empty_workdir_say_train_first_and_write_nothing(tmp_path, mode):
    from dale_langevin import main

    empty = tmp_path / "never_trained"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint in .*never_trained/checkpoints: train first"):
        main.run(tiny_config(), str(empty), mode)
    assert not empty.exists()


def test_main_run_refuses_an_unknown_mode(tmp_path):
    from dale_langevin import main

    with pytest.raises(
        ValueError, match=r"mode must be one of \('train', 'sample', 'eval', 'ablate', 'distill'\), got 'tune'"
    ):
        main.run(tiny_config(), str(tmp_path), "tune")


def _main(workdir, settings: dict, log: pathlib.Path) -> subprocess.Popen:
    """``python -m dale_langevin.main`` on the demo config with ``settings`` as flags; output to ``log``."""
    cmd = [sys.executable, "-m", "dale_langevin.main", "--config=configs/demo.py", f"--workdir={workdir}"]
    # A file, not a pipe: the progress bar would fill a pipe nobody reads and block the run.
    # The suite's compilation cache (conftest), so that the legs and the reference compile once.
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    return subprocess.Popen(
        cmd + main_flags(settings), cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _logged(workdir) -> dict:
    path = os.path.join(workdir, "metrics.jsonl")
    return {m["step"]: m for m in map(json.loads, open(path))} if os.path.exists(path) else {}


@pytest.mark.slow
def test_sigterm_saves_the_step_it_is_at_exits_143_and_a_rerun_continues_the_trajectory(tmp_path):
    """A real SIGTERM to ``main`` mid-run; the rerun's losses and parameters match an uninterrupted run."""
    workdir, log = tmp_path / "run", tmp_path / "main.log"
    settings = {
        **TINY,
        "training.n_iters": 100_000,
        "training.log_every": 1,
        "training.ckpt_every": 100_000,  # no periodic checkpoint: only the preemption save
        "training.sample_every": 0,
        "training.keep_checkpoints": 1,
        "sampling.dale_langevin.n_steps": 2,
        "sampling.n_samples": 4,
    }
    run = _main(workdir, settings, log)
    try:
        deadline = time.monotonic() + 300  # start-up and compilation take ~30 s here
        while len(_logged(workdir)) < 3:
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=120) == 143, log.read_text()[-3000:]
    finally:
        run.kill()
    out = log.read_text()
    k = int(re.search(r"Preempted: saved step (\d+) in .*checkpoints and stopped", out)[1])
    assert k >= 3 and os.listdir(workdir / "checkpoints") == [str(k)]  # keep_checkpoints=1
    assert "Training done" not in out and not (workdir / "samples.npz").exists()

    settings["training.n_iters"] = k + 2
    rerun = _main(workdir, settings, log)
    try:
        assert rerun.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        rerun.kill()
    out = log.read_text()
    assert f"Resuming at step {k}/{k + 2}" in out and (workdir / "samples.npz").exists()
    # Quiet by default: no Python INFO lines through absl (Orbax alone logs ~140 a run at INFO). TF's
    # C++ oneDNN notice, printed before its logging starts, cannot be turned off and is not counted.
    info = re.findall(r"^I\d{4} [\d:.]+ +\d+ \S+\.py:\d+\].*$", out, re.M)
    assert not info, info[:5]
    assert os.listdir(workdir / "checkpoints") == [str(k + 2)]

    reference = tmp_path / "uninterrupted"
    train.train_and_evaluate(tiny_config(**settings), str(reference))
    got, want = _logged(workdir), _logged(reference)
    assert sorted(got) == sorted(want) == list(range(1, k + 3))  # lines past step k from the first leg: none
    np.testing.assert_allclose([got[s]["loss"] for s in want], [want[s]["loss"] for s in want], rtol=1e-5)
    _, _, _, like = state_lib.build(tiny_config())
    resumed = checkpoint.restore_latest(checkpoint.manager(Workdir(str(workdir)).checkpoints), like)
    uninterrupted = checkpoint.restore_latest(checkpoint.manager(Workdir(str(reference)).checkpoints), like)
    chex.assert_trees_all_close(resumed.params, uninterrupted.params, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_at_the_first_log_says_no_checkpoint_exists(tmp_path):
    c = tiny_config(
        **{
            "optim.lr": 1e30,
            "optim.warmup_steps": 1,
            "optim.grad_clip": 0.0,
            "training.log_every": 1,
            "training.n_iters": 50,
            "training.ckpt_every": 50,
        }
    )
    with pytest.raises(FloatingPointError, match="No checkpoint was written before it"):
        train.train_and_evaluate(c, str(tmp_path))


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path):
    # lr 1e12: step 1 moves every parameter by ~1e12 (finite norms, checkpoint 1 written), step 2 overflows.
    c = tiny_config(
        **{
            "optim.lr": 1e12,
            "optim.warmup_steps": 1,
            "optim.grad_clip": 0.0,
            "training.ckpt_every": 1,
            "training.log_every": 1,
            "training.n_iters": 50,
        }
    )
    with pytest.raises(FloatingPointError, match=r"at step 2: .* last good checkpoint is step 1 in"):
        train.train_and_evaluate(c, str(tmp_path))


def test_eval_mode_writes_report(trained_run):
    """Offline metrics on the tiny run; the feature classifier (1 epoch) must converge on the digits."""
    from dale_langevin.evaluation import evaluate as evaluation

    c, workdir, _ = trained_run
    c = tiny_config(**{"eval.classifier_epochs": 1, "eval.kid_subsets": 4, "eval.n_nearest": 4})
    result = evaluation.evaluate(c, workdir)
    saved = json.load(open(os.path.join(workdir, "eval.json")))
    assert saved["offline_fid"] == pytest.approx(result["offline_fid"]) and saved["offline_fid"] >= 0
    assert result["classifier"]["test_accuracy"] > 0.85 and result["classifier"]["trained_now"]
    assert sum(result["class_histogram"]["counts"]) == c.sampling.n_samples
    assert result["offline_kid"]["subset_size"] == c.sampling.n_samples  # capped by the 6 samples
    assert os.path.exists(os.path.join(workdir, "nearest_neighbours.png"))
    assert "offline FID" in open(os.path.join(workdir, "eval.md")).read()
    # The FID is that of these samples' features against the test split's (not, say, of a set with itself).
    from dale_langevin.evaluation import metrics

    scorer = evaluation.Scorer(c, workdir)
    samples = np.load(os.path.join(workdir, "samples.npz"))["images"]
    assert result["offline_fid"] == pytest.approx(metrics.fid(scorer.features(samples)[1], scorer.test_feats))
    assert result["offline_fid"] > 1.0  # a 6-step model's blobs are far from digits
    assert json.load(open(os.path.join(workdir, "samples.json")))["method"] == "dale_langevin"
    again = evaluation.evaluate(c, workdir)  # the classifier is reused, not retrained
    assert not again["classifier"]["trained_now"]
    assert again["classifier"]["test_accuracy"] == pytest.approx(result["classifier"]["test_accuracy"])
    # Other sampler settings than the samples were drawn with: eval samples again rather than score stale ones.
    fewer = evaluation.evaluate(
        tiny_config(**{"eval.classifier_epochs": 1, "eval.kid_subsets": 4, "sampling.n_samples": 4}), workdir
    )
    assert fewer["n_generated"] == 4 and json.load(open(os.path.join(workdir, "samples.json")))["n_samples"] == 4


def test_training_from_a_prepared_tfds_directory(tmp_path):
    """The TPU-VM data path: TFDS ``mnist`` prepared on disk (ArrayRecord), read by index, never downloaded."""
    from dale_langevin.pipeline import data

    data_dir = tmp_path / "tfds"
    data.write_embedded_as_tfds(str(data_dir), "mnist")
    c = tiny_config(
        **{
            "data.dataset": "mnist",
            "data.data_dir": str(data_dir),
            "data.download": False,
            "training.n_iters": 2,
            "training.sample_every": 0,
        }
    )
    metrics = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert np.isfinite(metrics["loss"])
    assert Workdir.of(str(tmp_path / "run")).checkpoints.joinpath("2").exists()
    with pytest.raises(data.DataUnavailableError, match="kmnist"):
        train.train_and_evaluate(
            tiny_config(**{"data.dataset": "kmnist", "data.data_dir": str(data_dir), "data.download": False}),
            str(tmp_path / "other"),
        )


def test_no_config_file_starts_jax():
    # main forces the host device count before JAX starts its backends; a config file that runs a JAX op
    # while loading would start them first and leave one CPU device. Load every config, then ask for 3.
    code = (
        "import glob, os, jax\n"
        "from dale_langevin.pipeline import config\n"
        "for f in sorted(glob.glob('configs/**/*.py', recursive=True)):\n"
        "    config.load_config_file(f)\n"
        "os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=3'\n"
        "print(len(jax.devices('cpu')))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "3", out.stdout
