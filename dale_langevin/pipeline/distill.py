"""The distillation loop at the edge (``--mode=distill``): teacher, student state, the pmapped DMD step, logs, checkpoints.

``distill(config, workdir)`` distils the trained run in ``config.distill.teacher_workdir`` into a
few-step student in ``workdir`` (:mod:`dale_langevin.distillation` for the method, :func:`.state.make_distill_step`
for the step). The student's work directory has the layout of a training run's, so ``--mode=sample``
and ``--mode=eval`` with the same config draw from the student (sampler ``renoise``). It needs no data:
the student is trained from prior draws and the teacher's score alone; the prior fit
(``start_stats.npz``) is the teacher's, copied.
"""

from __future__ import annotations

import contextlib
import time

import jax

from dale_langevin.pipeline import (
    checkpoint,
    config as config_lib,
    generate,
    parallel,
    preemption,
    state as state_lib,
    train,
    workdir as wd_lib,
)
from dale_langevin.pipeline.workdir import Workdir

POSTFIX = ("dmd_loss", "fake_loss", "images_per_sec")


def teacher_config(config):
    """The teacher's config: ``config`` with ``distill.teacher_workdir`` cleared (a training run's config)."""
    teacher = config.copy_and_resolve_references()
    with teacher.unlocked():
        teacher.distill.teacher_workdir = ""
    return teacher


def distill(config, workdir: str | Workdir) -> dict:
    """Distils ``config.distill.teacher_workdir``'s latest EMA parameters into a student in ``workdir``; returns the
    last logged metrics.

    Writes ``config.json``, ``start_stats.npz`` (the teacher's prior fit), ``checkpoints/``
    (:class:`.state.DistillState`), ``tensorboard/``, ``metrics.jsonl`` and, every ``distill.sample_every``
    steps, ``samples/step_*.png`` of the student's EMA. Resumes from the latest checkpoint (refusing a
    config that changes the trajectory, as training does); a non-finite metric stops the run with
    ``FloatingPointError``; SIGTERM saves and raises :class:`preemption.Preempted`.
    """
    config_lib.validate(config)
    if not config_lib.is_student(config):
        raise ValueError(
            "--mode=distill needs config.distill.teacher_workdir: the trained run to distil "
            "(e.g. --config.distill.teacher_workdir=/tmp/dale_demo)"
        )
    wd, teacher_wd = Workdir.of(workdir), Workdir.of(config.distill.teacher_workdir)
    if str(wd).rstrip("/") == str(teacher_wd).rstrip("/"):
        raise ValueError(f"the student's --workdir must differ from distill.teacher_workdir ({teacher_wd})")
    chief = parallel.is_chief()
    wd.makedirs()
    teacher_cfg = teacher_config(config)
    teacher = state_lib.restore_latest(teacher_cfg, teacher_wd)  # FileNotFoundError names the missing checkpoint
    process, model, step_fn, state = state_lib.build_distill(config, teacher.ema_params)
    d = config.distill
    if chief:
        checkpoint.check_writable(wd.checkpoints)
    mngr = checkpoint.manager(wd.checkpoints, config.training.keep_checkpoints)
    if mngr.latest_step() is not None:
        train.check_resume(config, wd)
    restored = checkpoint.restore_latest(mngr, state, quarantine=chief)
    if restored is not None:
        state = restored
    start = int(state.step)
    stats = generate.start_stats(teacher_cfg, process, teacher_wd, write=False)
    if chief:
        wd_lib.write_json(wd.config_json, config.to_dict())
        wd_lib.keep_jsonl(wd.metrics_jsonl, lambda row: row.get("step", 0) <= start)
        wd_lib.save_npz(wd.start_stats, **{k: stats[k] for k in generate.STATS_KEYS})
    prior = generate.start_prior(process, stats, config.sampling.start)

    p_step = parallel.pmap(step_fn, donate_argnums=(0,))
    rstate, rteacher, rprior = (
        parallel.replicate(state),
        parallel.replicate(teacher.ema_params),
        parallel.replicate(prior),
    )
    logger = train.ProgressLogger(wd, d.n_iters, start, chief, postfix=POSTFIX)
    r = config.sampling.renoise
    if chief:
        print(
            f"{'Resuming' if start else 'Starting'} distillation at step {start}/{d.n_iters}: teacher "
            f"{teacher_wd} (step {int(teacher.step)}), a {r.n_steps}-step student (renoise, rho {r.rho}), "
            f"batch {d.batch_size}, {jax.device_count()} {jax.default_backend()} device(s), workdir {wd}",
            flush=True,
        )
    last, tick, tick_step = {}, time.perf_counter(), start
    with preemption.Watch() as watch, contextlib.closing(logger):
        for step in range(start + 1, d.n_iters + 1):
            rstate, metrics = p_step(rstate, rteacher, rprior)
            logger.advance()
            stop = watch.reached(step)
            at_log = step % d.log_every == 0 or step == d.n_iters
            at_ckpt = step % d.ckpt_every == 0 or step == d.n_iters or stop
            if at_log or at_ckpt:
                values = train.finite_metrics(
                    metrics, step, mngr, "distillation", "lower distill.lr or distill.fake_lr"
                )
                now = time.perf_counter()
                values["images_per_sec"] = (step - tick_step) * d.batch_size / (now - tick)
                tick, tick_step, last = now, step, values
                if at_log:
                    logger.scalars(step, values)
            if at_ckpt:
                checkpoint.save(mngr, step, parallel.unreplicate(rstate))
            if stop:
                raise preemption.Preempted(step, wd.checkpoints)
            if d.sample_every and step % d.sample_every == 0:
                generate.write_grid(
                    config, process, model, parallel.unreplicate(rstate).ema_params, stats, wd.grid(step), write=chief
                )
    return last
