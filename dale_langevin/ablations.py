"""Ablations: multiplicative (GBM) against additive (VE, VP) diffusion, same network, data and budget.

    python -m dale_langevin.ablations --config=configs/ablation_cpu.py --workdir=/tmp/ablation

One command trains every model the selected rows need (``config.ablation.rows``), samples each row
and measures it with the offline classifier features of :mod:`dale_langevin.evaluation`, then
writes to the work directory:

- ``ablation.md`` and ``ablation.csv``: one line per row (process, sampler, weighting, prior,
  sampler extras, network evaluations, offline FID and KID, class coverage, nearest-train
  distance against the test baseline, seconds), plus the training budget of each model;
- ``nfe.png``: offline FID and KID against network evaluations for the samplers in
  ``config.ablation.curves`` (each sampled at every ``config.ablation.nfe_steps``);
- ``samples.png``: the first samples of every row, one strip per row.

Every row differs from its training's config by a few overrides (:data:`ROWS`); every training
differs from the base config by the process or the weighting (:data:`TRAININGS`). Finished
trainings and rows are cached (``train/<name>/summary.json``, ``rows/<row>_<steps>.json``), so
an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import os
import time

import numpy as np

# Trainings: name -> (description, config overrides). Everything else (network, optimizer, data,
# steps, batch) comes from the base config, so the comparison is at equal budget.
TRAININGS: dict[str, tuple[str, dict]] = {
    "gbm": ("GBM, M-DSM, published weighting v_t^2", {}),
    "gbm_noise": ("GBM, M-DSM, noise weighting v_t", {"training.weighting": "noise"}),
    "gbm_likelihood": ("GBM, M-DSM, likelihood weighting sigma^2", {"training.weighting": "likelihood"}),
    "ve": ("VE, DSM, weighting s_t^2 (noise variance)", {"process.name": "ve", "sampling.method": "euler_maruyama"}),
    "vp": ("VP, DSM, weighting s_t^2 (noise variance)", {"process.name": "vp", "sampling.method": "euler_maruyama"}),
}

EXTRAS_OFF = {"sampling.denoise_steps": 0, "sampling.noise_decay": 1.0, "sampling.step_size": None,
              "sampling.n_inner": 1}


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: a training, sampler overrides on top of it, and what it ablates."""

    name: str
    training: str
    group: str
    overrides: tuple[tuple[str, object], ...] = ()


ROWS: tuple[Row, ...] = (
    Row("gbm_dale_langevin", "gbm", "process"),
    Row("gbm_sign_agnostic", "gbm", "process", (("sampling.method", "sign_agnostic"),)),
    Row("ve_euler_maruyama", "ve", "process"),
    Row("vp_euler_maruyama", "vp", "process"),
    Row("gbm_ode", "gbm", "process", (("sampling.method", "ode"), ("@ode_steps_half", True))),
    Row("weighting_noise", "gbm_noise", "weighting"),
    Row("weighting_likelihood", "gbm_likelihood", "weighting"),
    Row("prior_scalar", "gbm", "prior", (("sampling.start", "scalar"),)),
    Row("extras_off_dale_langevin", "gbm", "extras", tuple(EXTRAS_OFF.items())),
    Row("extras_off_sign_agnostic", "gbm", "extras",
        tuple(EXTRAS_OFF.items()) + (("sampling.method", "sign_agnostic"),)),
    Row("extras_published_dale_langevin", "gbm", "extras", (("@published_extras", "dale_langevin"),)),
)
ROW_NAMES = tuple(r.name for r in ROWS)

# Published Fashion-MNIST sampler settings at N = 1000 levels (paper notes): step size delta, inner
# iterations L, noise annealing per level. Rescaled to N levels so the total annealing and the ratio
# delta / (1/N) are kept.
PUBLISHED_EXTRAS = {"dale_langevin": (5.86e-4, 1, 0.995), "sign_agnostic": (1.468e-3, 3, 0.9995)}


def published_extras(method: str, n_steps: int, T: float = 1.0) -> dict:
    """Config overrides for the published extras of ``method`` rescaled from 1000 to ``n_steps`` levels."""
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"config.sampling.n_steps must be an int >= 1, got {n_steps!r}")
    delta, n_inner, decay = PUBLISHED_EXTRAS[method]
    scale = 1000.0 / n_steps
    return {"sampling.method": method, "sampling.step_size": delta * scale * T, "sampling.n_inner": n_inner,
            "sampling.noise_decay": float(decay ** scale)}


def _override(config, overrides: dict):
    c = copy.deepcopy(config)
    with c.unlocked():
        c.update_from_flattened_dict({k: v for k, v in overrides.items() if not k.startswith("@")})
    return c


def training_config(base, training: str):
    """The base config with the overrides of ``training`` (a key of :data:`TRAININGS`)."""
    if training not in TRAININGS:
        raise ValueError(f"unknown training {training!r}; known: {tuple(TRAININGS)}")
    return _override(base, TRAININGS[training][1])


def row_config(base, row: Row, n_steps: int | None = None):
    """The config that samples ``row``: its training's config, the row's overrides, ``n_steps`` levels."""
    c = training_config(base, row.training)
    overrides = dict(row.overrides)
    if n_steps is not None:
        overrides["sampling.n_steps"] = n_steps
    if overrides.pop("@ode_steps_half", False) and n_steps is None:  # dpm2 costs 2 evaluations per level
        overrides["sampling.n_steps"] = max(1, c.sampling.n_steps // 2)
    if "@published_extras" in overrides:
        n = overrides.get("sampling.n_steps", c.sampling.n_steps)
        overrides.update(published_extras(overrides.pop("@published_extras"), n, c.process.gbm.T))
    return _override(c, overrides)


def describe(config) -> dict:
    """The table's descriptive columns of a row config: process, sampler, weighting, prior, extras."""
    s = config.sampling
    sampler = f"ode ({s.ode_solver})" if s.method == "ode" else s.method
    if s.method == "ode":
        extras = "Tweedie step"
    else:
        parts = [f"L={s.n_inner}" if s.n_inner > 1 else "",
                 f"anneal {s.noise_decay:.4g}" if s.noise_decay < 1 else "",
                 f"delta {s.step_size:.3g}" if s.step_size is not None else "",
                 f"{s.denoise_steps} denoise" if s.denoise_steps else ""]
        extras = ", ".join(p for p in parts if p) or "off"
    return {"process": config.process.name, "sampler": sampler, "weighting": config.training.weighting,
            "prior": s.start, "extras": extras}


def select_rows(names) -> list[Row]:
    """The :data:`ROWS` named in ``names`` (a comma string, a sequence, or ``"all"``), in table order."""
    if isinstance(names, str):
        names = ROW_NAMES if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROW_NAMES]
    if unknown or not names:
        raise ValueError(f"config.ablation.rows: unknown or empty {unknown or names!r}; choose from {ROW_NAMES} or 'all'")
    return [r for r in ROWS if r.name in names]


def validate(config) -> list[Row]:
    """Checks ``config.ablation`` and every row's config; returns the selected rows."""
    from dale_langevin import config as config_lib

    if "ablation" not in config:
        raise ValueError("config has no 'ablation' block: start from configs/ablation_cpu.py")
    a = config.ablation
    for field in ("rows", "curves", "nfe_steps", "n_samples"):
        if field not in a:
            raise ValueError(f"config is missing field 'config.ablation.{field}'")
    rows = select_rows(a.rows)
    curves = select_rows(a.curves) if a.curves else []
    missing = [r.name for r in curves if r not in rows]
    if missing:
        raise ValueError(f"config.ablation.curves names rows not in config.ablation.rows: {missing}")
    if not all(isinstance(n, int) and n >= 1 for n in a.nfe_steps):
        raise ValueError(f"config.ablation.nfe_steps must be ints >= 1, got {tuple(a.nfe_steps)}")
    if not (isinstance(a.n_samples, int) and a.n_samples >= 2):
        raise ValueError(f"config.ablation.n_samples must be an int >= 2, got {a.n_samples!r}")
    for row in rows:
        try:
            config_lib.validate(row_config(config, row))
        except ValueError as err:
            raise ValueError(f"ablation row {row.name!r}: {err}") from err
    return rows


def _read_json(path: str):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def train_models(config, workdir: str, rows: list[Row], log=print) -> dict:
    """Trains (or finds finished) every model ``rows`` need; returns ``{training: summary}``."""
    from dale_langevin import train

    summaries = {}
    names = list(dict.fromkeys(r.training for r in rows))
    for i, name in enumerate(names):
        wd = os.path.join(workdir, "train", name)
        path = os.path.join(wd, "summary.json")
        summary = _read_json(path)
        if summary is None:
            log(f"[ablation] training {i + 1}/{len(names)}: {name} ({TRAININGS[name][0]})")
            cfg = training_config(config, name)
            t0 = time.perf_counter()
            last = train.train_and_evaluate(cfg, wd)
            summary = {"training": name, "description": TRAININGS[name][0], "steps": cfg.training.n_iters,
                       "batch_size": cfg.training.batch_size, "seconds": time.perf_counter() - t0,
                       "final_loss": last.get("loss"), "images_per_sec": last.get("images_per_sec")}
            _write_json(path, summary)
        summaries[name] = summary
    return summaries


class _FeatureJudge:
    """The classifier features of the test split, to score sample sets against (offline FID/KID)."""

    def __init__(self, config, workdir: str, log=print):
        from dale_langevin import classifier, data

        d, e = config.data, config.eval
        self.num_classes = data.get_spec(d.dataset).num_classes
        train_x, train_y = data.load_arrays(d.dataset, "train", data_dir=d.data_dir, download=d.download)
        test_x, test_y = data.load_arrays(d.dataset, "test", data_dir=d.data_dir, download=d.download)
        self.train_u = train_x.astype(np.float32) / 255.0
        self.model, self.params, _ = classifier.load_or_train(workdir, train_x, train_y, num_classes=self.num_classes,
                                                              epochs=e.classifier_epochs, seed=config.seed, log=log)
        test_pred, self.test_feats = classifier.predict(self.model, self.params, test_x)
        self.accuracy = float(np.mean(test_pred == test_y))
        from dale_langevin.evaluation import nearest_neighbours

        self.baseline_nn = float(np.median(nearest_neighbours(test_x.astype(np.float32) / 255.0, self.train_u)[1]))
        self.config = config

    def __call__(self, images: np.ndarray) -> dict:
        """Offline FID, KID, class coverage, nearest-train distance of ``images`` ``(N, H, W, C)`` in [0, 1].

        Samples with NaN/inf pixels are left out and counted in ``diverged`` (a fraction); the
        metrics are NaN when fewer than two samples are finite.
        """
        from dale_langevin import classifier, metrics
        from dale_langevin.evaluation import class_histogram, nearest_neighbours

        e = self.config.eval
        ok = np.all(np.isfinite(images.reshape(len(images), -1)), axis=1)
        scores = {"diverged": float(1.0 - ok.mean())}  # NaN/inf samples (e.g. sign-agnostic gone negative)
        if ok.sum() < 2:
            return {**scores, **{k: float("nan") for k in ("fid", "kid", "kid_std", "class_entropy", "nn_ratio")},
                    "empty_classes": self.num_classes}
        images = images[ok]
        pred, feats = classifier.predict(self.model, self.params, images)
        subset = min(e.kid_subset_size, len(images), len(self.test_feats))
        kid_mean, kid_std = metrics.kid(feats, self.test_feats, n_subsets=e.kid_subsets, subset_size=subset,
                                        seed=self.config.seed)
        hist = class_histogram(pred, self.num_classes)
        nn_median = float(np.median(nearest_neighbours(images, self.train_u)[1]))
        return {**scores, "fid": metrics.fid(feats, self.test_feats), "kid": kid_mean, "kid_std": kid_std,
                "class_entropy": hist["normalised_entropy"], "empty_classes": len(hist["empty_classes"]),
                "nn_ratio": nn_median / self.baseline_nn}


def sample_row(config, workdir: str, row: Row, n_steps: int | None, judge: _FeatureJudge, log=print) -> dict:
    """Samples ``config.ablation.n_samples`` images for ``row`` at ``n_steps`` levels and scores them (cached)."""
    import jax

    from dale_langevin import config as config_lib, sampling

    cfg = row_config(config, row, n_steps)
    steps = cfg.sampling.n_steps
    path = os.path.join(workdir, "rows", f"{row.name}_{steps}.json")
    cached = _read_json(path)
    if cached is not None:
        return cached
    train_dir = os.path.join(workdir, "train", row.training)
    process, model = config_lib.make_process(cfg), config_lib.make_model(cfg)
    stats = sampling.start_stats(cfg, process, train_dir)
    params = sampling.restore_latest_state(cfg, train_dir).ema_params
    t0 = time.perf_counter()
    images, _, _ = sampling.generate(cfg, process, model, params, stats, jax.random.key(cfg.seed + 1),
                                       config.ablation.n_samples)
    seconds = time.perf_counter() - t0
    result = {"row": row.name, "group": row.group, "training": row.training, **describe(cfg),
              "n_steps": steps, "nfe": sampling.network_evaluations(cfg), "n_samples": len(images),
              "seconds": seconds, **judge(images)}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(os.path.join(workdir, "rows", f"{row.name}_{steps}.npy"), images[:16])
    _write_json(path, result)
    log(f"[ablation] {row.name:32s} NFE {result['nfe']:5d}  FID {result['fid']:8.2f}  KID {result['kid']:.4f}  "
        f"{seconds:6.1f} s")
    return result


def run(config, workdir: str, log=print) -> dict:
    """Runs the whole ablation grid in ``workdir``; returns ``{"trainings", "rows", "curves"}`` and writes the files."""
    rows = validate(config)
    a = config.ablation
    t_start = time.perf_counter()
    trainings = train_models(config, workdir, rows, log)
    judge = _FeatureJudge(config, workdir, log)
    log(f"[ablation] feature classifier test accuracy {judge.accuracy:.3f}")
    main = [sample_row(config, workdir, r, None, judge, log) for r in rows]
    curve_rows = select_rows(a.curves) if a.curves else []
    curves = {}
    for r in curve_rows:
        points = [sample_row(config, workdir, r, n, judge, log) for n in a.nfe_steps]
        points += [m for m in main if m["row"] == r.name]
        curves[r.name] = sorted({p["nfe"]: p for p in points}.values(), key=lambda p: p["nfe"])
    result = {"trainings": trainings, "rows": main, "curves": curves, "classifier_accuracy": judge.accuracy,
              "seconds": time.perf_counter() - t_start}
    write_reports(config, workdir, result)
    log(f"[ablation] done in {result['seconds'] / 60:.1f} min -> {workdir}/ablation.md")
    return result


COLUMNS = ("group", "row", "process", "sampler", "weighting", "prior", "extras", "nfe", "fid", "kid", "kid_std",
           "class_entropy", "empty_classes", "nn_ratio", "diverged", "seconds")


def write_reports(config, workdir: str, result: dict) -> None:
    """Writes ``ablation.csv``, ``ablation.md``, ``nfe.png`` and ``samples.png`` from :func:`run`'s result."""
    with open(os.path.join(workdir, "ablation.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow(r)
    with open(os.path.join(workdir, "ablation.md"), "w") as f:
        f.write(markdown_report(config, result))
    _plot_curves(result["curves"], os.path.join(workdir, "nfe.png"))
    _plot_samples(workdir, result["rows"], os.path.join(workdir, "samples.png"))


def markdown_report(config, result: dict) -> str:
    """The markdown table of rows and trainings, with the budget they were measured at."""
    t, a = config.training, config.ablation
    lines = [
        "# Ablation: multiplicative (GBM) against additive (VE, VP) diffusion", "",
        f"Dataset `{config.data.dataset}`; every model: the same U-Net ({config.model.channels} channels, "
        f"{tuple(config.model.channel_mult)}), Adam lr {config.optim.lr}, batch {t.batch_size}, {t.n_iters} steps, "
        f"EMA {config.ema.decay}. Each row: {a.n_samples} samples scored against the test split in the features "
        f"of the offline classifier (test accuracy {result['classifier_accuracy']:.3f}); KID: "
        f"{config.eval.kid_subsets} subsets. nn ratio: median distance of a sample to its nearest training image "
        "over the same for test images (well below 1 flags memorisation). diverged: samples with NaN/inf pixels, left "
        "out of the metrics. Lower FID/KID is better.", "",
        "| group | row | process | sampler | weighting | prior | extras | NFE | FID | KID | class entropy | "
        "empty classes | nn ratio | diverged | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['group']} | {r['row']} | {r['process']} | {r['sampler']} | {r['weighting']} | "
                     f"{r['prior']} | {r['extras']} | {r['nfe']} | {r['fid']:.2f} | {r['kid']:.3f} ± "
                     f"{r['kid_std']:.3f} | {r['class_entropy']:.3f} | {r['empty_classes']} | {r['nn_ratio']:.2f} | "
                     f"{r['diverged']:.1%} | {r['seconds']:.0f} |")
    lines += ["", "Trainings:", "", "| training | description | steps | seconds | final loss |", "|---|---|---|---|---|"]
    for s in result["trainings"].values():
        loss = f"{s['final_loss']:.3f}" if s.get("final_loss") is not None else "-"
        lines.append(f"| {s['training']} | {s['description']} | {s['steps']} | {s['seconds']:.0f} | {loss} |")
    if result["curves"]:
        width = max(len(points) for points in result["curves"].values())
        lines += ["", "FID against network evaluations (each cell: NFE: FID):", "",
                  "| row | " + " | ".join(f"point {i + 1}" for i in range(width)) + " |", "|---|" + "---|" * width]
        for name, points in result["curves"].items():
            cells = [f"{p['nfe']}: {p['fid']:.2f}" for p in points] + [""] * (width - len(points))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "![metric against NFE](nfe.png)"]
    lines += ["", f"Whole run: {result['seconds'] / 60:.1f} minutes.", "", "![samples of every row](samples.png)", ""]
    return "\n".join(lines)


def _plot_curves(curves: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in curves.items():
        nfe = [p["nfe"] for p in points]
        axes[0].plot(nfe, [p["fid"] for p in points], "o-", label=name)
        axes[1].errorbar(nfe, [p["kid"] for p in points], yerr=[p["kid_std"] for p in points], fmt="o-", capsize=3,
                         label=name)
    for ax, name in zip(axes, ("offline FID", "offline KID")):
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_samples(workdir: str, rows: list[dict], path: str, n: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dale_langevin import images as images_lib

    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.6 + 3, 0.75 * len(rows) + 0.3), squeeze=False)
    for ax, r in zip(axes[:, 0], rows):
        imgs = np.load(os.path.join(workdir, "rows", f"{r['row']}_{r['n_steps']}.npy"))[:n]
        grid = images_lib.make_grid(imgs, ncols=n, scale=1)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{r['row']}\nFID {r['fid']:.1f}", rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):  # pragma: no cover - thin CLI over run()
    """``python -m dale_langevin.ablations --config=... --workdir=...``."""
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from dale_langevin import hostmem, parallel

    config = _CONFIG.value
    parallel.force_host_devices(config.host_device_count)
    hostmem.configure(config.host_allocator)
    run(config, _WORKDIR.value)


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Ablation config (configs/ablation_cpu.py).",
                                              lock_config=True)
    _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the trainings, samples and tables.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
