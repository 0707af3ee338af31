"""Search a few-step sampler's settings at a fixed NFE on held-out data, then score the choice on the test split.

    python -m benchmarks.fast_schedule --config=configs/demo.py --workdir=/tmp/demo --nfe=10 --out=/tmp/search10.json

``--workdir`` is a trained run (its checkpoints and cached prior fit; the offline classifier is
trained there once if missing). The search (:func:`dale_langevin.evaluation.schedule_search.search`)
draws ``--n_samples`` samples per candidate with sampling seed ``--search_seed`` and scores them against
``--n_reference`` training images picked at random, in the features of a classifier trained on the others.
The chosen settings and the start are then drawn with the report seeds ``--seeds`` and scored by the
evaluation protocol (offline FID/KID against the test split, :class:`~dale_langevin.evaluation.evaluate.Scorer`),
so the reported figures never took part in the choice.
Each line of the JSON's ``history`` is one candidate; ``report`` holds the test-split scores per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from dale_langevin.pipeline import config as config_lib, parallel


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the run's config file (configs/*.py)")
    p.add_argument("--workdir", required=True, help="the trained run's work directory")
    p.add_argument("--nfe", type=int, default=10, help="network evaluations per sample (default 10)")
    p.add_argument("--method", default="dpm2m", help="the start's sampler: ddim, dpm2m or dpm3m (default dpm2m)")
    p.add_argument("--n_samples", type=int, default=256, help="samples per candidate and per report seed")
    p.add_argument("--n_reference", type=int, default=500, help="held-out training images (a seeded random subset)")
    p.add_argument("--search_seed", type=int, default=1000, help="sampling seed of the search")
    p.add_argument("--seeds", default="0,1,2", help="report seeds, comma-separated (test split)")
    p.add_argument("--passes", type=int, default=2, help="coordinate-descent passes (default 2)")
    p.add_argument("--axes", default="split,t_end,grid,eta,method", help="axes to sweep, in order")
    p.add_argument(
        "--reference_steps",
        type=int,
        default=0,
        help="also report the config's own sampler at this many levels (e.g. 1000: the bar); 0 skips it",
    )
    p.add_argument("--out", default=None, help="JSON file for the history, the choice and the report")
    args = p.parse_args(argv)

    config = config_lib.load_config_file(args.config)
    parallel.force_host_devices(config.host_device_count)  # before JAX starts its backends
    import jax

    from dale_langevin.evaluation import schedule_search as ss
    from dale_langevin.evaluation.evaluate import Scorer
    from dale_langevin.pipeline import generate, state as state_lib

    config_lib.validate(config)
    process, model = config_lib.make_process(config), config_lib.make_model(config)
    stats = generate.start_stats(config, process, args.workdir)
    params = state_lib.restore_latest(config, args.workdir).ema_params
    scorer = Scorer(config, args.workdir)
    held_out = ss.held_out_for(config, args.workdir, args.n_reference)
    start = ss.Candidate(
        method=args.method, n_steps=max(args.nfe // 2, 1), denoise_steps=args.nfe - max(args.nfe // 2, 1)
    )
    objective = ss.held_out_objective(
        config, process, model, params, stats, held_out, n=args.n_samples, seed=args.search_seed
    )
    t0 = time.perf_counter()
    axes = tuple(a for a in args.axes.split(",") if a)
    result = ss.search(objective, start, axes=axes, passes=args.passes)
    result["search_seconds"] = time.perf_counter() - t0
    best = ss.Candidate(**result["best"])
    entries = [("start", start, start.label()), ("best", best, best.label())]
    if args.reference_steps:
        method = config.sampling.method
        entries.append(("reference", None, f"{method} at {args.reference_steps} levels (the config's settings)"))
    report = {}
    for name, c, label in entries:
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            rng = jax.random.fold_in(jax.random.key(config.seed + 1), seed)  # the ablation runner's draws
            t1 = time.perf_counter()
            if c is None:
                over = {"n_steps": args.reference_steps}
                images = generate.generate(config, process, model, params, stats, rng, args.n_samples, over)[0]
                nfe = generate.network_evaluations(config, over)
            else:
                images, nfe = ss.draw(config, process, model, params, stats, c, rng, args.n_samples), c.nfe
            rows.append({"seed": seed, "nfe": nfe, **scorer.score(images), "seconds": time.perf_counter() - t1})
            print(f"[report] {name:9s} {label:60s} seed {seed}  test FID {rows[-1]['fid']:.2f}", flush=True)
        report[name] = {"label": label, "candidate": dataclasses.asdict(c) if c else None, "draws": rows}
    result.update(report=report, nfe=args.nfe, n_samples=args.n_samples, workdir=args.workdir, config=args.config)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
