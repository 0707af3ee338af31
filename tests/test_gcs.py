"""A ``gs://`` work directory against a real Cloud Storage API on loopback (fake-gcs-server, :mod:`gcs_emulator`).

The emulator is started by a fixture (``conftest.emulator``) and stopped after; every object is
listed through its JSON API, not read off its disk. ``STORAGE_EMULATOR_HOST`` is given without a scheme, as Google's own
clients accept it, so :func:`storage.configure`'s normalisation is on the path.
"""

import io
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from dale_langevin.pipeline import checkpoint, data, storage, workdir as wd_lib
from dale_langevin.pipeline.workdir import Workdir

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(scope="module")
def prepared_in_bucket(emulator, tmp_path_factory):
    """The embedded digits as a prepared TFDS ``mnist`` (ArrayRecord): ``(local folder, gs:// copy of it)``."""
    pytest.importorskip("tensorflow")  # TFDS preparation needs it (the test extra installs it)
    local = tmp_path_factory.mktemp("tfds")
    data.write_embedded_as_tfds(str(local), "mnist")
    names = emulator.upload_tree("bucket", "tfds", local)
    assert any(".array_record-" in name for name in names), names
    return str(local), "gs://bucket/tfds"


# -- storage.configure -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, url",
    [
        ("127.0.0.1:4443", "http://127.0.0.1:4443"),
        ("http://localhost:9023/", "http://localhost:9023"),
        ("https://gcs.example:443", "https://gcs.example:443"),
        ("", None),
        ("default", None),
    ],
)
def test_the_emulator_endpoint_gets_a_scheme(value, url):
    assert storage.emulator_endpoint({"STORAGE_EMULATOR_HOST": value}) == url


@pytest.mark.parametrize("value", ["ftp://host:1", ":4443", "http://"])
def test_a_malformed_emulator_endpoint_is_refused_naming_the_variable(value, raises_naming):
    with raises_naming("STORAGE_EMULATOR_HOST"):
        storage.emulator_endpoint({"STORAGE_EMULATOR_HOST": value})


def test_configure_routes_every_client_to_the_emulator_and_keeps_what_the_user_set(monkeypatch):
    import fsspec

    monkeypatch.setattr(fsspec.config, "conf", {})
    environ = {"STORAGE_EMULATOR_HOST": "127.0.0.1:5", "TENSORSTORE_GCS_HTTP_URL": "http://mine:6"}
    assert storage.configure(environ) == "http://127.0.0.1:5"
    assert environ["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:5" and environ["EPATH_USE_TF"] == "false"
    assert environ["CLOUD_STORAGE_EMULATOR_ENDPOINT"] == "http://127.0.0.1:5"  # ArrayRecord's reader
    assert environ["TENSORSTORE_GCS_HTTP_URL"] == "http://mine:6"  # set by the user: kept
    assert fsspec.config.conf["gcs"] == {"use_listings_cache": False, "token": "anon"}

    monkeypatch.setattr(fsspec.config, "conf", {})
    cloud = {"EPATH_USE_TF": "true"}
    assert storage.configure(cloud) is None
    assert cloud == {"EPATH_USE_TF": "true"}  # no emulator: no endpoint, no anonymous token
    assert fsspec.config.conf["gcs"] == {"use_listings_cache": False}


def test_gs_goes_through_gcsfs_even_when_a_local_path_was_touched_first(emulator, tmp_path):
    """epath picks TensorFlow or gcsfs for gs:// once per process, at its first operation on any path."""
    code = (
        "from dale_langevin.pipeline import workdir as w; from etils import epath; "
        f"epath.Path({str(tmp_path)!r}).exists(); "  # a local path first: epath's choice is made here
        "w.write_text(w.Workdir('gs://bucket/first').eval_md, 'ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"} | {"STORAGE_EMULATOR_HOST": emulator.host}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert emulator.read("bucket", "first/eval.md") == b"ok"


def test_object_stores_are_told_from_local_paths():
    assert storage.is_object_store("gs://b/run") and storage.is_object_store(Workdir("gs://b/run").root / "x")
    assert not storage.is_object_store("/tmp/gs:/x") and not storage.is_object_store(Workdir("run").root)


# -- the work directory in a bucket, in this process --------------------------------------------------


def test_every_kind_of_artefact_round_trips_through_a_bucket(emulated_env, tmp_path):
    wd = Workdir("gs://bucket/unit")
    wd_lib.write_json(wd.config_json, {"a": [1, 2]})
    assert wd_lib.read_json(wd.config_json) == {"a": [1, 2]} and wd_lib.read_json(wd.eval_json) is None
    x = np.arange(6.0).reshape(2, 3)
    wd_lib.save_npz(wd.start_stats, x=x)
    np.testing.assert_array_equal(wd_lib.load_npz(wd.start_stats)["x"], x)
    wd_lib.save_grid(wd.samples_png, np.zeros((2, 4, 4, 1)))
    lines = wd_lib.JsonLines(wd.metrics_jsonl)
    lines.write({"step": 1})
    lines.close()
    lines = wd_lib.JsonLines(wd.metrics_jsonl)  # a resumed run adds to what the first one logged
    lines.write({"step": 2})
    assert emulated_env.read("bucket", "unit/metrics.jsonl") == b'{"step": 1}\n{"step": 2}\n'
    assert wd_lib.keep_jsonl(wd.metrics_jsonl, lambda row: row["step"] < 2) == 1
    assert emulated_env.read("bucket", "unit/metrics.jsonl") == b'{"step": 1}\n'
    assert emulated_env.read("bucket", "unit/samples.png")[:8] == b"\x89PNG\r\n\x1a\n"
    # Written in place: no temporary object left behind, no copy-and-delete rename.
    assert emulated_env.objects("bucket", "unit/") == [
        "unit/config.json",
        "unit/metrics.jsonl",
        "unit/samples.png",
        "unit/start_stats.npz",
    ]
    assert not list(tmp_path.iterdir())


def test_checkpoints_save_restore_and_quarantine_in_a_bucket(emulated_env, capsys):
    wd = Workdir("gs://bucket/ckpt")
    checkpoint.check_writable(wd.checkpoints)
    mngr = checkpoint.manager(wd.checkpoints, keep=2)
    state = {"w": jnp.arange(6.0), "step": jnp.int32(0)}
    for step in (1, 2, 3):
        checkpoint.save(mngr, step, {"w": state["w"] * step, "step": jnp.int32(step)})
    assert sorted(checkpoint.manager(wd.checkpoints, create=False).all_steps()) == [2, 3]
    restored = checkpoint.restore_latest(checkpoint.manager(wd.checkpoints, create=False), state)
    chex.assert_trees_all_equal(restored, {"w": state["w"] * 3, "step": jnp.int32(3)})

    wd_lib.write_text(wd.checkpoints / "3" / "default" / "_METADATA", "")  # damaged: the reader falls back
    again = checkpoint.restore_latest(checkpoint.manager(wd.checkpoints), state, quarantine=True)
    assert int(again["step"]) == 2
    out = capsys.readouterr().out
    assert "Checkpoint step 3 in gs://bucket/ckpt/checkpoints does not restore" in out and "Moved it aside" in out
    names = {name.split("/")[2] for name in emulated_env.objects("bucket", "ckpt/checkpoints/")}
    assert "3" not in names and "2" in names and any(n.startswith("3.damaged-") for n in names), names


def test_tensorboard_reads_the_scalars_written_to_a_bucket(emulated_env, tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    wd = Workdir("gs://bucket/tb")
    writer = wd_lib.TensorBoardScalars(wd.tensorboard, roll_bytes=200)  # small: several event files
    for step in range(1, 9):
        writer.scalar("loss", 1.0 / step, step)
        writer.flush()
    writer.close()
    files = emulated_env.objects("bucket", "tb/tensorboard/")
    assert len(files) >= 2 and all("tfevents" in f for f in files)
    local = tmp_path / "tb"
    local.mkdir()
    for name in files:
        (local / pathlib.Path(name).name).write_bytes(emulated_env.read("bucket", name))
    events = event_accumulator.EventAccumulator(str(local))
    events.Reload()
    got = [(e.step, e.value) for e in events.Scalars("loss")]
    assert got == [(s, pytest.approx(1.0 / s)) for s in range(1, 9)]


@pytest.mark.timeout(120)  # a reader that misses the emulator waits on Cloud Storage's metadata server for ever
def test_a_prepared_tfds_set_in_a_bucket_reads_as_from_local_disk(emulated_env, prepared_in_bucket):
    local, bucket = prepared_in_bucket
    for split in ("train", "test"):  # ArrayRecord's own reader, pointed at the emulator by storage.configure
        chex.assert_trees_all_equal(
            data.load_arrays("mnist", split, data_dir=bucket, download=False),
            data.load_arrays("mnist", split, data_dir=local, download=False),
        )
    for p in range(2):  # each process's slice of the global batches, as on local disk

        def batches(data_dir, p=p):
            return data.train_batches(
                "mnist",
                global_batch=8,
                encode=lambda u: u,
                data_dir=data_dir,
                download=False,
                process_index=p,
                process_count=2,
                start=3,
            )

        chex.assert_trees_all_equal(next(batches(bucket)), next(batches(local)))
    with pytest.raises(data.DataUnavailableError, match=r"'kmnist'.*data_dir='gs://bucket/tfds'"):
        data.train_batches("kmnist", global_batch=8, encode=lambda u: u, data_dir=bucket, download=False)


# -- main on a bucket, end to end ---------------------------------------------------------------------

from test_train import TINY, main_flags, tiny_config  # noqa: E402

TIMEOUT_S = 600


def _main(emulator, cwd: pathlib.Path, log: pathlib.Path, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["STORAGE_EMULATOR_HOST"] = emulator.host
    command = [sys.executable, "-m", "dale_langevin.main", f"--config={ROOT / 'configs' / 'demo.py'}", *flags]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def _logged(emulator, name: str) -> dict[int, dict]:
    try:
        text = emulator.read("bucket", name).decode()
    except OSError:
        return {}
    return {row["step"]: row for row in map(json.loads, text.splitlines())}


@pytest.mark.slow
def test_train_kill_resume_sample_and_eval_on_a_gs_workdir_write_everything_there_and_nothing_locally(
    emulator, prepared_in_bucket, tmp_path
):
    """The TPU-VM path: data read from a prepared TFDS set in a bucket, every artefact written to another folder of it."""
    local_data, bucket_data = prepared_in_bucket
    cwd, log = tmp_path / "cwd", tmp_path / "main.log"
    cwd.mkdir()
    settings = {
        **TINY,
        "data.dataset": "mnist",
        "data.data_dir": bucket_data,
        "training.n_iters": 100_000,
        "training.log_every": 1,
        "training.ckpt_every": 100_000,  # only the preemption save
        "training.sample_every": 0,
        "sampling.dale_langevin.n_steps": 2,
        "sampling.n_samples": 4,
    }
    flags = ("--workdir=gs://bucket/run",)
    run = _main(emulator, cwd, log, *flags, *main_flags(settings))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(_logged(emulator, "run/metrics.jsonl")) < 3:
            assert run.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=TIMEOUT_S) == 143, log.read_text()[-3000:]
    finally:
        run.kill()
    k = int(re.search(r"Preempted: saved step (\d+) in gs://bucket/run/checkpoints", log.read_text())[1])

    settings.update({"training.n_iters": k + 2, "training.sample_every": k + 2})
    for mode in ("train", "eval"):  # train resumes, then samples
        step = _main(emulator, cwd, log, *flags, f"--mode={mode}", *main_flags(settings))
        try:
            assert step.wait(timeout=TIMEOUT_S) == 0, log.read_text()[-3000:]
        finally:
            step.kill()
    out = log.read_text()
    assert f"Resuming at step {k}/{k + 2}" in out and "-> gs://bucket/run/eval.md" in out

    objects = emulator.objects("bucket", "run/")
    top = sorted({name.split("/")[1] for name in objects})
    assert top == [
        "checkpoints",
        "classifier",
        "config.json",
        "eval.json",
        "eval.md",
        "metrics.jsonl",
        "nearest_neighbours.png",
        "samples",
        "samples.json",
        "samples.npz",
        "samples.png",
        "start_stats.npz",
        "tensorboard",
    ], objects
    assert {name.split("/")[2] for name in objects if name.startswith("run/checkpoints/")} == {str(k), str(k + 2)}
    assert f"run/samples/step_{k + 2:07d}.png" in objects
    assert len([n for n in objects if n.startswith("run/tensorboard/events.out.tfevents.")]) == 2  # one per leg
    assert sorted(os.listdir(cwd)) == []  # nothing in the working directory

    # The bucket's run is the local uninterrupted one: the checkpoint round trip through the bucket is exact.
    from dale_langevin.pipeline import train

    reference = tmp_path / "uninterrupted"
    train.train_and_evaluate(tiny_config(**{**settings, "data.data_dir": local_data}), str(reference))
    want = {row["step"]: row["loss"] for row in map(json.loads, (reference / "metrics.jsonl").read_text().splitlines())}
    got = {s: row["loss"] for s, row in _logged(emulator, "run/metrics.jsonl").items()}
    assert sorted(got) == sorted(want) == list(range(1, k + 3))
    np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-5)
    samples = np.load(io.BytesIO(emulator.read("bucket", "run/samples.npz")))
    assert samples["images"].shape[0] == 4
