"""Ablations: multiplicative (GBM) against additive (VE, VP) diffusion, same network, data and budget.

    python -m dale_langevin.main --mode=ablate --config=configs/ablation_cpu.py --workdir=/tmp/ablation

The grid is data in the config: ``config.ablation.trainings`` (each model differs from the base
config by a few overrides: the process or the weighting) and ``config.ablation.grid`` (each row
differs from its training's config by its sampler and a few overrides; fields of :class:`Row`).
:func:`run` trains every model the selected rows need, samples each row once per sampling seed of
``config.ablation.seeds``, scores each draw with the shared
:class:`~dale_langevin.evaluation.evaluate.Scorer`, reports the mean and spread over the seeds, and has
:mod:`.report` write ``ablation.md``, ``ablation.csv``, ``nfe.png`` and ``samples.png``. Finished
trainings and draws are cached (``train/<name>/summary.json``, ``rows/<row>_<steps>_s<seed>.json``),
each keyed by a digest of what determines it, so a stopped run resumes and a changed grid redoes only
what it changed.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time

import jax
import numpy as np

from dale_langevin import samplers
from dale_langevin.evaluation import report
from dale_langevin.evaluation.evaluate import Scorer
from dale_langevin.nets import NETWORKS
from dale_langevin.pipeline import (
    config as config_lib,
    generate,
    parallel,
    state as state_lib,
    train,
    workdir as wd_lib,
)
from dale_langevin.pipeline.workdir import Workdir
from dale_langevin.processes import PROCESSES, LogVESDE
from dale_langevin.samplers import published

ABLATION_FIELDS = ("n_steps", "rows", "curves", "nfe_steps", "n_samples", "seeds", "trainings", "grid")
SEED_METRICS = report.SEED_METRICS


@dataclasses.dataclass(frozen=True)
class Training:
    """One model of the ablation: ``overrides`` ``((config path, value), ...)`` on the base config."""

    name: str
    description: str
    overrides: tuple = ()


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table.

    Attributes:
      name: the row's name (``config.ablation.rows`` selects by it).
      training: the :class:`Training` whose model it samples.
      group: what it ablates (``process``, ``weighting``, ``prior``, ``extras``): a table column.
      method: the registered sampler it uses (``config.sampling.method``).
      overrides: ``((config path, value), ...)`` on the training's config.
      levels: its sampler levels as a fraction of ``config.ablation.n_steps`` (0.5 for a solver with
        two network evaluations per level), for the main row; curve points set the levels directly.
      published: a dataset of :data:`dale_langevin.samplers.published.PUBLISHED` whose step size,
        ``L`` and annealing the row applies, rescaled to its levels; ``None`` keeps the config's.
    """

    name: str
    training: str
    group: str
    method: str
    overrides: tuple = ()
    levels: float = 1.0
    published: str | None = None


def _override(config, overrides):
    """A copy of ``config`` with ``overrides`` ``{path: value}``; a path that names no field raises (no silent new field)."""
    overrides = dict(overrides)
    for path in overrides:
        if not config_lib.has_field(config, path):
            raise ValueError(f"config.ablation: the override {path!r} names no config field")
    c = copy.deepcopy(config)
    with c.unlocked():
        c.update_from_flattened_dict(overrides)
    return c


def _selected(config) -> dict:
    """``config`` as a dict without the groups of the processes, networks and samplers it does not select."""
    d = config.to_dict()
    for block, key, registered in (
        ("process", "name", PROCESSES),
        ("model", "name", NETWORKS),
        ("sampling", "method", samplers.names()),
    ):
        if block in d:
            d[block] = {k: v for k, v in d[block].items() if k not in registered or k == d[block][key]}
    return d


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pick(d: dict, path: str):
    """The value at the dotted ``path`` of nested dicts ``d``; None where a part is missing (a retired field)."""
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def training_hash(config) -> str:
    """The cache key of a training: the fields that fix its trajectory (``config.trajectory_fields``: seed,
    process, data set, network, batch, loss, optimizer, EMA) and its length ``training.n_iters``. Intervals,
    paths, device counts, sampling and evaluation settings leave it unchanged."""
    d = _selected(config)
    paths = (*config_lib.trajectory_fields(config), "training.n_iters")
    return _digest({p: _pick(d, p) for p in paths})


def draw_hash(config, training_key: str, n_samples: int, seed: int) -> str:
    """The cache key of one draw of a row: the trained model's key ``training_key`` (:func:`training_hash` of the
    row's training), the row's process, sampler settings and start, the scoring settings, the sample count and
    the sampling seed."""
    d = _selected(config)
    fields = {"process": d["process"], "sampling": d["sampling"], "eval": d["eval"], "data": d["data"]["dataset"]}
    return _digest({**fields, "seed": d["seed"], "training": training_key, "n_samples": n_samples, "draw": seed})


def trainings(config) -> dict[str, Training]:
    """``config.ablation.trainings`` by name."""
    return {t.name: t for t in (Training(**dict(t)) for t in config.ablation.trainings)}


def grid(config) -> tuple[Row, ...]:
    """``config.ablation.grid`` as :class:`Row` objects, in table order."""
    return tuple(Row(**dict(r)) for r in config.ablation.grid)


def training_config(config, training: str):
    """The base config with the overrides of ``training`` (a name in ``config.ablation.trainings``)."""
    known = trainings(config)
    if training not in known:
        raise ValueError(f"unknown training {training!r}; config.ablation.trainings has {tuple(known)}")
    return _override(config, known[training].overrides)


def row_levels(config, row: Row, n_steps: int | None = None) -> int:
    """The sampler levels of ``row``: ``n_steps`` if given (a curve point), else ``ablation.n_steps * row.levels``."""
    return n_steps if n_steps is not None else max(1, int(config.ablation.n_steps * row.levels))


def row_config(config, row: Row, n_steps: int | None = None):
    """The config that samples ``row``: its training's config, its sampler at :func:`row_levels`, its overrides."""
    c = training_config(config, row.training)
    n = row_levels(config, row, n_steps)
    overrides = {
        "sampling.method": row.method,
        **{f"sampling.{row.method}.{k}": v for k, v in samplers.levels(row.method, n).items()},
    }
    if row.published is not None:
        T = c.process[c.process.name].T
        overrides.update(
            {f"sampling.{row.method}.{k}": v for k, v in published.settings(row.published, row.method, n, T).items()}
        )
    overrides.update(dict(row.overrides))
    return _override(c, overrides)


def describe(config) -> dict:
    """The table's descriptive columns of a row config: process, sampler, weighting, prior, extras."""
    method, s = config_lib.sampler_settings(config)
    if "denoise" in s:
        extras = "Tweedie step" if s["denoise"] else "off"
    else:
        parts = [
            f"L={s['n_inner']}" if s.get("n_inner", 1) > 1 else "",
            f"anneal {s['noise_decay']:.4g}" if s.get("noise_decay", 1.0) < 1 else "",
            f"delta {s['step_size']:.3g}" if s.get("step_size") is not None else "",
            f"{s['denoise_steps']} denoise" if s.get("denoise_steps") else "",
        ]
        extras = ", ".join(p for p in parts if p) or "off"
    return {
        "process": config.process.name,
        "sampler": samplers.get(method).describe(s),
        "weighting": config.training.weighting,
        "prior": config.sampling.start,
        "extras": extras,
    }


def select_rows(config, names) -> list[Row]:
    """The rows of the grid named in ``names`` (a comma string, a sequence, or ``"all"``), in table order."""
    rows = grid(config)
    row_names = tuple(r.name for r in rows)
    if isinstance(names, str):
        names = row_names if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in row_names]
    if unknown or not names:
        raise ValueError(
            f"config.ablation.rows: unknown or empty {unknown or names!r}; choose from {row_names} or 'all'"
        )
    return [r for r in rows if r.name in names]


def validate(config) -> list[Row]:
    """Checks ``config.ablation`` and every selected row's config; returns the selected rows."""
    if "ablation" not in config:
        raise ValueError("config has no 'ablation' block: start from configs/ablation_cpu.py")
    a = config.ablation
    for field in ABLATION_FIELDS:
        if field not in a:
            raise ValueError(f"config is missing field 'config.ablation.{field}'")
    try:
        trainings(config), grid(config)
    except TypeError as err:
        raise ValueError(f"config.ablation.trainings / grid: an entry has unknown or missing fields ({err})") from err
    rows = select_rows(config, a.rows)
    curves = select_rows(config, a.curves) if a.curves else []
    missing = [r.name for r in curves if r not in rows]
    if missing:
        raise ValueError(f"config.ablation.curves names rows not in config.ablation.rows: {missing}")
    if not (isinstance(a.n_steps, int) and a.n_steps >= 1):
        raise ValueError(f"config.ablation.n_steps must be an int >= 1, got {a.n_steps!r}")
    if not all(isinstance(n, int) and n >= 1 for n in a.nfe_steps):
        raise ValueError(f"config.ablation.nfe_steps must be ints >= 1, got {tuple(a.nfe_steps)}")
    if not (isinstance(a.n_samples, int) and a.n_samples >= 2):
        raise ValueError(f"config.ablation.n_samples must be an int >= 2, got {a.n_samples!r}")
    seeds = tuple(a.seeds)
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"config.ablation.seeds must be distinct ints >= 0, at least one, got {seeds}")
    for row in rows:
        try:
            rc = row_config(config, row)
            config_lib.validate(rc)
            check_process_change(training_config(config, row.training), rc)
        except ValueError as err:
            raise ValueError(f"ablation row {row.name!r}: {err}") from err
    return rows


def shares_prior_fit(row_cfg, trained_cfg) -> bool:
    """Whether a row samples its training's very process (name and every setting of the selected process group), so
    that the prior fits cached in the training's folder (:func:`generate.start_stats`) are the row's too."""
    return _selected(row_cfg)["process"] == _selected(trained_cfg)["process"]


def check_process_change(trained, sampled) -> None:
    """Raises ``ValueError`` unless the network trained under config ``trained`` is valid under ``sampled``'s process.

    The one change allowed: a ``gbm`` network sampled as ``log_ve``, the same process written additively
    (:meth:`LogVESDE.from_gbm` of the trained GBM, under the ``log_noise`` parametrisation, where the two
    networks are the same function of ``log x_t``).
    """
    before, after = trained.process.name, sampled.process.name
    if before == after:
        return
    if (before, after) != ("gbm", "log_ve"):
        raise ValueError(f"a network trained under process {before!r} cannot be sampled as {after!r}")
    if sampled.model.parametrisation != "log_noise":
        raise ValueError("log_ve can sample a GBM network only under the log_noise parametrisation")
    want = LogVESDE.from_gbm(config_lib.make_process(trained))
    if config_lib.make_process(sampled) != want:
        raise ValueError(
            f"config.process.log_ve must be config.process.gbm written additively: sigma={want.sigma}, T={want.T}, "
            f"data_offset={want.data_offset}, got {sampled.process.log_ve.to_dict()}"
        )


def train_model(config, workdir: Workdir, name: str, position: str = "", log=print) -> dict:
    """Trains ``name`` of ``config.ablation.trainings`` (or finds it finished, or resumes it); returns its summary."""
    known = trainings(config)
    path = workdir.ablation_training_summary(name)
    cfg = training_config(config, name)
    summary = wd_lib.read_json(path)
    if summary is not None and summary.get("config_hash") != training_hash(cfg):
        log(f"[ablation] training {name}: its config changed since it was trained; training again (resumes)")
        summary = None
    if summary is not None:
        return summary
    log(f"[ablation] training {position}{name} ({known[name].description})")
    t0 = time.perf_counter()
    last = train.train_and_evaluate(cfg, workdir.ablation_training(name))
    summary = {
        "training": name,
        "description": known[name].description,
        "steps": cfg.training.n_iters,
        "batch_size": cfg.training.batch_size,
        "seconds": time.perf_counter() - t0,
        "final_loss": last.get("loss"),
        "images_per_sec": last.get("images_per_sec"),
        "config_hash": training_hash(cfg),
    }
    if parallel.is_chief():
        wd_lib.write_json(path, summary)
    return summary


def sample_draw(config, workdir: Workdir, row: Row, n_steps: int | None, seed: int, scorer: Scorer, log=print) -> dict:
    """Samples ``config.ablation.n_samples`` images for ``row`` at ``n_steps`` levels with sampling seed ``seed``
    and scores them (cached in ``rows/<row>_<steps>_s<seed>.json``); returns the draw's record."""
    t0 = time.perf_counter()
    cfg, trained = row_config(config, row, n_steps), training_config(config, row.training)
    steps = row_levels(config, row, n_steps)
    n = config.ablation.n_samples
    path = workdir.ablation_row(row.name, steps, "json", seed)
    key = draw_hash(cfg, training_hash(trained), n, seed)
    cached = wd_lib.read_json(path)
    if cached is not None and cached.get("config_hash") == key:
        return cached
    train_dir = workdir.ablation_training(row.training)
    process, model = config_lib.make_process(cfg), config_lib.make_model(cfg)
    # A row may sample its training's network under another process or process setting (log-space VE reads
    # GBM's network): the training folder's prior fits are then of another law at T, so fit afresh, keep nothing.
    shared = shares_prior_fit(cfg, trained)
    stats = generate.start_stats(cfg, process, train_dir if shared else None, write=parallel.is_chief())
    params = state_lib.restore_latest(cfg, train_dir).ema_params
    t_sample = time.perf_counter()
    rng = jax.random.fold_in(jax.random.key(cfg.seed + 1), seed)
    images, _, _ = generate.generate(cfg, process, model, params, stats, rng, n)
    sampling_seconds = time.perf_counter() - t_sample
    scores = scorer.score(images)
    result = {
        "row": row.name,
        "group": row.group,
        "training": row.training,
        **describe(cfg),
        "n_steps": steps,
        "nfe": generate.network_evaluations(cfg),
        "n_samples": len(images),
        "seed": seed,
        **scores,
        "sampling_seconds": sampling_seconds,
        "seconds": time.perf_counter() - t0,  # restore, prior fit, sampling and scoring
        "config_hash": key,
    }
    if parallel.is_chief():
        wd_lib.save_npy(workdir.ablation_row(row.name, steps, "npy", seed), images[:16])
        wd_lib.write_json(path, result)
    log(
        f"[ablation] {row.name:32s} seed {seed}  NFE {result['nfe']:5d}  FID {result['fid']:8.2f}  "
        f"KID {result['kid']:.4f}  {result['seconds']:6.1f} s"
    )
    return result


def summarise(draws: list[dict]) -> dict:
    """One row from its draws (one per seed): the first draw's descriptive fields and, for every metric of
    :data:`SEED_METRICS`, ``<metric>`` the mean over the draws that scored, ``<metric>_std`` their sample standard
    deviation (NaN for fewer than two), ``<metric>_seeds`` every draw's value; ``failed_draws`` counts draws with
    no finite sample (NaN metrics), ``kid_subset_std`` is the mean spread of KID over its subsets, ``seconds``
    the total and ``seeds`` the seeds."""
    drop = (*SEED_METRICS, "kid_std", "seed", "seconds", "sampling_seconds", "config_hash")
    out = {k: v for k, v in draws[0].items() if k not in drop}
    scored = [d for d in draws if np.isfinite(float(d["fid"]))]
    for m in SEED_METRICS:
        values = np.asarray([float(d[m]) for d in scored], np.float64)
        out[m] = float(values.mean()) if len(values) else float("nan")
        out[f"{m}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
        out[f"{m}_seeds"] = [float(d[m]) for d in draws]
    out["diverged"] = float(np.mean([float(d["diverged"]) for d in draws]))  # every draw counts here
    out["kid_subset_std"] = float(np.mean([float(d["kid_std"]) for d in scored])) if scored else float("nan")
    out["failed_draws"] = len(draws) - len(scored)
    out["seeds"] = [d["seed"] for d in draws]
    out["seconds"] = float(sum(d["seconds"] for d in draws))
    return out


def sample_row(config, workdir: Workdir, row: Row, n_steps: int | None, scorer: Scorer, log=print) -> dict:
    """``row`` at ``n_steps`` levels, drawn once per seed of ``config.ablation.seeds``: :func:`summarise` of the draws."""
    return summarise([sample_draw(config, workdir, row, n_steps, s, scorer, log) for s in config.ablation.seeds])


def run(config, workdir: str | Workdir, log=print) -> dict:
    """Runs the whole ablation grid in ``workdir``; returns ``{"trainings", "rows", "curves", ...}`` and writes the files.

    Goes training by training: each model is trained, then every draw of its rows (main levels and
    curve points, every seed) is made, so a run stopped part way keeps finished models' draws, whose
    cached records are all a resumed run needs of them (their checkpoints are no longer read).
    """
    rows = validate(config)
    wd = Workdir.of(workdir)
    wd.makedirs()
    a = config.ablation
    t_start = time.perf_counter()
    scorer = Scorer(config, wd, log)
    log(f"[ablation] feature classifier test accuracy {scorer.accuracy:.3f}")
    curve_rows = {r.name for r in select_rows(config, a.curves)} if a.curves else set()
    names = list(dict.fromkeys(r.training for r in rows))
    trained, main, curves = {}, {}, {}
    for i, name in enumerate(names):
        trained[name] = train_model(config, wd, name, f"{i + 1}/{len(names)}: ", log)
        for r in (r for r in rows if r.training == name):
            main[r.name] = sample_row(config, wd, r, None, scorer, log)
            if r.name in curve_rows:
                points = [sample_row(config, wd, r, n, scorer, log) for n in a.nfe_steps] + [main[r.name]]
                curves[r.name] = sorted({p["nfe"]: p for p in points}.values(), key=lambda p: p["nfe"])
    draws = {(p["row"], p["n_steps"]): p["seconds"] for p in [*main.values(), *(q for c in curves.values() for q in c)]}
    result = {
        "trainings": trained,
        "rows": [main[r.name] for r in rows],
        "curves": {r.name: curves[r.name] for r in rows if r.name in curves},
        "classifier_accuracy": scorer.accuracy,
        "seconds": time.perf_counter() - t_start,
        # What the whole grid cost, cached parts included: each training's seconds are those of the invocation
        # that finished it (a preempted training's earlier part is not counted); each draw's its own.
        "training_seconds": float(sum(t["seconds"] for t in trained.values())),
        "draw_seconds": float(sum(draws.values())),
    }
    if parallel.is_chief():
        report.write_reports(config, wd, result)
    log(f"[ablation] done in {result['seconds'] / 60:.1f} min -> {wd.ablation_report('ablation.md')}")
    return result
