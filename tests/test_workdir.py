"""The work directory: artefact names, round trips through etils.epath, atomic writes, gs:// kept as written."""

import numpy as np
import pytest
from etils import epath

from dale_langevin.pipeline import workdir as wd_lib
from dale_langevin.pipeline.workdir import Workdir


def test_local_paths_are_absolute_and_buckets_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    wd = Workdir("run")
    assert str(wd.root) == str(tmp_path / "run") and wd.root.is_absolute()
    bucket = Workdir("gs://bucket/runs/fmnist")
    assert isinstance(bucket.root, epath.Path)
    assert str(bucket.checkpoints) == "gs://bucket/runs/fmnist/checkpoints"
    assert str(bucket.grid(20)) == "gs://bucket/runs/fmnist/samples/step_0000020.png"
    assert str(bucket.ablation_training("ve").start_stats) == "gs://bucket/runs/fmnist/train/ve/start_stats.npz"
    assert Workdir.of(bucket) is bucket


def test_round_trips(tmp_path):
    wd = Workdir(tmp_path / "run")
    wd_lib.write_json(wd.config_json, {"a": (1, 2), "b": None})
    assert wd_lib.read_json(wd.config_json) == {"a": [1, 2], "b": None}
    assert wd_lib.read_json(wd.eval_json) is None and wd_lib.load_npz(wd.start_stats) is None
    arrays = {"x": np.arange(6.0).reshape(2, 3), "y": np.int32(4)}
    wd_lib.save_npz(wd.start_stats, **arrays)
    loaded = wd_lib.load_npz(wd.start_stats)
    assert set(loaded) == {"x", "y"} and np.array_equal(loaded["x"], arrays["x"]) and loaded["y"] == 4
    wd_lib.save_npy(wd.ablation_row("r", 5, "npy"), arrays["x"])
    np.testing.assert_array_equal(wd_lib.load_npy(wd.ablation_row("r", 5, "npy")), arrays["x"])
    wd_lib.write_csv(wd.ablation_report("t.csv"), [{"a": 1, "b": 2, "c": 3}], ["a", "b"])
    assert (tmp_path / "run" / "t.csv").read_text().splitlines() == ["a,b", "1,2"]
    wd_lib.save_grid(wd.samples_png, np.zeros((3, 4, 4, 1)))
    assert (tmp_path / "run" / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = wd_lib.JsonLines(wd.metrics_jsonl)
    lines.write({"step": 1})
    lines.write({"step": 2})
    lines.close()
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_writes_are_atomic(tmp_path, monkeypatch):
    wd = Workdir(tmp_path)
    wd_lib.write_text(wd.eval_md, "old")

    original = type(wd.eval_md).write_bytes

    def half_then_full_disk(self, data):
        original(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(type(wd.eval_md), "write_bytes", half_then_full_disk)
    with pytest.raises(OSError, match="disk full"):
        wd_lib.write_text(wd.eval_md, "a new report")
    assert (tmp_path / "eval.md").read_text() == "old"  # the old version survives a failed write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.md"]  # and no temporary file is left
