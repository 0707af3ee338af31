"""``--mode=eval``: sample quality, diversity and memorisation of a trained run.

Reads ``WORKDIR/samples.npz`` (sampling first if it is missing) and writes ``eval.json``,
``eval.md`` and ``nearest_neighbours.png``:
- offline feature FID and KID (64 subsets of 64, as published) between the samples and the test
  split, in the penultimate features of a small classifier trained once on the train split
  (:mod:`dale_langevin.classifier`), with that classifier's test accuracy;
- the class histogram of the samples under the classifier (mode collapse shows as empty classes);
- nearest training images of the samples and the distance distribution against the
  test-to-train baseline (memorisation shows as sample distances far below the baseline);
- Inception-V3 FID and KID (the TTUR graph, :mod:`dale_langevin.inception`; same protocol),
  comparable with papers, when the weights are configured, cached or downloadable
  (``config.eval.inception``): otherwise the report gives the reason and the offline metrics stand.
"""

from __future__ import annotations

import json
import os

import numpy as np

from dale_langevin import classifier, config as config_lib, data, images, inception, metrics, sampling


def nearest_neighbours(queries: np.ndarray, references: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Index ``(N,)`` and Euclidean distance ``(N,)`` of each query's nearest reference (flattened pixels)."""
    q = queries.reshape(len(queries), -1).astype(np.float64)
    r = references.reshape(len(references), -1).astype(np.float64)
    r2 = np.sum(r**2, axis=1)
    idx, dist = [], []
    for s in range(0, len(q), chunk):
        d2 = np.sum(q[s:s + chunk] ** 2, axis=1)[:, None] - 2.0 * q[s:s + chunk] @ r.T + r2[None]
        j = np.argmin(d2, axis=1)
        idx.append(j)
        dist.append(np.sqrt(np.maximum(d2[np.arange(len(j)), j], 0.0)))
    return np.concatenate(idx), np.concatenate(dist)


def class_histogram(labels: np.ndarray, num_classes: int) -> dict:
    """Counts per class ``(num_classes,)``, their normalised entropy (1 = uniform) and the empty classes."""
    counts = np.bincount(labels, minlength=num_classes)
    p = counts / max(counts.sum(), 1)
    entropy = -np.sum(p[p > 0] * np.log(p[p > 0])) / np.log(num_classes)
    return {"counts": counts.tolist(), "normalised_entropy": float(entropy),
            "empty_classes": [int(k) for k in np.flatnonzero(counts == 0)]}


def _quantiles(d: np.ndarray) -> dict:
    return {q: float(np.quantile(d, p)) for q, p in (("p05", 0.05), ("median", 0.5), ("p95", 0.95))}


def load_inception_or_reason(eval_config, log=print) -> tuple[inception.InceptionNet | None, dict | None]:
    """``(network, None)``, or ``(None, {"status": ..., "reason": ...})`` when ``eval.inception`` is off or
    the weights are unavailable under ``auto``. Raises :class:`inception.InceptionUnavailableError` under ``on``."""
    mode = eval_config.inception
    if mode == "off":
        return None, {"status": "off", "reason": "config.eval.inception='off'"}
    try:
        net = inception.load_inception(eval_config.inception_path, url=eval_config.inception_url,
                                       allow_download=bool(eval_config.inception_url))
    except inception.InceptionUnavailableError as err:
        if mode == "on":
            raise
        log(f"Inception-V3 FID/KID skipped (config.eval.inception='auto'). {err}")
        return None, {"status": "unavailable", "reason": str(err)}
    log(f"Inception-V3 weights: {net.weights}")
    return net, None


def inception_metrics(net, generated: np.ndarray, test: np.ndarray, *, batch_size: int, kid_subsets: int,
                      kid_subset_size: int, seed: int) -> dict:
    """Inception FID and KID of ``generated`` against ``test`` (both ``(N, H, W, C)`` in [0, 1]), eval.json's entry."""
    gen_feats = inception.inception_features(net, generated, batch_size)
    test_feats = inception.inception_features(net, test, batch_size)
    subset = min(kid_subset_size, len(gen_feats), len(test_feats))
    mean, std = metrics.kid(gen_feats, test_feats, n_subsets=kid_subsets, subset_size=subset, seed=seed)
    return {"status": "ok", "fid": metrics.fid(gen_feats, test_feats),
            "kid": {"mean": mean, "std": std, "subsets": kid_subsets, "subset_size": subset}, "weights": net.weights}


def evaluate(config, workdir: str, log=print) -> dict:
    """Runs every metric on the run in ``workdir``; returns the dict written to ``eval.json``.

    With ``config.eval.inception='on'`` and no usable weights this raises before any sampling or training.
    """
    config_lib.validate(config)
    net, inception_result = load_inception_or_reason(config.eval, log)  # before the expensive work
    path = os.path.join(workdir, "samples.npz")
    if not os.path.exists(path):
        log(f"No {path}: sampling first.")
        sampling.sample_and_save(config, workdir)
    with np.load(path) as f:
        generated = np.asarray(f["images"], np.float32)
    e, d = config.eval, config.data
    spec = data.get_spec(d.dataset)
    train_x, train_y = data.load_arrays(d.dataset, "train", data_dir=d.data_dir, download=d.download)
    test_x, test_y = data.load_arrays(d.dataset, "test", data_dir=d.data_dir, download=d.download)
    train_u, test_u = train_x.astype(np.float32) / 255.0, test_x.astype(np.float32) / 255.0

    model, params, fresh = classifier.load_or_train(workdir, train_x, train_y, num_classes=spec.num_classes,
                                                    epochs=e.classifier_epochs, seed=config.seed, log=log)
    test_pred, test_feats = classifier.predict(model, params, test_u)
    gen_pred, gen_feats = classifier.predict(model, params, generated)
    subset = min(e.kid_subset_size, len(generated), len(test_u))
    kid_mean, kid_std = metrics.kid(gen_feats, test_feats, n_subsets=e.kid_subsets, subset_size=subset, seed=config.seed)

    nn_idx, nn_dist = nearest_neighbours(generated, train_u)
    _, base_dist = nearest_neighbours(test_u, train_u)
    shown = min(e.n_nearest, len(generated))
    pairs = np.stack([generated[:shown], train_u[nn_idx[:shown]]], axis=1).reshape(2 * shown, *generated.shape[1:])
    images.save_grid(pairs, os.path.join(workdir, "nearest_neighbours.png"), ncols=8)
    if net is not None:
        log(f"Inception-V3 features of {len(generated)} samples and {len(test_u)} test images (CPU) ...")
        inception_result = inception_metrics(net, generated, test_u, batch_size=e.inception_batch_size,
                                             kid_subsets=e.kid_subsets, kid_subset_size=e.kid_subset_size,
                                             seed=config.seed)

    result = {
        "dataset": d.dataset, "n_generated": int(len(generated)), "n_test": int(len(test_u)),
        "classifier": {"test_accuracy": float(np.mean(test_pred == test_y)), "trained_now": fresh,
                       "epochs": e.classifier_epochs},
        "offline_fid": metrics.fid(gen_feats, test_feats),
        "offline_kid": {"mean": kid_mean, "std": kid_std, "subsets": e.kid_subsets, "subset_size": subset},
        "class_histogram": class_histogram(gen_pred, spec.num_classes),
        "test_class_histogram": class_histogram(test_pred, spec.num_classes),
        "nearest_train_distance": {"generated": _quantiles(nn_dist), "test_baseline": _quantiles(base_dist)},
        "inception": inception_result,
    }
    with open(os.path.join(workdir, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(workdir, "eval.md"), "w") as f:
        f.write(_report(result))
    log(f"offline FID {result['offline_fid']:.2f}, KID {kid_mean:.4f} +- {kid_std:.4f}, classifier test accuracy "
        f"{result['classifier']['test_accuracy']:.3f}, classes {result['class_histogram']['counts']} -> {workdir}/eval.md")
    if inception_result["status"] == "ok":
        k = inception_result["kid"]
        log(f"Inception-V3 FID {inception_result['fid']:.2f}, KID {k['mean']:.4f} +- {k['std']:.4f}")
    else:
        log(f"Inception-V3 FID/KID not computed ({inception_result['status']}); see {workdir}/eval.md")
    return result


def _inception_lines(r: dict) -> tuple[list[str], list[str]]:
    """The Inception rows of the metric table, and the note below it (the weights, or why there are none)."""
    i = r["inception"]
    if i["status"] != "ok":
        return [], [f"Inception-V3 FID/KID not computed ({i['status']}):", "", "```", i["reason"], "```"]
    k = i["kid"]
    rows = [f"| Inception-V3 FID (pool_3, TTUR graph) | {i['fid']:.3f} |",
            f"| Inception-V3 KID ({k['subsets']} subsets of {k['subset_size']}) | {k['mean']:.4f} +- {k['std']:.4f} |"]
    return rows, [f"Inception-V3 weights: `{i['weights']}`."]


def _report(r: dict) -> str:
    g, b = r["nearest_train_distance"]["generated"], r["nearest_train_distance"]["test_baseline"]
    inception_rows, inception_note = _inception_lines(r)
    return "\n".join([
        f"# Evaluation: {r['dataset']}", "",
        f"{r['n_generated']} generated samples against {r['n_test']} test images.", "",
        "| metric | value |", "|---|---|",
        f"| offline FID (classifier features) | {r['offline_fid']:.3f} |",
        f"| offline KID ({r['offline_kid']['subsets']} subsets of {r['offline_kid']['subset_size']}) | "
        f"{r['offline_kid']['mean']:.4f} +- {r['offline_kid']['std']:.4f} |",
        *inception_rows,
        f"| classifier test accuracy | {r['classifier']['test_accuracy']:.3f} |",
        f"| class-histogram entropy (1 = uniform) | {r['class_histogram']['normalised_entropy']:.3f} |",
        f"| empty classes | {r['class_histogram']['empty_classes'] or 'none'} |",
        f"| nearest-train distance, samples (p05 / median / p95) | {g['p05']:.2f} / {g['median']:.2f} / {g['p95']:.2f} |",
        f"| nearest-train distance, test baseline | {b['p05']:.2f} / {b['median']:.2f} / {b['p95']:.2f} |",
        "", f"Class counts of the samples: {r['class_histogram']['counts']}", "",
        *inception_note, "",
        "![samples](samples.png)", "",
        "Nearest neighbours (each sample, then its closest training image):", "",
        "![nearest neighbours](nearest_neighbours.png)", "",
    ])
