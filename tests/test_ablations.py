"""Ablation runner: row and training configs, the published-extras rescaling, a micro end-to-end run."""

import csv
import math

import numpy as np
import pytest

from dale_langevin import ablations, config as config_lib
from test_train import load_config


def micro_config():
    """The CPU ablation shrunk to seconds: 4-channel one-level U-Net, 2 training steps, 8 samples, 3 levels."""
    c = load_config("ablation_cpu")
    c.update_from_flattened_dict({
        "model.channels": 4, "model.channel_mult": (1,), "training.batch_size": 8, "training.n_iters": 2,
        "training.log_every": 1, "training.ckpt_every": 2, "optim.warmup_steps": 1, "sampling.n_steps": 3,
        "sampling.denoise_steps": 1, "sampling.batch_size": 8, "eval.classifier_epochs": 1,
        "eval.kid_subsets": 4, "eval.kid_subset_size": 4, "ablation.n_samples": 8,
        "ablation.curves": "gbm_dale_langevin,ve_euler_maruyama", "ablation.nfe_steps": (2,),
    })
    return c


def test_every_row_config_validates_and_differs_as_named():
    c = load_config("ablation_cpu")
    rows = ablations.validate(c)
    assert [r.name for r in rows] == list(ablations.ROW_NAMES)
    described = {r.name: ablations.describe(ablations.row_config(c, r)) for r in rows}
    assert described["ve_euler_maruyama"]["process"] == "ve" and described["vp_euler_maruyama"]["process"] == "vp"
    assert described["gbm_sign_agnostic"]["sampler"] == "sign_agnostic"
    assert described["weighting_noise"]["weighting"] == "noise"
    assert described["prior_scalar"]["prior"] == "scalar"
    assert described["extras_off_dale_langevin"]["extras"] == "off"
    assert described["gbm_dale_langevin"]["extras"] == "10 denoise"
    # Equal budget: every training shares network, optimizer, data and steps with the base config.
    for name in ablations.TRAININGS:
        t = ablations.training_config(c, name)
        assert (t.model, t.optim, t.data, t.training.n_iters) == (c.model, c.optim, c.data, c.training.n_iters)


def test_published_extras_keep_total_annealing_and_step_ratio():
    for method, (delta, n_inner, decay) in ablations.PUBLISHED_EXTRAS.items():
        assert ablations.published_extras(method, 1000) == {
            "sampling.method": method, "sampling.step_size": delta, "sampling.n_inner": n_inner,
            "sampling.noise_decay": decay}
        e = ablations.published_extras(method, 100)
        assert math.isclose(e["sampling.noise_decay"] ** 100, decay**1000, rel_tol=1e-9)
        assert math.isclose(e["sampling.step_size"] * 100, delta * 1000, rel_tol=1e-12)
    c = ablations.row_config(load_config("ablation_cpu"), ablations.ROWS[ablations.ROW_NAMES.index(
        "extras_published_dale_langevin")], n_steps=50)
    assert c.sampling.n_steps == 50 and math.isclose(c.sampling.noise_decay, 0.995**20)


@pytest.mark.parametrize("overrides, message", [
    ({"ablation.rows": "gbm_dale_langevin,nonsense"}, "config.ablation.rows"),
    ({"ablation.curves": "vp_euler_maruyama", "ablation.rows": "gbm_dale_langevin"}, "config.ablation.curves"),
    ({"ablation.nfe_steps": (0,)}, "config.ablation.nfe_steps"),
    ({"ablation.n_samples": 1}, "config.ablation.n_samples"),
    ({"sampling.n_steps": 0}, "sampling"),
])
def test_bad_ablation_configs_name_the_field(overrides, message):
    c = load_config("ablation_cpu")
    c.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        ablations.validate(c)


def test_missing_ablation_block():
    with pytest.raises(ValueError, match="no 'ablation' block"):
        ablations.validate(config_lib.default_config())


def test_micro_run_writes_a_table_with_every_row(tmp_path):
    c = micro_config()
    logs = []
    result = ablations.run(c, str(tmp_path), log=logs.append)
    with open(tmp_path / "ablation.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == list(ablations.ROW_NAMES)
    for r in table:
        # An untrained network may send sign-agnostic samples negative (NaN); those are counted, not scored.
        finite = [np.isfinite(float(r[k])) for k in ("fid", "kid", "class_entropy", "nn_ratio")]
        assert all(finite) or float(r["diverged"]) > 0.5, r
        assert 0.0 <= float(r["diverged"]) <= 1.0 and float(r["seconds"]) > 0
    assert float(table[0]["diverged"]) == 0.0  # Dale-Langevin never leaves the positive orthant
    nfe = {r["row"]: int(r["nfe"]) for r in table}
    assert nfe["gbm_dale_langevin"] == 3 + 1 and nfe["extras_off_dale_langevin"] == 3 and nfe["gbm_ode"] == 2 * 1 + 1
    report = (tmp_path / "ablation.md").read_text()
    assert all(f"| {name} |" in report for name in ablations.ROW_NAMES)
    assert set(result["trainings"]) == set(ablations.TRAININGS)
    assert [p["nfe"] for p in result["curves"]["ve_euler_maruyama"]] == [2 + 1, 3 + 1]
    for png in ("nfe.png", "samples.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second call finds every training and row cached: same numbers, no new work.
    again = ablations.run(c, str(tmp_path), log=logs.append)
    np.testing.assert_array_equal([r["fid"] for r in again["rows"]], [r["fid"] for r in result["rows"]])
    assert sum("training" in line for line in logs) == len(ablations.TRAININGS)
