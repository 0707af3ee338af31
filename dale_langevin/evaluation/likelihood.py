"""Bits per dimension of the test split through the probability-flow ODE (``--mode=eval``, ``config.eval.bpd_*``).

Convention (score_sde's, for 8-bit images): a pixel value ``p`` in {0, ..., 255} is dequantised with
uniform noise, ``u = (p + U) / 256`` with ``U ~ U[0, 1)``, so ``u`` in [0, 1) fills the pixel's bin of
width 1/256; the process sees ``x = process.encode(u)`` (GBM: ``u + data_offset``, Jacobian 1). The
density ``log p(x)`` (nats, of ``X_{t_min}``) comes from :func:`dale_langevin.samplers.ode.log_likelihood`:
Heun on ``config.eval.bpd_steps`` log-std steps from ``t_min`` to ``T``, Hutchinson's trace estimator
with one Rademacher probe per example, the start law of the sampler as the prior at ``T``. The bits
per dimension of the 8-bit data are then

    bpd = -(log p(x) - D log 256) / (D ln 2),      D = H W C

(:func:`dale_langevin.samplers.ode.bits_per_dim` with ``pixel_scale=256``); averaged over the
dequantisation noise this bounds the discrete data's negative log-likelihood from above. Reported:
the mean over the examples and its standard error (sample standard deviation / sqrt(K)).

Randomness: example ``i`` of the evaluated subset draws its dequantisation noise and its probe from
``k_noise, k_probe = split(fold_in(rng, i))`` (``uniform(k_noise, shape)``, ``rademacher(k_probe,
shape)``), so the numbers do not depend on the batch size or on how many devices and processes share
the work. Batches of ``config.eval.bpd_batch_size`` are split over this host's devices (pmap) and dealt
to the processes in lockstep rounds, as :func:`dale_langevin.pipeline.generate.generate` does.

Only processes with the ODE (the samplers' registry entry ``ode``: GBM) have a likelihood; for the
others eval.json reports ``{"status": "unavailable", "reason": ...}``.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin import samplers
from dale_langevin.losses import network_score_fn
from dale_langevin.pipeline import config as config_lib, data, generate, parallel, state as state_lib
from dale_langevin.pipeline.workdir import Workdir
from dale_langevin.samplers import ode

PIXEL_LEVELS = 256  # 8-bit data: u = (pixel + U[0, 1)) / 256
DEQUANTISATION = "u = (pixel + U[0,1)) / 256, x = process.encode(u)"


def prior_for(process, stats: dict, start: str) -> tuple[object, str, str | None]:
    """The prior at ``T`` for the likelihood: ``(prior, its name, a note or None)``.

    The law the sampler starts from (``config.sampling.start``, :func:`generate.start_prior`); a
    class-average start is a mixture over classes without a fitted density here, so the per-pixel fit
    stands in for it (the note says so).
    """
    name, note = start, None
    if start.startswith("class_average"):
        name = "per_pixel"
        note = f"sampling.start={start!r} has no closed-form prior here: the per-pixel log-normal fit is used"
    return generate.start_prior(process, stats, name), name, note


def t_min_for(config, process) -> float:
    """The smallest time the network was trained at: ``T / n_time_levels`` (grid) or ``config.training.t_min``."""
    t = config.training
    return float(process.T / t.n_time_levels if t.t_sampling == "grid" else t.t_min)


def example_inputs(key: jax.Array, pixels: jax.Array, process) -> tuple[jax.Array, jax.Array]:
    """One example's dequantised ``x = encode((pixels + U) / 256)`` and Rademacher probe, both ``pixels.shape``."""
    k_noise, k_probe = jax.random.split(key)
    u = (pixels.astype(jnp.float32) + jax.random.uniform(k_noise, pixels.shape, jnp.float32)) / PIXEL_LEVELS
    return process.encode(u), jax.random.rademacher(k_probe, pixels.shape, jnp.float32)


@functools.lru_cache(maxsize=16)
def _pmapped_log_likelihood(model, process, param, n_steps: int, t_min: float):
    """``(params, prior, key_data, pixels) -> log p(x)`` ``[devices, b]``, pmapped, built once per setting."""

    def device_fn(params, prior, key_data, pixels):
        keys = jax.random.wrap_key_data(key_data)
        x, probe = jax.vmap(lambda k, p: example_inputs(k, p, process))(keys, pixels)
        net = lambda inp, level: model.apply(params, inp, level, train=False)
        score_fn = network_score_fn(net, process, param)
        return ode.log_likelihood(None, score_fn, x, process, prior, n_steps=n_steps, t_min=t_min, probe=probe)

    return parallel.pmap(device_fn)


def bits_per_dim(
    model,
    process,
    param,
    params,
    prior,
    pixels: np.ndarray,
    rng: jax.Array,
    *,
    n_steps: int,
    t_min: float,
    batch_size: int,
) -> np.ndarray:
    """Bits per dimension ``(K,)`` of the 8-bit images ``pixels`` ``(K, H, W, C)`` (uint8) under the network.

    ``model.apply(params, inputs, conditioning, train=False)`` is the network, read through the
    parametrisation ``param`` (:func:`dale_langevin.losses.network_score_fn`); ``prior`` the law at ``T``
    (``prior.log_prob`` elementwise in x space). See the module docstring for the convention and the
    keys. ``batch_size`` images per call, split over the local devices; every process must call this
    with the same arguments (pmap runs in lockstep) and each gets all ``K`` values.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim < 2:
        raise ValueError(f"pixels must be 8-bit images (K, H, W, C) of dtype uint8, got {pixels.dtype} {pixels.shape}")
    k = len(pixels)
    fn = _pmapped_log_likelihood(model, process, param, int(n_steps), float(t_min))
    rparams, rprior = parallel.replicate(params), parallel.replicate(prior)
    n_batches, procs, me = math.ceil(k / batch_size), parallel.process_count(), parallel.process_index()
    n_rounds = math.ceil(n_batches / procs)
    keys = np.asarray(
        jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(n_rounds * procs * batch_size)))
    )
    out = []
    for first in range(0, n_batches, procs):
        b = first + me  # past the last batch in the final round: computed to keep the lockstep, dropped below
        index = b * batch_size + np.arange(batch_size)
        batch = pixels[np.minimum(index, k - 1)]  # the last batch padded with copies, dropped below
        log_px = fn(rparams, rprior, parallel.shard_batch(keys[index]), parallel.shard_batch(batch))
        out.extend(parallel.gather_processes(parallel.unshard(log_px)))
    log_px = np.concatenate(out[:n_batches])[:k].astype(np.float64)
    n_dims = int(np.prod(pixels.shape[1:]))
    return np.asarray(ode.bits_per_dim(log_px, n_dims, float(PIXEL_LEVELS)), np.float64)


def summary(bpd: np.ndarray) -> dict:
    """``mean`` and ``stderr`` (sample std / sqrt(K); None for one example) of per-example bits/dim."""
    bpd = np.asarray(bpd, np.float64)
    stderr = float(np.std(bpd, ddof=1) / np.sqrt(len(bpd))) if len(bpd) > 1 else None
    return {"mean": float(np.mean(bpd)), "stderr": stderr}


def subset(n_test: int, n_examples: int, seed: int) -> np.ndarray:
    """Indices of the ``min(n_examples, n_test)`` test images used: the first of a permutation seeded by ``seed``
    (the splits are often sorted by class)."""
    return np.random.default_rng(seed).permutation(n_test)[: min(n_examples, n_test)]


def evaluate_bpd(config, workdir: str | Workdir, log=print) -> dict:
    """eval.json's ``bpd`` entry: bits/dim of ``config.eval.bpd_examples`` test images under the run's EMA params.

    ``{"status": "off"}`` when ``bpd_examples`` is 0, ``{"status": "unavailable", "reason": ...}`` for a
    process without the probability-flow ODE or a work directory without a checkpoint, else ``status
    "ok"`` with ``mean``, ``stderr``, the settings and the wall time.
    """
    e = config.eval
    if not e.bpd_examples:
        return {"status": "off", "reason": "config.eval.bpd_examples=0"}
    process = config_lib.make_process(config)
    has_ode = samplers.get("ode").processes
    if process.name not in has_ode:
        return {
            "status": "unavailable",
            "reason": (
                f"bits/dim needs the probability-flow ODE likelihood (samplers.ode.log_likelihood), which exists "
                f"for the processes {has_ode}, not config.process.name={process.name!r}"
            ),
        }
    wd = Workdir.of(workdir)
    try:
        restored = state_lib.restore_latest(config, wd)
    except FileNotFoundError as err:  # samples brought from elsewhere: the other metrics stand
        log(f"Bits/dim skipped: {err}")
        return {"status": "unavailable", "reason": str(err)}
    d = config.data
    test_x, _ = data.load_arrays(d.dataset, "test", data_dir=d.data_dir, download=d.download)
    index = subset(len(test_x), e.bpd_examples, config.seed)
    if len(index) < e.bpd_examples:
        log(f"config.eval.bpd_examples={e.bpd_examples} but the test split has {len(test_x)} images: using all")
    model, param = config_lib.make_model(config), config_lib.make_parametrisation(config)
    stats = generate.start_stats(config, process, wd, write=parallel.is_chief())
    prior, prior_name, note = prior_for(process, stats, config.sampling.start)
    if note:
        log(f"bits/dim: {note}")
    t_min = t_min_for(config, process)
    log(f"Bits/dim of {len(index)} test images: probability-flow ODE, {e.bpd_steps} Heun steps, Hutchinson ...")
    t0 = time.perf_counter()
    bpd = bits_per_dim(
        model,
        process,
        param,
        restored.ema_params,
        prior,
        test_x[index],
        jax.random.key(config.seed + 2),
        n_steps=e.bpd_steps,
        t_min=t_min,
        batch_size=e.bpd_batch_size,
    )
    seconds = time.perf_counter() - t0
    return {
        "status": "ok",
        **summary(bpd),
        "n_examples": int(len(index)),
        "steps": e.bpd_steps,
        "solver": "heun",
        "batch_size": e.bpd_batch_size,
        "t_min": t_min,
        "trace_estimator": "hutchinson (one Rademacher probe per example)",
        "dequantisation": DEQUANTISATION,
        "prior": prior_name,
        "prior_note": note,
        "step": int(restored.step),
        "seconds": seconds,
    }
