"""Train-step and sampler speed of the package's lean paths beside plain ones, measured in the same run.

    python -m benchmarks.run --configs=demo,mnist --out=bench.json
    python -m benchmarks.run --configs=demo --micro --batch=4 --steps=2 --nfe=3 --out=/tmp/micro.json

For each config, on whatever JAX finds (CPU here, a GPU or TPU unchanged; the device is recorded):

* ``train/lean``: ``state.build``'s step, ``parallel.pmap`` over every local device (one forced host
  device per core on a CPU), state donated, the builder's convolution (``cpu_conv="auto"``:
  :func:`dale_langevin.cpu.conv.for_backend`).
* ``train/plain``: the same loss, Adam, clipping and EMA as one ``jax.jit`` on one device, no
  donation, the stock convolution, ``float(loss)`` on the host after every step.
* ``train/lean_cpu_conv_off`` (``--cpu_conv_variants``): the lean step with the stock convolution.
* ``sample/lean``: the registry's SDE sampler (one ``lax.scan`` over the levels) pmapped like ``generate``.
* ``sample/plain``: one jitted sampler update called ``nfe`` times from Python, the state copied to
  the host and back at every step.

Random images stand in for data (the step's cost does not depend on pixel values), so nothing is
read from disk. Compile time is separate; timings are medians after warm-up, taken round-robin
(one step of each variant in turn) so that load from other jobs on a shared machine falls on all
variants alike: the ratios between rows are the figures to rely on there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

# Importing JAX does not start its backends: main() can still ask for host devices before the first device query.
import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from dale_langevin import samplers
from dale_langevin.cpu import hostmem
from dale_langevin.losses import dsm_loss, network_score_fn
from dale_langevin.pipeline import config as config_lib, data, parallel, state as state_lib
from dale_langevin.samplers import sde

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN_FIELDS = ("compile_s", "s_per_step", "images_per_s", "images_per_s_per_device", "cpu_s_per_step", "cores_used")
SAMPLE_FIELDS = ("compile_s", "seconds", "images_per_s", "s_per_nfe")
RATIO_FIELDS = ("train_lean_vs_plain", "sample_lean_vs_plain")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (see ``--help``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="demo,mnist", help="config names in configs/ or paths to config files")
    p.add_argument("--out", default=None, help="JSON output path")
    p.add_argument("--micro", action="store_true", help="shrink the U-Net to 8 channels, one level (for tests)")
    p.add_argument("--batch", type=int, default=0, help="global train batch; 0 = the config's training.batch_size")
    p.add_argument("--steps", type=int, default=10, help="timed train steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed train steps after compiling")
    p.add_argument("--nfe", type=int, default=50, help="sampler network evaluations (levels, one update each)")
    p.add_argument("--sample_batch", type=int, default=0, help="images per sampler call; 0 = sampling.batch_size")
    p.add_argument("--sample_repeats", type=int, default=3, help="timed sampler calls per variant")
    p.add_argument(
        "--cpu_conv_variants",
        default="auto_cpu_only",
        help="extra lean rows with another convolution: 'off' (the stock op); 'auto_cpu_only' = off on a "
        "CPU backend, none elsewhere; '' = none",
    )
    p.add_argument("--dtype", default="", help="model.dtype override (float32 | bfloat16); '' = the config's")
    p.add_argument(
        "--host_devices",
        type=int,
        default=0,
        help="CPU hosts: forced host devices for pmap (0 = one per core, -1 = leave XLA_FLAGS alone)",
    )
    p.add_argument(
        "--host_allocator",
        default="auto",
        choices=hostmem.MODES,
        help="host malloc as config.host_allocator (auto = retain XLA's per-call buffers on a CPU-only "
        "install, see dale_langevin/cpu/hostmem.py); process-wide, so every row runs under it",
    )
    p.add_argument("--torch_json", default="", help="comma list of benchmarks/torch_reference.py outputs to set beside")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if min(args.steps, args.nfe, args.sample_repeats) < 1 or args.warmup < 0:
        p.error("--steps, --nfe and --sample_repeats must be >= 1, --warmup >= 0")
    return args


def load_config(name: str):
    """The config ``configs/<name>.py`` (or the file ``name``), unlocked for the benchmark's overrides.

    ``name:arg`` passes ``arg`` to its ``get_config`` as the command line's ``--config=path:arg`` does
    (``configs/paper/mnist_dale_langevin.py:cpu``).
    """
    name, _, arg = name.partition(":")
    path = pathlib.Path(name) if name.endswith(".py") else ROOT / "configs" / f"{name}.py"
    if not path.exists():
        raise ValueError(f"no config {name!r}: expected {path}")
    config = config_lib.load_config_file(path, *([arg] if arg else []))
    config.unlock()
    return config


def shrink(config) -> None:
    """``--micro``: an 8-channel one-level U-Net (3x3 and 1x1 convolutions), to test the harness in seconds."""
    config.model.unet.channels, config.model.unet.channel_mult, config.model.unet.num_res_blocks = 8, (1,), 1
    config.model.unet.attn_resolutions, config.model.unet.dropout = (), 0.0


def device_info() -> dict:
    """What ran the benchmark: backend, device kind and count, host cores, library versions."""
    devices = jax.local_devices()
    return dict(
        backend=jax.default_backend(),
        device_kind=devices[0].device_kind,
        n_local_devices=len(devices),
        n_devices=jax.device_count(),
        devices=[str(d) for d in devices],
        host_cores=os.cpu_count(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        platform=platform.platform(),
        python=platform.python_version(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        flax=flax.__version__,
        optax=optax.__version__,
    )


def peak_memory() -> dict:
    """Peak memory so far (the whole process, so cumulative over the configs run before): host RSS, device bytes."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # some backends do not implement it
        stats = {}
    return dict(host_peak_rss_mib=rss / 2**20, device_peak_bytes_in_use=stats.get("peak_bytes_in_use"))


def time_calls(fn: Callable[[], Any], n: int) -> tuple[list[float], list[float], list[int]]:
    """Calls ``fn`` ``n`` times; per call wall seconds, process CPU seconds (all threads), minor page faults."""
    wall, cpu, faults = [], [], []
    for _ in range(n):
        w, c, f = time.perf_counter(), time.process_time(), hostmem.minor_faults()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
        faults.append(hostmem.minor_faults() - f)
    return wall, cpu, faults


class Variant(NamedTuple):
    """A compiled variant ready to time: ``call()`` runs one step (or one sampler call) and waits for it."""

    compile_s: float
    call: Callable[[], None]
    row: Callable[[float, list[float], list[float]], dict]  # (compile_s, wall, cpu) -> the JSON row


def time_interleaved(variants: dict[str, Variant], warmup: int, n: int) -> dict[str, dict]:
    """Warms each variant up, then times ``n`` rounds of one call of each in turn; returns their rows.

    Round-robin, so load from other jobs on a shared machine falls on every variant alike.
    """
    for v in variants.values():
        time_calls(v.call, warmup)
    wall, cpu, faults = ({k: [] for k in variants} for _ in range(3))
    for _ in range(n):
        for k, v in variants.items():
            w, c, f = time_calls(v.call, 1)
            wall[k] += w
            cpu[k] += c
            faults[k] += f
    rows = {k: v.row(v.compile_s, wall[k], cpu[k]) for k, v in variants.items()}
    for k, row in rows.items():  # host page faults per call: what config.host_allocator removes on a CPU
        row["minor_faults_per_call"] = statistics.median(faults[k])
    return rows


def compile_timed(fn, *args) -> tuple[Any, float]:
    """``fn.lower(*args).compile()`` and the seconds it took (tracing included)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def train_row(compile_s: float, wall: list[float], cpu: list[float], batch: int, n_devices: int, **extra) -> dict:
    """One train variant's figures from its per-step times."""
    s = statistics.median(wall)
    c = statistics.median(cpu)
    return dict(
        compile_s=compile_s,
        s_per_step=s,
        s_per_step_min=min(wall),
        step_times_s=wall,
        images_per_s=batch / s,
        images_per_s_per_device=batch / s / n_devices,
        cpu_s_per_step=c,
        cores_used=c / s,
        n_devices=n_devices,
        per_device_batch=batch // n_devices,
        **extra,
    )


def lean_train(config, images, cpu_conv: str = "auto") -> Variant:
    """The package's step (``state.build``), pmapped with the state donated; ``images`` ``(B, H, W, C)``.

    ``cpu_conv="off"`` swaps the builder's convolution for the stock op (the same parameters).
    """
    model = config_lib.make_model(config)
    if cpu_conv == "off":
        model = model.clone(conv=None)
    _, model, step_fn, state = state_lib.build(config, model=model)
    n = parallel.local_device_count()
    batch = parallel.shard_batch({"images": images})
    compiled, compile_s = compile_timed(parallel.pmap(step_fn, donate_argnums=(0,)), parallel.replicate(state), batch)
    box = {"state": parallel.replicate(state)}

    def one():
        box["state"], box["metrics"] = compiled(box["state"], batch)
        jax.block_until_ready(box["state"])  # waits, copies nothing to the host

    def row(compile_s, wall, cpu):
        loss = float(parallel.unreplicate(box["metrics"])["loss"])
        return train_row(
            compile_s,
            wall,
            cpu,
            images.shape[0],
            n,
            cpu_conv=cpu_conv,
            donated=True,
            host_sync_every_step=False,
            loss_finite=math.isfinite(loss),
        )

    return Variant(compile_s, one, row)


def plain_train_step(config, process, model, tx) -> Callable:
    """The plain train step ``(params, ema, opt_state, count, key, images) -> (params, ema, opt_state, loss)``.

    One device, one key for the batch, no collectives; same loss, optimiser and EMA as the package's step.
    """
    loss_settings = config_lib.loss_settings(config)
    param = config_lib.make_parametrisation(config)

    def step(params, ema_params, opt_state, count, key, images):
        loss_key, dropout_key = jax.random.split(key)

        def loss_fn(p):
            net = lambda inp, level: model.apply(p, inp, level, train=True, rngs={"dropout": dropout_key})
            return dsm_loss(loss_key, network_score_fn(net, process, param), images, process, **loss_settings)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        decay = state_lib.ema_decay(count, config.ema.decay, config.ema.warmup)
        return params, optax.incremental_update(params, ema_params, 1.0 - decay), opt_state, loss

    return step


def plain_train(config, images, seed: int) -> Variant:
    """:func:`plain_train_step` under ``jax.jit`` (no donation, stock convolution), ``float(loss)`` every step."""
    process = config_lib.make_process(config)
    model = config_lib.make_model(config).clone(conv=None)
    o = config.optim
    tx, _ = state_lib.make_optimizer(o.lr, o.warmup_steps, o.grad_clip, o.beta1, o.beta2, o.eps)
    state = state_lib.create_train_state(jax.random.key(config.seed), model, tx, images.shape[1:])
    step = jax.jit(plain_train_step(config, process, model, tx))
    box = dict(params=state.params, ema=state.ema_params, opt=state.opt_state, count=0, loss=0.0)
    key = jax.random.key(seed)
    compiled, compile_s = compile_timed(step, box["params"], box["ema"], box["opt"], box["count"], key, images)

    def one():
        box["params"], box["ema"], box["opt"], loss = compiled(
            box["params"], box["ema"], box["opt"], box["count"], jax.random.fold_in(key, box["count"]), images
        )
        box["loss"] = float(loss)  # the host sync a plain loop does to log
        box["count"] += 1

    def row(compile_s, wall, cpu):
        return train_row(
            compile_s,
            wall,
            cpu,
            images.shape[0],
            1,
            cpu_conv="off",
            donated=False,
            host_sync_every_step=True,
            loss_finite=math.isfinite(box["loss"]),
        )

    return Variant(compile_s, one, row)


def sampler_settings(config, process, nfe: int) -> tuple[str, dict]:
    """``(method, settings)``: the config's SDE sampler (else the process's first) at ``nfe`` levels of one update each."""
    method = config.sampling.method
    if method not in sde.UPDATES or process.name not in samplers.get(method).processes:
        method = next(m for m, (_, names) in sde.UPDATES.items() if process.name in names)
    settings = samplers.get(method).settings(
        {**config.sampling[method].to_dict(), "n_steps": nfe, "n_inner": 1, "denoise_steps": 0}
    )
    return method, settings


def sample_row(compile_s: float, wall: list[float], batch: int, nfe: int, n_devices: int, out) -> dict:
    """One sampler variant's figures from its per-call times and last output."""
    s = statistics.median(wall)
    return dict(
        compile_s=compile_s,
        seconds=s,
        call_times_s=wall,
        images_per_s=batch / s,
        s_per_nfe=s / nfe,
        nfe=nfe,
        batch=batch,
        n_devices=n_devices,
        finite=bool(np.isfinite(np.asarray(out)).all()),
    )


def lean_sampler(config, process, model, params, x_T, nfe: int, seed: int) -> Variant:
    """``samplers.sample`` (one scan) pmapped over local devices, ``x_T`` ``(B, H, W, C)`` split across them."""
    method, settings = sampler_settings(config, process, nfe)
    param = config_lib.make_parametrisation(config)

    def device_sample(params, rng, x):
        net = lambda inp, level: model.apply(params, inp, level, train=False)
        return samplers.sample(rng, network_score_fn(net, process, param), x, process, method=method, **settings)

    n = parallel.local_device_count()
    args = (parallel.replicate(params), parallel.device_keys(jax.random.key(seed)), parallel.shard_batch(x_T))
    compiled, compile_s = compile_timed(parallel.pmap(device_sample), *args)
    box = {}

    def one():
        box["out"] = jax.block_until_ready(compiled(*args))

    return Variant(compile_s, one, lambda c, wall, _: sample_row(c, wall, x_T.shape[0], nfe, n, box["out"]))


def plain_sampler(config, process, model, params, x_T, nfe: int, seed: int) -> Variant:
    """One jitted update (score + step) called ``nfe`` times from Python; ``x`` goes to the host and back each step."""
    method, kw = sampler_settings(config, process, nfe)
    update = sde.UPDATES[method][0]
    levels = np.asarray(sde.time_grid(process, nfe, kw["t_end"]))
    param = config_lib.make_parametrisation(config)
    dt = (process.T - kw["t_end"]) / nfe if kw["step_size"] is None else kw["step_size"]

    def step(params, x, t, key, noise_scale):
        tb = jnp.full((x.shape[0],), t, jnp.float32)
        net = lambda inp, level: model.apply(params, inp, level, train=False)
        z = noise_scale * jax.random.normal(key, x.shape, x.dtype)
        return update(x, network_score_fn(net, process, param)(x, tb), tb, dt, z, process)

    params = jax.device_put(params)
    key = jax.random.key(seed)
    compiled, compile_s = compile_timed(jax.jit(step), params, x_T, levels[0], key, np.float32(1.0))
    box = {}

    def one():
        x = x_T
        for i in range(nfe):
            scale = np.float32(kw["noise_decay"] ** i)
            x = np.asarray(compiled(params, x, levels[i], jax.random.fold_in(key, i), scale))  # host round trip
        box["out"] = x

    return Variant(compile_s, one, lambda c, wall, _: sample_row(c, wall, x_T.shape[0], nfe, 1, box["out"]))


def cpu_conv_variants(flag: str, backend: str) -> list[str]:
    """Extra lean train rows from ``--cpu_conv_variants``: ``auto_cpu_only`` -> ``["off"]`` on CPU, else none."""
    if flag == "auto_cpu_only":
        return ["off"] if backend == "cpu" else []
    modes = [m for m in flag.split(",") if m]
    bad = [m for m in modes if m != "off"]
    if bad:
        raise ValueError(f"--cpu_conv_variants entries must be off (the stock convolution), got {bad}")
    return modes


def torch_side(paths: str, name: str, result: dict) -> dict | None:
    """PyTorch medians (``benchmarks/torch_reference.py`` JSON) for config ``name`` beside ours, with time ratios.

    ``torch_over_jax`` > 1 means the JAX variant is faster. Train rows match on batch size; the
    forward-only row is set beside one sampler network evaluation (``s_per_nfe``) at the same batch.
    """
    for path in filter(None, paths.split(",")):
        with open(path) as f:
            ref = json.load(f)
        if ref.get("config") != name:
            continue
        side = dict(
            file=path,
            torch_version=ref.get("torch_version"),
            threads=ref.get("threads"),
            loadavg_start=ref.get("loadavg_start"),
            train={},
            forward={},
        )
        lean, plain = result["train"]["lean"], result["train"]["plain"]
        for b, row in ref.get("train", {}).items():
            entry = dict(torch_median_s=row["median_s"])
            if int(b) == result["batch"]:
                entry.update(
                    jax_lean_s=lean["s_per_step"],
                    jax_plain_s=plain["s_per_step"],
                    torch_over_jax_lean=row["median_s"] / lean["s_per_step"],
                    torch_over_jax_plain=row["median_s"] / plain["s_per_step"],
                )
            side["train"][b] = entry
        for b, row in ref.get("forward", {}).items():
            entry = dict(torch_median_s=row["median_s"])
            if int(b) == result["sample_batch"]:
                per_nfe = result["sample"]["lean"]["s_per_nfe"]
                entry.update(jax_lean_s_per_nfe=per_nfe, torch_over_jax_lean=row["median_s"] / per_nfe)
            side["forward"][b] = entry
        return side
    return None


def bench_config(name: str, args: argparse.Namespace) -> dict:
    """Every measurement for one config: train (lean, plain, conv variants), sampler (lean, plain), memory."""
    config = load_config(name)
    if args.micro:
        shrink(config)
    if args.dtype:
        config.model.dtype = args.dtype
    batch = args.batch or config.training.batch_size
    config.training.batch_size = batch
    parallel.per_device_batch(batch, "--batch")
    sample_batch = args.sample_batch or config.sampling.batch_size
    parallel.per_device_batch(sample_batch, "--sample_batch", local=True)
    process = config_lib.make_process(config)
    shape = data.get_spec(config.data.dataset).image_shape
    rng = np.random.default_rng(args.seed)
    images = np.asarray(process.encode(rng.uniform(size=(batch, *shape)).astype(np.float32)))
    result = dict(
        config=name,
        micro=args.micro,
        dataset=config.data.dataset,
        image_shape=list(shape),
        batch=batch,
        sample_batch=sample_batch,
        model=config.model.to_dict(),
        ratios={},
    )

    train_variants = dict(lean=lean_train(config, images), plain=plain_train(config, images, args.seed))
    for mode in cpu_conv_variants(args.cpu_conv_variants, jax.default_backend()):
        train_variants[f"lean_cpu_conv_{mode}"] = lean_train(config, images, cpu_conv=mode)
    result["train"] = time_interleaved(train_variants, args.warmup, args.steps)
    del train_variants  # frees the train states before the sampler runs

    _, model, _, state = state_lib.build(config)  # the initial parameters (any will do for timing)
    params = state.params
    result["params"] = int(sum(x.size for x in jax.tree.leaves(params)))
    x0 = process.encode(rng.uniform(size=(sample_batch, *shape)).astype(np.float32))
    x_T = np.asarray(process.perturb(jax.random.key(args.seed), x0, np.full((sample_batch,), process.T, np.float32)))
    sample_variants = {
        k: fn(config, process, model, params, x_T, args.nfe, args.seed)
        for k, fn in (("lean", lean_sampler), ("plain", plain_sampler))
    }
    result["sample"] = time_interleaved(sample_variants, 0, args.sample_repeats)

    lean = result["train"]["lean"]["s_per_step"]
    result["ratios"]["train_lean_vs_plain"] = result["train"]["plain"]["s_per_step"] / lean
    sample = result["sample"]
    result["ratios"]["sample_lean_vs_plain"] = sample["plain"]["seconds"] / sample["lean"]["seconds"]
    for key, row in result["train"].items():
        if key.startswith("lean_cpu_conv_"):
            result["ratios"][f"train_lean_vs_{key}"] = row["s_per_step"] / lean
    result["memory"] = peak_memory()
    side = torch_side(args.torch_json, name, result)
    if side is not None:
        result["torch"] = side
    return result


def table(results: dict) -> str:
    """A plain-text table of every variant and the ratios."""
    lines = [
        f"{'config':8s} {'variant':22s} {'compile s':>9s} {'s/step|call':>11s} {'img/s':>8s} {'img/s/dev':>9s} "
        f"{'cores':>5s}  note"
    ]
    for name, r in results.items():
        for key, row in r["train"].items():
            lines.append(
                f"{name:8s} train/{key:16s} {row['compile_s']:9.2f} {row['s_per_step']:11.4f} "
                f"{row['images_per_s']:8.1f} {row['images_per_s_per_device']:9.1f} {row['cores_used']:5.2f}  "
                f"batch {r['batch']}, {row['n_devices']} dev, cpu_conv={row['cpu_conv']}, "
                f"{row['minor_faults_per_call']:,.0f} page faults/step"
            )
        for key, row in r["sample"].items():
            lines.append(
                f"{name:8s} sample/{key:15s} {row['compile_s']:9.2f} {row['seconds']:11.4f} "
                f"{row['images_per_s']:8.1f} {row['images_per_s'] / row['n_devices']:9.1f} {'':5s}  "
                f"batch {row['batch']}, NFE {row['nfe']}, {row['s_per_nfe'] * 1e3:.1f} ms/NFE"
            )
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in r["ratios"].items())
        lines.append(f"{name:8s} {r['params']:,} params; {ratios}; peak RSS {r['memory']['host_peak_rss_mib']:.0f} MiB")
        for b, row in r.get("torch", {}).get("train", {}).items():
            if "torch_over_jax_lean" in row:
                lines.append(
                    f"{name:8s} torch train batch {b}: {row['torch_median_s']:.3f} s/step, "
                    f"torch/jax lean {row['torch_over_jax_lean']:.2f}x"
                )
        for b, row in r.get("torch", {}).get("forward", {}).items():
            if "torch_over_jax_lean" in row:
                lines.append(
                    f"{name:8s} torch forward batch {b}: {row['torch_median_s']:.3f} s, "
                    f"torch/jax lean per NFE {row['torch_over_jax_lean']:.2f}x"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Runs every config, prints the table, writes ``--out``; returns the JSON-ready dict."""
    args = parse_args(argv)
    if args.host_devices >= 0:
        parallel.force_host_devices(args.host_devices)  # before JAX starts its backends; no-op if already set
    allocator = hostmem.configure(args.host_allocator)  # also before the backends (threads pick arenas early)
    load_start = os.getloadavg()
    report = dict(
        device={**device_info(), "host_allocator": allocator}, settings=vars(args), loadavg_start=load_start, configs={}
    )
    for name in filter(None, args.configs.split(",")):
        report["configs"][name] = bench_config(name, args)
        print(table({name: report["configs"][name]}), flush=True)
    report["loadavg_end"] = os.getloadavg()
    d = report["device"]
    print(
        f"{d['backend']} ({d['device_kind']}, {d['n_local_devices']} local devices, {d['host_cores']} host cores); "
        f"load average {load_start[0]:.1f} -> {report['loadavg_end'][0]:.1f}",
        flush=True,
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


if __name__ == "__main__":
    main()
