"""The training loop at the edge: data, the pmapped step, logs, checkpoints, periodic sample grids.

``train_and_evaluate(config, workdir)`` is what ``main --mode=train`` calls and what the tests
call directly. The step itself is the pure function of :mod:`.state`; pmap is applied in
:mod:`.parallel`; every file goes through :mod:`.workdir`.
"""

from __future__ import annotations

import contextlib
import time

import jax
import numpy as np

from dale_langevin import samplers
from dale_langevin.pipeline import (
    checkpoint,
    config as config_lib,
    data,
    generate,
    parallel,
    preemption,
    state as state_lib,
    workdir as wd_lib,
)
from dale_langevin.pipeline.workdir import Workdir


class ProgressLogger:
    """TensorBoard scalars, ``metrics.jsonl`` (one JSON object per log step) and a progress bar showing the
    ``postfix`` metrics; process 0 only. Training's and distillation's loops (:mod:`.distill`) log through it."""

    def __init__(
        self,
        workdir: Workdir,
        total: int,
        start: int,
        enabled: bool,
        postfix: tuple[str, ...] = ("loss", "images_per_sec"),
    ):
        self.enabled, self.postfix = enabled, postfix
        self.writer = self.bar = self.jsonl = None
        if enabled:
            from tqdm import tqdm

            self.writer = wd_lib.TensorBoardScalars(workdir.tensorboard)
            self.jsonl = wd_lib.JsonLines(workdir.metrics_jsonl)
            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, smoothing=0.1)

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.writer.scalar(k, v, step)
        self.writer.flush()
        self.jsonl.write({"step": step, **values})
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in self.postfix})

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            self.bar.close()


def finite_metrics(metrics, step: int, mngr, run: str, fix: str) -> dict[str, float]:
    """The replicated ``metrics`` as host floats (the loops' only host sync); ``FloatingPointError`` if any is
    non-finite, naming the ``run`` ("training"), the last good checkpoint in ``mngr`` and the ``fix``."""
    values = {k: float(v) for k, v in parallel.unreplicate(metrics).items()}
    if all(np.isfinite(v) for v in values.values()):
        return values
    good = mngr.latest_step()
    where = (
        f"The last good checkpoint is step {good} in {mngr.directory}"
        if good is not None
        else "No checkpoint was written before it"
    )
    raise FloatingPointError(f"non-finite {run} metrics at step {step}: {values}. {where}; {fix}.")


def check_resume(config, wd: Workdir) -> None:
    """Refuses to resume the checkpoints in ``wd`` with a config that changes their model, data stream or trajectory."""
    saved = wd_lib.read_json(wd.config_json)
    if saved is None:
        return
    differ = config_lib.resume_differences(saved, config)
    if differ and not config.training.allow_resume_changes:
        raise ValueError(
            f"{wd} holds checkpoints of a run with another config; resuming would change:\n  "
            + "\n  ".join(differ)
            + "\nUse a new --workdir, or pass --config.training.allow_resume_changes=True to resume anyway "
            "(a changed model or batch size then fails or starts another trajectory)."
        )
    if differ:
        print("Resuming with changed fields (training.allow_resume_changes=True): " + "; ".join(differ), flush=True)


def train_and_evaluate(config, workdir: str | Workdir) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the last logged metrics and throughput.

    Writes ``config.json``, ``start_stats.npz`` (priors and class means), ``checkpoints/``,
    ``tensorboard/``, ``metrics.jsonl`` and ``samples/step_*.png`` (every ``training.sample_every`` steps).
    Resuming refuses a config that changes the model, data stream or trajectory of the saved run
    (:func:`config.resume_differences`) unless ``training.allow_resume_changes``, and drops the
    ``metrics.jsonl`` lines of steps after the restored checkpoint. A non-finite loss or parameter
    norm stops the run with ``FloatingPointError``; the last checkpoint, written before it, stays
    the latest. A failed save raises :class:`checkpoint.CheckpointError` at once. On SIGTERM the
    loop saves the step it is at and raises :class:`preemption.Preempted` (every process at the
    same step); rerunning resumes there.
    """
    config_lib.validate(config)
    wd = Workdir.of(workdir)
    chief = parallel.is_chief()
    wd.makedirs()
    process, model, step_fn, state = state_lib.build(config)
    t = config.training
    if chief:
        checkpoint.check_writable(wd.checkpoints)
    mngr = checkpoint.manager(wd.checkpoints, t.keep_checkpoints)
    if mngr.latest_step() is not None:  # before restoring: a changed model would fail there with a shape error
        check_resume(config, wd)
    restored = checkpoint.restore_latest(mngr, state, quarantine=chief)
    if restored is not None:
        state = restored
    start = int(state.step)
    if chief:
        wd_lib.write_json(wd.config_json, config.to_dict())
        dropped = wd_lib.keep_jsonl(wd.metrics_jsonl, lambda row: row.get("step", 0) <= start)
        if dropped:
            print(f"Dropped {dropped} line(s) of metrics.jsonl past the restored step {start}.", flush=True)
    stats = generate.start_stats(config, process, wd, write=chief)

    batches = data.train_batches(  # starts at batch `start`: no replay of the ones before it
        config.data.dataset,
        global_batch=t.batch_size,
        encode=process.encode,
        seed=config.seed,
        start=start,
        data_dir=config.data.data_dir,
        download=config.data.download,
        read_threads=config.data.read_threads,
    )

    p_step = parallel.pmap(step_fn, donate_argnums=(0,))
    rstate = parallel.replicate(state)
    logger = ProgressLogger(wd, t.n_iters, start, chief)
    if chief:
        print(
            f"{'Resuming at' if start else 'Starting'} step {start}/{t.n_iters}: {config.data.dataset}, "
            f"{config.process.name}, {jax.device_count()} {jax.default_backend()} device(s), "
            f"{sum(x.size for x in jax.tree.leaves(state.params)):,} parameters, workdir {wd}",
            flush=True,
        )
    last, tick, tick_step = {}, time.perf_counter(), start
    with preemption.Watch() as watch, contextlib.closing(logger):
        for step in range(start + 1, t.n_iters + 1):
            rstate, metrics = p_step(rstate, parallel.shard_batch(next(batches)))
            logger.advance()
            stop = watch.reached(step)  # a SIGTERM: save this step, then stop
            at_log, at_ckpt = (
                step % t.log_every == 0 or step == t.n_iters,
                step % t.ckpt_every == 0 or step == t.n_iters or stop,
            )
            if at_log or at_ckpt:
                values = finite_metrics(metrics, step, mngr, "training", "lower optim.lr or check the data")
                now = time.perf_counter()
                values["images_per_sec"] = (step - tick_step) * t.batch_size / (now - tick)
                tick, tick_step, last = now, step, values
                if at_log:
                    logger.scalars(step, values)
            if at_ckpt:
                checkpoint.save(mngr, step, parallel.unreplicate(rstate))
            if stop:
                raise preemption.Preempted(step, wd.checkpoints)
            if t.sample_every and step % t.sample_every == 0:
                generate.write_grid(
                    config,
                    process,
                    model,
                    parallel.unreplicate(rstate).ema_params,
                    stats,
                    wd.grid(step),
                    overrides=samplers.levels(config.sampling.method, t.sample_grid_steps),
                    write=chief,
                )
    return last
