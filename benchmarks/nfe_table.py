"""FID against network evaluations (NFE): draw a trained run (or a distilled student) with several samplers and seeds.

    python -m benchmarks.nfe_table --config=configs/distill_cpu.py --workdir=STUDENT \\
      --entries="renoise:n_steps=1;renoise:n_steps=2;renoise:n_steps=4" --out=student.json

Each entry is ``method:key=value,key=value`` (a registered sampler and overrides of its settings in
``config.sampling.<method>``); entries are separated by ``;``. Every entry is drawn with each report
seed (``--seeds``): ``--n_samples`` images from the key ``fold_in(key(config.seed + 1), seed)``, the
ablation runner's, so every entry and every run of this benchmark starts from the same prior draws.
Each draw is scored by the evaluation protocol (:class:`~dale_langevin.evaluation.evaluate.Scorer`:
offline feature FID and KID against the test split, class entropy, nearest-neighbour ratio), and the
table gives mean ± sd over the seeds. ``--workdir`` holds the checkpoint (the student's, for a student
config), ``start_stats.npz`` and, if present, the offline classifier (trained there once otherwise).
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import numpy as np
from etils import epath

from dale_langevin.pipeline import config as config_lib, parallel


def parse_entries(text: str) -> list[tuple[str, dict]]:
    """``"m:a=1,b=x;m2"`` -> ``[("m", {"a": 1, "b": "x"}), ("m2", {})]``; values are Python literals or strings."""
    entries = []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        method, _, rest = part.partition(":")
        settings = {}
        for item in (i.strip() for i in rest.split(",") if i.strip()):
            key, eq, value = item.partition("=")
            if not eq:
                raise ValueError(f"entry {part!r}: {item!r} is not key=value")
            try:
                settings[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                settings[key.strip()] = value.strip()
        entries.append((method.strip(), settings))
    if not entries:
        raise ValueError("--entries names no sampler")
    return entries


def summarise(draws: list[dict], key: str) -> str:
    """``"mean ± sd"`` of ``key`` over the draws (sd with ``ddof=1``; a single draw shows its value)."""
    v = np.array([d[key] for d in draws], float)
    return f"{v.mean():.2f}" if len(v) == 1 else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}"


def write_strip(path: str, strips: list[tuple[str, np.ndarray]]) -> None:
    """One labelled row of images ``(n, H, W, C)`` in [0, 1] per ``(label, images)``, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dale_langevin.pipeline import images as images_lib, workdir as wd_lib

    fig, axes = plt.subplots(len(strips), 1, figsize=(9, 0.95 * len(strips)), squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], strips):
        ax.imshow(images_lib.make_grid(imgs, ncols=len(imgs)).squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(label, fontsize=8, loc="left", pad=2)
        ax.axis("off")
    fig.tight_layout()
    wd_lib.save_figure(epath.Path(path), fig)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the run's config file (configs/*.py)")
    p.add_argument("--workdir", required=True, help="the trained run's (or the student's) work directory")
    p.add_argument("--entries", required=True, help="method:key=value,...;method:... (see the module docstring)")
    p.add_argument("--n_samples", type=int, default=200, help="samples per draw (default 200, the ablation's)")
    p.add_argument("--seeds", default="0,1,2", help="report seeds, comma-separated (default 0,1,2)")
    p.add_argument("--step", type=int, default=None, help="score the newest checkpoint at or before this step")
    p.add_argument("--out", default=None, help="JSON file for every draw's scores and the summary")
    p.add_argument("--strip", default=None, help="PNG: the first seed's first 12 samples of every entry, one row each")
    args = p.parse_args(argv)

    config = config_lib.load_config_file(args.config)
    parallel.force_host_devices(config.host_device_count)  # before JAX starts its backends
    import jax

    from dale_langevin import samplers
    from dale_langevin.evaluation.evaluate import Scorer
    from dale_langevin.pipeline import generate, state as state_lib

    entries = parse_entries(args.entries)
    for method, settings in entries:  # every entry checked before any drawing
        samplers.get(method).validate(config_lib.make_process(config), settings)
    config_lib.validate(config)
    process, model = config_lib.make_process(config), config_lib.make_model(config)
    stats = generate.start_stats(config, process, args.workdir)
    restored = state_lib.restore_latest(config, args.workdir, max_step=args.step)
    scorer = Scorer(config, args.workdir)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, strips = [], []
    for method, settings in entries:
        cfg = config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.sampling.method = method
        nfe = generate.network_evaluations(cfg, settings)
        label = samplers.get(method).describe(config_lib.sampler_settings(cfg, **settings)[1])
        draws = []
        for seed in seeds:
            rng = jax.random.fold_in(jax.random.key(config.seed + 1), seed)
            t0 = time.perf_counter()
            images = generate.generate(cfg, process, model, restored.ema_params, stats, rng, args.n_samples, settings)[
                0
            ]
            draws.append({"seed": seed, **scorer.score(images), "seconds": time.perf_counter() - t0})
            if seed == seeds[0]:
                strips.append((f"{label}, NFE {nfe}", images[:12]))
            print(f"[nfe_table] {label} {settings} NFE {nfe} seed {seed}: FID {draws[-1]['fid']:.2f}", flush=True)
        rows.append({"method": method, "settings": settings, "label": label, "nfe": nfe, "draws": draws})
    print("\n| sampler | settings | NFE | FID | KID | class entropy | nn ratio |\n|---|---|---:|---|---|---|---|")
    for r in rows:
        d = r["draws"]
        print(
            f"| {r['label']} | {r['settings']} | {r['nfe']} | {summarise(d, 'fid')} | {summarise(d, 'kid')} | "
            f"{summarise(d, 'class_entropy')} | {summarise(d, 'nn_ratio')} |"
        )
    if args.strip:
        write_strip(args.strip, strips)
    result = {"config": args.config, "workdir": args.workdir, "step": int(restored.step), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=float)
    return result


if __name__ == "__main__":
    main()
