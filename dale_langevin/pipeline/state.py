"""The train states and the pure steps, built from a config: training (M-DSM + Adam + EMA) and distillation (DMD).

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

from dale_langevin import distillation
from dale_langevin.losses import DEFAULT_PARAMETRISATION, Parametrisation, dsm_loss, network_score_fn
from dale_langevin.nets import conditioning_dtype
from dale_langevin.pipeline import checkpoint, config as config_lib, data, parallel, workdir as wd_lib
from dale_langevin.pipeline.workdir import Workdir
from dale_langevin.samplers import few_step
from dale_langevin.samplers.ode import denoised_log


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


class DistillState(flax.struct.PyTreeNode):
    """A distillation run's state (:mod:`dale_langevin.distillation`): the student (``params``, its EMA
    ``ema_params``, ``opt_state``), the online fake-score network (``fake_params``, ``fake_opt_state``),
    ``step`` and ``rng`` (raw uint32 key data). ``ema_params`` is what sampling restores, as for a
    :class:`TrainState`."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    fake_params: Any
    fake_opt_state: Any
    rng: jax.Array


def create_distill_state(rng: jax.Array, teacher_params, tx, fake_tx) -> DistillState:
    """The student, its EMA and the fake-score network all start at ``teacher_params``."""
    return DistillState(
        step=jnp.asarray(0, jnp.int32),
        params=teacher_params,
        ema_params=teacher_params,
        opt_state=tx.init(teacher_params),
        fake_params=teacher_params,
        fake_opt_state=fake_tx.init(teacher_params),
        rng=jax.random.key_data(rng),
    )


def make_distill_step(
    model,
    process,
    tx,
    fake_tx,
    *,
    ts: jax.Array,
    batch: int,
    image_shape: tuple[int, int, int],
    t_min: float,
    t_max: float,
    fake_updates: int,
    loss: dict,
    ema: float,
    ema_warmup: bool,
    parametrisation: Parametrisation = DEFAULT_PARAMETRISATION,
) -> Callable:
    """Returns the per-device DMD step ``(state, teacher_params, prior) -> (state, metrics)`` to be pmapped.

    Each device draws ``batch`` starts ``x_T`` from ``prior`` (a pytree, e.g. the per-pixel log-normal
    fit) and a student step ``i`` per example, runs the student's sampler to ``t_i`` without gradients
    (:func:`dale_langevin.distillation.student_inputs` over the times ``ts`` ``(n,)``), takes the student's
    sample ``y0`` there and updates the student along :func:`dale_langevin.distillation.dmd_loss`; then
    ``fake_updates`` M-DSM steps (``loss``: the keywords of :func:`dale_langevin.losses.dsm_loss`) fit
    the fake score to ``exp(y0)``. Gradients are averaged over devices. Networks run with
    ``train=False`` (no dropout). Metrics: dmd_loss, direction_norm, fake_loss, grad_norm,
    fake_grad_norm, log_x0_mean and log_x0_std of the student's samples.
    """

    def score_fn(params):
        return network_score_fn(lambda inp, c: model.apply(params, inp, c, train=False), process, parametrisation)

    def distill_step(state: DistillState, teacher_params, prior) -> tuple[DistillState, dict]:
        key = parallel.device_rng(jax.random.wrap_key_data(state.rng), state.step)
        start_key, index_key, chain_key, dmd_key, fake_key = jax.random.split(key, 5)
        x_T = prior.sample(start_key, (batch, *image_shape))
        index = jax.random.randint(index_key, (batch,), 0, ts.shape[0])
        y_in, t_in = distillation.student_inputs(chain_key, x_T, ts, score_fn(state.params), process, index)

        def student_loss(params):
            y0 = denoised_log(y_in, t_in, score_fn(params), process)
            value, aux = distillation.dmd_loss(
                dmd_key, y0, process, score_fn(teacher_params), score_fn(state.fake_params), t_min=t_min, t_max=t_max
            )
            return value, (y0, aux)

        (g_loss, (y0, aux)), grads = jax.value_and_grad(student_loss, has_aux=True)(state.params)
        g_loss, grads = parallel.pmean((g_loss, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema_params = optax.incremental_update(params, state.ema_params, 1.0 - ema_decay(state.step, ema, ema_warmup))

        x0 = jnp.exp(jax.lax.stop_gradient(y0))
        fake_params, fake_opt_state = state.fake_params, state.fake_opt_state
        for j in range(fake_updates):
            keys = parallel.example_keys(jax.random.fold_in(fake_key, j), state.step, batch)
            f_loss, f_grads = jax.value_and_grad(lambda p, k=keys: dsm_loss(k, score_fn(p), x0, process, **loss))(
                fake_params
            )
            f_loss, f_grads = parallel.pmean((f_loss, f_grads))
            f_updates, fake_opt_state = fake_tx.update(f_grads, fake_opt_state, fake_params)
            fake_params = optax.apply_updates(fake_params, f_updates)
        metrics = dict(
            dmd_loss=g_loss,
            direction_norm=parallel.pmean(aux["direction_norm"]),
            fake_loss=f_loss,
            grad_norm=optax.tree.norm(grads),
            fake_grad_norm=optax.tree.norm(f_grads),
            log_x0_mean=parallel.pmean(jnp.mean(y0)),
            log_x0_std=parallel.pmean(jnp.std(y0)),
        )
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            ema_params=ema_params,
            opt_state=opt_state,
            fake_params=fake_params,
            fake_opt_state=fake_opt_state,
        )
        return new_state, metrics

    return distill_step


def build_distill(config, teacher_params, rng: jax.Array | None = None):
    """Process, model, the pure distillation step and the initial :class:`DistillState` from a validated student config.

    The student's times are those of its sampler, ``config.sampling.renoise``
    (:func:`dale_langevin.samplers.few_step.renoise_times`); its optimisers are :func:`make_optimizer`'s
    Adam at ``distill.lr`` and ``distill.fake_lr`` (optim's betas, eps and clipping, no warm-up).
    """
    process, model = config_lib.make_process(config), config_lib.make_model(config)
    d, o = config.distill, config.optim
    tx, _ = make_optimizer(d.lr, 0, o.grad_clip, o.beta1, o.beta2, o.eps)
    fake_tx, _ = make_optimizer(d.fake_lr, 0, o.grad_clip, o.beta1, o.beta2, o.eps)
    r = config.sampling.renoise
    step = make_distill_step(
        model,
        process,
        tx,
        fake_tx,
        ts=few_step.renoise_times(process, r.n_steps, r.t_end, r.rho),
        batch=parallel.per_device_batch(d.batch_size, "config.distill.batch_size"),
        image_shape=data.get_spec(config.data.dataset).image_shape,
        t_min=d.t_min,
        t_max=d.t_max,
        fake_updates=d.fake_updates,
        loss=config_lib.loss_settings(config),
        ema=d.ema,
        ema_warmup=config.ema.warmup,
        parametrisation=config_lib.make_parametrisation(config),
    )
    rng = jax.random.key(config.seed) if rng is None else rng
    return process, model, step, create_distill_state(rng, teacher_params, tx, fake_tx)


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


def holds_student(config, workdir: Workdir) -> bool:
    """True if ``workdir``'s checkpoints are a distilled student's: ``config`` is a student's
    (:func:`config.is_student`) or the ``config.json`` the run wrote there is, so sampling a student needs
    no ``distill.teacher_workdir`` on the command line."""
    if config_lib.is_student(config):
        return True
    saved = wd_lib.read_json(workdir.config_json) or {}
    return bool(saved.get("distill", {}).get("teacher_workdir"))


def restore_latest(config, workdir: str | Workdir, max_step: int | None = None):
    """The latest ``TrainState`` in ``workdir.checkpoints`` (a :class:`DistillState` where the work directory
    holds a student, :func:`holds_student`), restored against its abstract shapes.

    Read-only: nothing is created in ``workdir``. A damaged newest step falls back to the previous
    one (:func:`checkpoint.restore_latest`); ``max_step`` takes the newest at or before that step. Raises
    ``FileNotFoundError`` when there is no such checkpoint.
    """
    workdir = Workdir.of(workdir)
    mngr = checkpoint.manager(workdir.checkpoints, config.training.keep_checkpoints, create=False)
    if mngr.latest_step() is None:
        raise FileNotFoundError(f"no checkpoint in {workdir.checkpoints}: train first (--mode=train)")
    like = jax.eval_shape(lambda: build(config)[3])  # shapes only: no parameter initialisation
    if holds_student(config, workdir):  # a distillation run: the student's DistillState
        like = jax.eval_shape(lambda: build_distill(config, like.params)[3])
    restored = checkpoint.restore_latest(mngr, like, max_step=max_step)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint at or before step {max_step} in {workdir.checkpoints}")
    return restored
