"""Drawing images from a trained model: the start (prior or class averages), pmapped sampler calls, files.

``sample_and_save(config, workdir)`` is what ``main --mode=sample`` calls: it restores the latest
EMA parameters and writes ``samples.npz`` and ``samples.png``. The sampler itself is whatever
``config.sampling.method`` names in the registry (:mod:`dale_langevin.samplers`), with the
settings of its group ``config.sampling.<method>``.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin import samplers
from dale_langevin.checks import check_choice
from dale_langevin.losses import network_score_fn
from dale_langevin.pipeline import config as config_lib, data, parallel, state as state_lib, workdir as wd_lib
from dale_langevin.pipeline.workdir import Workdir


def start_stats(config, process, workdir: str | Workdir | None = None, *, write: bool = True) -> dict[str, np.ndarray]:
    """Per-pixel and scalar prior fits of ``X_T`` and per-class mean images, from the training split.

    Returns numpy arrays: ``pixel_loc``/``pixel_scale`` ``(H, W, C)``, ``scalar_loc``/``scalar_scale``
    ``()``, ``class_means`` ``(num_classes, H, W, C)`` in the process domain. Cached in
    ``workdir.start_stats`` so sampling later needs no data.
    """
    workdir = None if workdir is None else Workdir.of(workdir)
    if workdir is not None:
        cached = wd_lib.load_npz(workdir.start_stats)
        if cached is not None:
            return cached
    pixels, labels = data.load_arrays(
        config.data.dataset, "train", data_dir=config.data.data_dir, download=config.data.download
    )
    x0 = np.asarray(process.encode(pixels.astype(np.float32) / 255.0))
    per_pixel, scalar = process.fit_prior(x0, per_pixel=True), process.fit_prior(x0, per_pixel=False)
    n_classes = data.get_spec(config.data.dataset).num_classes
    stats = dict(
        pixel_loc=np.asarray(per_pixel.loc),
        pixel_scale=np.asarray(per_pixel.scale),
        scalar_loc=np.asarray(scalar.loc),
        scalar_scale=np.asarray(scalar.scale),
        class_means=np.stack([x0[labels == k].mean(axis=0) for k in range(n_classes)]).astype(np.float32),
    )
    if workdir is not None and write:
        wd_lib.save_npz(workdir.start_stats, **stats)
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


@functools.lru_cache(maxsize=32)
def _pmapped_sampler(model, process, method: str, settings: tuple):
    """``(params, rngs, x_T) -> x_0`` pmapped over local devices, built once per (model, process, sampler).

    Cached so that repeated :func:`generate` calls (periodic grids in training, notebooks, the
    ablation runner) reuse one compiled sampler instead of tracing and compiling it again.
    """
    kwargs = dict(settings)

    def device_sample(params, rng, x_T):
        net = lambda inp, level: model.apply(params, inp, level, train=False)
        return samplers.sample(rng, network_score_fn(net, process), x_T, process, method=method, **kwargs)

    return parallel.pmap(device_sample)


def generate(config, process, model, params, stats: dict, rng: jax.Array, n: int, overrides: dict | None = None):
    """Draws ``n`` images with the configured sampler (``overrides`` on its settings), pmapped in batches.

    Returns ``(images, raw, labels)``: images in [0, 1] ``(n, H, W, C)``, the sampler's raw output
    in the process domain, and the start labels.
    """
    batch = config.sampling.batch_size
    method, settings = config_lib.sampler_settings(config, **(overrides or {}))
    p_sample = _pmapped_sampler(model, process, method, tuple(sorted(settings.items())))
    rparams = parallel.replicate(params)
    raws, labels = [], []
    for b in range(math.ceil(n / batch)):
        start_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, b))
        x_T, lab = initial_state(start_rng, process, stats, config.sampling.start, batch)
        out = p_sample(rparams, parallel.device_keys(noise_rng), parallel.shard_batch(np.asarray(x_T)))
        raws.append(parallel.unshard(out))
        labels.append(lab)
    raw = np.concatenate(raws)[:n]
    return np.asarray(process.decode(raw)), raw, np.concatenate(labels)[:n]


def network_evaluations(config, overrides: dict | None = None) -> int:
    """Score evaluations per sample of the configured sampler (with ``overrides``), from the registry."""
    method, settings = config_lib.sampler_settings(config, **(overrides or {}))
    return samplers.network_evaluations(method, settings)


def write_grid(
    config,
    process,
    model,
    params,
    stats,
    path,
    *,
    overrides: dict | None = None,
    write: bool = True,
    n: int = 64,
    seed: int = 0,
) -> np.ndarray:
    """Samples ``n`` images and writes them as a PNG grid to the work-directory ``path`` if ``write``; returns them."""
    imgs, _, _ = generate(config, process, model, params, stats, jax.random.key(seed), n, overrides)
    if write:
        wd_lib.save_grid(path, imgs)
    return imgs


def sample_and_save(config, workdir: str | Workdir) -> dict:
    """``--mode=sample``: latest EMA params -> ``samples.npz`` (images, raw, labels) and ``samples.png``.

    Returns a summary dict with the sampler, its settings, the network evaluations and the wall time.
    """
    config_lib.validate(config)
    wd = Workdir.of(workdir)
    process, model = config_lib.make_process(config), config_lib.make_model(config)
    restored = state_lib.restore_latest(config, wd)
    stats = start_stats(config, process, wd, write=parallel.is_chief())
    s = config.sampling
    method, settings = config_lib.sampler_settings(config)
    t0 = time.perf_counter()
    imgs, raw, labels = generate(
        config, process, model, restored.ema_params, stats, jax.random.key(config.seed + 1), s.n_samples
    )
    seconds = time.perf_counter() - t0
    nfe = samplers.network_evaluations(method, settings)
    summary = dict(
        step=int(restored.step),
        n_samples=s.n_samples,
        method=method,
        settings=settings,
        start=s.start,
        network_evaluations=nfe,
        seconds=seconds,
    )
    if parallel.is_chief():
        wd_lib.save_npz(wd.samples_npz, images=imgs, raw=raw, labels=labels)
        wd_lib.save_grid(wd.samples_png, imgs)
        levels = f", {settings['n_steps']} levels" if "n_steps" in settings else ""
        print(
            f"Sampled {s.n_samples} images at step {summary['step']} with {samplers.get(method).describe(settings)}"
            f"{levels}, start {s.start}: {nfe} network evaluations per sample, "
            f"{seconds:.1f} s wall (compile included) -> {wd.samples_png}",
            flush=True,
        )
    return summary
