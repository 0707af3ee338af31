"""Drawing images from a trained model: the start (prior or class averages), pmapped sampler calls, files.

``sample_and_save(config, workdir)`` is what ``main --mode=sample`` calls: it restores the latest
EMA parameters and writes ``samples.npz``, ``samples.png`` and ``samples.json`` (what they were
drawn with). The sampler itself is whatever ``config.sampling.method`` names in the registry
(:mod:`dale_langevin.samplers`), with the settings of its group ``config.sampling.<method>``.
"""

from __future__ import annotations

import functools
import json
import math
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin import samplers
from dale_langevin.checks import check_choice
from dale_langevin.losses import network_score_fn
from dale_langevin.pipeline import config as config_lib, data, parallel, state as state_lib, workdir as wd_lib
from dale_langevin.pipeline.workdir import Workdir
from dale_langevin.samplers import published, sde

STATS_KEYS = (
    "pixel_loc",
    "pixel_scale",
    "channel_loc",
    "channel_scale",
    "scalar_loc",
    "scalar_scale",
    "class_means",
)


def finite_samples(samples: np.ndarray) -> np.ndarray:
    """Boolean ``(N,)``: which samples ``(N, ...)`` have only finite values (a diverged sampler makes NaNs)."""
    return np.all(np.isfinite(np.asarray(samples).reshape(len(samples), -1)), axis=1)


def _with_published(stats: dict, dataset: str) -> dict:
    """``stats`` plus the published prior ``published_loc``/``published_scale`` (``()`` or ``(C,)``) if the paper has one."""
    if published.dataset_key(dataset) not in published.PRIORS:
        return stats
    loc, scale = published.prior(dataset)
    return {**stats, "published_loc": np.asarray(loc), "published_scale": np.asarray(scale)}


def start_stats(config, process, workdir: str | Workdir | None = None, *, write: bool = True) -> dict[str, np.ndarray]:
    """Prior fits of ``X_T`` per pixel, per channel and over all pixels, and per-class mean images, from the training split.

    Returns numpy arrays: ``pixel_loc``/``pixel_scale`` ``(H, W, C)``, ``channel_loc``/``channel_scale``
    ``(C,)``, ``scalar_loc``/``scalar_scale`` ``()``, ``class_means`` ``(num_classes, H, W, C)`` in the
    process domain, and ``published_loc``/``published_scale`` where the paper gives constants for the
    dataset (:data:`dale_langevin.samplers.published.PRIORS`). The fits are cached in
    ``workdir.start_stats`` so sampling later needs no data.
    """
    dataset = config.data.dataset
    workdir = None if workdir is None else Workdir.of(workdir)
    if workdir is not None:
        try:
            cached = wd_lib.load_npz(workdir.start_stats)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # a damaged cache: rebuild it
            print(f"Rebuilding {workdir.start_stats}: unreadable ({type(err).__name__}: {err})", flush=True)
            cached = None
        if cached is not None and set(cached) >= set(STATS_KEYS):
            return _with_published(cached, dataset)
    pixels, labels = data.load_arrays(dataset, "train", data_dir=config.data.data_dir, download=config.data.download)
    x0 = np.asarray(process.encode(pixels.astype(np.float32) / 255.0))
    per_pixel, scalar = process.fit_prior(x0, per_pixel=True), process.fit_prior(x0, per_pixel=False)
    per_channel = process.fit_prior(x0.reshape(-1, x0.shape[-1]), per_pixel=True)  # moments over (N, H, W)
    n_classes = data.get_spec(dataset).num_classes
    stats = dict(
        pixel_loc=np.asarray(per_pixel.loc),
        pixel_scale=np.asarray(per_pixel.scale),
        channel_loc=np.asarray(per_channel.loc),
        channel_scale=np.asarray(per_channel.scale),
        scalar_loc=np.asarray(scalar.loc),
        scalar_scale=np.asarray(scalar.scale),
        class_means=np.stack([x0[labels == k].mean(axis=0) for k in range(n_classes)]).astype(np.float32),
    )
    if workdir is not None and write:
        wd_lib.save_npz(workdir.start_stats, **stats)
    return _with_published(stats, dataset)


def initial_state(rng: jax.Array, process, stats: dict, start: str, n: int) -> tuple[jax.Array, np.ndarray]:
    """``n`` starting points ``x_T`` ``(n, H, W, C)`` and their class labels (``-1`` unless from class averages).

    ``per_pixel``/``per_channel``/``scalar``: the prior fitted to the training data pushed to ``T``
    (exact first two moments per pixel, per channel, or over all pixels); ``published``: the paper's
    constants. ``class_average``: per-class mean training images pushed to ``T`` by the exact forward
    kernel; ``class_average_authors``: pushed by the authors' rule
    (:func:`dale_langevin.samplers.published.authors_push_forward`); classes cycle 0, 1, 2, ...
    """
    check_choice(start, config_lib.STARTS, "sampling.start")
    shape = (n, *stats["class_means"].shape[1:])
    if start.startswith("published") or start == "class_average_authors":
        if "published_loc" not in stats:
            raise ValueError(
                f"sampling.start={start!r} needs the published prior; the paper gives none for this dataset"
            )
    if start.startswith("class_average"):
        labels = np.arange(n) % stats["class_means"].shape[0]
        x0 = jnp.asarray(stats["class_means"][labels])
        if start == "class_average_authors":
            loc, scale = jnp.asarray(stats["published_loc"]), jnp.asarray(stats["published_scale"])
            return published.authors_push_forward(rng, x0, loc, scale, process.T), labels
        return process.perturb(rng, x0, jnp.full((n,), process.T)), labels
    return start_prior(process, stats, start).sample(rng, shape), np.full((n,), -1)


# The fit of start_stats that each prior start draws from (the class-average starts push images instead).
PRIOR_STATS = {"per_pixel": "pixel", "per_channel": "channel", "scalar": "scalar", "published": "published"}


def start_prior(process, stats: dict, start: str):
    """The law at ``T`` a prior start (a key of :data:`PRIOR_STATS`) draws from: ``process.prior_type(loc, scale)``
    of its fit in ``stats`` (:func:`start_stats`); ``loc``/``scale`` ``(H, W, C)``, ``(C,)`` or ``()``."""
    if start not in PRIOR_STATS:
        raise ValueError(f"sampling.start={start!r} has no fitted prior; the prior starts are {tuple(PRIOR_STATS)}")
    key = PRIOR_STATS[start]
    return process.prior_type(jnp.asarray(stats[f"{key}_loc"]), jnp.asarray(stats[f"{key}_scale"]))


@functools.lru_cache(maxsize=32)
def _pmapped_sampler(model, process, param, method: str, fn, settings: tuple):
    """``(params, rngs, x_T) -> x_0`` pmapped over local devices, built once per (model, process,
    parametrisation ``param``, sampler).

    Cached so that repeated :func:`generate` calls (periodic grids in training, notebooks, the
    ablation runner) reuse one compiled sampler instead of tracing and compiling it again. ``fn``
    (the registered function) is part of the key: a sampler registered anew is compiled anew.
    """
    del fn  # a cache key only; samplers.sample looks the function up
    kwargs = dict(settings)

    def device_sample(params, rng, x_T):
        net = lambda inp, level: model.apply(params, inp, level, train=False)
        return samplers.sample(rng, network_score_fn(net, process, param), x_T, process, method=method, **kwargs)

    return parallel.pmap(device_sample)


def generate(config, process, model, params, stats: dict, rng: jax.Array, n: int, overrides: dict | None = None):
    """Draws ``n`` images with the configured sampler (``overrides`` on its settings), pmapped in batches.

    Returns ``(images, raw, labels)``: images in [0, 1] ``(n, H, W, C)``, the sampler's raw output
    in the process domain, and the start labels; every process returns all ``n``.

    Batch ``b`` of ``config.sampling.batch_size`` draws its start and noise from ``fold_in(rng, b)``
    (noise one key per local device). With ``P`` processes, process ``p`` draws batches ``p, p + P,
    ...`` in lockstep rounds (pmap runs every call on all processes) and each round is gathered, so
    the processes share the work, never draw the same samples, and one process alone draws the
    same ``n`` images as ``P`` of them with the same devices per process.
    """
    batch = config.sampling.batch_size
    method, settings = config_lib.sampler_settings(config, **(overrides or {}))
    param = config_lib.make_parametrisation(config)
    p_sample = _pmapped_sampler(model, process, param, method, samplers.get(method).fn, tuple(sorted(settings.items())))
    rparams = parallel.replicate(params)
    n_batches, procs, me = math.ceil(n / batch), parallel.process_count(), parallel.process_index()
    raws, labels = [], []
    for first in range(0, n_batches, procs):
        b = first + me  # past the last batch in the final round: drawn to keep the lockstep, dropped below
        start_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, b))
        x_T, lab = initial_state(start_rng, process, stats, config.sampling.start, batch)
        out = p_sample(rparams, parallel.device_keys(noise_rng), parallel.shard_batch(np.asarray(x_T)))
        raws.extend(parallel.gather_processes(parallel.unshard(out)))
        labels.extend(parallel.gather_processes(lab))
    raw = np.concatenate(raws[:n_batches])[:n]
    return np.asarray(process.decode(raw)), raw, np.concatenate(labels[:n_batches])[:n]


def network_evaluations(config, overrides: dict | None = None) -> int:
    """Score evaluations per sample of the configured sampler (with ``overrides``), from the registry."""
    method, settings = config_lib.sampler_settings(config, **(overrides or {}))
    return samplers.network_evaluations(method, settings)


def network_evaluations_authors_loop(config, overrides: dict | None = None) -> int | None:
    """Network evaluations per sample as the paper counts them for the configured sampler, ``None`` if it has no count.

    The authors' reverse loop of the two multiplicative SDE samplers evaluates the network ``L + 1``
    times per level and discards one (:func:`dale_langevin.samplers.sde.authors_loop_evaluations`):
    ``n_steps * (n_inner + 1) + denoise_steps`` where ours is ``n_steps * n_inner + denoise_steps``.
    """
    method, settings = config_lib.sampler_settings(config, **(overrides or {}))
    if method not in sde.AUTHORS_LOOP:
        return None
    return sde.authors_loop_evaluations(**settings)


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


def sample_record(config, n_samples: int | None = None) -> dict:
    """What a ``samples.npz`` was drawn with: sampler, settings, start, count, seed (JSON-ready, as in ``samples.json``).

    The count is ``n_samples`` (``--mode=eval``'s :func:`config.eval_n_samples`), else ``config.sampling.n_samples``.
    """
    method, settings = config_lib.sampler_settings(config)
    s = config.sampling
    n = s.n_samples if n_samples is None else n_samples
    record = dict(method=method, settings=settings, start=s.start, n_samples=n, seed=config.seed)
    return json.loads(json.dumps(record, default=str))


def samples_outdated(config, workdir: str | Workdir, n_samples: int | None = None) -> str | None:
    """Why ``workdir``'s samples cannot stand for ``config``'s ``n_samples`` (default ``config.sampling.n_samples``)
    samples (missing, or drawn otherwise, another count included); ``None`` if they can.

    Samples without a ``samples.json`` (brought from elsewhere) are taken as they are.
    """
    wd = Workdir.of(workdir)
    if not wd.samples_npz.exists():
        return f"No {wd.samples_npz}"
    saved = wd_lib.read_json(wd.samples_json)
    if saved is None:  # samples from elsewhere, or from before samples.json existed: taken as they are
        return None
    saved.pop("step", None)
    want = sample_record(config, n_samples)
    if saved != want:
        return f"{wd.samples_npz} was drawn with {saved} but the config asks for {want}"
    return None


def sample_and_save(config, workdir: str | Workdir, n_samples: int | None = None) -> dict:
    """``--mode=sample``: latest EMA params -> ``samples.npz`` (images, raw, labels) and ``samples.png``.

    Draws ``n_samples`` images (``--mode=eval`` passes :func:`config.eval_n_samples`), by default
    ``config.sampling.n_samples``, over all devices and processes (:func:`generate`); ``samples.json``
    records the count. Returns a summary dict with the sampler, its settings, the network evaluations
    and the wall time.
    """
    config_lib.validate(config)
    wd = Workdir.of(workdir)
    process, model = config_lib.make_process(config), config_lib.make_model(config)
    restored = state_lib.restore_latest(config, wd)
    stats = start_stats(config, process, wd, write=parallel.is_chief())
    s = config.sampling
    n = s.n_samples if n_samples is None else n_samples
    method, settings = config_lib.sampler_settings(config)
    t0 = time.perf_counter()
    imgs, raw, labels = generate(config, process, model, restored.ema_params, stats, jax.random.key(config.seed + 1), n)
    seconds = time.perf_counter() - t0
    nfe = samplers.network_evaluations(method, settings)
    summary = dict(
        step=int(restored.step),
        n_samples=n,
        method=method,
        settings=settings,
        start=s.start,
        network_evaluations=nfe,
        seconds=seconds,
        non_finite=int(np.sum(~finite_samples(raw))),
    )
    if parallel.is_chief():
        wd_lib.save_npz(wd.samples_npz, images=imgs, raw=raw, labels=labels)
        wd_lib.write_json(wd.samples_json, {**sample_record(config, n), "step": summary["step"]})
        wd_lib.save_grid(wd.samples_png, imgs)
        levels = f", {settings['n_steps']} levels" if "n_steps" in settings else ""
        print(
            f"Sampled {n} images at step {summary['step']} with {samplers.get(method).describe(settings)}"
            f"{levels}, start {s.start}: {nfe} network evaluations per sample, "
            f"{seconds:.1f} s wall (compile included) -> {wd.samples_png}",
            flush=True,
        )
        if summary["non_finite"]:
            print(
                f"Warning: {summary['non_finite']} of {n} samples are non-finite (the sampler diverged; they "
                f"show black in the grid). Use more levels or a smaller step (config.sampling.{method}).",
                flush=True,
            )
    return summary
