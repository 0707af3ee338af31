"""Training: the pure train step (M-DSM + Adam + EMA) and the loop at the edge (data, logs, checkpoints).

``train_and_evaluate(config, workdir)`` is what ``main --mode=train`` calls and what the tests
call directly. The step itself is a pure function of ``(state, batch)``; pmap is applied in
:mod:`dale_langevin.parallel`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dale_langevin import checkpoint, config as config_lib, data, parallel, sampling
from dale_langevin.losses import dsm_loss, network_score_fn


class TrainState(flax.struct.PyTreeNode):
    """Everything a run needs to continue: a pytree of arrays (``rng`` is raw uint32 key data)."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array


def make_optimizer(lr: float, warmup_steps: int, grad_clip: float, beta1: float, beta2: float, eps: float):
    """Adam with linear warm-up to ``lr`` and global-norm clipping (0 disables); returns ``(tx, schedule)``.

    ``schedule(n) = lr * min(1, (n + 1) / warmup_steps)``: the first update (optax count 0) already moves.
    """
    warmup = max(warmup_steps, 1)
    schedule = optax.schedules.linear_schedule(lr / warmup, lr, warmup - 1) if warmup > 1 else optax.constant_schedule(lr)
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    return optax.chain(*parts, optax.adam(schedule, b1=beta1, b2=beta2, eps=eps)), schedule


def ema_decay(step: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """EMA decay at ``step``: ``min(decay, (1 + n) / (10 + n))`` with warm-up, else ``decay``."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    n = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def create_train_state(rng: jax.Array, model, tx, image_shape: tuple[int, int, int]) -> TrainState:
    """Initial state for a model on images of ``image_shape`` ``(H, W, C)``; EMA starts at the params."""
    init_rng, state_rng = jax.random.split(rng)
    params = model.init(init_rng, jnp.zeros((1, *image_shape)), jnp.zeros((1,)), train=False)
    return TrainState(
        step=jnp.asarray(0, jnp.int32), params=params, ema_params=params, opt_state=tx.init(params),
        rng=jax.random.key_data(state_rng),
    )


def make_train_step(model, process, tx, schedule: Callable, *, weighting: str, t_sampling: str, n_time_levels: int,
                    t_min: float, ema: float, ema_warmup: bool) -> Callable:
    """Returns the per-device step ``(state, batch) -> (state, metrics)`` to be pmapped over ``parallel.AXIS``.

    ``batch["images"]`` is ``(per_device_batch, H, W, C)`` in the process domain. Gradients and the
    loss are averaged over devices. Each example draws its ``t`` and noise from a key folded with
    the step and its global batch index (so the update does not depend on the device count);
    dropout uses ``fold_in(fold_in(key, device), step)``. Metrics: loss, grad_norm, param_norm, lr.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        loss_key, dropout_key = jax.random.split(jax.random.wrap_key_data(state.rng))
        example_keys = parallel.example_keys(loss_key, state.step, batch["images"].shape[0])
        dropout_rng = parallel.device_rng(dropout_key, state.step)

        def loss_fn(params):
            net = lambda inp, level: model.apply(params, inp, level, train=True, rngs={"dropout": dropout_rng})  # noqa: E731
            return dsm_loss(example_keys, network_score_fn(net, process), batch["images"], process, weighting=weighting,
                            t_sampling=t_sampling, n_steps=n_time_levels, t_min=t_min)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        loss, grads = parallel.pmean((loss, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay(state.step, ema, ema_warmup))
        metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params),
                       lr=schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def build(config, rng: jax.Array | None = None):
    """Process, model, optimiser, pure train step and initial state from a validated config."""
    process = config_lib.make_process(config)
    model = config_lib.make_model(config)
    o = config.optim
    tx, schedule = make_optimizer(o.lr, o.warmup_steps, o.grad_clip, o.beta1, o.beta2, o.eps)
    t = config.training
    step = make_train_step(model, process, tx, schedule, weighting=t.weighting, t_sampling=t.t_sampling,
                           n_time_levels=t.n_time_levels, t_min=t.t_min, ema=config.ema.decay,
                           ema_warmup=config.ema.warmup)
    rng = jax.random.key(config.seed) if rng is None else rng
    state = create_train_state(rng, model, tx, data.get_spec(config.data.dataset).image_shape)
    return process, model, step, state


class _Logger:
    """TensorBoard scalars, ``metrics.jsonl`` (one JSON object per log step) and a progress bar; process 0 only."""

    def __init__(self, workdir: str, total: int, start: int, enabled: bool):
        self.enabled = enabled
        self.writer = self.bar = self.jsonl = None
        if enabled:
            from flax.metrics import tensorboard  # imports TensorFlow: keep it off the import path
            from tqdm import tqdm

            self.writer = tensorboard.SummaryWriter(os.path.join(workdir, "tensorboard"))
            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
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
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "images_per_sec")})

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            self.bar.close()


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains (or resumes) the run in ``workdir``; returns the last logged metrics and throughput.

    Writes ``config.json``, ``start_stats.npz`` (priors and class means), ``checkpoints/``,
    ``tensorboard/``, ``metrics.jsonl`` and ``samples/step_*.png`` (every ``training.sample_every`` steps).
    A non-finite loss or parameter norm stops the run with ``FloatingPointError``; the last
    checkpoint, written before it, stays the latest.
    """
    config_lib.validate(config)
    chief = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if chief:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            json.dump(config.to_dict(), f, indent=2, default=str)

    process, model, step_fn, state = build(config)
    t = config.training
    mngr = checkpoint.manager(workdir, t.keep_checkpoints)
    restored = checkpoint.restore_latest(mngr, state)
    if restored is not None:
        state = restored
    start = int(state.step)
    stats = sampling.start_stats(config, process, workdir, write=chief)

    batches = data.train_iterator(
        config.data.dataset, global_batch=t.batch_size, n_local_devices=parallel.local_device_count(),
        encode=process.encode, seed=config.seed, data_dir=config.data.data_dir, download=config.data.download,
        shuffle_buffer=config.data.shuffle_buffer,
    )
    for _ in range(start):  # resume at the same place in the data stream (same trajectory)
        next(batches)

    p_step = parallel.pmap(step_fn, donate_argnums=(0,))
    rstate = parallel.replicate(state)
    logger = _Logger(workdir, t.n_iters, start, chief)
    if chief:
        print(f"{'Resuming at' if start else 'Starting'} step {start}/{t.n_iters}: {config.data.dataset}, "
              f"{config.process.name}, {jax.device_count()} {jax.default_backend()} device(s), "
              f"{sum(x.size for x in jax.tree.leaves(state.params)):,} parameters, workdir {workdir}", flush=True)
    last, tick, tick_step = {}, time.perf_counter(), start
    try:
        for step in range(start + 1, t.n_iters + 1):
            rstate, metrics = p_step(rstate, parallel.shard(next(batches)))
            logger.advance()
            at_log, at_ckpt = step % t.log_every == 0 or step == t.n_iters, step % t.ckpt_every == 0 or step == t.n_iters
            if at_log or at_ckpt:
                values = {k: float(v) for k, v in parallel.unreplicate(metrics).items()}  # the only host sync
                if not all(np.isfinite(v) for v in values.values()):
                    raise FloatingPointError(
                        f"non-finite training metrics at step {step}: {values}. The last good checkpoint is step "
                        f"{mngr.latest_step()} in {workdir}/checkpoints; lower optim.lr or check the data.")
                now = time.perf_counter()
                values["images_per_sec"] = (step - tick_step) * t.batch_size / (now - tick)
                tick, tick_step, last = now, step, values
                if at_log:
                    logger.scalars(step, values)
            if at_ckpt:
                checkpoint.save(mngr, step, parallel.unreplicate(rstate))
            if t.sample_every and step % t.sample_every == 0:
                sampling.write_grid(config, process, model, parallel.unreplicate(rstate).ema_params, stats,
                                    os.path.join(workdir, "samples", f"step_{step:07d}.png"),
                                    n_steps=t.sample_grid_steps, write=chief)
    finally:
        mngr.wait_until_finished()
        logger.close()
    return last
