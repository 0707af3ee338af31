"""Entry point: ``python -m dale_langevin.main --config=configs/<set>.py --workdir=DIR [--mode=train|sample|eval|ablate|distill]``.

Parses flags, asks for one host device per CPU core (so pmap uses every core on a CPU-only host)
and for a host allocator that reuses XLA's per-step buffers (``config.host_allocator``),
joins a multi-process run when asked (``--multihost``, with ``--coordinator_address``,
``--num_processes`` and ``--process_id`` where the cluster is not auto-detected:
:func:`parallel.initialize`), and hands over to :func:`run`. Any config field can be overridden:
``--config.training.n_iters=2000``.

A ``gs://`` work directory (or data directory) is reached through gcsfs and TensorStore, or, with
``STORAGE_EMULATOR_HOST=HOST:PORT`` set, through that Cloud Storage emulator (:mod:`.pipeline.storage`).

Logs: warnings and the project's own lines; ``--verbosity=0`` (or ``-v 0``) adds the libraries'
INFO lines (Orbax's checkpoint events among them).

Exit status: 0 when the mode finished; 143 (what a SIGTERM'd process reports) when training was
preempted by a SIGTERM after saving the step it was at (rerun the same command to continue); 1 on
an error, with its message (a failed checkpoint save among them, at the save that failed).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from dale_langevin.cpu import hostmem
from dale_langevin.pipeline import parallel, storage

MODES = ("train", "sample", "eval", "ablate", "distill")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples (local or gs://).")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    list(MODES),
    "train (resumes if WORKDIR has a checkpoint, then samples), sample, eval (offline metrics), "
    "ablate (the config's ablation grid: trainings, rows, tables), or distill (a few-step student of "
    "config.distill.teacher_workdir's model in WORKDIR, then samples).",
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Run as one of several JAX processes (jax.distributed.initialize): auto-detected on TPU pod slices "
    "and SLURM; elsewhere give --coordinator_address, --num_processes and --process_id.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "With --multihost: HOST:PORT of process 0's coordinator (local/GPU clusters)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --multihost: the number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --multihost: this process's index, 0 .. N-1.")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str = "train"):
    """Runs ``mode`` on ``config`` in ``workdir``: what ``main`` does after its set-up; tests call it directly.

    ``train`` trains (or resumes) and then samples; ``distill`` distils ``config.distill.teacher_workdir``
    into a student in ``workdir`` (or resumes) and then samples; ``sample`` writes ``samples.npz``/``.png``;
    ``eval`` writes ``eval.json``/``.md``; ``ablate`` runs ``config.ablation``'s grid. Returns that step's result.
    """
    from dale_langevin.evaluation import ablations, evaluate
    from dale_langevin.pipeline import distill, generate, train

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "ablate":
        return ablations.run(config, workdir, log=parallel.chief_print)
    if mode == "eval":
        return evaluate.evaluate(config, workdir, log=parallel.chief_print)
    if mode == "train":
        train.train_and_evaluate(config, workdir)
        if parallel.is_chief():
            print("Training done; sampling with the EMA parameters.", flush=True)
    if mode == "distill":
        distill.distill(config, workdir)
        if parallel.is_chief():
            print("Distillation done; sampling with the student's EMA parameters.", flush=True)
    return generate.sample_and_save(config, workdir)


def quiet() -> None:
    """Warnings and the project's own lines only, unless ``--verbosity`` (``-v``) was given.

    absl turns an unset ``--verbosity`` into INFO, at which Orbax alone logs over a hundred lines a
    run; TensorFlow's C++ INFO lines are dropped too (``TF_CPP_MIN_LOG_LEVEL``, unless set), all but
    its oneDNN notice, which it prints before its logging starts.
    """
    if flags.FLAGS["verbosity"].present:
        return
    logging.set_verbosity(logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    quiet()
    storage.configure()  # before any gs:// access (STORAGE_EMULATOR_HOST: the emulator's endpoint)
    # Both before JAX starts its backends.
    parallel.force_host_devices(config.host_device_count)
    allocator = hostmem.configure(config.host_allocator)

    cluster = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _MULTIHOST.value:
        parallel.initialize(*cluster)
    elif any(v is not None for v in cluster):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id need --multihost")
    if parallel.is_chief():
        print(
            f"Host allocator: {allocator['mode']} ({'applied' if allocator['applied'] else 'not applied'}: "
            f"{allocator['reason']})",
            flush=True,
        )
    from dale_langevin.pipeline import preemption

    try:
        run(config, _WORKDIR.value, _MODE.value)
    except preemption.Preempted as e:
        if parallel.is_chief():
            print(str(e), flush=True)
        sys.exit(preemption.EXIT_CODE)


if __name__ == "__main__":
    app.run(main)
