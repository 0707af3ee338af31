"""Schedule search for the few-step samplers: how to spend a fixed number of network evaluations, chosen on held-out data.

At a budget of ``nfe`` network evaluations a few-step sampler (``ddim``, ``dpm2m``, ``dpm3m`` of
:mod:`dale_langevin.samplers.few_step`) still has free settings: how many evaluations go to solver
steps and how many to Tweedie updates at the end (``split``), where the grid ends (``t_end``), how it
is spaced (``grid``: ``log_std``, or ``power`` with its ``rho``), how much noise the steps inject
(``eta``) and the solver itself (``method``). :func:`search` tunes them by coordinate descent: from a
start, each axis in turn is swept with the others held, and the best value is kept, for ``passes``
passes. A candidate's score is the feature FID of its samples against **held-out training images**
(``n_reference`` of the training split picked at random; :class:`HeldOut`), in the features of a
classifier trained on the rest of the split, drawn with sampling seeds of the search's own: the test split and
the report's seeds play no part in the choice, so the test FID of the chosen settings is an honest
figure. (The evaluation protocol's classifier cannot serve: it was trained on those images, and FID
in its features against them ranked candidates against the test FID; see docs/fast_samplers.md.)

Every candidate with the same method, step count and Tweedie count shares one compiled program: the
grid ``ts`` and ``eta`` are arguments of the grid cores
(:func:`~dale_langevin.samplers.few_step.multistep_on_grid`, :func:`~dale_langevin.samplers.few_step.ddim_on_grid`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from dale_langevin import samplers
from dale_langevin.evaluation import classifier, metrics
from dale_langevin.losses import network_score_fn
from dale_langevin.pipeline import config as config_lib, data, generate, parallel
from dale_langevin.pipeline.workdir import Workdir
from dale_langevin.samplers import few_step

METHODS = ("ddim", "dpm2m", "dpm3m")
ORDER = {"ddim": 1, "dpm2m": 2, "dpm3m": 3}


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One setting of a few-step sampler: ``n_steps`` solver steps to ``t_end``, then ``denoise_steps`` Tweedie updates."""

    method: str = "dpm2m"
    n_steps: int = 5
    denoise_steps: int = 5
    t_end: float = 5e-3
    spacing: str = "log_std"
    rho: float = 7.0
    eta: float = 1.0

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: ``n_steps + denoise_steps``."""
        return self.n_steps + self.denoise_steps

    def settings(self) -> dict:
        """The sampler's settings (``config.sampling.<method>``) for :func:`dale_langevin.samplers.sample`."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "method"}

    def label(self) -> str:
        grid = self.spacing if self.spacing != "power" else f"power rho {self.rho:g}"
        return f"{self.method} {self.n_steps}+{self.denoise_steps}, t_end {self.t_end:g}, {grid}, eta {self.eta:g}"


# The values each axis sweeps (``split``: the number of solver steps, the rest of the budget being Tweedie updates).
AXES = {
    "split": None,  # 1 .. nfe, set from the budget
    "t_end": (2e-3, 5e-3, 1e-2, 2e-2, 4e-2),
    "grid": (("log_std", 7.0), ("power", 1.0), ("power", 3.0), ("power", 7.0)),
    "eta": (0.0, 0.5, 0.8, 1.0),
    "method": METHODS,
}


def neighbours(c: Candidate, axis: str, values=None) -> list[Candidate]:
    """The candidates that differ from ``c`` on ``axis`` alone, one per value of ``values`` (default
    :data:`AXES`); ``split`` keeps ``c.nfe``."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {tuple(AXES)}, got {axis!r}")
    if axis == "split":
        values = range(1, c.nfe + 1) if values is None else values
        return [dataclasses.replace(c, n_steps=n, denoise_steps=c.nfe - n) for n in values]
    values = AXES[axis] if values is None else values
    if axis == "grid":
        return [dataclasses.replace(c, spacing=s, rho=r) for s, r in values]
    return [dataclasses.replace(c, **{axis: v}) for v in values]


@functools.lru_cache(maxsize=32)
def _pmapped_core(model, process, param, method: str, denoise_steps: int):
    """``(params, rngs, x_T, ts, eta) -> x_0`` pmapped over the local devices, for every grid ``ts`` of one length."""
    order = ORDER[method]

    def device_sample(params, rng, x_T, ts, eta):
        score_fn = network_score_fn(lambda inp, level: model.apply(params, inp, level, train=False), process, param)
        if order == 1:
            return few_step.ddim_on_grid(rng, score_fn, x_T, process, ts, eta=eta, denoise_steps=denoise_steps)
        return few_step.multistep_on_grid(
            rng, score_fn, x_T, process, ts, order=order, eta=eta, denoise_steps=denoise_steps
        )

    return parallel.pmap(device_sample)


def draw(config, process, model, params, stats: dict, candidate: Candidate, rng: jax.Array, n: int) -> np.ndarray:
    """``n`` images ``(n, H, W, C)`` in [0, 1] by ``candidate`` from ``config.sampling.start``, in batches of
    ``config.sampling.batch_size`` (batch ``b`` from ``fold_in(rng, b)``, as :func:`generate.generate`: the
    same ``rng`` gives every candidate the same starts). One process; raises ``ValueError`` on a bad setting."""
    samplers.get(candidate.method).validate(process, candidate.settings())
    core = _pmapped_core(
        model, process, config_lib.make_parametrisation(config), candidate.method, candidate.denoise_steps
    )
    ts = few_step.time_grid(process, candidate.n_steps, candidate.t_end, candidate.spacing, candidate.rho)
    n_dev = jax.local_device_count()
    ts_dev = jnp.broadcast_to(ts, (n_dev, *ts.shape))
    eta_dev = jnp.full((n_dev,), candidate.eta, jnp.float32)
    rparams = parallel.replicate(params)
    batch, out = config.sampling.batch_size, []
    for b in range(math.ceil(n / batch)):
        start_rng, noise_rng = jax.random.split(jax.random.fold_in(rng, b))
        x_T, _ = generate.initial_state(start_rng, process, stats, config.sampling.start, batch)
        x0 = core(rparams, parallel.device_keys(noise_rng), parallel.shard_batch(np.asarray(x_T)), ts_dev, eta_dev)
        out.append(parallel.unshard(x0))
    return np.asarray(process.decode(np.concatenate(out)[:n]))


class HeldOut:
    """Feature FID against held-out images: the search's objective.

    Args:
      features: ``features(images01 (N, H, W, C)) -> (N, D)``, the feature extractor.
      reference: the held-out images ``(M, H, W, C)`` in [0, 1], ``M >= 2``; their features' mean and
        covariance are the reference. The extractor must not have been trained on them.

    :func:`held_out_for` builds the search's: ``n_reference`` training images picked at random
    (:func:`held_out_indices`), in the features of a classifier trained on the others.
    """

    def __init__(self, features, reference: np.ndarray):
        if len(reference) < 2:
            raise ValueError(f"HeldOut needs at least 2 reference images, got {len(reference)}")
        self.features = features
        self.mu, self.sigma = metrics.feature_stats(features(reference))

    def fid(self, images01: np.ndarray) -> float:
        """FID of ``images01`` ``(N, H, W, C)`` in [0, 1] against the held-out images; inf if fewer than two are finite."""
        ok = generate.finite_samples(images01)
        if ok.sum() < 2:
            return float("inf")
        return metrics.frechet_distance(*metrics.feature_stats(self.features(images01[ok])), self.mu, self.sigma)


def held_out_indices(n_total: int, n_reference: int, seed: int) -> np.ndarray:
    """``n_reference`` distinct indices ``(n_reference,)`` of ``range(n_total)``, drawn with ``seed``: a random subset, not
    the last images (a split stored sorted by class, as the embedded digits are, would give one or two classes)."""
    return np.sort(np.random.default_rng(seed).permutation(n_total)[:n_reference])


def held_out_for(config, workdir, n_reference: int = 500, log=print) -> HeldOut:
    """The search's :class:`HeldOut` for a run: ``n_reference`` training images of ``config.data`` picked at random
    (:func:`held_out_indices` with ``config.seed``), in the features of the offline classifier architecture trained
    (once, cached in ``workdir.search_classifier``) on the other training images, ``config.eval.classifier_epochs``
    epochs."""
    d = config.data
    x, y = data.load_arrays(d.dataset, "train", data_dir=d.data_dir, download=d.download)
    if not 2 <= n_reference <= len(x) - 100:
        raise ValueError(
            f"n_reference must be in [2, {len(x) - 100}] (the classifier trains on the rest), got {n_reference}"
        )
    held = np.zeros(len(x), bool)
    held[held_out_indices(len(x), n_reference, config.seed)] = True
    model, params, _ = classifier.load_or_train(
        Workdir.of(workdir).search_classifier(n_reference, config.seed),
        x[~held],
        y[~held],
        num_classes=data.get_spec(d.dataset).num_classes,
        epochs=config.eval.classifier_epochs,
        seed=config.seed,
        log=log,
    )
    return HeldOut(lambda images01: classifier.predict(model, params, images01)[1], x[held].astype(np.float32) / 255.0)


def search(
    evaluate,
    start: Candidate,
    *,
    axes: tuple[str, ...] = ("split", "t_end", "grid", "eta", "method"),
    values: dict | None = None,
    passes: int = 2,
    log=print,
) -> dict:
    """Coordinate descent over ``axes`` from ``start`` at ``start.nfe`` evaluations; returns ``{"best", "fid", "history"}``.

    ``evaluate(candidate) -> float`` is the objective (lower is better; :func:`held_out_objective`), called
    once per distinct candidate (results are memoised). ``values`` overrides an axis's values
    (:data:`AXES`). A pass sweeps every axis once; the search stops early when a pass changes nothing
    (``passes = 0`` scores the start alone).
    ``history`` lists every evaluated candidate with its score and seconds, in order.
    """
    values = dict(values or {})
    unknown = sorted(set(axes) - set(AXES)) + sorted(set(values) - set(AXES))
    if unknown:
        raise ValueError(f"unknown axes {unknown}; the axes are {tuple(AXES)}")
    seen, history = {}, []

    def score(c: Candidate) -> float:
        if c not in seen:
            t0 = time.perf_counter()
            seen[c] = float(evaluate(c))
            history.append({"candidate": dataclasses.asdict(c), "fid": seen[c], "seconds": time.perf_counter() - t0})
            log(f"[search] {c.label():60s} FID {seen[c]:8.2f}")
        return seen[c]

    best = start
    score(start)
    for p in range(passes):
        before = best
        for axis in axes:
            options = neighbours(best, axis, values.get(axis))
            best = min(options + [best], key=score)
        log(f"[search] pass {p + 1}: {best.label()}  FID {seen[best]:.2f}")
        if best == before:
            break
    return {"best": dataclasses.asdict(best), "fid": seen[best], "history": history}


def held_out_objective(config, process, model, params, stats: dict, held_out: HeldOut, *, n: int, seed: int):
    """``evaluate(candidate)`` for :func:`search`: :meth:`HeldOut.fid` of ``n`` samples drawn with sampling seed ``seed``."""
    rng = jax.random.key(seed)
    return lambda c: held_out.fid(draw(config, process, model, params, stats, c, rng, n))
