"""Sampling from a trained model: the start (prior or class averages), pmapped batches, files.

``sample_and_save(config, workdir)`` is what ``main --mode=sample`` calls: it restores the latest
EMA parameters and writes ``samples.npz`` and ``samples.png`` to the work directory.
"""

from __future__ import annotations

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin import config as config_lib, data, fast, images, ode, parallel, samplers
from dale_langevin.losses import network_score_fn
from dale_langevin.process import check_choice

STATS_FILE = "start_stats.npz"


def start_stats(config, process, workdir: str | None = None, *, write: bool = True) -> dict[str, np.ndarray]:
    """Per-pixel and scalar prior fits of ``X_T`` and per-class mean images, from the training split.

    Returns numpy arrays: ``pixel_loc``/``pixel_scale`` ``(H, W, C)``, ``scalar_loc``/``scalar_scale``
    ``()``, ``class_means`` ``(num_classes, H, W, C)`` in the process domain. Cached in
    ``workdir/start_stats.npz`` so sampling later needs no data.
    """
    path = os.path.join(workdir, STATS_FILE) if workdir else None
    if path and os.path.exists(path):
        with np.load(path) as f:
            return dict(f)
    pixels, labels = data.load_arrays(config.data.dataset, "train", data_dir=config.data.data_dir,
                                      download=config.data.download)
    x0 = np.asarray(process.encode(pixels.astype(np.float32) / 255.0))
    per_pixel, scalar = process.fit_prior(x0, per_pixel=True), process.fit_prior(x0, per_pixel=False)
    n_classes = data.get_spec(config.data.dataset).num_classes
    stats = dict(
        pixel_loc=np.asarray(per_pixel.loc), pixel_scale=np.asarray(per_pixel.scale),
        scalar_loc=np.asarray(scalar.loc), scalar_scale=np.asarray(scalar.scale),
        class_means=np.stack([x0[labels == k].mean(axis=0) for k in range(n_classes)]).astype(np.float32),
    )
    if path and write:
        np.savez(path, **stats)
    return stats


def initial_state(rng: jax.Array, process, stats: dict, start: str, n: int) -> tuple[jax.Array, np.ndarray]:
    """``n`` starting points ``x_T`` ``(n, H, W, C)`` and their class labels (``-1`` unless class-average).

    ``per_pixel``/``scalar``: the fitted prior. ``class_average``: per-class mean training images
    pushed forward to ``T`` by the exact forward kernel, classes cycling 0, 1, 2, ...
    """
    check_choice(start, config_lib.STARTS, "sampling.start")
    shape = (n, *stats["class_means"].shape[1:])
    if start == "class_average":
        labels = np.arange(n) % stats["class_means"].shape[0]
        x0 = jnp.asarray(stats["class_means"][labels])
        return process.perturb(rng, x0, jnp.full((n,), process.T)), labels
    key = "pixel" if start == "per_pixel" else "scalar"
    prior = process.prior_type(jnp.asarray(stats[f"{key}_loc"]), jnp.asarray(stats[f"{key}_scale"]))
    return prior.sample(rng, shape), np.full((n,), -1)


def sampler_settings(config, n_steps: int | None = None) -> tuple:
    """The configured sampler as a hashable ``(method, ((name, value), ...))``: what the compiled sampler depends on."""
    s = config.sampling
    n_steps = n_steps or s.n_steps
    if s.method == "ode":
        kwargs = dict(solver=s.ode_solver, n_steps=n_steps, t_end=s.ode_t_end)
    elif s.method in fast.SOLVERS:
        kwargs = dict(eta=s.eta, n_steps=n_steps, t_end=s.fast_t_end, denoise_steps=s.fast_denoise_steps)
    else:
        kwargs = config_lib.sampler_kwargs(config, n_steps)
    return s.method, tuple(sorted(kwargs.items()))


@functools.lru_cache(maxsize=32)
def _pmapped_sampler(model, process, settings: tuple):
    """``(params, rngs, x_T) -> x_0`` pmapped over local devices, built once per (model, process, settings).

    Cached so that repeated :func:`generate` calls (periodic grids in training, notebooks, the
    ablation runner) reuse one compiled sampler instead of tracing and compiling it again.
    """
    method, kwargs = settings[0], dict(settings[1])

    def device_sample(params, rng, x_T):
        net = lambda inp, level: model.apply(params, inp, level, train=False)  # noqa: E731
        score = network_score_fn(net, process)
        if method == "ode":
            return ode.ode_sample(score, x_T, process, **kwargs)
        if method in fast.SOLVERS:
            return fast.SAMPLERS[method](rng, score, x_T, process, **kwargs)
        return samplers.sample(rng, score, x_T, process, **kwargs)

    return parallel.pmap(device_sample)


def generate(config, process, model, params, stats: dict, rng: jax.Array, n: int, n_steps: int | None = None):
    """Draws ``n`` images with the configured sampler, pmapped over local devices in batches.

    Returns ``(images, raw, labels)``: images in [0, 1] ``(n, H, W, C)``, the sampler's raw output
    in the process domain, and the start labels.
    """
    n_dev = parallel.local_device_count()
    batch = config.sampling.batch_size
    p_sample = _pmapped_sampler(model, process, sampler_settings(config, n_steps))
    rparams = parallel.replicate(params)
    raws, labels = [], []
    for b in range(math.ceil(n / batch)):
        start_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, b))
        x_T, lab = initial_state(start_rng, process, stats, config.sampling.start, batch)
        x_T = x_T.reshape(n_dev, batch // n_dev, *x_T.shape[1:])
        out = p_sample(rparams, jax.random.split(noise_rng, n_dev), parallel.shard(x_T))
        raws.append(np.asarray(out).reshape(batch, *out.shape[2:]))
        labels.append(lab)
    raw = np.concatenate(raws)[:n]
    return np.asarray(process.decode(raw)), raw, np.concatenate(labels)[:n]


def network_evaluations(config, n_steps: int | None = None) -> int:
    """Score evaluations per sample: ``n_steps * n_inner + denoise_steps`` (SDE), ``n_steps + fast_denoise_steps`` (ddim, dpm2m) or the ODE solver's count."""
    s = config.sampling
    if s.method == "ode":
        return ode.network_evaluations(s.ode_solver, n_steps or s.n_steps)
    if s.method in fast.SOLVERS:
        return fast.network_evaluations(n_steps or s.n_steps, s.fast_denoise_steps)
    return (n_steps or s.n_steps) * s.n_inner + s.denoise_steps


def write_grid(config, process, model, params, stats, path: str, *, n_steps: int | None = None, write: bool = True,
               n: int = 64, seed: int = 0) -> np.ndarray:
    """Samples ``n`` images and writes them as a PNG grid (process 0 only); returns the images."""
    imgs, _, _ = generate(config, process, model, params, stats, jax.random.key(seed), n, n_steps)
    if write:
        images.save_grid(imgs, path)
    return imgs


def restore_latest_state(config, workdir: str):
    """The latest ``TrainState`` in ``workdir/checkpoints``, restored against its abstract shapes.

    Raises ``FileNotFoundError`` when there is no checkpoint.
    """
    from dale_langevin import checkpoint, train  # train imports this module

    like = jax.eval_shape(lambda: train.build(config)[3])  # shapes only: no parameter initialisation
    restored = checkpoint.restore_latest(checkpoint.manager(workdir, config.training.keep_checkpoints), like)
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints: train first (--mode=train)")
    return restored


def sample_and_save(config, workdir: str) -> dict:
    """``--mode=sample``: latest EMA params -> ``samples.npz`` (images, raw, labels) and ``samples.png``.

    Returns a summary dict with the number of network evaluations and the wall time.
    """
    config_lib.validate(config)
    process, model = config_lib.make_process(config), config_lib.make_model(config)
    restored = restore_latest_state(config, workdir)
    stats = start_stats(config, process, workdir, write=jax.process_index() == 0)
    s = config.sampling
    t0 = time.perf_counter()
    imgs, raw, labels = generate(config, process, model, restored.ema_params, stats, jax.random.key(config.seed + 1),
                                 s.n_samples)
    seconds = time.perf_counter() - t0
    summary = dict(step=int(restored.step), n_samples=s.n_samples, method=s.method, n_steps=s.n_steps,
                   start=s.start, network_evaluations=network_evaluations(config), seconds=seconds)
    label = s.method
    if s.method == "ode":
        label = f"ode ({s.ode_solver})"
    elif s.method in fast.SOLVERS:
        label = f"{s.method} (eta {s.eta})"
    if jax.process_index() == 0:
        np.savez(os.path.join(workdir, "samples.npz"), images=imgs, raw=raw, labels=labels)
        images.save_grid(imgs, os.path.join(workdir, "samples.png"))
        print(f"Sampled {s.n_samples} images at step {summary['step']} with {label}, {s.n_steps} levels, "
              f"start {s.start}: {summary['network_evaluations']} network evaluations per sample, "
              f"{seconds:.1f} s wall (compile included) -> {workdir}/samples.png", flush=True)
    return summary
