"""Reference statistics of the test split, cached once per dataset and feature extractor (as score_sde ships
``assets/stats``).

For one feature extractor (a work directory's offline classifier, or Inception-V3) the reference side
of FID and KID is the features of every test image ``(N, D)`` and their mean ``(D,)`` and covariance
``(D, D)`` (:func:`dale_langevin.evaluation.metrics.feature_stats`); the classifier adds its predicted
labels ``(N,)``. They are kept in one ``.npz`` under ``config.eval.reference_dir`` (None:
:func:`default_dir`, ``reference_stats/`` in the Inception weights' cache folder; a local folder or
``gs://``), named by dataset, split, number of images and the extractor's identity
(:func:`dale_langevin.pipeline.workdir.reference_stats`): Inception's is a hash of its graph
(:attr:`~dale_langevin.evaluation.inception.InceptionNet.identity`), the classifier's a hash of its
parameters (:func:`params_identity`; each work directory trains its own).

The file also records what it was computed from: the format version, the key and a digest of the
test images. A second evaluation reads it instead of computing the test features again; a file whose
record disagrees with the request (stale: another version of the split, an older format) or that
does not read (damaged) is computed again, with a log line. Only process 0 writes; a cache that
cannot be written is reported and the evaluation goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from collections.abc import Callable

import jax
import numpy as np

from dale_langevin.evaluation import classifier, inception, metrics
from dale_langevin.pipeline import parallel, workdir as wd_lib

FORMAT = 1  # bump when the arrays or their meaning change: older files are then stale
_META = ("format", "dataset", "split", "n_images", "extractor", "images_sha256")


def default_dir() -> str:
    """``reference_stats/`` in :func:`dale_langevin.evaluation.inception.default_cache_dir` (``~/.cache/dale_langevin``)."""
    return os.path.join(inception.default_cache_dir(), "reference_stats")


def directory(eval_config) -> str:
    """The cache folder of ``config.eval``: ``reference_dir``, or :func:`default_dir` when it is None."""
    return default_dir() if eval_config.reference_dir is None else eval_config.reference_dir


def images_digest(images: np.ndarray) -> str:
    """SHA-256 (hex) of an image array's shape, dtype and bytes: which test images statistics came from."""
    x = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{x.shape}|{x.dtype.str}|".encode())
    h.update(x.tobytes())
    return h.hexdigest()


def params_identity(params) -> str:
    """``classifier-<16 hex digits>``: a SHA-256 over the parameter pytree's paths, shapes, dtypes and values."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        x = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{x.shape}|{x.dtype.str}|".encode())
        h.update(x.tobytes())
    return f"classifier-{h.hexdigest()[:16]}"


@dataclasses.dataclass(frozen=True)
class Reference:
    """A test split's features under one extractor: ``features`` ``(N, D)``, ``mu`` ``(D,)``, ``sigma``
    ``(D, D)`` (float64), ``labels`` ``(N,)`` (the classifier's predictions, else None); ``file`` the cache
    path, ``status`` ``"reused"`` (read from it) or ``"computed"``, ``extractor`` the identity."""

    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    labels: np.ndarray | None
    file: str
    status: str
    extractor: str

    def info(self) -> dict:
        """eval.json's record of where the statistics came from."""
        return {"file": self.file, "status": self.status, "extractor": self.extractor, "n_images": len(self.features)}


def _why_not(cached: dict | None, meta: dict) -> str | None:
    """Why a cache file's arrays cannot stand for ``meta``'s request (``None`` if they can)."""
    if not all(k in cached for k in ("features", "mu", "sigma", *_META)):
        return f"missing arrays {sorted(set(('features', 'mu', 'sigma', *_META)) - set(cached))}"
    for k in _META:
        if cached[k].item() != meta[k]:
            return f"{k} is {cached[k].item()!r}, want {meta[k]!r}"
    f, mu, sigma = cached["features"], cached["mu"], cached["sigma"]
    if f.ndim != 2 or len(f) != meta["n_images"] or mu.shape != f.shape[1:] or sigma.shape != (f.shape[1],) * 2:
        return f"features {f.shape}, mean {mu.shape}, covariance {sigma.shape} for {meta['n_images']} images"
    return None


def load_or_compute(
    cache_dir: str,
    *,
    dataset: str,
    split: str,
    images: np.ndarray,
    extractor: str,
    compute: Callable[[], dict],
    log=print,
) -> Reference:
    """The cached statistics of ``images`` (the whole ``split`` of ``dataset``) under ``extractor``, else computed.

    ``compute()`` returns ``{"features": (N, D), "labels": (N,) (optional)}``; the mean and covariance are
    derived here. Reads ``cache_dir``'s file (:func:`dale_langevin.pipeline.workdir.reference_stats`); a
    missing, stale or unreadable file means computing (the latter two with a log line), and process 0
    writes the result.
    """
    n = len(images)
    path = wd_lib.reference_stats(cache_dir, dataset, split, n, extractor)
    meta = {
        "format": FORMAT,
        "dataset": dataset,
        "split": split,
        "n_images": n,
        "extractor": extractor,
        "images_sha256": images_digest(images),
    }
    try:
        cached = wd_lib.load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        log(f"Rebuilding {path}: unreadable ({type(err).__name__}: {err})")
        cached = None
    if cached is not None:
        why = _why_not(cached, meta)
        if why is None:
            return Reference(
                features=cached["features"],
                mu=cached["mu"],
                sigma=cached["sigma"],
                labels=cached.get("labels"),
                file=str(path),
                status="reused",
                extractor=extractor,
            )
        log(f"Rebuilding {path}: stale ({why})")
    out = compute()
    features = np.asarray(out["features"], np.float64)
    mu, sigma = metrics.feature_stats(features)
    labels = out.get("labels")
    arrays = {"features": features, "mu": mu, "sigma": sigma, **{k: np.asarray(v) for k, v in meta.items()}}
    if labels is not None:
        arrays["labels"] = np.asarray(labels)
    if parallel.is_chief():
        try:
            wd_lib.save_npz(path, **arrays)
            log(f"Reference statistics of {n} {dataset} {split} images ({extractor}) cached in {path}")
        except OSError as err:
            log(f"Reference statistics not cached: cannot write {path} ({type(err).__name__}: {err})")
    return Reference(features, mu, sigma, labels, str(path), "computed", extractor)


def classifier_reference(eval_config, dataset: str, model, params, test_x: np.ndarray, log=print) -> Reference:
    """The offline classifier's (``model``, ``params``) features and labels of the test images ``test_x`` (uint8)."""
    return load_or_compute(
        directory(eval_config),
        dataset=dataset,
        split="test",
        images=test_x,
        extractor=params_identity(params),
        compute=lambda: dict(zip(("labels", "features"), classifier.predict(model, params, test_x))),
        log=log,
    )


def inception_reference(eval_config, dataset: str, net, test_x: np.ndarray, log=print) -> Reference:
    """Inception-V3 pool features of the test images ``test_x`` (uint8), in batches of ``eval.inception_batch_size``."""

    def compute():
        log(f"Inception-V3 features of the {len(test_x)} test images (CPU; cached for later evaluations) ...")
        u = np.asarray(test_x, np.float32) / 255.0
        return {"features": inception.inception_features(net, u, eval_config.inception_batch_size)}

    return load_or_compute(
        directory(eval_config),
        dataset=dataset,
        split="test",
        images=test_x,
        extractor=net.identity,
        compute=compute,
        log=log,
    )
