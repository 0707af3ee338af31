"""The benchmark entry point on a micro config: every field present, finite and positive, ratios consistent."""

import json
import math
import pathlib

import numpy as np
import pytest

from benchmarks import run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    argv = [
        "--configs=demo",
        "--micro",
        "--batch=4",
        "--steps=2",
        "--warmup=1",
        "--nfe=3",
        "--sample_batch=4",
        "--sample_repeats=1",
        "--cpu_conv_variants=off",
        "--host_allocator=system",
        f"--out={out}",
    ]  # malloc untouched in pytest
    returned = run.main(argv)
    with open(out) as f:
        written = json.load(f)
    return returned, written


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_json_has_every_field_finite_and_positive(report, n_devices):
    _, r = report
    d = r["device"]
    assert d["backend"] == "cpu" and d["n_local_devices"] == n_devices and d["host_cores"] >= 1 and d["device_kind"]
    assert d["host_allocator"] == {"mode": "system", "applied": False, "reason": "glibc defaults requested"}
    c = r["configs"]["demo"]
    assert c["micro"] and c["batch"] == 4 and c["sample_batch"] == 4 and _positive(c["params"])
    assert set(c["train"]) == {"lean", "plain", "lean_cpu_conv_off"}
    for key, row in c["train"].items():
        for field in run.TRAIN_FIELDS:
            assert _positive(row[field]), (key, field, row[field])
        assert len(row["step_times_s"]) == 2 and row["loss_finite"]
        assert isinstance(row["minor_faults_per_call"], (int, float)) and row["minor_faults_per_call"] >= 0
    lean, plain = c["train"]["lean"], c["train"]["plain"]
    assert (lean["n_devices"], lean["per_device_batch"], lean["donated"], lean["host_sync_every_step"]) == (
        n_devices,
        4 // n_devices,
        True,
        False,
    )
    assert (plain["n_devices"], plain["donated"], plain["host_sync_every_step"], plain["cpu_conv"]) == (
        1,
        False,
        True,
        "off",
    )
    assert lean["images_per_s"] == pytest.approx(4 / lean["s_per_step"])
    assert lean["images_per_s_per_device"] == pytest.approx(lean["images_per_s"] / n_devices)
    for key, row in c["sample"].items():
        for field in run.SAMPLE_FIELDS:
            assert _positive(row[field]), (key, field, row[field])
        assert row["nfe"] == 3 and row["batch"] == 4 and row["finite"]
        assert row["s_per_nfe"] == pytest.approx(row["seconds"] / 3)
    assert _positive(c["memory"]["host_peak_rss_mib"])


def test_ratios_are_the_time_ratios_of_the_rows(report):
    returned, written = report
    c = written["configs"]["demo"]
    for field in (*run.RATIO_FIELDS, "train_lean_vs_lean_cpu_conv_off"):
        assert _positive(c["ratios"][field]), field
    train, sample = c["train"], c["sample"]
    lean_s, plain_s = train["lean"]["s_per_step"], train["plain"]["s_per_step"]
    assert c["ratios"]["train_lean_vs_plain"] == pytest.approx(plain_s / lean_s)
    assert c["ratios"]["sample_lean_vs_plain"] == pytest.approx(sample["plain"]["seconds"] / sample["lean"]["seconds"])
    assert returned["configs"]["demo"]["ratios"] == c["ratios"]  # the JSON is what main returns


def test_torch_json_is_set_beside_matching_rows(report, tmp_path):
    returned, _ = report
    c = returned["configs"]["demo"]
    ref = {
        "config": "demo",
        "torch_version": "x",
        "threads": 2,
        "train": {"4": {"median_s": 0.5}, "128": {"median_s": 2.0}},
        "forward": {"4": {"median_s": 0.1}},
    }
    path = tmp_path / "torch.json"
    path.write_text(json.dumps(ref))
    side = run.torch_side(str(path), "demo", c)
    assert side["train"]["4"]["torch_over_jax_lean"] == pytest.approx(0.5 / c["train"]["lean"]["s_per_step"])
    assert "torch_over_jax_lean" not in side["train"]["128"]  # another batch: shown, not compared
    assert side["forward"]["4"]["torch_over_jax_lean"] == pytest.approx(0.1 / c["sample"]["lean"]["s_per_nfe"])
    assert run.torch_side(str(path), "mnist", c) is None


def test_bad_flags_are_refused():
    with pytest.raises(SystemExit):
        run.parse_args(["--steps=0"])
    with pytest.raises(ValueError, match="cpu_conv_variants"):
        run.cpu_conv_variants("fast", "cpu")
    assert run.cpu_conv_variants("auto_cpu_only", "gpu") == []
    assert run.cpu_conv_variants("auto_cpu_only", "cpu") == ["off"]


def test_vs_torch_reads_each_rounds_ratios_and_takes_medians(report, tmp_path):
    from benchmarks import vs_torch

    _, written = report
    c = written["configs"]["demo"]
    rounds = []
    for scale in (1.0, 2.0, 0.5):  # three rounds whose PyTorch medians differ
        path = tmp_path / f"torch_{scale}.json"
        path.write_text(
            json.dumps(
                {
                    "config": "demo",
                    "train": {"4": {"median_s": scale * 0.1}},
                    "forward": {"4": {"median_s": scale * 0.01}},
                }
            )
        )
        joined = {"configs": {"demo": {**c, "torch": run.torch_side(str(path), "demo", c)}}}
        rounds.append(vs_torch.round_ratios(joined, "demo", batch=4, forward_batch=4))
    lean_s, per_nfe = c["train"]["lean"]["s_per_step"], c["sample"]["lean"]["s_per_nfe"]
    assert rounds[1]["train_torch_over_jax"] == pytest.approx(0.2 / lean_s)
    assert rounds[2]["forward_torch_over_jax"] == pytest.approx(0.005 / per_nfe)
    medians = vs_torch.summarise(rounds)["medians"]
    assert medians["train_torch_over_jax"] == pytest.approx(0.1 / lean_s)  # the middle round
    assert medians["torch_forward_s"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="no matching batch"):
        vs_torch.round_ratios(joined, "demo", batch=128, forward_batch=4)
    with pytest.raises(ValueError, match="no PyTorch side"):
        vs_torch.round_ratios({"configs": {"demo": c}}, "demo", batch=4, forward_batch=4)
    with pytest.raises(SystemExit):
        vs_torch.parse_args(["--torch_python=python", "--out_dir=x", "--rounds=0"])


def test_data_restart_benchmark_reports_every_start(tmp_path):
    from benchmarks import data_restart

    out = tmp_path / "restart.json"
    r = data_restart.main(["--starts=5,5000000", "--repeats=1", "--read_batches=3", "--batch=16", f"--out={out}"])
    with open(out) as f:
        assert json.load(f) == r
    assert r["dataset"] == "embedded_mnist" and r["examples"] == 4500 and r["global_batch"] == 16
    assert set(r["restart"]) == {"5", "5000000"}
    assert all(_positive(v["median_s"]) for v in r["restart"].values())
    assert _positive(r["batches_per_s"]) and _positive(r["cold_s"])


def test_paper_budget_counts_flops_that_scale_with_the_network():
    """XLA's FLOP count of the paper networks: doubling the width of a conv net about quadruples its
    FLOPs (3x3 convolutions are quadratic in the width), and a train step (forward, backward, loss)
    costs 2-4 forward passes."""
    from benchmarks import paper_budget
    from dale_langevin.pipeline import paper

    flops = {}
    for ngf in (4, 8):
        c = paper.config("mnist", "dale_langevin", size="cpu")
        c.model.ncsnv2_deeper.ngf = ngf
        flops[ngf] = paper_budget.counted_flops(c)
    assert 3.0 < flops[8]["forward"] / flops[4]["forward"] < 4.2
    for f in flops.values():
        assert 2.0 < f["train"] / f["forward"] < 4.0
    assert 2.0 < flops[8]["params"] / flops[4]["params"] < 4.0  # the per-level norm tables grow linearly


def test_nfe_table_parses_entries_and_refuses_a_bad_one_before_drawing(tmp_path):
    from benchmarks import nfe_table

    demo = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"
    assert nfe_table.parse_entries("renoise:n_steps=2; dpm2m:spacing=power,rho=1.0,eta=1 ;") == [
        ("renoise", {"n_steps": 2}),
        ("dpm2m", {"spacing": "power", "rho": 1.0, "eta": 1}),
    ]
    with pytest.raises(ValueError, match="not key=value"):
        nfe_table.parse_entries("ddim:n_steps")
    with pytest.raises(ValueError, match="names no sampler"):
        nfe_table.parse_entries(" ; ")
    # checked before any checkpoint is looked for: the workdir does not exist
    with pytest.raises(ValueError, match="n_steps"):
        nfe_table.main([f"--config={demo}", f"--workdir={tmp_path / 'none'}", "--entries=renoise:n_steps=0"])
    with pytest.raises(ValueError, match="unknown sampler"):
        nfe_table.main([f"--config={demo}", f"--workdir={tmp_path / 'none'}", "--entries=nope"])


def test_nfe_table_strip_has_one_labelled_row_per_entry(tmp_path):
    from PIL import Image

    from benchmarks import nfe_table

    rows = [(f"row {i}", np.full((12, 28, 28, 1), i / 3.0, np.float32)) for i in range(3)]
    nfe_table.write_strip(str(tmp_path / "strip.png"), rows)
    with Image.open(tmp_path / "strip.png") as img:
        width, height = img.size
    assert width > 2 * height  # a wide strip of three rows, not a square grid


def _nfe_row(method, settings, nfe, fids, diverged=0.0):
    draws = [
        {"seed": i, "fid": f, "class_entropy": 0.9, "nn_ratio": 1.0, "diverged": diverged, "seconds": 2.0 + i}
        for i, f in enumerate(fids)
    ]
    return {"method": method, "settings": settings, "nfe": nfe, "draws": draws}


def test_nfe_report_sorts_by_nfe_compares_with_the_reference_and_leaves_out_failed_draws():
    from benchmarks import nfe_report

    ref = _nfe_row("dale_langevin", {"n_steps": 1000, "denoise_steps": 10}, 1010, [40.0, 38.0, 42.0])
    teacher = {"rows": [ref, _nfe_row("dpm2m", {"n_steps": 4, "denoise_steps": 6}, 10, [44.0, 46.0, 42.0])]}
    again = {"rows": [_nfe_row("dpm2m", {"n_steps": 4, "denoise_steps": 6}, 10, [44.0, 46.0, 42.0])]}
    student = {"rows": [_nfe_row("renoise", {"n_steps": 1}, 1, [30.0, float("nan"), 34.0], diverged=0.5)]}
    records = [("", teacher), ("", again), ("student", student)]
    s = nfe_report.summarise_row(student["rows"][0])
    assert (s["fid"], s["failed"], s["seconds"]) == (32.0, 1, 3.0)
    np.testing.assert_allclose(s["fid_sd"], np.std([30.0, 34.0], ddof=1))
    reference = nfe_report.find_reference(records, "dale_langevin", {"n_steps": 1000, "denoise_steps": 10})
    assert reference is ref
    lines = nfe_report.markdown_table(records, reference).splitlines()[2:]
    assert len(lines) == 3  # the dpm2m row drawn twice with the same FIDs is shown once
    assert [line.split(" | ")[2] for line in lines] == ["1", "10", "1010"]
    cells = [line.split(" | ") for line in lines]
    assert cells[0][0] == "| student: renoise" and "failed" in cells[0][3] and cells[0][7] == "50%"
    assert cells[1][4] == "+10%"  # 44 over 40, minus one
    assert cells[0][4] == "-20%" and cells[2][4] == "+0%" and "(reference)" in cells[2][0]
    assert nfe_report.describe_settings({"n_steps": 4, "denoise_steps": 6, "eta": 1.0}) == "4 + 6, eta 1.0"
    with pytest.raises(ValueError, match="0 matching rows"):
        nfe_report.find_reference(records, "ode", {})


def test_nfe_pivot_has_a_cell_per_sampler_and_nfe_and_refuses_two_rows_in_one_cell():
    from benchmarks import nfe_report

    rows = [
        _nfe_row("dpm2m", {"n_steps": 2, "denoise_steps": 2}, 4, [40.0, 42.0]),
        _nfe_row("dpm2m", {"n_steps": 4, "denoise_steps": 6}, 10, [30.0, 32.0]),
        _nfe_row("sign_agnostic", {"n_steps": 2, "denoise_steps": 2}, 4, [float("nan")] * 2, diverged=1.0),
        _nfe_row("sign_agnostic", {"n_steps": 15, "denoise_steps": 10}, 25, [29.0, 31.0], diverged=0.25),
    ]
    lines = nfe_report.pivot_table([("", {"rows": rows})], [4, 10, 25]).splitlines()
    assert lines[0] == "| sampler | 4 NFE | 10 NFE | 25 NFE |"
    assert lines[2] == f"| dpm2m | 41.0 ± {np.std([40, 42], ddof=1):.1f} | 31.0 ± 1.4 |  |"
    assert lines[3] == "| sign_agnostic | diverged |  | 30.0 ± 1.4 (25% diverged) |"
    twice = [
        ("", {"rows": rows[:1]}),
        ("", {"rows": [_nfe_row("dpm2m", {"n_steps": 3, "denoise_steps": 1}, 4, [50.0])]}),
    ]
    with pytest.raises(ValueError, match="two rows at NFE 4"):
        nfe_report.pivot_table(twice)
