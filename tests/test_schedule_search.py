"""Schedule search: coordinate descent on a known objective, the axes, and draws equal to the pipeline's."""

import dataclasses

import chex
import jax
import numpy as np
import pytest
from test_fast_samplers import tiny_model

from dale_langevin.evaluation import schedule_search as ss
from dale_langevin.pipeline import config as config_lib, generate


def test_neighbours_vary_one_axis_and_keep_the_budget():
    c = ss.Candidate(n_steps=4, denoise_steps=6)
    split = ss.neighbours(c, "split")
    assert [x.n_steps for x in split] == list(range(1, 11)) and all(x.nfe == 10 for x in split)
    grids = ss.neighbours(c, "grid")
    assert {(x.spacing, x.rho) for x in grids} == set(ss.AXES["grid"])
    for axis in ("t_end", "eta", "method"):
        for x in ss.neighbours(c, axis):
            changed = {k for k, v in dataclasses.asdict(x).items() if v != getattr(c, k)}
            assert changed <= {axis}
    with pytest.raises(ValueError, match="axis"):
        ss.neighbours(c, "sigma")


def test_search_finds_the_minimum_of_a_separable_objective():
    # A separable objective with its minimum inside the axes: coordinate descent reaches it in one
    # pass and confirms it in the second, scoring each distinct candidate once.
    target = dict(n_steps=7, t_end=2e-2, spacing="power", rho=3.0, eta=0.5, method="dpm3m")
    calls = []

    def objective(c):
        calls.append(c)
        return (
            abs(c.n_steps - 7)
            + abs(np.log(c.t_end / 2e-2))
            + ((c.spacing, c.rho) != ("power", 3.0))
            + abs(c.eta - 0.5)
            + (c.method != "dpm3m")
        )

    result = ss.search(objective, ss.Candidate(n_steps=5, denoise_steps=5), log=lambda *_: None)
    best = ss.Candidate(**result["best"])
    assert {k: getattr(best, k) for k in target} == target and best.nfe == 10
    assert result["fid"] == 0.0 and len(calls) == len(set(calls)) == len(result["history"])
    # the start alone
    only = ss.search(objective, ss.Candidate(), passes=0, log=lambda *_: None)
    assert only["best"] == dataclasses.asdict(ss.Candidate()) and len(only["history"]) == 1
    with pytest.raises(ValueError, match="unknown axes"):
        ss.search(objective, ss.Candidate(), axes=("split", "noise"))


def test_draw_equals_the_pipeline_sampler():
    # The search's pmapped grid core (grid and eta as arguments) draws exactly what generate.generate
    # draws with the registered sampler and the same settings and key; tiny U-Net, random weights.
    c = config_lib.default_config()
    c.data.dataset = "embedded_mnist"
    process, model, params, stats = tiny_model(c)
    shape = (28, 28, 1)
    cand = ss.Candidate(method="dpm3m", n_steps=3, denoise_steps=1, t_end=0.02, spacing="power", rho=3.0, eta=0.7)
    c.sampling.method = cand.method
    c.sampling[cand.method].update(cand.settings())
    config_lib.validate(c)
    rng = jax.random.key(1)
    ours = ss.draw(c, process, model, params, stats, cand, rng, 6)
    theirs = generate.generate(c, process, model, params, stats, rng, 6)[0]
    chex.assert_shape(ours, (6, *shape))
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    with pytest.raises(ValueError, match="eta"):
        ss.draw(c, process, model, params, stats, dataclasses.replace(cand, eta=2.0), rng, 6)


def _pixel_features(images):
    """8 fixed pixel sums per image: a feature extractor for the objective's wiring."""
    flat = images.reshape(len(images), -1)
    return np.stack([flat[:, i::8].sum(1) for i in range(8)], axis=1)


def test_held_out_fid_is_against_the_reference_images():
    images = np.random.default_rng(0).uniform(size=(300, 4, 4, 1)).astype(np.float32)
    held = ss.HeldOut(_pixel_features, images[-200:])
    assert held.fid(images[-200:]) == pytest.approx(0.0, abs=1e-6)  # the reference itself
    # other draws of the same law are near; a shifted set is far
    assert 0 < held.fid(images[:100]) < held.fid(images[:100] + 0.2)
    bad = images[:10].copy()
    bad[1:] = np.nan
    assert held.fid(bad) == float("inf")
    with pytest.raises(ValueError, match="at least 2"):
        ss.HeldOut(_pixel_features, images[:1])


def test_held_out_for_a_run_trains_its_classifier_without_the_held_out_images(tmp_path, monkeypatch):
    # The search's extractor must not have seen its reference: the classifier trains on the split less a random
    # n_reference of its images, and is cached per n_reference and seed.
    c = config_lib.default_config()
    c.data.dataset = "embedded_mnist"
    c.eval.classifier_epochs = 1
    seen = {}
    real = ss.classifier.load_or_train

    def spy(directory, images, labels, **kw):
        seen["directory"], seen["n"] = directory, len(images)
        return real(directory, images, labels, **kw)

    monkeypatch.setattr(ss.classifier, "load_or_train", spy)
    held = ss.held_out_for(c, str(tmp_path), n_reference=300, log=lambda *_: None)
    n_train = len(ss.data.load_arrays("embedded_mnist", "train")[0])
    assert seen["n"] == n_train - 300 and seen["directory"].name == f"search_classifier_300_s{c.seed}"
    chex.assert_shape((held.mu, held.sigma), [(held.mu.shape[0],), (held.mu.shape[0],) * 2])
    with pytest.raises(ValueError, match="n_reference"):
        ss.held_out_for(c, str(tmp_path), n_reference=n_train)


def test_held_out_images_are_a_random_subset_of_every_class():
    # The embedded training split is stored sorted by class: its last 500 images are 8s and 9s.
    _, labels = ss.data.load_arrays("embedded_mnist", "train")
    idx = ss.held_out_indices(len(labels), 500, seed=0)
    assert len(np.unique(idx)) == 500 and idx.max() < len(labels)
    counts = np.bincount(labels[idx], minlength=10)
    assert counts.min() > 25  # about 50 per class (measured 40-61 over seeds 0-4)
    assert not np.array_equal(idx, ss.held_out_indices(len(labels), 500, seed=1))
