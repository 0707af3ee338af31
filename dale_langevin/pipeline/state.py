"""The train state and the pure train step (M-DSM + Adam + EMA), built from a config.

The step is a pure function of ``(state, batch)`` written against :mod:`.parallel`'s axis name; the
loop that drives it (:mod:`.train`), the sampler pipeline (:mod:`.generate`) and the benchmarks
build it here. pmap is applied in :mod:`.parallel`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dale_langevin.losses import DEFAULT_PARAMETRISATION, Parametrisation, dsm_loss, network_score_fn
from dale_langevin.nets import conditioning_dtype
from dale_langevin.pipeline import checkpoint, config as config_lib, data, parallel
from dale_langevin.pipeline.workdir import Workdir


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
    schedule = (
        optax.schedules.linear_schedule(lr / warmup, lr, warmup - 1) if warmup > 1 else optax.constant_schedule(lr)
    )
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
    cond = jnp.zeros((1,), conditioning_dtype(model))
    params = model.init(init_rng, jnp.zeros((1, *image_shape)), cond, train=False)
    return TrainState(
        step=jnp.asarray(0, jnp.int32),
        params=params,
        ema_params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(state_rng),
    )


def make_train_step(
    model,
    process,
    tx,
    schedule: Callable,
    *,
    weighting: str,
    t_sampling: str,
    n_time_levels: int,
    t_min: float,
    ema: float,
    ema_warmup: bool,
    parametrisation: Parametrisation = DEFAULT_PARAMETRISATION,
) -> Callable:
    """Returns the per-device step ``(state, batch) -> (state, metrics)`` to be pmapped over ``parallel.AXIS``.

    ``batch["images"]`` is ``(per_device_batch, H, W, C)`` in the process domain. Gradients and the
    loss are averaged over devices. Each example draws its ``t`` and noise from a key folded with
    the step and its global batch index (so the update does not depend on the device count);
    dropout uses ``fold_in(fold_in(key, device), step)``. ``parametrisation`` turns the network's
    output into the score (:func:`dale_langevin.losses.network_score_fn`). Metrics: loss, grad_norm, param_norm, lr.
    """

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        loss_key, dropout_key = jax.random.split(jax.random.wrap_key_data(state.rng))
        example_keys = parallel.example_keys(loss_key, state.step, batch["images"].shape[0])
        dropout_rng = parallel.device_rng(dropout_key, state.step)

        def loss_fn(params):
            net = lambda inp, level: model.apply(params, inp, level, train=True, rngs={"dropout": dropout_rng})
            return dsm_loss(
                example_keys,
                network_score_fn(net, process, parametrisation),
                batch["images"],
                process,
                weighting=weighting,
                t_sampling=t_sampling,
                n_time_levels=n_time_levels,
                t_min=t_min,
            )

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        loss, grads = parallel.pmean((loss, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay(state.step, ema, ema_warmup))
        metrics = dict(
            loss=loss, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params), lr=schedule(state.step)
        )
        new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def build(config, rng: jax.Array | None = None, model=None):
    """Process, model, optimiser, pure train step and initial state from a validated config.

    ``model`` replaces :func:`config.make_model`'s (the benchmarks time other convolutions this way).
    """
    process = config_lib.make_process(config)
    model = config_lib.make_model(config) if model is None else model
    o = config.optim
    tx, schedule = make_optimizer(o.lr, o.warmup_steps, o.grad_clip, o.beta1, o.beta2, o.eps)
    step = make_train_step(
        model,
        process,
        tx,
        schedule,
        **config_lib.loss_settings(config),
        ema=config.ema.decay,
        ema_warmup=config.ema.warmup,
        parametrisation=config_lib.make_parametrisation(config),
    )
    rng = jax.random.key(config.seed) if rng is None else rng
    state = create_train_state(rng, model, tx, data.get_spec(config.data.dataset).image_shape)
    return process, model, step, state


def restore_latest(config, workdir: str | Workdir):
    """The latest ``TrainState`` in ``workdir.checkpoints``, restored against its abstract shapes.

    Read-only: nothing is created in ``workdir``. A damaged newest step falls back to the previous
    one (:func:`checkpoint.restore_latest`). Raises ``FileNotFoundError`` when there is no checkpoint.
    """
    workdir = Workdir.of(workdir)
    mngr = checkpoint.manager(workdir.checkpoints, config.training.keep_checkpoints, create=False)
    if mngr.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {workdir.checkpoints}: train first (--mode=train)")
    like = jax.eval_shape(lambda: build(config)[3])  # shapes only: no parameter initialisation
    return checkpoint.restore_latest(mngr, like)
