"""Checkpoint faults: an unwritable folder, a full disk, retention. Small pytrees, no training.

The faults are real: a folder made unwritable (``chmod`` for a normal user; for root, whom
permissions do not stop, the ext4 immutable flag via ``chattr +i``), and a file-size limit
(``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so that a write fails with ``EFBIG`` as it would with
``ENOSPC`` on a full disk).
"""

import contextlib
import os
import resource
import signal
import subprocess
import threading
import time

import chex
import numpy as np
import pytest
from etils import epath

from dale_langevin.pipeline import checkpoint


def _state(value: float) -> dict:
    # Random values: constant arrays compress to a few bytes and would slip under any size limit.
    return {
        "w": np.random.default_rng(int(value)).normal(size=(256, 256)).astype(np.float32) + value,
        "step": np.float32(value),
    }


@contextlib.contextmanager
def _unwritable(path: epath.Path):
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        undo = ["chmod", "755", str(path)]
    else:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"running as root and chattr +i failed here ({done.stderr.strip()}): no way to deny a write")
        undo = ["chattr", "-i", str(path)]
    try:
        yield
    finally:
        subprocess.run(undo, check=True)


@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def _settled_thread_count(baseline: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return threading.active_count()


def test_an_unwritable_folder_is_refused_before_training_and_a_save_into_it_fails_at_once(tmp_path):
    directory = epath.Path(tmp_path) / "checkpoints"
    mngr = checkpoint.manager(directory)
    checkpoint.save(mngr, 1, _state(1))
    baseline = threading.active_count()
    with _unwritable(directory):
        with pytest.raises(checkpoint.CheckpointError, match=r"cannot write checkpoints to .*checkpoints"):
            checkpoint.check_writable(directory)
        start = time.monotonic()
        with pytest.raises(
            checkpoint.CheckpointError, match=r"saving step 2 to .* failed .*the last complete checkpoint is step 1"
        ):
            checkpoint.save(mngr, 2, _state(2))
        # Orbax's background saves hung here for 300 s in helper threads waiting for signals.
        assert time.monotonic() - start < 10
    assert _settled_thread_count(baseline) <= baseline
    assert mngr.all_steps() == [1]
    checkpoint.check_writable(directory)  # writable again: passes and leaves nothing behind
    assert sorted(p.name for p in directory.iterdir()) == ["1"]


def test_a_save_that_runs_out_of_space_fails_at_that_save_and_leaves_no_temporary(tmp_path):
    directory = epath.Path(tmp_path) / "checkpoints"
    mngr = checkpoint.manager(directory)
    checkpoint.save(mngr, 1, _state(1))
    with _file_size_limit(16 * 1024):  # the state's data file is 256 KiB
        with pytest.raises(checkpoint.CheckpointError, match=r"saving step 2 .*last complete checkpoint is step 1"):
            checkpoint.save(mngr, 2, _state(2))
    assert sorted(p.name for p in directory.iterdir()) == ["1"]  # no *.orbax-checkpoint-tmp left
    restored = checkpoint.restore_latest(checkpoint.manager(directory), _state(0))
    chex.assert_trees_all_equal(restored, _state(1))
    checkpoint.save(mngr, 2, _state(2))  # space again: the same step saves
    assert mngr.all_steps() == [1, 2]


def test_keep_retains_the_newest_steps(tmp_path):
    mngr = checkpoint.manager(epath.Path(tmp_path), keep=2)
    for step in range(1, 6):
        checkpoint.save(mngr, step, _state(step))
    assert mngr.all_steps() == [4, 5]
    chex.assert_trees_all_equal(checkpoint.restore_latest(mngr, _state(0)), _state(5))


def test_a_read_only_manager_creates_nothing(tmp_path):
    directory = epath.Path(tmp_path) / "absent" / "checkpoints"
    assert checkpoint.restore_latest(checkpoint.manager(directory, create=False), _state(0)) is None
    assert not (epath.Path(tmp_path) / "absent").exists()
