"""What a paper preset costs: XLA's FLOP count of its train step and its sampler, and the time that makes.

    python -m benchmarks.paper_budget --out=/tmp/budget.json                 # every configs/paper preset
    python -m benchmarks.paper_budget --presets=mnist_dale_langevin --measure_cpu

For each preset (``configs/paper/<name>.py``, the full-size settings):

* FLOPs of one train step per example (network forward and backward, the M-DSM loss, Adam) and of
  one network evaluation per example, from XLA's cost analysis of the lowered computation
  (``jax.jit(...).lower(...).cost_analysis()``: nothing is run, so full-size networks cost only tracing);
* the run's totals: ``n_iters x batch`` train examples, ``eval n_samples x NFE`` sampler evaluations;
* hours on one H100 and one TPU v4 host (4 chips) at an assumed sustained rate, given on the command
  line (defaults: 25% of the H100's dense TF32 peak of 495 TFLOP/s, 25% of 4 x 275 TFLOP/s bf16 for
  the TPU v4 host). These are estimates from counted FLOPs, not measurements on those machines;
* ``--measure_cpu``: the median train-step time of the preset's CPU-sized version on this machine.

``--throughput=demo,configs/paper/mnist_dale_langevin.py:cpu,... --batch=64`` instead times the
pmapped train step of each named config at one batch, round-robin (one step of each in turn, so load
from other jobs falls on all alike), and prints images/s and the ratio to the first config.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp

from dale_langevin.losses import dsm_loss, network_score_fn
from dale_langevin.pipeline import config as config_lib, data, generate, paper

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROBE_BATCH = 8  # FLOPs are counted at this batch and divided by it


def _flops(lowered) -> float:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


def counted_flops(config) -> dict:
    """``{"forward", "train"}``: XLA-counted FLOPs per example of one network evaluation and one train step."""
    process, model = config_lib.make_process(config), config_lib.make_model(config, backend="gpu")
    param = config_lib.make_parametrisation(config)
    shape = (PROBE_BATCH, *data.get_spec(config.data.dataset).image_shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    cond = jnp.zeros((PROBE_BATCH,), jnp.int32 if param.conditioning == "level_index" else jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones(shape), cond))
    score_fn = lambda p: network_score_fn(lambda i, c: model.apply(p, i, c, train=False), process, param)
    t = jax.ShapeDtypeStruct((PROBE_BATCH,), jnp.float32)
    forward = _flops(jax.jit(lambda p, x, t: score_fn(p)(x, t)).lower(params, x, t))

    def loss(p, x0, key):
        net = lambda i, c: model.apply(p, i, c, train=True, rngs={"dropout": key})
        return dsm_loss(key, network_score_fn(net, process, param), x0, process, **config_lib.loss_settings(config))

    train = _flops(jax.jit(jax.grad(loss)).lower(params, x, jax.eval_shape(lambda: jax.random.key(0))))
    n_params = sum(int(a.size) for a in jax.tree.leaves(params))
    return {"forward": forward / PROBE_BATCH, "train": train / PROBE_BATCH, "params": n_params}


def _stepper(config):
    """A closure running one pmapped train step of ``config`` on a constant batch; returns its seconds."""
    from dale_langevin.pipeline import parallel, state as state_lib

    _, _, step, state = state_lib.build(config)
    p_step = parallel.pmap(step, donate_argnums=(0,))
    box = {"state": parallel.replicate(state)}
    shape = (config.training.batch_size, *data.get_spec(config.data.dataset).image_shape)
    batch = {"images": parallel.shard_batch(jnp.ones(shape) * 1.5)}

    def one() -> float:
        start = time.perf_counter()
        box["state"], metrics = p_step(box["state"], batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    return one


def cpu_step_seconds(config, steps: int = 3) -> float:
    """Median seconds of the pmapped train step of ``config`` on this machine (after one compile and one warm-up)."""
    one = _stepper(config)
    one()
    return statistics.median(one() for _ in range(steps))


def throughput(names: list[str], batch: int, steps: int) -> list[dict]:
    """Train-step images/s of each config (``configs/<name>.py`` or ``path.py[:arg]``) at ``batch``, round-robin."""
    configs = []
    for name in names:
        path, _, arg = name.partition(":")
        path = path if path.endswith(".py") else str(ROOT / "configs" / f"{path}.py")
        config = config_lib.load_config_file(path, *([arg] if arg else []))
        config.training.batch_size = batch
        configs.append(config)
    steppers = [_stepper(c) for c in configs]
    for one in steppers:  # compile and warm up
        one(), one()
    times = [[] for _ in steppers]
    for _ in range(steps):
        for k, one in enumerate(steppers):
            times[k].append(one())
    rows = []
    for name, config, t in zip(names, configs, times, strict=True):
        m = config.model
        rows.append(
            dict(config=name, network=m.name, parametrisation=m.parametrisation, batch=batch,
                 median_step_s=statistics.median(t), images_per_s=batch / statistics.median(t))
        )  # fmt: skip
    for r in rows:
        r["speed_vs_first"] = r["images_per_s"] / rows[0]["images_per_s"]
    return rows


def budget(name: str, h100_tflops: float, tpu_tflops: float, measure_cpu: bool) -> dict:
    """The budget row of ``configs/paper/<name>.py`` (see the module docstring)."""
    path = ROOT / "configs" / "paper" / f"{name}.py"
    config = config_lib.load_config_file(path)
    flops = counted_flops(config)
    nfe = generate.network_evaluations(config)
    n_eval = config.eval.get("n_samples") or paper.EVAL_SAMPLES
    train_total = flops["train"] * config.training.batch_size * config.training.n_iters
    sample_total = flops["forward"] * nfe * n_eval
    hours = lambda total, tflops: total / (tflops * 1e12) / 3600.0
    row = {
        "preset": name,
        "network": config.model.name,
        "params": flops["params"],
        "gflop_forward_per_example": flops["forward"] / 1e9,
        "gflop_train_step_per_example": flops["train"] / 1e9,
        "train_iters": config.training.n_iters,
        "batch": config.training.batch_size,
        "nfe": nfe,
        "nfe_authors": generate.network_evaluations_authors_loop(config),
        "eval_samples": n_eval,
        "train_pflop": train_total / 1e15,
        "sample_pflop": sample_total / 1e15,
        "h100_hours": {"train": hours(train_total, h100_tflops), "sample": hours(sample_total, h100_tflops)},
        "tpu_v4_host_hours": {"train": hours(train_total, tpu_tflops), "sample": hours(sample_total, tpu_tflops)},
    }
    if measure_cpu:
        cpu = config_lib.load_config_file(path, size="cpu")
        row["cpu_sized_step_seconds"] = cpu_step_seconds(cpu)
        row["cpu_sized_batch"] = cpu.training.batch_size
    return row


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="", help="comma list of configs/paper names; '' = all")
    p.add_argument("--h100_tflops", type=float, default=0.25 * 495, help="assumed sustained TFLOP/s of one H100")
    p.add_argument("--tpu_tflops", type=float, default=0.25 * 4 * 275, help="assumed sustained TFLOP/s of a v4 host")
    p.add_argument("--measure_cpu", action="store_true", help="also time the CPU-sized preset's train step here")
    p.add_argument("--throughput", default="", help="comma list of configs to time round-robin instead")
    p.add_argument("--batch", type=int, default=64, help="--throughput: the global train batch")
    p.add_argument("--steps", type=int, default=5, help="--throughput: timed steps per config")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.throughput:
        rows = throughput(args.throughput.split(","), args.batch, args.steps)
        for row in rows:
            print(json.dumps(row), flush=True)
        if args.out:
            pathlib.Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        return rows
    names = [n for n in args.presets.split(",") if n] or sorted(
        os.path.basename(f)[:-3] for f in glob.glob(str(ROOT / "configs" / "paper" / "*.py"))
    )
    rows = []
    for name in names:
        row = budget(name, args.h100_tflops, args.tpu_tflops, args.measure_cpu)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps({"assumed_tflops": vars(args), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
