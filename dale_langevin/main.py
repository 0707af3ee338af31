"""Entry point: ``python -m dale_langevin.main --config=configs/<set>.py --workdir=DIR [--mode=train|sample|eval|ablate]``.

Parses flags, asks for one host device per CPU core (so pmap uses every core on a CPU-only host)
and for a host allocator that reuses XLA's per-step buffers (``config.host_allocator``),
initialises multi-host JAX when asked, and hands over to :func:`run`. Any config field can be
overridden: ``--config.training.n_iters=2000``.

Exit status: 0 when the mode finished; 143 (what a SIGTERM'd process reports) when training was
preempted by a SIGTERM after saving the step it was at (rerun the same command to continue); 1 on
an error, with its message (a failed checkpoint save among them, at the save that failed).
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from dale_langevin.cpu import hostmem
from dale_langevin.pipeline import parallel

MODES = ("train", "sample", "eval", "ablate")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples (local or gs://).")
_MODE = flags.DEFINE_enum(
    "mode",
    "train",
    list(MODES),
    "train (resumes if WORKDIR has a checkpoint, then samples), sample, eval (offline metrics), "
    "or ablate (the config's ablation grid: trainings, rows, tables).",
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() (TPU pod slices, multi-node GPU)."
)
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str, mode: str = "train"):
    """Runs ``mode`` on ``config`` in ``workdir``: what ``main`` does after its set-up; tests call it directly.

    ``train`` trains (or resumes) and then samples; ``sample`` writes ``samples.npz``/``.png``;
    ``eval`` writes ``eval.json``/``.md``; ``ablate`` runs ``config.ablation``'s grid. Returns that step's result.
    """
    from dale_langevin.evaluation import ablations, evaluate
    from dale_langevin.pipeline import generate, train

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "ablate":
        return ablations.run(config, workdir)
    if mode == "eval":
        return evaluate.evaluate(config, workdir)
    if mode == "train":
        train.train_and_evaluate(config, workdir)
        if parallel.is_chief():
            print("Training done; sampling with the EMA parameters.", flush=True)
    return generate.sample_and_save(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    # Both before JAX starts its backends.
    parallel.force_host_devices(config.host_device_count)
    allocator = hostmem.configure(config.host_allocator)

    import jax

    if _MULTIHOST.value:
        jax.distributed.initialize()
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
