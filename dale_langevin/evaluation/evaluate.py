"""``--mode=eval``: sample quality, diversity and memorisation of a trained run.

Reads ``WORKDIR/samples.npz`` (sampling first if it is missing or was drawn with other sampler settings,
start, count or seed than the config's) and writes ``eval.json``,
``eval.md`` and ``nearest_neighbours.png``:
- offline feature FID and KID (64 subsets of 64, as published) between the samples and the test
  split, in the penultimate features of a small classifier trained once on the train split
  (:mod:`dale_langevin.evaluation.classifier`), with that classifier's test accuracy;
- the class histogram of the samples under the classifier (mode collapse shows as empty classes);
- nearest training images of the samples and the distance distribution against the
  test-to-train baseline (memorisation shows as sample distances far below the baseline);
- Inception-V3 FID and KID (the TTUR graph, :mod:`dale_langevin.evaluation.inception`; same protocol),
  comparable with papers, when the weights are configured, cached or downloadable
  (``config.eval.inception``): otherwise the report gives the reason and the offline metrics stand.
"""

from __future__ import annotations

import numpy as np

from dale_langevin.evaluation import classifier, inception, metrics
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

    Attributes: ``train_u``/``test_u`` images ``(N, H, W, C)`` in [0, 1], ``test_y`` labels,
    ``test_pred``/``test_feats`` the classifier's labels and features of the test split, ``accuracy``
    its test accuracy, ``baseline_nn`` the test-to-train nearest distances ``(N_test,)``.
    """

    def __init__(self, config, workdir: str | Workdir, log=print):
        workdir = Workdir.of(workdir)
        d, e = config.data, config.eval
        self.config = config
        self.num_classes = data.get_spec(d.dataset).num_classes
        train_x, train_y = data.load_arrays(d.dataset, "train", data_dir=d.data_dir, download=d.download)
        test_x, self.test_y = data.load_arrays(d.dataset, "test", data_dir=d.data_dir, download=d.download)
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
        self.test_pred, self.test_feats = classifier.predict(self.model, self.params, self.test_u)
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
            "fid": metrics.fid(feats, self.test_feats),
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
    net, generated: np.ndarray, test: np.ndarray, *, batch_size: int, kid_subsets: int, kid_subset_size: int, seed: int
) -> dict:
    """Inception FID and KID of ``generated`` against ``test`` (both ``(N, H, W, C)`` in [0, 1]), eval.json's entry."""
    gen_feats = inception.inception_features(net, generated, batch_size)
    test_feats = inception.inception_features(net, test, batch_size)
    subset = min(kid_subset_size, len(gen_feats), len(test_feats))
    mean, std = metrics.kid(gen_feats, test_feats, n_subsets=kid_subsets, subset_size=subset, seed=seed)
    return {
        "status": "ok",
        "fid": metrics.fid(gen_feats, test_feats),
        "kid": {"mean": mean, "std": std, "subsets": kid_subsets, "subset_size": subset},
        "weights": net.weights,
    }


def evaluate(config, workdir: str | Workdir, log=print) -> dict:
    """Runs every metric on the run in ``workdir``; returns the dict written to ``eval.json``.

    With ``config.eval.inception='on'`` and no usable weights this raises before any sampling or training.
    """
    config_lib.validate(config)
    wd = Workdir.of(workdir)
    net, inception_result = load_inception_or_reason(config.eval, log)  # before the expensive work
    why = generate.samples_outdated(config, wd)
    if why:
        log(f"{why}: sampling first.")
        generate.sample_and_save(config, wd)
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
    if net is not None:
        log(f"Inception-V3 features of {len(generated)} samples and {len(scorer.test_u)} test images (CPU) ...")
        inception_result = inception_metrics(
            net,
            generated,
            scorer.test_u,
            batch_size=e.inception_batch_size,
            kid_subsets=e.kid_subsets,
            kid_subset_size=e.kid_subset_size,
            seed=config.seed,
        )

    result = {
        "dataset": config.data.dataset,
        "n_generated": int(len(generated)),
        "n_non_finite": n_non_finite,
        "n_test": int(len(scorer.test_u)),
        "classifier": {
            "test_accuracy": scorer.accuracy,
            "trained_now": scorer.trained_now,
            "epochs": e.classifier_epochs,
        },
        "offline_fid": metrics.fid(gen_feats, scorer.test_feats),
        "offline_kid": {"mean": kid_mean, "std": kid_std, "subsets": e.kid_subsets, "subset_size": subset},
        "class_histogram": class_histogram(gen_pred, scorer.num_classes),
        "test_class_histogram": class_histogram(scorer.test_pred, scorer.num_classes),
        "nearest_train_distance": {"generated": _quantiles(nn_dist), "test_baseline": _quantiles(scorer.baseline_nn)},
        "inception": inception_result,
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
    return result


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
    return "\n".join(
        [
            f"# Evaluation: {r['dataset']}",
            "",
            f"{r['n_generated']} generated samples against {r['n_test']} test images"
            + (f" ({r['n_non_finite']} more had non-finite pixels and are left out)." if r["n_non_finite"] else "."),
            "",
            "| metric | value |",
            "|---|---|",
            f"| offline FID (classifier features) | {r['offline_fid']:.3f} |",
            f"| offline KID ({r['offline_kid']['subsets']} subsets of {r['offline_kid']['subset_size']}) | "
            f"{r['offline_kid']['mean']:.4f} +- {r['offline_kid']['std']:.4f} |",
            *inception_rows,
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
            "![samples](samples.png)",
            "",
            "Nearest neighbours (each sample, then its closest training image):",
            "",
            "![nearest neighbours](nearest_neighbours.png)",
            "",
        ]
    )
