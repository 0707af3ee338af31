"""Ablation runner: the grid as config data, row and training configs, published-extras rescaling, a micro run."""

import csv
import shutil

import numpy as np
import pytest
from test_train import load_config

from dale_langevin import GBM
from dale_langevin.evaluation import ablations, report
from dale_langevin.pipeline import config as config_lib, data, generate
from dale_langevin.processes import snr

SDE_SAMPLERS = ("dale_langevin", "sign_agnostic", "euler_maruyama")


def micro_config():
    """The CPU ablation shrunk to seconds: 4-channel one-level U-Net, 2 training steps, 2 seeds of 8 samples, 3 levels."""
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
            "ablation.seeds": (0, 1),
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
    assert [r.name for r in rows] == names and len(names) == 16
    configs = {r.name: ablations.row_config(c, r) for r in rows}
    described = {name: ablations.describe(rc) for name, rc in configs.items()}
    processes = {name: d["process"] for name, d in described.items()}
    assert processes["ve_euler_maruyama"] == processes["ve_snr_euler_maruyama"] == "ve"
    assert processes["vp_euler_maruyama"] == "vp" and processes["log_ve_euler_maruyama"] == "log_ve"
    assert described["gbm_sign_agnostic"]["sampler"] == "sign_agnostic"
    assert described["gbm_ode"] == {**described["gbm_ode"], "sampler": "ode (dpm2)", "extras": "Tweedie step"}
    assert described["weighting_noise"]["weighting"] == "noise"
    assert {described[n]["prior"] for n in ("prior_scalar", "ve_snr_scalar_prior", "vp_scalar_prior")} == {"scalar"}
    assert {described[n]["prior"] for n in ("ve_snr_euler_maruyama", "vp_euler_maruyama")} == {"per_pixel"}
    assert described["extras_off_dale_langevin"]["extras"] == "off"
    assert described["gbm_dale_langevin"]["extras"] == described["log_ve_euler_maruyama"]["extras"] == "10 denoise"
    assert configs["parametrisation_score"].model.parametrisation == "score"
    # The matched-SNR VE: sigma_max from the rule on the embedded digits; the other VE keeps 50.
    sigma = configs["ve_snr_euler_maruyama"].process.ve.sigma_max
    assert 2.0 < sigma < 2.5 and configs["ve_euler_maruyama"].process.ve.sigma_max == 50.0
    pixels, _ = data.load_arrays("embedded_mnist", "train")
    gbm = GBM(**configs["ve_snr_euler_maruyama"].process.gbm.to_dict())  # the config's GBM, as trained
    np.testing.assert_allclose(sigma, snr.matched_ve_sigma_max(pixels / 255.0, gbm), atol=1e-4)
    # Log-space VE is GBM's process written additively: the same sigma and T, sampling GBM's noise-weighted net.
    lve = configs["log_ve_euler_maruyama"]
    assert (lve.process.log_ve.sigma, lve.process.log_ve.T) == (lve.process.gbm.sigma, lve.process.gbm.T)
    assert {r.name: r.training for r in rows}["log_ve_euler_maruyama"] == "gbm_noise"
    # Every row samples at ablation.n_steps levels (the ODE at half: two evaluations a level).
    nfe = {name: generate.network_evaluations(rc) for name, rc in configs.items()}
    assert nfe["gbm_dale_langevin"] == nfe["ve_euler_maruyama"] == nfe["log_ve_euler_maruyama"] == 110
    assert nfe["gbm_ode"] == 101 and nfe["extras_off_dale_langevin"] == 100
    # Equal budget: every training shares network, optimizer, data and steps with the base config; only
    # gbm_score changes the parametrisation (the network's output), nothing else of config.model.
    for name in ablations.trainings(c):
        t = ablations.training_config(c, name)
        model = t.model.to_dict() | {"parametrisation": c.model.parametrisation}
        assert (model, t.optim, t.data, t.training.n_iters) == (c.model.to_dict(), c.optim, c.data, c.training.n_iters)


def test_the_full_size_ablation_shares_the_grid():
    cpu, full = load_config("ablation_cpu"), load_config("ablation_mnist")
    assert ablations.grid(full) == ablations.grid(cpu) and ablations.trainings(full) == ablations.trainings(cpu)
    assert full.ablation.curves == cpu.ablation.curves and tuple(full.ablation.seeds) == tuple(cpu.ablation.seeds)
    rows = ablations.validate(full)
    assert len(rows) == 16 and ablations.row_config(full, rows[0]).sampling.dale_langevin.n_steps == 1000


def test_draws_summarise_to_mean_and_spread_over_seeds():
    def draw(seed, fid, kid, empty, kid_std=0.5):
        metrics = dict(fid=fid, kid=kid, class_entropy=0.9, empty_classes=empty, nn_ratio=1.0, diverged=0.0)
        return {"row": "r", "seed": seed, "seconds": 2.0, "config_hash": "h", "kid_std": kid_std, **metrics}

    draws = [draw(0, 10.0, 0.01, 0), draw(1, 14.0, 0.03, 1, 1.5), draw(2, 12.0, 0.02, 2)]
    row = ablations.summarise(draws)
    assert row["fid"] == 12.0 and row["fid_std"] == 2.0 and row["fid_seeds"] == [10.0, 14.0, 12.0]
    np.testing.assert_allclose((row["kid"], row["kid_std"], row["kid_subset_std"]), (0.02, 0.01, 2.5 / 3))
    assert row["empty_classes"] == 1.0 and row["class_entropy_std"] == 0.0 and row["failed_draws"] == 0
    assert row["seeds"] == [0, 1, 2] and row["seconds"] == 6.0 and row["row"] == "r"
    assert "config_hash" not in row and "seed" not in row
    assert np.isnan(ablations.summarise(draws[:1])["fid_std"])  # one draw: no spread, not a spread of 0
    # A draw with no finite sample is left out of the means and counted; its divergence still counts.
    failed = {**draw(3, float("nan"), float("nan"), 10), "diverged": 1.0}
    row = ablations.summarise([*draws[:2], failed])
    assert row["fid"] == 12.0 and row["failed_draws"] == 1 and np.isnan(row["fid_seeds"][2])
    np.testing.assert_allclose(row["diverged"], 1 / 3)
    assert np.isnan(ablations.summarise([failed])["fid"])
    md = report.markdown_report(load_config("ablation_cpu"), _result([ablations.summarise(draws[:1])]))
    assert "| 10.0 |" in md and "±" not in md.split("Trainings:")[0].split("| group |")[1]
    # A curve point where samples diverged says how many: its metrics are of the rest.
    point = ablations.summarise([{**d, "diverged": 0.9, "nfe": 20} for d in draws])
    assert report.curve_cell(point) == "20: 12.0 ± 2.0 (90% diverged)"
    assert report.curve_cell({**point, "diverged": 0.0}) == "20: 12.0 ± 2.0"


def _result(rows):
    row = {**rows[0], "group": "g", "training": "t", "process": "gbm", "sampler": "s", "weighting": "w"}
    row |= {"prior": "p", "extras": "e", "nfe": 1}
    trained = {"t": {"training": "t", "description": "d", "steps": 1, "seconds": 1.0, "final_loss": 1.0}}
    return {"rows": [row], "trainings": trained, "curves": {}, "classifier_accuracy": 0.9, "seconds": 60.0} | {
        "training_seconds": 60.0,
        "draw_seconds": 6.0,
    }


def test_cache_keys_follow_what_determines_a_model_and_a_draw():
    c = load_config("ablation_cpu")
    gbm = ablations.training_config(c, "gbm")
    key = ablations.training_hash(gbm)

    def changed(config, path, value):
        other = config.copy_and_resolve_references()
        other.update_from_flattened_dict({path: value})
        return other

    # Neither sampling, evaluation, the grid, other processes' or networks' groups, intervals nor the machine
    # change a trained model.
    for path, value in (
        ("sampling.dale_langevin.n_steps", 7),
        ("eval.kid_subsets", 3),
        ("ablation.n_samples", 9),
        ("process.ve.sigma_max", 3.0),
        ("model.ncsnpp.nf", 8),
        ("training.log_every", 7),
        ("training.ckpt_every", 7),
        ("host_device_count", 3),
    ):
        assert ablations.training_hash(changed(gbm, path, value)) == key, path
    for path, value in (
        ("training.n_iters", 7),
        ("model.unet.channels", 8),
        ("seed", 3),
        ("process.gbm.sigma", 0.5),
        ("optim.lr", 0.1),
        ("training.weighting", "noise"),
    ):
        assert ablations.training_hash(changed(gbm, path, value)) != key, path
    rows = ablations.grid(c)
    row = ablations.row_config(c, rows[0])
    draw = ablations.draw_hash(row, key, 200, 0)
    assert len({draw, ablations.draw_hash(row, key, 200, 1), ablations.draw_hash(row, key, 100, 0)}) == 3
    assert ablations.draw_hash(changed(row, "sampling.ode.solver", "euler"), key, 200, 0) == draw  # not its sampler
    assert ablations.draw_hash(changed(row, "sampling.dale_langevin.denoise_steps", 3), key, 200, 0) != draw
    assert ablations.draw_hash(changed(row, "eval.kid_subsets", 3), key, 200, 0) != draw
    # The log-space VE row reads the gbm_noise network: a change to that training changes its draws' key.
    lve = next(r for r in rows if r.name == "log_ve_euler_maruyama")
    noise = ablations.training_config(c, "gbm_noise")
    keys = [ablations.training_hash(t) for t in (noise, changed(noise, "process.gbm.data_offset", 2.0))]
    assert keys[0] != keys[1]
    lve_config = ablations.row_config(c, lve)
    assert ablations.draw_hash(lve_config, keys[0], 200, 0) != ablations.draw_hash(lve_config, keys[1], 200, 0)


def test_log_ve_rows_must_sample_gbm_written_additively():
    c = load_config("ablation_cpu")
    trained = ablations.training_config(c, "gbm_noise")
    sampled = ablations.row_config(c, next(r for r in ablations.grid(c) if r.name == "log_ve_euler_maruyama"))
    ablations.check_process_change(trained, sampled)

    def changed(config, **fields):
        other = config.copy_and_resolve_references()
        other.update_from_flattened_dict(fields)
        return other

    bad = [
        (trained, changed(sampled, **{"process.log_ve.sigma": 0.5}), "written additively"),
        (changed(trained, **{"process.gbm.data_offset": 2.0}), sampled, "written additively"),
        (changed(trained, **{"process.gbm.mu": 0.1}), sampled, "mu=None"),
        (trained, changed(sampled, **{"model.parametrisation": "score"}), "log_noise"),
        (trained, changed(sampled, **{"process.name": "ve"}), "cannot be sampled as 've'"),
    ]
    for before, after, message in bad:
        with pytest.raises(ValueError, match=message):
            ablations.check_process_change(before, after)
    c.update_from_flattened_dict({"process.log_ve.sigma": 0.5})
    with pytest.raises(ValueError, match="log_ve_euler_maruyama.*written additively"):
        ablations.validate(c)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ablation.rows": "gbm_dale_langevin,nonsense"}, "config.ablation.rows"),
        ({"ablation.curves": "vp_euler_maruyama", "ablation.rows": "gbm_dale_langevin"}, "config.ablation.curves"),
        ({"ablation.nfe_steps": (0,)}, "config.ablation.nfe_steps"),
        ({"ablation.n_samples": 1}, "config.ablation.n_samples"),
        ({"ablation.n_steps": 0}, "config.ablation.n_steps"),
        ({"ablation.seeds": ()}, "config.ablation.seeds"),
        ({"ablation.seeds": (0, 0)}, "config.ablation.seeds"),
        ({"ablation.seeds": (-1,)}, "config.ablation.seeds"),
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
    assert all(r["seeds"] == "0 1" for r in table)
    by_name = {r["row"]: r for r in result["rows"]}
    # Two seeds, two draws: the spread is their standard deviation.
    gbm = by_name["gbm_dale_langevin"]
    np.testing.assert_allclose(gbm["fid_std"], np.std(gbm["fid_seeds"], ddof=1))
    assert gbm["fid_seeds"][0] != gbm["fid_seeds"][1]
    # Log-space VE's Euler-Maruyama on the gbm_noise network is Dale-Langevin on it, draw by draw.
    np.testing.assert_allclose(
        by_name["log_ve_euler_maruyama"]["fid_seeds"], by_name["weighting_noise"]["fid_seeds"], rtol=1e-3
    )
    nfe = {r["row"]: int(r["nfe"]) for r in table}
    assert nfe["gbm_dale_langevin"] == 3 + 1 and nfe["extras_off_dale_langevin"] == 3 and nfe["gbm_ode"] == 2 * 1 + 1
    report = (tmp_path / "ablation.md").read_text()
    assert all(f"| {name} |" in report for name in names)
    assert set(result["trainings"]) == set(ablations.trainings(c))
    assert [p["nfe"] for p in result["curves"]["ve_euler_maruyama"]] == [2 + 1, 3 + 1]
    for png in ("nfe.png", "samples.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A second call, through main's --mode=ablate, finds every training and draw cached: same numbers, no new
    # work, and no checkpoint read (they are deleted: the records are all a resumed grid needs of a model).
    for name in ablations.trainings(c):
        shutil.rmtree(tmp_path / "train" / name / "checkpoints")
    again = main.run(c, str(tmp_path), "ablate")
    np.testing.assert_array_equal([r["fid"] for r in again["rows"]], [r["fid"] for r in result["rows"]])
    assert sum("training" in line for line in logs) == len(ablations.trainings(c))


def test_a_row_reuses_its_trainings_prior_fit_only_for_the_same_process():
    # The prior fits cached with a training are of its process at T: a row that samples another process, or the same
    # process with another setting (VE's sigma_max), must fit its own.
    c = load_config("ablation_cpu")
    rows = {r.name: r for r in ablations.grid(c)}
    for name in ("ve_euler_maruyama", "ve_snr_scalar_prior", "gbm_ode", "weighting_noise"):
        row = rows[name]
        assert ablations.shares_prior_fit(ablations.row_config(c, row), ablations.training_config(c, row.training))
    log_ve = rows["log_ve_euler_maruyama"]
    assert not ablations.shares_prior_fit(
        ablations.row_config(c, log_ve), ablations.training_config(c, log_ve.training)
    )
    other = ablations.Row("ve_net_at_2_25", "ve", "process", "euler_maruyama", (("process.ve.sigma_max", 2.25),))
    assert not ablations.shares_prior_fit(ablations.row_config(c, other), ablations.training_config(c, "ve"))
