"""Image data: the embedded MNIST digits (no network) and TFDS datasets, as numpy arrays or batches.

Two entry points:

* :func:`load_arrays` -- a whole split in memory, ``uint8`` images ``(N, H, W, C)`` and ``int32``
  labels ``(N,)``; for prior fitting, class means, classifiers and evaluation.
* :func:`train_batches` -- this process's share of every global training batch, already encoded
  into a process's domain, ``images`` ``(host_batch, H, W, C)``; :mod:`.parallel` splits them over
  devices. A Grain ``MapDataset`` indexed by the batch number: a restart at step ``k`` starts there.

``embedded_mnist`` reads the 5,000 packaged digits and never imports TensorFlow; neither does
training from a TFDS set prepared as ArrayRecord files (``tfds.data_source``). :func:`load_arrays`
reads TFDS sets through ``tf.data``, importing ``tensorflow`` lazily with accelerators hidden from
it, so JAX keeps them. A TFDS dataset that is neither prepared nor downloadable raises
:class:`DataUnavailableError` within seconds instead of hanging in the downloader's retries.
:func:`write_embedded_as_tfds` writes the embedded digits as a prepared TFDS directory (offline
tests and trials of the TFDS path).
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

from dale_langevin.pipeline import storage


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


# TensorFlow is an extra: training, sampling and evaluation run without it (Grain over ArrayRecord,
# TensorBoard's own protos); downloading or preparing TFDS sets, TFRecord sets and Inception-V3 need it.
TF_INSTALL = "pip install 'dale-langevin[tf]'"


def import_tf(purpose: str = "do this") -> tuple[Any, Any]:
    """Imports ``(tensorflow, tensorflow_datasets)`` with GPUs/TPUs hidden from TensorFlow (once).

    Raises ``ImportError`` naming ``purpose`` and :data:`TF_INSTALL` when TensorFlow is not installed.
    """
    global _tf_configured
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(f"TensorFlow is needed to {purpose} and is not installed: `{TF_INSTALL}`") from err
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


def _data_source(spec: DatasetSpec, split: str, *, data_dir: str | None, download: bool) -> Any | None:
    """``split`` of a TFDS set as a random-access source (``tfds.data_source``, no TensorFlow to read).

    Prepared as ArrayRecord (or faked by ``tfds.testing.mock_data``) -> that source; prepared as
    TFRecord (sequential files) -> ``None``. Missing -> if ``download``, probe the download hosts for
    a fast offline failure, then ``download_and_prepare`` as ArrayRecord and read that. Every "cannot
    get it" ends in :class:`DataUnavailableError`. A ``gs://`` ``data_dir`` goes through the clients
    :func:`storage.configure` sets up (the emulator's, when ``STORAGE_EMULATOR_HOST`` is set).
    """
    import tensorflow_datasets as tfds

    if data_dir is not None and storage.is_object_store(data_dir):
        storage.configure()

    def read():
        return tfds.data_source(spec.tfds_name, split=split, data_dir=data_dir, download=False)

    prepared = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if prepared.is_prepared():
        formats = (prepared.info.file_format, *getattr(prepared.info, "alternative_file_formats", ()))
        if not any(f is not None and f.value in ("array_record", "parquet") for f in formats):
            return None  # TFRecord only: no random access
        return read()
    try:
        return read()  # tfds.testing.mock_data fakes sources without preparing anything
    except Exception as err:  # not prepared (tfds raises several kinds)
        missing = err
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, file_format="array_record")
    where = str(data_dir if data_dir is not None else builder.data_dir_root)
    if not download:
        raise _unavailable(spec, where, "download=False and no prepared copy was found") from missing
    try:
        import_tf("download and prepare a TFDS set")  # before the downloader: hides accelerators from TF
    except ImportError as err:
        raise _unavailable(spec, where, str(err)) from err
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


def _read_all(source: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` records of a data source as ``uint8 (n, H, W, C)`` images and ``int32 (n,)`` labels."""
    images, labels = [], []
    for lo in range(0, n, _CHUNK):
        keys = range(lo, min(lo + _CHUNK, n))
        try:
            records = source.__getitems__(keys)  # one batched read of the files
        except TypeError:  # tfds.testing.mock_data's sources take one key at a time
            records = [source[i] for i in keys]
        images += [r["image"] for r in records]
        labels += [r["label"] for r in records]
    return np.stack(images).astype(np.uint8, copy=False), np.asarray(labels, np.int32)


def _tfrecord_arrays(spec: DatasetSpec, split: str, data_dir: str | None, max_examples: int | None):
    """A split prepared as TFRecord files, read in order through ``tf.data``."""
    tf, tfds = import_tf(f"read {spec.tfds_name!r}, prepared as TFRecord files in {data_dir!r}")
    ds = tfds.builder(spec.tfds_name, data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)), num_parallel_calls=tf.data.AUTOTUNE)
    if max_examples is not None:
        ds = ds.take(max_examples)
    chunks = list(tfds.as_numpy(ds.batch(_CHUNK)))
    if not chunks:
        return np.zeros((0, *spec.image_shape), np.uint8), np.zeros((0,), np.int32)
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]).astype(np.int32)


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
    string, read in file order (ArrayRecord through ``tfds.data_source``, TFRecord through
    ``tf.data``). ``max_examples`` keeps the first ``N`` of those.
    """
    spec = get_spec(name)
    if max_examples is not None and max_examples < 0:
        raise ValueError(f"max_examples must be >= 0, got {max_examples}")
    if spec.tfds_name is None:
        images, labels = _embedded_arrays(split)
        return images[:max_examples], labels[:max_examples]
    source = _data_source(spec, split, data_dir=data_dir, download=download)
    if source is None:
        return _tfrecord_arrays(spec, split, data_dir, max_examples)
    n = len(source) if max_examples is None else min(max_examples, len(source))
    if n == 0:
        return np.zeros((0, *spec.image_shape), np.uint8), np.zeros((0,), np.int32)
    return _read_all(source, n)


def _to_host_batch(images: np.ndarray, labels: np.ndarray, encode: Callable[[np.ndarray], np.ndarray]) -> dict:
    """``uint8 (n, H, W, C)`` -> ``{"images": float32 (n, H, W, C) encoded, "labels": int32 (n,)}``."""
    u = images.astype(np.float32) / np.float32(255.0)
    x = np.asarray(encode(u), dtype=np.float32)
    if x.shape != u.shape:
        raise ValueError(f"encode must keep the shape {u.shape}, returned {x.shape}")
    return {"images": x, "labels": np.asarray(labels, np.int32)}


class _ArraySource:
    """Random access to in-memory ``uint8`` images ``(N, H, W, C)`` and labels ``(N,)``, as TFDS records."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"image": self.images[i], "label": self.labels[i]}


def train_source(name: str, *, data_dir: str | None = None, download: bool = True) -> Any:
    """The whole train split of ``name`` as a sequence of ``{"image": uint8 (H, W, C), "label": int}``.

    ``embedded_mnist``: the 4,500 packaged train digits, no TensorFlow. TFDS sets: read once through
    ``tfds.data_source`` over ArrayRecord files (a prepared ``data_dir``, local or ``gs://``),
    decoded without TensorFlow and held in memory: every set here is at most 150 MB decoded, and
    decoding each PNG again at every visit would cap the stream at a few thousand examples/s.
    """
    spec = get_spec(name)
    if spec.tfds_name is None:
        return _ArraySource(*_embedded_arrays("train"))
    source = _data_source(spec, "train", data_dir=data_dir, download=download)
    if source is None:
        raise DataUnavailableError(
            f"dataset {spec.name!r} is prepared in data_dir={data_dir!r} as TFRecord files, which only "
            f"tf.data reads, in order; training reads examples by index (Grain: a restart resumes "
            f"without replay). Fix: `tfds build {spec.tfds_name} --data_dir=DIR --file_format=array_record` "
            f"(or `tfds convert_format --root_data_dir=DIR --out_file_format=array_record`) and pass "
            f"`--config.data.data_dir=DIR`."
        )
    return _ArraySource(*_read_all(source, len(source)))


def train_batches(
    name: str,
    *,
    global_batch: int,
    encode: Callable[[np.ndarray], np.ndarray],
    seed: int = 0,
    start: int = 0,
    data_dir: str | None = None,
    download: bool = True,
    read_threads: int = 4,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's training batches for global batches ``start, start + 1, ...`` (an endless iterator).

    Global batch ``k`` is positions ``[k G, (k + 1) G)`` of a stream that walks the whole train split
    in a fresh ``seed``-determined permutation every epoch (``G = global_batch``; batches run on
    across epoch ends, so every example is used). Process ``p`` of ``P`` yields the ``p``-th of its
    ``P`` equal slices, ``host_batch = G / P`` examples: in every epoch each example is read by one
    process, and the global batch does not depend on how many processes share it. Each item:
    ``"images"`` float32 ``(host_batch, H, W, C)`` equal to ``encode(pixels / 255)``, ``"labels"``
    int32 ``(host_batch,)``; :mod:`.parallel` splits it over the local devices.

    Batch ``k`` is a pure function of ``(seed, k)`` (a Grain ``MapDataset`` indexed by ``k``), so
    resuming at step ``k`` reads from there at once: no replay of the batches before it.
    ``read_threads`` threads read and encode ahead of the consumer (0: read in the calling thread).
    Arguments are checked and the data located when called, not at the first ``next``.
    """
    import grain

    spec = get_spec(name)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"global_batch must be an int >= 1, got {global_batch!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} outside [0, process_count={process_count})")
    if global_batch % process_count:
        raise ValueError(
            f"config.training.batch_size={global_batch} must be divisible by the {process_count} process(es)"
        )
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"start must be an int >= 0, got {start!r}")
    if not isinstance(read_threads, int) or read_threads < 0:
        raise ValueError(f"config.data.read_threads must be an int >= 0, got {read_threads!r}")
    source = train_source(name, data_dir=data_dir, download=download)
    if len(source) < global_batch:
        raise ValueError(
            f"a global batch of {global_batch} examples (config.training.batch_size) exceeds the "
            f"{len(source)} train examples of {spec.name}"
        )
    host_batch = global_batch // process_count
    batches = (
        grain.MapDataset.source(source)
        .shuffle(seed=seed)
        .repeat()
        .batch(host_batch)[process_index::process_count]
        .map(lambda b: _to_host_batch(b["image"], b["label"], encode))
    )
    ahead = batches[start:]
    if read_threads == 0:
        return (ahead[i] for i in range(len(ahead)))
    return iter(
        ahead.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, read_threads)))
    )


def write_embedded_as_tfds(
    data_dir: str, name: str = "mnist", file_format: str = "array_record", train_copies: int = 1
) -> Any:
    """Writes the embedded digits (train 4,500, test 500) as the prepared TFDS dataset ``name`` under ``data_dir``.

    Same features and version as TFDS ``mnist`` (``image`` uint8 ``(28, 28, 1)``, ``label`` of 10
    classes), so ``--config.data.dataset=<name> --config.data.data_dir=<data_dir>`` reads it
    through the same code as a real prepared bucket. ``name`` is any 28x28 grey 10-class set
    (``mnist``, ``fashion_mnist``, ``kmnist``). ``train_copies`` repeats the train split (14: an
    MNIST-sized 63,000, for benchmarks). Returns the TFDS builder; needs TensorFlow.
    """
    spec = get_spec(name)
    if spec.tfds_name is None or spec.image_shape != (28, 28, 1):
        raise ValueError(f"the embedded digits can stand in for a 28x28 grey TFDS set, not {name!r}")
    _, tfds = import_tf("write a prepared TFDS set")
    reference = tfds.builder(spec.tfds_name)  # features and version only: reads the registered metadata

    if not isinstance(train_copies, int) or train_copies < 1:
        raise ValueError(f"train_copies must be an int >= 1, got {train_copies!r}")

    def examples(split: str):
        images, labels = _embedded_arrays(split)
        n = len(labels) * (train_copies if split == "train" else 1)
        return ((i, {"image": images[i % len(labels)], "label": int(labels[i % len(labels)])}) for i in range(n))

    return tfds.dataset_builders.store_as_tfds_dataset(
        name=spec.tfds_name,
        version=str(reference.version),
        features=reference.info.features,
        split_datasets={"train": examples("train"), "test": examples("test")},
        data_dir=data_dir,
        file_format=file_format,
        description="The 5,000 MNIST digits embedded in dale_langevin, written as a TFDS dataset.",
    )
