"""The paper presets: every table row loads, validates and carries the authors' settings; the starts
they use (published constants, the authors' class-average push-forward, the per-channel fit)."""

import glob
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin import GBM
from dale_langevin.pipeline import config as config_lib, generate, paper
from dale_langevin.samplers import published

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "paper", "*.py")))

# The authors' table (docs/reproduction.md), written out again so that a changed constant in the
# package is caught: dataset -> sampler -> (delta, L, anneal); class-average rows add final steps.
TABLE = {
    "mnist": {"dale_langevin": (6.165e-4, 1, 0.995), "sign_agnostic": (1.438e-4, 4, 0.995)},
    "fashion_mnist": {"dale_langevin": (5.86e-4, 1, 0.995), "sign_agnostic": (1.468e-3, 3, 0.9995)},
    "kmnist": {"dale_langevin": (2.113e-4, 3, 0.995), "sign_agnostic": (2.113e-4, 3, 1.0)},
    "cifar10": {"dale_langevin": (1.142e-4, 6, 0.9995), "sign_agnostic": (1.142e-4, 6, 0.995)},
}
CLASS_AVERAGE = {("kmnist", "sign_agnostic"): (3.36e-4, 2, 0), ("cifar10", "dale_langevin"): (2e-4, 4, 25)}


def _row(path):
    stem = os.path.basename(path)[:-3]
    class_average = stem.endswith("_class_average")
    stem = stem.removesuffix("_class_average")
    sampler = next(s for s in paper.SAMPLERS if stem.endswith(s))
    return stem[: -len(sampler) - 1], sampler, class_average


def test_there_is_one_preset_per_table_row():
    rows = {_row(p) for p in PRESETS}
    expected = {(d, s, False) for d in TABLE for s in TABLE[d]} | {(d, s, True) for d, s in CLASS_AVERAGE}
    assert rows == expected


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: os.path.basename(p)[:-3])
def test_presets_validate_and_carry_the_authors_settings(path):
    dataset, sampler, class_average = _row(path)
    c = config_lib.load_config_file(path)
    config_lib.validate(c)
    assert c.data.dataset == dataset and c.sampling.method == sampler
    assert c.model.parametrisation == "score"
    assert c.model.name == ("ncsnpp" if dataset == "cifar10" else "ncsnv2_deeper")
    s = c.sampling[sampler]
    if class_average:
        delta, n_inner, final = CLASS_AVERAGE[(dataset, sampler)]
        decay = TABLE[dataset][sampler][2]
        assert c.sampling.start == "class_average_authors"
    else:
        (delta, n_inner, decay), final = TABLE[dataset][sampler], 0
        assert c.sampling.start == "published"
    assert (s.n_steps, s.step_size, s.n_inner, s.noise_decay, s.denoise_steps) == (1000, delta, n_inner, decay, final)
    assert generate.network_evaluations(c) == 1000 * n_inner + final
    o, t = c.optim, c.training
    if dataset == "cifar10":
        assert (o.lr, o.warmup_steps, o.grad_clip, t.n_iters) == (2e-4, 5000, 1.0, 1_300_000)
        n = c.model.ncsnpp
        assert (n.nf, n.num_res_blocks, tuple(n.attn_resolutions), tuple(n.ch_mult)) == (128, 8, (16,), (1, 2, 2, 2))
        assert (n.embedding, n.fir, n.progressive, n.progressive_input) == ("fourier", True, "none", "residual")
    else:
        assert (o.lr, o.warmup_steps, o.grad_clip, t.n_iters) == (1e-4, 0, 0.0, 300_001)
        assert (c.model.ncsnv2_deeper.ngf, c.model.ncsnv2_deeper.num_classes) == (128, 1000)
    assert (t.batch_size, c.ema.decay, t.n_time_levels, t.weighting) == (128, 0.999, 1000, "published")
    assert (c.eval.n_samples, c.eval.bpd_examples, c.eval.kid_subsets, c.eval.kid_subset_size) == (
        50_000,
        10_000,
        64,
        64,
    )
    assert config_lib.make_parametrisation(c).conditioning == ("noise_level" if dataset == "cifar10" else "level_index")

    cpu = config_lib.load_config_file(path, size="cpu")
    config_lib.validate(cpu)
    assert cpu.data.dataset == "embedded_mnist" and cpu.model.name == c.model.name
    assert cpu.sampling[sampler].to_dict() == s.to_dict() and cpu.sampling.start == c.sampling.start


def test_preset_builder_errors_name_the_choice():
    with pytest.raises(ValueError, match="dataset must be one of"):
        paper.config("svhn", "dale_langevin")
    with pytest.raises(ValueError, match="no class-average run for mnist/dale_langevin"):
        paper.config("mnist", "dale_langevin", class_average=True)
    with pytest.raises(ValueError, match="size must be one of"):
        paper.config("mnist", "dale_langevin", size="tpu")


def test_published_priors_and_class_average_settings():
    loc, scale = published.prior("mnist")
    chex.assert_shape((loc, scale), ((), ()))
    assert (float(loc), float(scale)) == pytest.approx((0.1565, 0.8353))
    assert published.prior("embedded_mnist") == published.prior("mnist")
    loc, scale = published.prior("cifar10")
    chex.assert_shape((loc, scale), ((3,), (3,)))
    np.testing.assert_allclose(loc, [0.4075, 0.3785, 0.3693])
    s = published.settings("cifar10", "dale_langevin", class_average=True)
    assert s == {"step_size": 2e-4, "n_inner": 4, "noise_decay": 0.9995, "denoise_steps": 25}
    assert "denoise_steps" not in published.settings("cifar10", "dale_langevin")  # the config's own stays
    with pytest.raises(ValueError, match="class-average settings dataset"):
        published.settings("mnist", "dale_langevin", class_average=True)
    with pytest.raises(ValueError, match="class-average settings sampler for kmnist"):
        published.settings("kmnist", "dale_langevin", class_average=True)


def test_authors_push_forward_is_gbm_with_the_prior_as_drift_and_volatility():
    """MNIST's constants: ``log(x_T / x0) ~ N(0.1565 - 0.8353**2 / 2, 0.8353**2)``, a shift of -0.19.

    Monte Carlo over 200,000 draws: the standard error of the mean is 0.8353 / sqrt(2e5) = 0.0019 and
    of the std about 0.0013; bounds of 0.01 are over 5 of those.
    """
    loc, scale = published.prior("mnist")
    x0 = jnp.full((50, 20, 20, 1), 1.5)
    x = published.authors_push_forward(jax.random.key(0), x0, loc, scale)
    assert bool(jnp.all(x > 0))
    r = np.log(np.asarray(x) / 1.5)
    assert abs(r.mean() - (-0.1924)) < 0.01 and abs(r.std() - 0.8353) < 0.01
    # Per channel: each channel gets its own drift and volatility.
    loc3, scale3 = published.prior("cifar10")
    x = published.authors_push_forward(jax.random.key(1), jnp.ones((2000, 4, 4, 3)), loc3, scale3)
    r = np.log(np.asarray(x)).reshape(-1, 3)
    np.testing.assert_allclose(r.mean(0), loc3 - scale3**2 / 2, atol=0.02)
    np.testing.assert_allclose(r.std(0), scale3, atol=0.02)


def test_the_starts_of_the_presets(tmp_path):
    c = paper.config("mnist", "dale_langevin", size="cpu")
    process = GBM()
    stats = generate.start_stats(c, process, str(tmp_path))
    chex.assert_shape((stats["channel_loc"], stats["channel_scale"]), ((1,), (1,)))
    # One channel: the per-channel fit is the scalar fit.
    np.testing.assert_allclose(stats["channel_loc"][0], stats["scalar_loc"], rtol=1e-5)
    np.testing.assert_allclose(stats["channel_scale"][0], stats["scalar_scale"], rtol=1e-5)
    assert float(stats["published_loc"]) == pytest.approx(0.1565)
    x, labels = generate.initial_state(jax.random.key(2), process, stats, "published", 4000)
    logs = np.log(np.asarray(x))
    assert abs(logs.mean() - 0.1565) < 0.01 and abs(logs.std() - 0.8353) < 0.01 and set(labels) == {-1}
    x, labels = generate.initial_state(jax.random.key(3), process, stats, "class_average_authors", 20)
    np.testing.assert_array_equal(labels, np.arange(20) % 10)
    ref = published.authors_push_forward(jax.random.key(3), jnp.asarray(stats["class_means"][labels]), 0.1565, 0.8353)
    chex.assert_trees_all_close(x, ref, rtol=1e-5)
    # The cache holds the fits, not the constants; a reload adds them again.
    again = generate.start_stats(c, process, str(tmp_path))
    assert set(again) == set(stats)


def test_per_channel_fit_matches_each_channels_moments():
    """Per-channel log-normal fit of three channels of different scale, against NumPy's moments."""
    rng = np.random.default_rng(0)
    x0 = 1.0 + rng.uniform(size=(64, 8, 8, 3)) * np.array([0.2, 0.5, 1.0])
    process = GBM()
    fit = process.fit_prior(x0.reshape(-1, 3), per_pixel=True)
    logs = np.log(x0).reshape(-1, 3)
    np.testing.assert_allclose(fit.loc, logs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fit.scale**2, logs.var(0) + 0.64, rtol=1e-5)


def test_published_start_needs_gbm(raises_naming):
    c = paper.config("mnist", "dale_langevin", size="cpu")
    c.process.name = "ve"
    c.sampling.method = "euler_maruyama"
    with raises_naming("config.sampling.start"):
        config_lib.validate(c)


def test_a_run_from_before_model_name_resumes_with_its_unet_fields():
    c = config_lib.default_config()
    saved = json.loads(json.dumps(c.to_dict()))
    old_model = {"dtype": "float32", **saved["model"]["unet"]}  # the layout before config.model.name
    saved["model"] = old_model
    assert config_lib.resume_differences(saved, c) == []
    saved["model"] = {**old_model, "channels": 32}
    assert config_lib.resume_differences(saved, c) == ["config.model.unet.channels: 32 -> 64"]
    old = config_lib.default_config()
    old.model.unlock()
    old.model.channels = 64
    with pytest.raises(ValueError, match=r"config.model.channels \(now config.model.unet.channels\)"):
        config_lib.validate(old)
