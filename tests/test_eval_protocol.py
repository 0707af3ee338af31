"""The paper's evaluation protocol in ``--mode=eval``: the sample count, cached reference statistics,
bits/dim through the probability-flow ODE, and network evaluations counted as the paper's are.

The run is a tiny U-Net with random weights saved as a checkpoint (no training step is compiled); its
EMA parameters differ from its parameters so that using the wrong ones shows.
"""

import dataclasses
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin import GBM, LogNormalMixture, LogNormalPrior
from dale_langevin.evaluation import classifier, evaluate as evaluation, inception, likelihood, metrics, reference
from dale_langevin.losses import Parametrisation
from dale_langevin.pipeline import checkpoint, config as config_lib, data, generate, state as state_lib
from dale_langevin.pipeline.workdir import Workdir
from dale_langevin.samplers import ode

ROOT = pathlib.Path(__file__).resolve().parents[1]

TINY = {
    "model.unet.channels": 8,
    "model.unet.channel_mult": (1, 2),
    "training.batch_size": 8,
    "training.sample_every": 0,
    "sampling.dale_langevin.n_steps": 3,
    "sampling.dale_langevin.denoise_steps": 1,
    "sampling.n_samples": 4,
    "sampling.batch_size": 4,
    "eval.inception": "off",
    "eval.classifier_epochs": 1,
    "eval.kid_subsets": 4,
    "eval.n_nearest": 4,
}


def tiny_config(**overrides):
    """The demo config shrunk to seconds (:data:`TINY`), then ``overrides``."""
    c = config_lib.load_config_file(ROOT / "configs" / "demo.py")
    c.update_from_flattened_dict({**TINY, **overrides})
    return c


def _random_like(like, seed: int):
    """Small random floats (zeros for other dtypes) of ``like``'s shapes: weights without compiling an init,
    seconds where an eager U-Net init or a classifier's epoch take most of a minute on 2 loaded cores."""
    rs = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (
            (0.02 * rs.standard_normal(s.shape)).astype(s.dtype)
            if np.issubdtype(s.dtype, np.floating)
            else np.zeros(s.shape, s.dtype)
        ),
        like,
    )


def random_state(config):
    """A train state of ``config``'s shapes with random weights; EMA parameters = parameters + other noise."""
    state = _random_like(jax.eval_shape(lambda: state_lib.build(config)[3]), 0)
    noise = _random_like(state.params, 1)
    return state.replace(ema_params=jax.tree.map(lambda p, z: p + z, state.params, noise))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(workdir, reference_dir)``: a checkpoint at step 1 of a random tiny U-Net (:func:`random_state`) and a
    random feature classifier in ``classifier/`` (what eval would train there: test_train checks the training)."""
    workdir = Workdir(tmp_path_factory.mktemp("run"))
    c = tiny_config()
    checkpoint.save(checkpoint.manager(workdir.checkpoints, c.training.keep_checkpoints), 1, random_state(c))
    net = classifier.Classifier(10)
    like = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
    checkpoint.save(checkpoint.manager(workdir.classifier, keep=1), 1, _random_like(like, 2))
    return workdir, str(tmp_path_factory.mktemp("reference_stats"))


def run_config(run, **overrides):
    return tiny_config(**{"eval.reference_dir": run[1], **overrides})


# -- config.eval.n_samples -----------------------------------------------------------------------


def test_eval_scores_eval_n_samples_drawn_over_devices_and_resamples_on_a_new_count(run, n_devices):
    workdir, _ = run
    assert n_devices == 2  # batches of 4 split 2 + 2; 6 samples = one full batch and half of another
    settings = {"eval.bpd_examples": 4, "eval.bpd_steps": 2, "eval.bpd_batch_size": 2}
    result = evaluation.evaluate(run_config(run, **{"eval.n_samples": 6, **settings}), workdir, log=lambda _: None)
    saved = json.loads(workdir.eval_json.read_text())
    assert saved == json.loads(json.dumps(result))
    assert (saved["n_samples"], saved["n_generated"], saved["n_samples_field"]) == (6, 6, "config.eval.n_samples")
    assert sum(saved["class_histogram"]["counts"]) == 6
    images = np.load(str(workdir.samples_npz))["images"]
    assert images.shape == (6, 28, 28, 1) and len({im.tobytes() for im in images}) == 6  # six distinct draws
    assert json.loads(workdir.samples_json.read_text())["n_samples"] == 6
    # Network evaluations of the configured sampler (3 levels, n_inner 1, 1 denoising step), ours and the authors'.
    assert (saved["nfe"], saved["nfe_authors_loop"]) == (3 * 1 + 1, 3 * 2 + 1)
    # Bits/dim of 4 test images with the run's EMA parameters (not its parameters), the per-pixel prior.
    b = saved["bpd"]
    assert b["status"] == "ok" and (b["n_examples"], b["steps"], b["prior"]) == (4, 2, "per_pixel")
    c = run_config(run)
    process, model = config_lib.make_process(c), config_lib.make_model(c)
    restored = state_lib.restore_latest(c, workdir)
    stats = generate.start_stats(c, process, workdir)
    test_x, _ = data.load_arrays("embedded_mnist", "test")
    pixels = test_x[likelihood.subset(len(test_x), 4, c.seed)]
    prior = LogNormalPrior(jnp.asarray(stats["pixel_loc"]), jnp.asarray(stats["pixel_scale"]))
    direct = lambda params: likelihood.bits_per_dim(
        model,
        process,
        config_lib.make_parametrisation(c),
        params,
        prior,
        pixels,
        jax.random.key(c.seed + 2),
        n_steps=2,
        t_min=1e-3,
        batch_size=2,
    )
    assert b["mean"] == pytest.approx(float(np.mean(direct(restored.ema_params))), rel=1e-6)
    assert b["mean"] != pytest.approx(float(np.mean(direct(restored.params))), rel=1e-4)
    report = workdir.eval_md.read_text()
    assert "6 drawn (config.eval.n_samples)" in report and "| bits/dim, 4 test images" in report
    assert "u = (pixel + U[0,1)) / 256" in report and "4 (ours); 7 as the authors' reverse loop" in report

    # Another count: eval samples again, and says so.
    logs = []
    again = evaluation.evaluate(run_config(run, **{"eval.n_samples": 8}), workdir, log=logs.append)
    assert (again["n_samples"], again["n_generated"]) == (8, 8) and again["bpd"]["status"] == "off"
    assert any("sampling first" in line for line in logs)
    assert json.loads(workdir.samples_json.read_text())["n_samples"] == 8
    # The same count again: the samples stand.
    logs, mtime = [], os.stat(workdir.samples_npz).st_mtime_ns
    evaluation.evaluate(run_config(run, **{"eval.n_samples": 8}), workdir, log=logs.append)
    assert not any("sampling first" in line for line in logs) and os.stat(workdir.samples_npz).st_mtime_ns == mtime
    # --mode=sample keeps config.sampling.n_samples (4), whatever eval.n_samples says.
    summary = generate.sample_and_save(run_config(run, **{"eval.n_samples": 8}), workdir)
    assert summary["n_samples"] == 4 and np.load(str(workdir.samples_npz))["images"].shape[0] == 4
    assert json.loads(workdir.samples_json.read_text())["n_samples"] == 4
    # eval.n_samples None: the sampling count, now without drawing again.
    logs = []
    default = evaluation.evaluate(run_config(run), workdir, log=logs.append)
    assert (default["n_samples"], default["n_samples_field"], default["n_generated"]) == (
        4,
        "config.sampling.n_samples",
        4,
    )
    assert not any("sampling first" in line for line in logs)


# -- cached reference statistics ------------------------------------------------------------------


def test_reference_statistics_are_cached_once_and_equal_a_fresh_computation(run, tmp_path, monkeypatch):
    workdir, _ = run
    c = run_config(run, **{"eval.reference_dir": str(tmp_path / "cache"), "eval.n_samples": 4})
    test_x, _ = data.load_arrays("embedded_mnist", "test")
    calls = []
    predict = classifier.predict
    monkeypatch.setattr(
        classifier, "predict", lambda m, p, x, *a, **k: calls.append(len(x)) or predict(m, p, x, *a, **k)
    )

    first = evaluation.evaluate(c, workdir, log=lambda _: None)
    ref = first["reference_stats"]["classifier"]
    assert ref["status"] == "computed" and calls.count(len(test_x)) == 1
    path = pathlib.Path(ref["file"])
    assert path.parent == tmp_path / "cache" and path.name.startswith("embedded_mnist_test_500_classifier-")
    mtime = path.stat().st_mtime_ns

    calls.clear()
    second = evaluation.evaluate(c, workdir, log=lambda _: None)
    assert second["reference_stats"]["classifier"] == {**ref, "status": "reused"}
    assert len(test_x) not in calls and calls  # the samples' features only
    assert path.stat().st_mtime_ns == mtime
    assert second["offline_fid"] == pytest.approx(first["offline_fid"], rel=1e-12)
    assert f"reused, `{path}`" in workdir.eval_md.read_text()

    # The cached statistics are those of a fresh computation with the same classifier.
    scorer = evaluation.Scorer(c, workdir, log=lambda _: None)
    labels, feats = predict(scorer.model, scorer.params, test_x)
    mu, sigma = metrics.feature_stats(feats)
    with np.load(path) as cached:
        np.testing.assert_allclose(cached["mu"], mu, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(cached["sigma"], sigma, rtol=1e-12, atol=1e-12)
        np.testing.assert_array_equal(cached["labels"], labels)
    assert ref["extractor"] == reference.params_identity(scorer.params)


def _counting_net(weights: str, calls: list) -> inception.InceptionNet:
    """A stand-in Inception: a fixed projection of the image to 2048 features; counts the images it sees."""
    w = np.random.default_rng(0).normal(size=(28 * 28 * 3, inception.FEATURE_DIM)).astype(np.float32) / 100

    def fn(x255):
        calls.append(len(x255))
        return x255.reshape(len(x255), -1) @ w

    return inception.InceptionNet(weights=weights, fn=fn)


def test_inception_reference_is_keyed_by_the_weights_and_rebuilt_when_stale_or_damaged(tmp_path):
    c = tiny_config(**{"eval.reference_dir": str(tmp_path), "eval.inception_batch_size": 8})
    test_x = data.load_arrays("embedded_mnist", "test")[0][::25]  # 20 images
    calls, logs = [], []
    net = _counting_net("weights-a.pb", calls)
    first = reference.inception_reference(c.eval, "embedded_mnist", net, test_x, logs.append)
    assert first.status == "computed" and sum(calls) == 20 and first.features.shape == (20, 2048)
    assert pathlib.Path(first.file).name == f"embedded_mnist_test_20_{net.identity}.npz"
    calls.clear()
    again = reference.inception_reference(c.eval, "embedded_mnist", net, test_x, logs.append)
    assert again.status == "reused" and calls == []
    np.testing.assert_array_equal(again.sigma, first.sigma)
    # Other weights: another file, computed.
    other = reference.inception_reference(c.eval, "embedded_mnist", _counting_net("weights-b.pb", calls), test_x)
    assert other.status == "computed" and other.file != first.file
    # Other test images under the same name (another version of the split): stale, rebuilt, logged.
    changed = test_x.copy()
    changed[0, 0, 0, 0] ^= 1
    logs.clear()
    stale = reference.inception_reference(c.eval, "embedded_mnist", net, changed, logs.append)
    assert stale.status == "computed" and stale.file == first.file
    assert any(line.startswith(f"Rebuilding {first.file}: stale (images_sha256") for line in logs)
    # A damaged file: rebuilt, logged.
    pathlib.Path(first.file).write_bytes(b"not an npz")
    logs.clear()
    damaged = reference.inception_reference(c.eval, "embedded_mnist", net, test_x, logs.append)
    assert damaged.status == "computed" and any("unreadable" in line for line in logs)
    np.testing.assert_allclose(damaged.mu, first.mu, rtol=1e-12)
    assert reference.inception_reference(c.eval, "embedded_mnist", net, test_x).status == "reused"


def test_the_default_reference_folder_is_beside_the_inception_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert reference.directory(tiny_config().eval) == os.path.join(inception.default_cache_dir(), "reference_stats")
    assert inception.default_cache_dir() == str(tmp_path / "dale_langevin")


def test_reference_statistics_in_a_bucket(emulated_env):
    c = tiny_config(**{"eval.reference_dir": "gs://bucket/reference"})
    images = np.arange(4 * 3, dtype=np.uint8).reshape(4, 3)
    feats = np.random.default_rng(1).normal(size=(4, 2))
    calls = []
    load = lambda: reference.load_or_compute(
        reference.directory(c.eval),
        dataset="toy",
        split="test",
        images=images,
        extractor="x-1",
        compute=lambda: calls.append(1) or {"features": feats},
    )
    assert load().status == "computed" and load().status == "reused" and calls == [1]
    assert emulated_env.read("bucket", "reference/toy_test_4_x-1.npz")[:2] == b"PK"


# -- bits per dimension ---------------------------------------------------------------------------

SDE = GBM()
DATA = LogNormalMixture.create([1.0], [0.4], [0.15])  # log-normal pixels: the ODE density is closed-form


@dataclasses.dataclass(frozen=True)
class ExactScoreNet:
    """A "network" giving the exact ordinary score of :data:`DATA` under :data:`SDE` from ``(x_t, log std_t)``."""

    def apply(self, params, x, log_std, train=False):
        t = SDE.time_from_log_var(jnp.exp(2.0 * log_std))
        return DATA.score_fn(SDE)(x, t) / x


def _exact_prior():
    m_T, v_T = DATA.marginal(SDE, SDE.T)
    return LogNormalPrior(m_T[0], jnp.sqrt(v_T[0]))  # a single log-normal at T: the exact prior


def _documented_inputs(rng, pixels, levels=256.0):
    """The module docstring's rule, written out: example i -> split(fold_in(rng, i)) -> noise, probe."""
    xs, probes = [], []
    for i, p in enumerate(pixels):
        k_noise, k_probe = jax.random.split(jax.random.fold_in(rng, i))
        xs.append(1.0 + (p.astype(np.float32) + jax.random.uniform(k_noise, p.shape)) / levels)
        probes.append(jax.random.rademacher(k_probe, p.shape, jnp.float32))
    return jnp.stack(xs), jnp.stack(probes)


def test_bits_per_dim_is_exact_in_closed_form_and_equals_a_direct_call():
    pixels = np.random.default_rng(0).integers(0, 256, (6, 2, 2, 1)).astype(np.uint8)
    rng, t_min, param = jax.random.key(3), 1e-3, Parametrisation("score", "noise_level")
    bpd = lambda batch_size, **kw: likelihood.bits_per_dim(
        ExactScoreNet(), SDE, param, {}, _exact_prior(), pixels, rng, n_steps=200, t_min=t_min, batch_size=batch_size
    )
    got = bpd(4)  # 6 images in batches of 4 over 2 devices: the last batch padded
    n_dims = 4

    # Closed form: the density of X_{t_min} at the dequantised pixels (Hutchinson is exact here: the
    # drift acts pixel by pixel, so its Jacobian is diagonal and z^T J z = tr J for Rademacher z).
    x, probes = _documented_inputs(rng, pixels)
    exact_log_px = np.sum(np.asarray(DATA.log_prob(x, SDE, t_min)).reshape(6, -1), axis=1)
    to_bpd = lambda log_px, levels=256.0: -(log_px - n_dims * np.log(levels)) / (n_dims * np.log(2.0))
    # Heun on 200 steps: 0.0017 nats at most here (0.018 at 60 steps, 0.007 at 100: second order).
    tolerance = 0.004 / (n_dims * np.log(2.0))
    np.testing.assert_allclose(got, to_bpd(exact_log_px), atol=tolerance)
    # Another dequantisation (/255) or pixel scale (255: log2(256/255) = 0.0056 bits) would be off by more.
    x255, _ = _documented_inputs(rng, pixels, levels=255.0)
    wrong_dequant = np.sum(np.asarray(DATA.log_prob(x255, SDE, t_min)).reshape(6, -1), axis=1)
    assert np.max(np.abs(got - to_bpd(wrong_dequant))) > 3 * tolerance
    assert np.min(np.abs(got - to_bpd(exact_log_px, levels=255.0))) > 3 * tolerance

    # The direct call of ode.log_likelihood on all six at once: the split over devices and batches changes nothing.
    net = lambda inp, cond: ExactScoreNet().apply({}, inp, cond)
    from dale_langevin.losses import network_score_fn

    direct = ode.log_likelihood(
        None, network_score_fn(net, SDE, param), x, SDE, _exact_prior(), n_steps=200, t_min=t_min, probe=probes
    )
    np.testing.assert_allclose(got, np.asarray(ode.bits_per_dim(direct, n_dims, 256.0)), rtol=1e-5)
    np.testing.assert_allclose(bpd(2), got, rtol=1e-5)  # three full batches of one image per device

    s = likelihood.summary(got)
    assert s["mean"] == pytest.approx(float(np.mean(got)), rel=1e-12)
    assert s["stderr"] == pytest.approx(float(np.std(got, ddof=1) / np.sqrt(6)), rel=1e-12)


def test_bits_per_dim_refuses_other_than_8_bit_pixels():
    with pytest.raises(ValueError, match="uint8"):
        likelihood.bits_per_dim(
            ExactScoreNet(), SDE, Parametrisation(), {}, _exact_prior(), np.zeros((2, 2, 2, 1), np.float32),
            jax.random.key(0), n_steps=2, t_min=1e-3, batch_size=2,
        )  # fmt: skip


def test_bits_per_dim_is_off_by_default_and_unavailable_without_the_ode(tmp_path):
    assert likelihood.evaluate_bpd(tiny_config(), tmp_path) == {"status": "off", "reason": "config.eval.bpd_examples=0"}
    for name, method in (("vp", "euler_maruyama"), ("ve", "euler_maruyama")):
        c = tiny_config(**{"process.name": name, "sampling.method": method, "eval.bpd_examples": 4})
        config_lib.validate(c)
        b = likelihood.evaluate_bpd(c, tmp_path)  # no checkpoint needed to say so
        assert b["status"] == "unavailable" and f"config.process.name={name!r}" in b["reason"]
    # A work directory without a checkpoint (samples brought from elsewhere): said, not raised.
    b = likelihood.evaluate_bpd(tiny_config(**{"eval.bpd_examples": 4}), tmp_path, log=lambda _: None)
    assert b["status"] == "unavailable" and "no checkpoint" in b["reason"]


@pytest.mark.parametrize(
    "start, prior, note",
    [("per_pixel", "per_pixel", False), ("scalar", "scalar", False), ("class_average", "per_pixel", True)],
)
def test_the_likelihood_prior_is_the_start_law(start, prior, note):
    stats = {
        "pixel_loc": np.full((2, 2, 1), 0.1),
        "pixel_scale": np.full((2, 2, 1), 0.5),
        "scalar_loc": np.asarray(0.2),
        "scalar_scale": np.asarray(0.7),
    }
    got, name, why = likelihood.prior_for(SDE, stats, start)
    key = {"per_pixel": "pixel", "scalar": "scalar"}[prior]
    np.testing.assert_allclose(got.loc, stats[f"{key}_loc"], rtol=1e-6)
    np.testing.assert_allclose(got.scale, stats[f"{key}_scale"], rtol=1e-6)
    assert name == prior and (why is not None) == note and (not note or "per-pixel" in why)
    # The sampler draws its start from the same law (one mapping of starts to fits, in generate).
    if not note:
        x_T, _ = generate.initial_state(
            jax.random.key(0), SDE, {**stats, "class_means": np.ones((3, 2, 2, 1))}, start, 4
        )
        np.testing.assert_allclose(x_T, got.sample(jax.random.key(0), (4, 2, 2, 1)), rtol=1e-6)
    else:
        with pytest.raises(ValueError, match="no fitted prior"):
            generate.start_prior(SDE, stats, start)


# -- network evaluations --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dale_langevin", "sign_agnostic"])
def test_nfe_fields_count_the_authors_discarded_evaluation(method):
    c = tiny_config(
        **{
            "sampling.method": method,
            f"sampling.{method}.n_steps": 7,
            f"sampling.{method}.n_inner": 3,
            f"sampling.{method}.denoise_steps": 10,
        }
    )
    assert evaluation.network_evaluations(c) == {"nfe": 7 * 3 + 10, "nfe_authors_loop": 7 * (3 + 1) + 10}


def test_nfe_authors_loop_is_none_for_other_samplers():
    c = tiny_config(**{"sampling.method": "ode"})
    assert evaluation.network_evaluations(c) == {"nfe": generate.network_evaluations(c), "nfe_authors_loop": None}


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("eval.n_samples", 1),
        ("eval.n_samples", 0),
        ("eval.n_samples", -6),
        ("eval.bpd_examples", -1),
        ("eval.bpd_steps", 0),
        ("eval.bpd_batch_size", 3),  # not a multiple of the 2 devices
        ("eval.bpd_batch_size", 0),
        ("eval.reference_dir", ""),
    ],
)
def test_validation_names_the_eval_field(field, value, raises_naming):
    with raises_naming(f"config.{field}"):
        config_lib.validate(tiny_config(**{field: value}))


def test_validation_refuses_a_bool_count(raises_naming):
    for field in ("n_samples", "bpd_examples"):
        with raises_naming(f"config.eval.{field}"):
            config_lib.validate(tiny_config(**{f"eval.{field}": True}))  # an int to ml_collections, not a count
    config_lib.validate(tiny_config(**{"eval.n_samples": 2, "eval.bpd_examples": 0}))
    assert (
        config_lib.eval_n_samples(tiny_config()) == 4
        and config_lib.eval_n_samples(tiny_config(**{"eval.n_samples": 9})) == 9
    )
