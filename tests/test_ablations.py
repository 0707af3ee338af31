"""Ablation runner: the grid as config data, row and training configs, published-extras rescaling, a micro run."""

import csv
import math

import numpy as np
import pytest
from test_train import load_config

from dale_langevin.evaluation import ablations
from dale_langevin.pipeline import config as config_lib, generate
from dale_langevin.samplers import published

SDE_SAMPLERS = ("dale_langevin", "sign_agnostic", "euler_maruyama")


def micro_config():
    """The CPU ablation shrunk to seconds: 4-channel one-level U-Net, 2 training steps, 8 samples, 3 levels."""
    c = load_config("ablation_cpu")
    c.update_from_flattened_dict(
        {
            "model.unet.channels": 4,
            "model.unet.channel_mult": (1,),
            "training.batch_size": 8,
            "training.n_iters": 2,
            "training.log_every": 1,
            "training.ckpt_every": 2,
            "optim.warmup_steps": 1,
            "ablation.n_steps": 3,
            "sampling.batch_size": 8,
            "eval.classifier_epochs": 1,
            "eval.kid_subsets": 4,
            "eval.kid_subset_size": 4,
            "ablation.n_samples": 8,
            "ablation.curves": "gbm_dale_langevin,ve_euler_maruyama",
            "ablation.nfe_steps": (2,),
            **{f"sampling.{m}.denoise_steps": 1 for m in SDE_SAMPLERS},
        }
    )
    return c


def test_every_row_config_validates_and_differs_as_named():
    c = load_config("ablation_cpu")
    rows = ablations.validate(c)
    names = [r.name for r in ablations.grid(c)]
    assert [r.name for r in rows] == names and len(names) == 11
    configs = {r.name: ablations.row_config(c, r) for r in rows}
    described = {name: ablations.describe(rc) for name, rc in configs.items()}
    assert described["ve_euler_maruyama"]["process"] == "ve" and described["vp_euler_maruyama"]["process"] == "vp"
    assert described["gbm_sign_agnostic"]["sampler"] == "sign_agnostic"
    assert described["gbm_ode"] == {**described["gbm_ode"], "sampler": "ode (dpm2)", "extras": "Tweedie step"}
    assert described["weighting_noise"]["weighting"] == "noise"
    assert described["prior_scalar"]["prior"] == "scalar"
    assert described["extras_off_dale_langevin"]["extras"] == "off"
    assert described["gbm_dale_langevin"]["extras"] == "10 denoise"
    # Every row samples at ablation.n_steps levels (the ODE at half: two evaluations a level).
    nfe = {name: generate.network_evaluations(rc) for name, rc in configs.items()}
    assert nfe["gbm_dale_langevin"] == nfe["ve_euler_maruyama"] == 110 and nfe["gbm_ode"] == 101
    assert nfe["extras_off_dale_langevin"] == 100
    # Equal budget: every training shares network, optimizer, data and steps with the base config.
    for name in ablations.trainings(c):
        t = ablations.training_config(c, name)
        assert (t.model, t.optim, t.data, t.training.n_iters) == (c.model, c.optim, c.data, c.training.n_iters)


def test_the_full_size_ablation_shares_the_grid():
    cpu, full = load_config("ablation_cpu"), load_config("ablation_mnist")
    assert ablations.grid(full) == ablations.grid(cpu) and ablations.trainings(full) == ablations.trainings(cpu)
    rows = ablations.validate(full)
    assert len(rows) == 11 and ablations.row_config(full, rows[0]).sampling.dale_langevin.n_steps == 1000


def test_published_extras_keep_total_annealing_and_step_ratio():
    for method, (delta, n_inner, decay) in published.PUBLISHED["fashion_mnist"].items():
        assert published.settings("fashion_mnist", method) == {
            "step_size": delta,
            "n_inner": n_inner,
            "noise_decay": decay,
        }
        e = published.settings("fashion_mnist", method, 100)
        assert math.isclose(e["noise_decay"] ** 100, decay**1000, rel_tol=1e-9)
        assert math.isclose(e["step_size"] * 100, delta * 1000, rel_tol=1e-12)
    c = load_config("ablation_cpu")
    row = next(r for r in ablations.grid(c) if r.name == "extras_published_dale_langevin")
    s = ablations.row_config(c, row, n_steps=50).sampling.dale_langevin
    assert s.n_steps == 50 and math.isclose(s.noise_decay, 0.995**20) and math.isclose(s.step_size, 5.86e-4 * 20)
    with pytest.raises(ValueError, match="published settings dataset"):
        published.settings("imagenet", "dale_langevin")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ablation.rows": "gbm_dale_langevin,nonsense"}, "config.ablation.rows"),
        ({"ablation.curves": "vp_euler_maruyama", "ablation.rows": "gbm_dale_langevin"}, "config.ablation.curves"),
        ({"ablation.nfe_steps": (0,)}, "config.ablation.nfe_steps"),
        ({"ablation.n_samples": 1}, "config.ablation.n_samples"),
        ({"ablation.n_steps": 0}, "config.ablation.n_steps"),
        (
            {"sampling.sign_agnostic.noise_decay": 2.0},
            r"gbm_sign_agnostic.*config\.sampling\.sign_agnostic\.noise_decay",
        ),
        ({"ablation.grid": ({"name": "x", "training": "gbm"},)}, "unknown or missing fields"),
        (
            {
                "ablation.grid": (
                    dict(
                        name="x",
                        training="gbm",
                        group="g",
                        method="dale_langevin",
                        overrides=(("training.weightng", 1),),
                    ),
                ),
                "ablation.rows": "x",
                "ablation.curves": "",
            },
            "the override 'training.weightng' names no config field",
        ),
    ],
)
def test_bad_ablation_configs_name_the_field(overrides, message):
    c = load_config("ablation_cpu")
    c.update_from_flattened_dict(overrides)
    with pytest.raises(ValueError, match=message):
        ablations.validate(c)


def test_missing_ablation_block():
    with pytest.raises(ValueError, match="no 'ablation' block"):
        ablations.validate(config_lib.default_config())


@pytest.mark.slow
def test_micro_run_writes_a_table_with_every_row(tmp_path):
    from dale_langevin import main

    c = micro_config()
    names = [r.name for r in ablations.grid(c)]
    logs = []
    result = ablations.run(c, str(tmp_path), log=logs.append)
    with open(tmp_path / "ablation.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == names
    for r in table:
        # An untrained network may send sign-agnostic samples negative (NaN); those are counted, not scored.
        finite = [np.isfinite(float(r[k])) for k in ("fid", "kid", "class_entropy", "nn_ratio")]
        assert all(finite) or float(r["diverged"]) > 0.5, r
        assert 0.0 <= float(r["diverged"]) <= 1.0 and float(r["seconds"]) > 0
    assert float(table[0]["diverged"]) == 0.0  # Dale-Langevin never leaves the positive orthant
    nfe = {r["row"]: int(r["nfe"]) for r in table}
    assert nfe["gbm_dale_langevin"] == 3 + 1 and nfe["extras_off_dale_langevin"] == 3 and nfe["gbm_ode"] == 2 * 1 + 1
    report = (tmp_path / "ablation.md").read_text()
    assert all(f"| {name} |" in report for name in names)
    assert set(result["trainings"]) == set(ablations.trainings(c))
    assert [p["nfe"] for p in result["curves"]["ve_euler_maruyama"]] == [2 + 1, 3 + 1]
    for png in ("nfe.png", "samples.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second call, through main's --mode=ablate, finds every training and row cached: same numbers, no new work.
    again = main.run(c, str(tmp_path), "ablate")
    np.testing.assert_array_equal([r["fid"] for r in again["rows"]], [r["fid"] for r in result["rows"]])
    assert sum("training" in line for line in logs) == len(ablations.trainings(c))
