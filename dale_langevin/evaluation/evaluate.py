"""``--mode=eval``: sample quality, diversity and memorisation of a trained run.

Reads ``WORKDIR/samples.npz`` (sampling first if it is missing or was drawn with other sampler settings,
start, count or seed than the config's; the count is ``config.eval.n_samples``, default
``config.sampling.n_samples``, drawn over all devices and processes) and writes ``eval.json``,
``eval.md`` and ``nearest_neighbours.png``:
- offline feature FID and KID (64 subsets of 64, as published) between the samples and the test
  split, in the penultimate features of a small classifier trained once on the train split
  (:mod:`dale_langevin.evaluation.classifier`), with that classifier's test accuracy;
- the test split's features and their mean/covariance come from a cache kept once per dataset and
  feature extractor (:mod:`dale_langevin.evaluation.reference`, ``config.eval.reference_dir``);
- the class histogram of the samples under the classifier (mode collapse shows as empty classes);
- nearest training images of the samples and the distance distribution against the
  test-to-train baseline (memorisation shows as sample distances far below the baseline);
- Inception-V3 FID and KID (the TTUR graph, :mod:`dale_langevin.evaluation.inception`; same protocol),
  comparable with papers, when the weights are configured, cached or downloadable
  (``config.eval.inception``): otherwise the report gives the reason and the offline metrics stand;
- bits per dimension of ``config.eval.bpd_examples`` test images through the probability-flow ODE
  (:mod:`dale_langevin.evaluation.likelihood`: uniform dequantisation ``u = (pixel + U[0, 1)) / 256``,
  bits/dim of the 8-bit data, mean and standard error), GBM only;
- the network evaluations per sample, ours and as the paper's authors' loop counts them.
"""

from __future__ import annotations

import numpy as np

from dale_langevin.evaluation import classifier, inception, likelihood, metrics, reference
from dale_langevin.pipeline import config as config_lib, data, generate, parallel, workdir as wd_lib
from dale_langevin.pipeline.workdir import Workdir


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Index ``(N,)`` and Euclidean distance ``(N,)`` of each query's nearest reference (flattened pixels)."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = references.reshape(len(references), -1).astype(np.float64)
    r2 = np.sum(r**2, axis=1)
    idx, dist = [], []
    for s in range(0, len(q), chunk):
        d2 = np.sum(q[s : s + chunk] ** 2, axis=1)[:, None] - 2.0 * q[s : s + chunk] @ r.T + r2[None]
        j = np.argmin(d2, axis=1)
        idx.append(j)
        dist.append(np.sqrt(np.maximum(d2[np.arange(len(j)), j], 0.0)))
    return np.concatenate(idx), np.concatenate(dist)


def class_histogram(labels: np.ndarray, num_classes: int) -> dict:
    """Counts per class ``(num_classes,)``, their normalised entropy (1 = uniform) and the empty classes."""
    counts = np.bincount(labels, minlength=num_classes)
    p = counts / max(counts.sum(), 1)
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0])) / np.log(num_classes)
    return {
        "counts": counts.tolist(),
        "normalised_entropy": float(entropy),
        "empty_classes": [int(k) for k in np.flatnonzero(counts == 0)],
    }


def _quantiles(d: np.ndarray) -> dict:
    return {q: float(np.quantile(d, p)) for q, p in (("p05", 0.05), ("median", 0.5), ("p95", 0.95))}


class Scorer:
    """The reference side of every sample-set score: train and test images, and the offline classifier.

    Built once per work directory (the classifier is trained once and kept in ``workdir.classifier``),
    then :meth:`score` measures any number of sample sets; ``--mode=eval`` and the ablations share it.

    Attributes: ``train_u``/``test_u`` images ``(N, H, W, C)`` in [0, 1], ``test_x`` the uint8 test
    images, ``test_y`` labels, ``reference`` the classifier's cached test statistics
    (:class:`~dale_langevin.evaluation.reference.Reference`: features, mean, covariance, labels, where
    they came from), ``test_pred``/``test_feats`` its labels and features, ``accuracy`` the classifier's
    test accuracy, ``baseline_nn`` the test-to-train nearest distances ``(N_test,)``.
    """

    def __init__(self, config, workdir: str | Workdir, log=print):
        workdir = Workdir.of(workdir)
        d, e = config.data, config.eval
        self.config = config
        self.num_classes = data.get_spec(d.dataset).num_classes
        train_x, train_y = data.load_arrays(d.dataset, "train", data_dir=d.data_dir, download=d.download)
        test_x, self.test_y = data.load_arrays(d.dataset, "test", data_dir=d.data_dir, download=d.download)
        self.test_x = test_x
        self.train_u, self.test_u = train_x.astype(np.float32) / 255.0, test_x.astype(np.float32) / 255.0
        self.model, self.params, self.trained_now = classifier.load_or_train(
            workdir.classifier,
            train_x,
            train_y,
            num_classes=self.num_classes,
            epochs=e.classifier_epochs,
            seed=config.seed,
            log=log,
        )
        self.reference = reference.classifier_reference(e, d.dataset, self.model, self.params, test_x, log)
        self.test_pred, self.test_feats = self.reference.labels, self.reference.features
        self.accuracy = float(np.mean(self.test_pred == self.test_y))
        self.baseline_nn = nearest_neighbours(self.test_u, self.train_u)[1]

    def features(self, images01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The classifier's labels ``(N,)`` and features ``(N, D)`` of images ``(N, H, W, C)`` in [0, 1]."""
        return classifier.predict(self.model, self.params, images01)

    def kid(self, feats: np.ndarray) -> tuple[float, float, int]:
        """KID ``(mean, std, subset_size)`` of features against the test features (``config.eval`` protocol)."""
        e = self.config.eval
        subset = min(e.kid_subset_size, len(feats), len(self.test_feats))
        mean, std = metrics.kid(
            feats, self.test_feats, n_subsets=e.kid_subsets, subset_size=subset, seed=self.config.seed
        )
        return mean, std, subset

    def fid(self, feats: np.ndarray) -> float:
        """FID of features ``(N, D)`` against the cached test mean and covariance."""
        return metrics.frechet_distance(*metrics.feature_stats(feats), self.reference.mu, self.reference.sigma)

    def score(self, images01: np.ndarray) -> dict:
        """Offline FID, KID, class coverage, nearest-train distance of ``images01`` ``(N, H, W, C)`` in [0, 1].

        Samples with NaN/inf pixels are left out and counted in ``diverged`` (a fraction); the
        metrics are NaN when fewer than two samples are finite.
        """
        ok = generate.finite_samples(images01)
        scores = {"diverged": float(1.0 - ok.mean())}
        if ok.sum() < 2:
            return {
                **scores,
                **{k: float("nan") for k in ("fid", "kid", "kid_std", "class_entropy", "nn_ratio")},
                "empty_classes": self.num_classes,
            }
        images01 = images01[ok]
        pred, feats = self.features(images01)
        kid_mean, kid_std, _ = self.kid(feats)
        hist = class_histogram(pred, self.num_classes)
        nn_median = float(np.median(nearest_neighbours(images01, self.train_u)[1]))
        return {
            **scores,
            "fid": self.fid(feats),
            "kid": kid_mean,
            "kid_std": kid_std,
            "class_entropy": hist["normalised_entropy"],
            "empty_classes": len(hist["empty_classes"]),
            "nn_ratio": nn_median / float(np.median(self.baseline_nn)),
        }


def load_inception_or_reason(eval_config, log=print) -> tuple[inception.InceptionNet | None, dict | None]:
    """``(network, None)``, or ``(None, {"status": ..., "reason": ...})`` when ``eval.inception`` is off or
    the weights are unavailable under ``auto``. Raises :class:`inception.InceptionUnavailableError` under ``on``."""
    mode = eval_config.inception
    if mode == "off":
        return None, {"status": "off", "reason": "config.eval.inception='off'"}
    try:
        url = inception.DEFAULT_URL if eval_config.inception_url is None else eval_config.inception_url
        net = inception.load_inception(eval_config.inception_path, url=url, allow_download=bool(url))
    except inception.InceptionUnavailableError as err:
        if mode == "on":
            raise
        log(f"Inception-V3 FID/KID skipped (config.eval.inception='auto'). {err}")
        return None, {"status": "unavailable", "reason": str(err)}
    log(f"Inception-V3 weights: {net.weights}")
    return net, None


def inception_metrics(
    net,
    generated: np.ndarray,
    test: np.ndarray | reference.Reference,
    *,
    batch_size: int,
    kid_subsets: int,
    kid_subset_size: int,
    seed: int,
) -> dict:
    """Inception FID and KID of ``generated`` ``(N, H, W, C)`` in [0, 1] against the test split, eval.json's entry.

    ``test`` is the test images (their features are computed here) or their cached
    :class:`~dale_langevin.evaluation.reference.Reference` (features, mean, covariance).
    """
    gen_feats = inception.inception_features(net, generated, batch_size)
    if isinstance(test, reference.Reference):
        test_feats, test_mu, test_sigma = test.features, test.mu, test.sigma
    else:
        test_feats = inception.inception_features(net, test, batch_size)
        test_mu, test_sigma = metrics.feature_stats(test_feats)
    subset = min(kid_subset_size, len(gen_feats), len(test_feats))
    mean, std = metrics.kid(gen_feats, test_feats, n_subsets=kid_subsets, subset_size=subset, seed=seed)
    return {
        "status": "ok",
        "fid": metrics.frechet_distance(*metrics.feature_stats(gen_feats), test_mu, test_sigma),
        "kid": {"mean": mean, "std": std, "subsets": kid_subsets, "subset_size": subset},
        "weights": net.weights,
    }


def network_evaluations(config) -> dict:
    """eval.json's ``nfe`` (ours, :func:`generate.network_evaluations`) and ``nfe_authors_loop`` (the paper's
    count for the two multiplicative SDE samplers, :func:`generate.network_evaluations_authors_loop`; else None)."""
    return {
        "nfe": generate.network_evaluations(config),
        "nfe_authors_loop": generate.network_evaluations_authors_loop(config),
    }


def evaluate(config, workdir: str | Workdir, log=print) -> dict:
    """Runs every metric on the run in ``workdir``; returns the dict written to ``eval.json``.

    Scores :func:`config.eval_n_samples` samples (``samples.npz`` is drawn again when its
    ``samples.json`` records another count or other settings). With ``config.eval.inception='on'`` and
    no usable weights this raises before any sampling or training. Every process must call it (sampling
    and bits/dim run pmapped in lockstep); process 0 writes the files.
    """
    config_lib.validate(config)
    wd = Workdir.of(workdir)
    net, inception_result = load_inception_or_reason(config.eval, log)  # before the expensive work
    n_samples = config_lib.eval_n_samples(config)
    why = generate.samples_outdated(config, wd, n_samples)
    if why:
        log(f"{why}: sampling first.")
        generate.sample_and_save(config, wd, n_samples)
    generated = np.asarray(wd_lib.load_npz(wd.samples_npz)["images"], np.float32)
    finite = generate.finite_samples(generated)
    n_non_finite = int(len(generated) - finite.sum())
    if finite.sum() < 2:
        raise ValueError(
            f"{n_non_finite} of the {len(generated)} samples in {wd.samples_npz} have non-finite pixels: the sampler "
            f"diverged ({config.sampling.method}). Sample again with more levels or a smaller step "
            f"(config.sampling.{config.sampling.method}), or with the sign-preserving dale_langevin sampler."
        )
    if n_non_finite:
        log(
            f"{n_non_finite} of {len(generated)} samples have non-finite pixels (a diverged sampler): left out of "
            "every metric below."
        )
    generated = generated[finite]
    e = config.eval
    scorer = Scorer(config, wd, log)
    gen_pred, gen_feats = scorer.features(generated)
    kid_mean, kid_std, subset = scorer.kid(gen_feats)

    nn_idx, nn_dist = nearest_neighbours(generated, scorer.train_u)
    shown = min(e.n_nearest, len(generated))
    pairs = np.stack([generated[:shown], scorer.train_u[nn_idx[:shown]]], axis=1).reshape(
        2 * shown, *generated.shape[1:]
    )
    if parallel.is_chief():
        wd_lib.save_grid(wd.nearest_neighbours_png, pairs, ncols=8)
    references = {"classifier": scorer.reference.info(), "inception": None}
    if net is not None:
        inception_ref = reference.inception_reference(e, config.data.dataset, net, scorer.test_x, log)
        references["inception"] = inception_ref.info()
        log(f"Inception-V3 features of {len(generated)} samples (CPU) ...")
        inception_result = inception_metrics(
            net,
            generated,
            inception_ref,
            batch_size=e.inception_batch_size,
            kid_subsets=e.kid_subsets,
            kid_subset_size=e.kid_subset_size,
            seed=config.seed,
        )

    bpd = likelihood.evaluate_bpd(config, wd, log)

    result = {
        "dataset": config.data.dataset,
        "n_samples": n_samples,
        "n_samples_field": "config.eval.n_samples" if e.n_samples is not None else "config.sampling.n_samples",
        "n_generated": int(len(generated)),
        "n_non_finite": n_non_finite,
        "n_test": int(len(scorer.test_u)),
        "classifier": {
            "test_accuracy": scorer.accuracy,
            "trained_now": scorer.trained_now,
            "epochs": e.classifier_epochs,
        },
        "offline_fid": scorer.fid(gen_feats),
        "offline_kid": {"mean": kid_mean, "std": kid_std, "subsets": e.kid_subsets, "subset_size": subset},
        "class_histogram": class_histogram(gen_pred, scorer.num_classes),
        "test_class_histogram": class_histogram(scorer.test_pred, scorer.num_classes),
        "nearest_train_distance": {"generated": _quantiles(nn_dist), "test_baseline": _quantiles(scorer.baseline_nn)},
        "inception": inception_result,
        "reference_stats": references,
        "bpd": bpd,
        "sampler": config.sampling.method,
        **network_evaluations(config),
    }
    if parallel.is_chief():
        wd_lib.write_json(wd.eval_json, result)
        wd_lib.write_text(wd.eval_md, _report(result))
    log(
        f"offline FID {result['offline_fid']:.2f}, KID {kid_mean:.4f} +- {kid_std:.4f}, classifier test accuracy "
        f"{result['classifier']['test_accuracy']:.3f}, classes {result['class_histogram']['counts']} -> {wd.eval_md}"
    )
    if inception_result["status"] == "ok":
        k = inception_result["kid"]
        log(f"Inception-V3 FID {inception_result['fid']:.2f}, KID {k['mean']:.4f} +- {k['std']:.4f}")
    else:
        log(f"Inception-V3 FID/KID not computed ({inception_result['status']}); see {wd.eval_md}")
    if bpd["status"] == "ok":
        log(
            f"bits/dim {bpd['mean']:.4f} +- {_stderr(bpd)} over {bpd['n_examples']} test images ({bpd['seconds']:.1f} s)"
        )
    return result


def _stderr(bpd: dict) -> str:
    return "n/a" if bpd["stderr"] is None else f"{bpd['stderr']:.4f}"


def _bpd_lines(r: dict) -> tuple[list[str], list[str]]:
    """The bits/dim row of the metric table, and the note below it (the convention, or why there is none)."""
    b = r["bpd"]
    if b["status"] != "ok":
        return [], [f"Bits/dim not computed ({b['status']}): {b['reason']}."]
    row = [
        f"| bits/dim, {b['n_examples']} test images (ODE, {b['steps']} {b['solver']} steps, Hutchinson) | "
        f"{b['mean']:.4f} +- {_stderr(b)} |"
    ]
    note = [
        f"Bits/dim: the 8-bit test images dequantised with uniform noise ({b['dequantisation']}), "
        f"log-likelihood through the probability-flow ODE from t_min = {b['t_min']:.3g} to T ({b['steps']} Heun "
        f"steps, one Rademacher probe per image), prior at T: {b['prior']}"
        + (f" ({b['prior_note']})" if b["prior_note"] else "")
        + "; bits/dim = -(log p(x) - D log 256) / (D ln 2), mean +- standard error over the images "
        f"(EMA parameters of step {b['step']}, {b['seconds']:.1f} s).",
    ]
    return row, note


def _reference_lines(r: dict) -> list[str]:
    lines = []
    for name, ref in r["reference_stats"].items():
        if ref is not None:
            lines.append(
                f"Reference statistics ({name}, {ref['n_images']} test images): {ref['status']}, `{ref['file']}`."
            )
    return lines


def _inception_lines(r: dict) -> tuple[list[str], list[str]]:
    """The Inception rows of the metric table, and the note below it (the weights, or why there are none)."""
    i = r["inception"]
    if i["status"] != "ok":
        return [], [f"Inception-V3 FID/KID not computed ({i['status']}):", "", "```", i["reason"], "```"]
    k = i["kid"]
    rows = [
        f"| Inception-V3 FID (pool_3, TTUR graph) | {i['fid']:.3f} |",
        f"| Inception-V3 KID ({k['subsets']} subsets of {k['subset_size']}) | {k['mean']:.4f} +- {k['std']:.4f} |",
    ]
    return rows, [f"Inception-V3 weights: `{i['weights']}`."]


def _report(r: dict) -> str:
    g, b = r["nearest_train_distance"]["generated"], r["nearest_train_distance"]["test_baseline"]
    inception_rows, inception_note = _inception_lines(r)
    bpd_rows, bpd_note = _bpd_lines(r)
    authors = r["nfe_authors_loop"]
    return "\n".join(
        [
            f"# Evaluation: {r['dataset']}",
            "",
            f"{r['n_generated']} generated samples against {r['n_test']} test images"
            + (f" ({r['n_non_finite']} more had non-finite pixels and are left out)" if r["n_non_finite"] else "")
            + f"; {r['n_samples']} drawn ({r['n_samples_field']}).",
            "",
            f"Network evaluations per sample ({r['sampler']}): {r['nfe']} (ours); "
            + (
                f"{authors} as the authors' reverse loop counts them (L + 1 per level, one discarded)."
                if authors is not None
                else "the authors' loop count does not apply to this sampler."
            ),
            "",
            "| metric | value |",
            "|---|---|",
            f"| offline FID (classifier features) | {r['offline_fid']:.3f} |",
            f"| offline KID ({r['offline_kid']['subsets']} subsets of {r['offline_kid']['subset_size']}) | "
            f"{r['offline_kid']['mean']:.4f} +- {r['offline_kid']['std']:.4f} |",
            *inception_rows,
            *bpd_rows,
            f"| classifier test accuracy | {r['classifier']['test_accuracy']:.3f} |",
            f"| class-histogram entropy (1 = uniform) | {r['class_histogram']['normalised_entropy']:.3f} |",
            f"| empty classes | {r['class_histogram']['empty_classes'] or 'none'} |",
            f"| nearest-train distance, samples (p05 / median / p95) | {g['p05']:.2f} / {g['median']:.2f} / {g['p95']:.2f} |",
            f"| nearest-train distance, test baseline | {b['p05']:.2f} / {b['median']:.2f} / {b['p95']:.2f} |",
            "",
            f"Class counts of the samples: {r['class_histogram']['counts']}",
            "",
            *inception_note,
            "",
            *bpd_note,
            "",
            *_reference_lines(r),
            "",
            "![samples](samples.png)",
            "",
            "Nearest neighbours (each sample, then its closest training image):",
            "",
            "![nearest neighbours](nearest_neighbours.png)",
            "",
        ]
    )
