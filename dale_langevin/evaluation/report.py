"""The ablation's reports: the markdown and CSV tables and the two figures, from :func:`.ablations.run`'s result.

Pure formatting and plotting; files go through :mod:`dale_langevin.pipeline.workdir`.
"""

from __future__ import annotations

import numpy as np

from dale_langevin.pipeline import images as images_lib, workdir as wd_lib
from dale_langevin.pipeline.workdir import Workdir

_DESCRIPTION = ("group", "row", "training", "process", "sampler", "weighting", "prior", "extras", "nfe")
# The per-draw metrics a row reports as mean and spread over its sampling seeds.
SEED_METRICS = ("fid", "kid", "class_entropy", "empty_classes", "nn_ratio", "diverged")
# ablation.csv: each metric's mean over the sampling seeds and its standard deviation (empty for one seed),
# KID's spread over its subsets, the draws that failed (every sample non-finite), the seeds used.
COLUMNS = (
    *_DESCRIPTION,
    *(c for m in SEED_METRICS for c in (m, f"{m}_std")),
    "kid_subset_std",
    "failed_draws",
    "n_samples",
    "seeds",
    "seconds",
)


def write_reports(config, workdir: Workdir, result: dict) -> None:
    """Writes ``ablation.csv``, ``ablation.md``, ``nfe.png`` and ``samples.png`` from :func:`~.ablations.run`'s result."""
    rows = [{**r, "seeds": " ".join(str(s) for s in r["seeds"])} for r in result["rows"]]
    wd_lib.write_csv(workdir.ablation_report("ablation.csv"), rows, list(COLUMNS))
    wd_lib.write_text(workdir.ablation_report("ablation.md"), markdown_report(config, result))
    wd_lib.save_figure(workdir.ablation_report("nfe.png"), plot_curves(result["curves"]))
    strips = [
        wd_lib.load_npy(workdir.ablation_row(r["row"], r["n_steps"], "npy", r["seeds"][0])) for r in result["rows"]
    ]
    wd_lib.save_figure(workdir.ablation_report("samples.png"), plot_samples(result["rows"], strips))


def describe_network(config) -> str:
    """``config.model`` in a few words: the network, its fields, and the parametrisation."""
    m = config.model
    fields = ", ".join(f"{k} {tuple(v) if isinstance(v, list | tuple) else v}" for k, v in m[m.name].items())
    return f"{m.name}: {fields}; {m.parametrisation} parametrisation"


def _spread(r: dict, metric: str, fmt: str) -> str:
    """``mean ± std`` of a row's metric over its sampling seeds (the mean alone when fewer than two draws scored)."""
    mean, std = format(r[metric], fmt), r[metric + "_std"]
    return mean if np.isnan(std) else f"{mean} ± {format(std, fmt)}"


def curve_cell(p: dict) -> str:
    """``NFE: FID`` of a curve point, with the share of diverged samples when there are any."""
    diverged = f" ({p['diverged']:.0%} diverged)" if p["diverged"] > 0 else ""
    return f"{p['nfe']}: {_spread(p, 'fid', '.1f')}{diverged}"


def markdown_report(config, result: dict) -> str:
    """The markdown table of rows and trainings, with the budget they were measured at."""
    t, a = config.training, config.ablation
    seeds = tuple(a.seeds)
    lines = [
        "# Ablation: multiplicative (GBM) against additive (VE, VP) diffusion",
        "",
        f"Dataset `{config.data.dataset}`; every model: the same network ({describe_network(config)}), "
        f"Adam lr {config.optim.lr}, batch {t.batch_size}, {t.n_iters} steps, "
        f"EMA {config.ema.decay}. Each row: {len(seeds)} draw(s) of {a.n_samples} samples (sampling seeds "
        f"{', '.join(map(str, seeds))}), each scored against the test split in the features "
        f"of the offline classifier (test accuracy {result['classifier_accuracy']:.3f}); a cell is the mean over "
        "the draws ± their standard deviation (sampling noise of one trained model: every row shares the seeds, "
        "so rows are paired). KID: "
        f"{config.eval.kid_subsets} subsets. nn ratio: median distance of a sample to its nearest training image "
        "over the same for test images (well below 1 flags memorisation). diverged: samples with NaN/inf pixels, left "
        "out of the metrics (a draw with no finite sample is left out of the mean and counted as failed). Lower "
        "FID/KID is better.",
        "",
        "| group | row | training | process | sampler | weighting | prior | extras | NFE | FID | KID | "
        "class entropy | nn ratio | diverged | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['group']} | {r['row']} | {r['training']} | {r['process']} | {r['sampler']} | {r['weighting']} | "
            f"{r['prior']} | {r['extras']} | {r['nfe']} | {_spread(r, 'fid', '.1f')} | {_spread(r, 'kid', '.2f')} | "
            f"{_spread(r, 'class_entropy', '.3f')} | {_spread(r, 'nn_ratio', '.2f')} | {r['diverged']:.1%} | "
            f"{r['seconds']:.0f} |"
        )
    lines += [
        "",
        "Trainings:",
        "",
        "| training | description | steps | seconds | final loss |",
        "|---|---|---|---|---|",
    ]
    for s in result["trainings"].values():
        loss = f"{s['final_loss']:.3f}" if s.get("final_loss") is not None else "-"
        lines.append(f"| {s['training']} | {s['description']} | {s['steps']} | {s['seconds']:.0f} | {loss} |")
    if result["curves"]:
        width = max(len(points) for points in result["curves"].values())
        lines += [
            "",
            "FID against network evaluations (each cell: NFE: FID, mean ± std over the seeds; where samples "
            "diverged, the share that did: their metrics are of the rest):",
            "",
            "| row | " + " | ".join(f"point {i + 1}" for i in range(width)) + " |",
            "|---|" + "---|" * width,
        ]
        for name, points in result["curves"].items():
            cells = [curve_cell(p) for p in points] + [""] * (width - len(points))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "![metric against NFE](nfe.png)"]
    lines += [
        "",
        f"Compute: {result['training_seconds'] / 60:.1f} minutes of training and {result['draw_seconds'] / 60:.1f} of "
        f"sampling and scoring, summed over the invocations that made the grid (this one: {result['seconds'] / 60:.1f}).",
        "",
        "![samples of every row](samples.png)",
        "",
    ]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: dict):
    """A figure of offline FID and KID against network evaluations, one line per curve row; error bars: the
    standard deviation over the sampling seeds; a cross marks a point where over 1% of the samples diverged."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for name, points in curves.items():
        nfe = [p["nfe"] for p in points]
        for ax, m in zip(axes, ("fid", "kid")):
            err = np.nan_to_num([p[f"{m}_std"] for p in points])  # no bar where fewer than two draws scored
            line = ax.errorbar(nfe, [p[m] for p in points], yerr=err, fmt="o-", capsize=3, label=name)
            for p in points:  # a point scored on the samples that did not diverge: say how many did
                if p["diverged"] > 0.01:
                    ax.plot(p["nfe"], p[m], "x", ms=12, color=line[0].get_color())
                    ax.annotate(
                        f"{p['diverged']:.0%} diverged",
                        (p["nfe"], p[m]),
                        fontsize=7,
                        xytext=(4, 4),
                        textcoords="offset points",
                    )
    for ax, name in zip(axes, ("offline FID", "offline KID")):
        ax.set_xscale("log")
        if name == "offline FID":  # spans 10 to 500 across processes; KID can be negative (unbiased)
            ax.set_yscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plt.close(fig)
    return fig


def plot_samples(rows: list[dict], strips: list[np.ndarray], n: int = 12):
    """A figure of the first ``n`` samples of every row (``strips[i]`` ``(N, H, W, C)`` in [0, 1]), one strip a row."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(n * 0.6 + 3, 0.75 * len(rows) + 0.3), squeeze=False)
    for ax, r, imgs in zip(axes[:, 0], rows, strips):
        imgs = imgs[:n]
        grid = images_lib.make_grid(imgs, ncols=n, scale=1)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"{r['row']}\nFID {_spread(r, 'fid', '.1f')}", rotation=0, ha="right", va="center", fontsize=7)
    fig.tight_layout()
    plt.close(fig)
    return fig
