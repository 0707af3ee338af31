"""Image data: the embedded MNIST digits (no network) and TFDS datasets, as numpy arrays or batches.

Two entry points:

* :func:`load_arrays` -- a whole split in memory, ``uint8`` images ``(N, H, W, C)`` and ``int32``
  labels ``(N,)``; for prior fitting, class means, classifiers and evaluation.
* :func:`train_iterator` -- an infinite stream of this host's training batches already encoded into
  a process's domain, ``images`` ``(host_batch, H, W, C)``; :mod:`.parallel` splits them over devices.

``embedded_mnist`` reads the 5,000 packaged digits and never imports TensorFlow. TFDS datasets
import ``tensorflow``/``tensorflow_datasets`` lazily and hide accelerators from TensorFlow, so JAX
keeps them. A TFDS dataset that is neither prepared nor downloadable raises
:class:`DataUnavailableError` within seconds instead of hanging in the downloader's retries.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset the pipeline knows: its TFDS name (``None``: packaged), image shape ``(H, W, C)``, classes."""

    name: str
    tfds_name: str | None
    image_shape: tuple[int, int, int]
    num_classes: int


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("embedded_mnist", None, (28, 28, 1), 10),
        DatasetSpec("mnist", "mnist", (28, 28, 1), 10),
        DatasetSpec("fashion_mnist", "fashion_mnist", (28, 28, 1), 10),
        DatasetSpec("kmnist", "kmnist", (28, 28, 1), 10),
        DatasetSpec("cifar10", "cifar10", (32, 32, 3), 10),
    )
}

EMBEDDED_TEST_PER_CLASS = 50  # embedded test split: the last 50 digits of each class (500 in all)

_PROBE_TIMEOUT_S = 4.0  # per host, DNS + TCP connect; the TFDS downloader itself retries for minutes
_CHUNK = 4096  # examples per tf.data batch when materialising a split


class DataUnavailableError(RuntimeError):
    """A TFDS dataset is not prepared under ``data_dir`` and cannot be downloaded from here."""


def get_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` registered under ``name``; ``ValueError`` listing the choices otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown dataset {name!r} (config.data.dataset); choose one of: {', '.join(DATASETS)}"
        ) from None


def image_shape(name: str) -> tuple[int, int, int]:
    """Image shape ``(H, W, C)`` of dataset ``name``."""
    return get_spec(name).image_shape


# -- embedded MNIST ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_embedded_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 packaged MNIST digits: images ``uint8 (5000, 28, 28, 1)``, labels ``int32 (5000,)``.

    Stored sorted by class (500 per digit, 0..9). Cached; the arrays are read-only, copy before editing.
    """
    resource = importlib.resources.files("dale_langevin") / "embedded" / "mnist_5k.npz"
    with resource.open("rb") as f, np.load(f) as npz:
        images = np.ascontiguousarray(npz["images"], dtype=np.uint8)
        labels = npz["labels"].astype(np.int32)
    if images.shape != (5000, 28, 28, 1) or labels.shape != (5000,):
        raise RuntimeError(f"corrupt {resource}: images {images.shape}, labels {labels.shape}")
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.cache
def _embedded_split_indices(split: str) -> np.ndarray:
    """Row indices ``(N,)`` of the embedded ``split``: per class, test = last 50, train = the other 450."""
    _, labels = load_embedded_mnist()
    # The file is sorted by class, so a plain head/tail cut would leave digit 9 out of train.
    is_test = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        is_test[np.flatnonzero(labels == c)[-EMBEDDED_TEST_PER_CLASS:]] = True
    if split == "train":
        idx = np.flatnonzero(~is_test)
    elif split == "test":
        idx = np.flatnonzero(is_test)
    else:
        raise ValueError(f"embedded_mnist has splits 'train' and 'test', got {split!r}")
    idx.flags.writeable = False
    return idx


def _embedded_arrays(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = load_embedded_mnist()
    idx = _embedded_split_indices(split)
    return images[idx], labels[idx]


# -- TFDS ----------------------------------------------------------------------------------------

_tf_configured = False


def import_tf() -> tuple[Any, Any]:
    """Imports ``(tensorflow, tensorflow_datasets)`` with GPUs/TPUs hidden from TensorFlow (once)."""
    global _tf_configured
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if not _tf_configured:
        for kind in ("GPU", "TPU"):
            try:
                tf.config.set_visible_devices([], kind)
            except (RuntimeError, ValueError):
                pass  # TF already initialised its devices, or has no such device type
        _tf_configured = True
    return tf, tfds


def _unavailable(spec: DatasetSpec, data_dir: str, why: str) -> DataUnavailableError:
    return DataUnavailableError(
        f"dataset {spec.name!r} (TFDS {spec.tfds_name!r}) is not prepared in data_dir={data_dir!r} "
        f"and cannot be obtained here: {why}.\n"
        f"Fix: on a machine with network access run `tfds build {spec.tfds_name} --data_dir=DIR` "
        f"(or run this once online), make DIR visible here and pass `--config.data.data_dir=DIR`; "
        f"or use `configs/demo.py`, which trains on the embedded MNIST digits with no network."
    )


def _download_urls(builder: Any) -> list[str]:
    """URLs the TFDS builder will fetch (from its registered checksums); may raise ImportError."""
    return list(builder.url_infos or {})


def _resolve_and_connect(host: str, port: int, errors: list[OSError]) -> None:
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as err:
        errors.append(err)


def unreachable_host(urls: list[str]) -> OSError | None:
    """The error reaching the first unreachable host of ``urls`` (DNS + TCP, time-bounded); ``None`` if all answer."""
    if urllib.request.getproxies():
        return None  # a proxy does the resolving; let the downloader try
    endpoints = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            endpoints.add((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)))
    for host, port in sorted(endpoints):
        errors: list[OSError] = []
        # A thread because name resolution itself has no timeout.
        probe = threading.Thread(target=_resolve_and_connect, args=(host, port, errors), daemon=True)
        probe.start()
        probe.join(2 * _PROBE_TIMEOUT_S)
        if probe.is_alive():
            return TimeoutError(f"no answer from {host}:{port} within {2 * _PROBE_TIMEOUT_S:.0f} s")
        if errors:
            return OSError(f"cannot reach {host}:{port} ({type(errors[0]).__name__}: {errors[0]})")
    return None


def _tfds_dataset(
    spec: DatasetSpec,
    split: Any,
    *,
    data_dir: str | None,
    download: bool,
    shuffle_files: bool,
    seed: int,
) -> Any:
    """The ``tf.data.Dataset`` of feature dicts for ``split``, downloading only when it is missing.

    Order: prepared -> read it; else try reading anyway (``tfds.testing.mock_data`` fakes data here
    without preparing anything); else, if ``download``, probe the download hosts for a fast offline
    failure, then ``download_and_prepare``. Every "cannot get it" ends in :class:`DataUnavailableError`.
    """
    _, tfds = import_tf()
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    where = str(data_dir if data_dir is not None else builder.data_dir_root)
    read = functools.partial(
        builder.as_dataset,
        split=split,
        shuffle_files=shuffle_files,
        read_config=tfds.ReadConfig(shuffle_seed=seed),
    )
    if builder.is_prepared():
        return read()
    try:
        return read()
    except Exception as err:
        missing = err
    if not download:
        raise _unavailable(spec, where, "download=False and no prepared copy was found") from missing
    try:
        urls = _download_urls(builder)
    except ImportError as err:
        # tfds' downloader imports optional modules (e.g. importlib_resources) only at download time.
        raise _unavailable(spec, where, f"the TFDS downloader cannot run ({type(err).__name__}: {err})") from err
    network_error = unreachable_host(urls)
    if network_error is not None:
        raise _unavailable(spec, where, f"offline? {network_error}") from network_error
    try:
        builder.download_and_prepare()
    except (OSError, ImportError, tfds.download.DownloadError) as err:
        raise _unavailable(spec, where, f"download failed ({type(err).__name__}: {err})") from err
    return read()


def _image_label(tf: Any) -> Callable[[dict[str, Any]], tuple[Any, Any]]:
    # Keep only what we use, still uint8, so shuffle buffers stay 4x smaller than float32.
    return lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32))


# -- public loaders ------------------------------------------------------------------------------


def load_arrays(
    name: str,
    split: str = "train",
    *,
    data_dir: str | None = None,
    max_examples: int | None = None,
    download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A whole split in memory: images ``uint8 (N, H, W, C)`` and labels ``int32 (N,)``.

    ``embedded_mnist`` has ``"train"`` (4,500: the first 450 of each digit) and ``"test"`` (500: the
    last 50 of each digit), both balanced and sorted by class. TFDS datasets take any TFDS split
    string, read in file order. ``max_examples`` keeps the first ``N`` of those.
    """
    spec = get_spec(name)
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    if spec.tfds_name is None:
        images, labels = _embedded_arrays(split)
        return images[:max_examples], labels[:max_examples]

    tf, tfds = import_tf()
    ds = _tfds_dataset(spec, split, data_dir=data_dir, download=download, shuffle_files=False, seed=0)
    ds = ds.map(_image_label(tf), num_parallel_calls=tf.data.AUTOTUNE)
    if max_examples is not None:
        ds = ds.take(max_examples)
    # Chunked rather than tfds.load(batch_size=-1): that asks for the whole split as one batch,
    # which aborts the process under tfds.testing.mock_data (split size unknown).
    chunks = list(tfds.as_numpy(ds.batch(_CHUNK)))
    if not chunks:
        return np.zeros((0, *spec.image_shape), np.uint8), np.zeros((0,), np.int32)
    images = np.concatenate([c[0] for c in chunks]).astype(np.uint8, copy=False)
    labels = np.concatenate([c[1] for c in chunks]).astype(np.int32, copy=False)
    return images, labels


def _to_host_batch(images: np.ndarray, labels: np.ndarray, encode: Callable[[np.ndarray], np.ndarray]) -> dict:
    """``uint8 (n, H, W, C)`` -> ``{"images": float32 (n, H, W, C) encoded, "labels": int32 (n,)}``."""
    u = images.astype(np.float32) / np.float32(255.0)
    x = np.asarray(encode(u), dtype=np.float32)
    if x.shape != u.shape:
        raise ValueError(f"encode must keep the shape {u.shape}, returned {x.shape}")
    return {"images": x, "labels": np.asarray(labels, np.int32)}


def train_iterator(
    name: str,
    *,
    host_batch: int,
    encode: Callable[[np.ndarray], np.ndarray],
    seed: int = 0,
    data_dir: str | None = None,
    download: bool = True,
    shuffle_buffer: int = 10_000,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Infinite shuffled training batches for this process.

    Each item: ``"images"`` float32 ``(host_batch, H, W, C)`` equal to ``encode(pixels / 255)`` and
    ``"labels"`` int32 ``(host_batch,)``; ``host_batch`` is this process's share of the global batch
    (:func:`dale_langevin.pipeline.parallel.per_host_batch`), which splits it over devices.

    Each process reads a disjoint shard of the train split (embedded: rows
    ``process_index::process_count``; TFDS: ``tfds.split_for_jax_process``). Embedded: a fresh
    ``np.random.default_rng(seed)`` permutation every epoch, remainder dropped, deterministic per
    seed. TFDS: shuffled files (``shuffle_seed=seed``) and a ``shuffle_buffer``-example buffer.
    Arguments are checked and the data located when called, not at the first ``next``.
    """
    spec = get_spec(name)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not isinstance(host_batch, int) or host_batch < 1:
        raise ValueError(f"host_batch must be an int >= 1, got {host_batch!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside [0, process_count={process_count})")

    if spec.tfds_name is None:
        images, labels = _embedded_arrays("train")
        images, labels = images[process_index::process_count], labels[process_index::process_count]
        if len(labels) < host_batch:
            raise ValueError(
                f"a batch of {host_batch} examples per process (config.training.batch_size over "
                f"{process_count} process(es)) exceeds the {len(labels)} train examples per process of {name}"
            )
        return _embedded_batches(images, labels, encode, host_batch, seed)

    tf, tfds = import_tf()
    shard = tfds.split_for_jax_process("train", process_index=process_index, process_count=process_count)
    ds = _tfds_dataset(spec, shard, data_dir=data_dir, download=download, shuffle_files=True, seed=seed)
    ds = (
        ds.map(_image_label(tf), num_parallel_calls=tf.data.AUTOTUNE)
        .repeat()
        .shuffle(shuffle_buffer, seed=seed)
        .batch(host_batch, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )
    return (_to_host_batch(images, labels, encode) for images, labels in tfds.as_numpy(ds))


def _embedded_batches(
    images: np.ndarray,
    labels: np.ndarray,
    encode: Callable[[np.ndarray], np.ndarray],
    host_batch: int,
    seed: int,
) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n_batches = len(labels) // host_batch
    while True:
        order = rng.permutation(len(labels))
        for b in range(n_batches):
            idx = order[b * host_batch : (b + 1) * host_batch]
            yield _to_host_batch(images[idx], labels[idx], encode)
