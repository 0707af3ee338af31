"""Entry point: ``python -m dale_langevin.main --config=configs/<set>.py --workdir=DIR [--mode=train|sample|eval]``.

Parses flags, asks for one host device per CPU core (so pmap uses every core on a CPU-only host)
and for a host allocator that reuses XLA's per-step buffers (``config.host_allocator``),
initialises multi-host JAX when asked, and hands over to ``train.train_and_evaluate`` (then
samples), ``sampling.sample_and_save`` or ``evaluation.evaluate``. Any config field can be
overridden: ``--config.training.n_iters=2000``.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from dale_langevin import hostmem, parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples (local or gs://).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval"],
                          "train (resumes if WORKDIR has a checkpoint, then samples), sample, or eval (offline metrics).")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() (TPU pod slices, multi-node GPU).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    # Both before JAX starts its backends.
    parallel.force_host_devices(config.host_device_count)
    allocator = hostmem.configure(config.host_allocator)

    import jax  # noqa: E402  (after the device flag)

    from dale_langevin import evaluation, sampling, train

    if _MULTIHOST.value:
        jax.distributed.initialize()
    if jax.process_index() == 0:
        print(f"Host allocator: {allocator['mode']} ({'applied' if allocator['applied'] else 'not applied'}: "
              f"{allocator['reason']})", flush=True)
    if _MODE.value == "eval":
        evaluation.evaluate(config, _WORKDIR.value)
        return
    if _MODE.value == "train":
        train.train_and_evaluate(config, _WORKDIR.value)
        if jax.process_index() == 0:
            print("Training done; sampling with the EMA parameters.", flush=True)
    sampling.sample_and_save(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
