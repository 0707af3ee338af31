"""Device layout, owned by pipeline.parallel: per-host batches split over devices and back, per-device keys."""

import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from dale_langevin.pipeline import parallel


def test_shard_batch_splits_the_leading_axis_and_unshard_restores_it(n_devices):
    batch = {"images": np.arange(8 * 3, dtype=np.float32).reshape(8, 3), "labels": np.arange(8)}
    sharded = parallel.shard_batch(batch)
    chex.assert_shape(
        [sharded["images"], sharded["labels"]], [(n_devices, 8 // n_devices, 3), (n_devices, 8 // n_devices)]
    )
    assert len(sharded["images"].sharding.device_set) == n_devices  # one slice per device, not one copy
    np.testing.assert_array_equal(parallel.unshard(sharded["images"]), batch["images"])
    np.testing.assert_array_equal(parallel.unshard(sharded["labels"]), batch["labels"])
    with pytest.raises(ValueError, match="does not split over"):
        parallel.shard_batch({"images": np.zeros((n_devices + 1, 2))})


def test_batch_divisibility_names_the_field(n_devices):
    assert parallel.per_device_batch(4 * n_devices, "config.training.batch_size") == 4
    for bad in (n_devices + 1, 0, -n_devices, 2.0 * n_devices):
        with pytest.raises(ValueError, match=r"config\.training\.batch_size=.* multiple of the device count"):
            parallel.per_device_batch(bad, "config.training.batch_size")
    with pytest.raises(ValueError, match=r"config\.sampling\.batch_size=3 .* local device count"):
        parallel.per_device_batch(3, "config.sampling.batch_size", local=True)


def test_device_keys_are_distinct_and_match_a_split(n_devices):
    keys = parallel.device_keys(jax.random.key(3))
    assert keys.shape == (n_devices,)
    draws = parallel.pmap(lambda k: jax.random.normal(k, (4,)))(keys)
    assert not np.allclose(draws[0], draws[1])
    want = jax.random.split(jax.random.key(3), n_devices)
    np.testing.assert_array_equal(jax.random.key_data(keys), jax.random.key_data(want))


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(coordinator_address="127.0.0.1:1"), "--coordinator_address"),
        (dict(coordinator_address="127.0.0.1:1", num_processes=0, process_id=0), "--num_processes"),
        (dict(coordinator_address="127.0.0.1:1", num_processes=2, process_id=2), "--process_id"),
    ],
)
def test_initialize_refuses_a_partial_or_bad_cluster_before_connecting(kwargs, field, raises_naming):
    with raises_naming(field):
        parallel.initialize(**kwargs)


def test_main_refuses_cluster_flags_without_multihost(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-m", "dale_langevin.main", f"--config={root / 'configs' / 'demo.py'}",
         f"--workdir={tmp_path}", "--num_processes=2"],
        capture_output=True, text=True, timeout=120, cwd=root,
    )  # fmt: skip
    assert r.returncode == 1 and "need --multihost" in r.stderr, r.stderr[-1000:]
    assert not any(tmp_path.iterdir())
