"""Inception-V3 pool features for FID/KID comparable with papers (the TTUR FID network).

The network is the TensorFlow Inception graph of 2015-12-05 (``classify_image_graph_def.pb``
inside :data:`DEFAULT_URL`), the one the original FID code (Heusel et al., 2017, TTUR) uses: images
in [0, 255] enter at ``ExpandDims:0``, the graph resizes them to 299x299 itself, and the features
are the 2048 average-pooled activations ``pool_3:0``. It runs in a TensorFlow (v1 graph) session
on the CPU; GPUs stay with JAX.

* :func:`load_inception` -- the network from a local ``.pb`` or ``.tgz``, else from the cache,
  else downloaded once into the cache; :class:`InceptionUnavailableError` says how to provide it.
* :func:`inception_features` -- ``(N, 2048)`` float64 features of images in [0, 1], any size,
  grayscale repeated to three channels, quantised to 8 bits as a saved image would be.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from dale_langevin.pipeline import data

DEFAULT_URL = "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"
GRAPH_FILE = "classify_image_graph_def.pb"
INPUT_TENSOR = "ExpandDims:0"  # [N, H, W, 3] float in [0, 255]; the graph resizes to 299x299
OUTPUT_TENSOR = "pool_3:0"  # [N, 1, 1, 2048]
FEATURE_DIM = 2048
_DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation once the host answered the probe


class InceptionUnavailableError(RuntimeError):
    """The Inception graph is neither at the configured path nor in the cache, and cannot be fetched."""


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/dale_langevin`` (``~/.cache/dale_langevin`` when unset): where a download is kept."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "dale_langevin")


def _unavailable(why: str, url: str, cache_dir: str) -> InceptionUnavailableError:
    return InceptionUnavailableError(
        f"Inception-V3 weights unavailable: {why}.\n"
        f"Fix: on a machine with network access download {url or DEFAULT_URL}, copy it here and pass "
        f"`--config.eval.inception_path=/path/to/{os.path.basename(url or DEFAULT_URL)}` (the .tgz, or the "
        f"{GRAPH_FILE} inside it); or put {GRAPH_FILE} in {cache_dir}. "
        f"`--config.eval.inception=off` skips these metrics."
    )


def _tf() -> Any:
    """TensorFlow with accelerators hidden from it (shared with the TFDS loader); ``ImportError`` if not installed."""
    return data.import_tf("run the Inception-V3 graph")[0]


def _read_graph_def(path: str) -> Any:
    """The ``GraphDef`` in ``path`` (a ``.pb``, or a tar archive holding :data:`GRAPH_FILE`), checked.

    Raises ValueError if the file holds no parsable graph with the input and output nodes.
    """
    tf = _tf()
    if tarfile.is_tarfile(path):  # by content, whatever the file is called
        try:
            with tarfile.open(path) as archive:
                member = next(
                    (m for m in archive.getmembers() if os.path.basename(m.name) == GRAPH_FILE and m.isfile()), None
                )
                raw = None if member is None else archive.extractfile(member).read()
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise ValueError(f"the archive {path} is damaged ({type(err).__name__}: {err})") from err
        if raw is None:
            raise ValueError(f"the archive {path} holds no {GRAPH_FILE}")
    else:
        with open(path, "rb") as f:
            raw = f.read()
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(raw)
    except Exception as err:
        raise ValueError(f"{path} is not a TensorFlow GraphDef ({type(err).__name__}: {err})") from err
    names = {node.name for node in graph_def.node}
    missing = [t for t in (INPUT_TENSOR, OUTPUT_TENSOR) if t.split(":")[0] not in names]
    if missing:
        raise ValueError(f"{path} is not the Inception graph: no node {', '.join(missing)}")
    return graph_def


def _without_static_shapes(graph_def: Any) -> Any:
    """A copy of ``graph_def`` without the recorded ``_output_shapes`` attributes.

    The stored graph was built for one JPEG, so those attributes pin the batch to 1; on import they
    would be merged into the shapes inferred from our batched input, giving batch-N tensors a static
    batch of 1. Without them TensorFlow infers every shape from the input.
    """
    clean = type(graph_def)()
    clean.CopyFrom(graph_def)
    for node in clean.node:
        if "_output_shapes" in node.attr:
            del node.attr["_output_shapes"]
    return clean


@dataclasses.dataclass(frozen=True)
class InceptionNet:
    """A feature function: ``net(images)`` maps float32 ``(N, H, W, 3)`` in [0, 255] to ``(N, 2048)``.

    ``weights`` is the file the graph came from (reported next to the metrics); ``identity`` names
    the weights themselves, ``inception-<16 hex digits of the graph's SHA-256>`` (the same for the
    ``.pb`` and the ``.tgz`` holding it, wherever they lie): the key of the cached reference statistics.
    """

    weights: str
    fn: Callable[[np.ndarray], np.ndarray] = dataclasses.field(repr=False)
    identity: str = ""

    def __post_init__(self):
        if not self.identity:  # a network built by hand: named by where its weights came from
            digest = hashlib.sha256(self.weights.encode()).hexdigest()[:16]
            object.__setattr__(self, "identity", f"inception-{digest}")

    def __call__(self, images255: np.ndarray) -> np.ndarray:
        """Pool-3 features ``(N, 2048)`` (float32) of ``images255`` ``(N, H, W, 3)`` in [0, 255]."""
        return self.fn(np.asarray(images255, np.float32))


def feature_net(graph_def: Any, weights: str = "<in memory>") -> InceptionNet:
    """The :class:`InceptionNet` of a parsed graph: feeds ``ExpandDims:0`` with a batch, reads ``pool_3:0``.

    A TF1 graph and session, not a ``tf.function``: the 2015 graph uses ops removed from GraphDef
    version 9 on (``BatchNormWithGlobalNormalization``), which run only inside a graph that keeps
    the file's old producer version; a function graph runs at the current version and rejects them.
    """
    tf = _tf()
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="images")
        (pool,) = tf.compat.v1.import_graph_def(
            _without_static_shapes(graph_def),
            input_map={INPUT_TENSOR: images},
            return_elements=[OUTPUT_TENSOR],
            name="inception",
        )
        # [-1, 2048], not the graph's own pool_3/_reshape, whose constant shape is [1, 2048].
        features = tf.reshape(pool, [-1, FEATURE_DIM])
    session = tf.compat.v1.Session(graph=graph)
    digest = hashlib.sha256(graph_def.SerializeToString(deterministic=True)).hexdigest()[:16]
    return InceptionNet(
        weights=weights, fn=lambda x: session.run(features, {images: x}), identity=f"inception-{digest}"
    )


def _download(url: str, cache_dir: str) -> str:
    """Fetches ``url`` (the .tgz or a .pb), checks it parses, keeps the .pb in ``cache_dir``; returns its path.

    Raises ValueError (the file is not the graph), OSError or HTTPException (network, disk); fails
    within seconds when the host cannot be reached.
    """
    error = data.unreachable_host([url])
    if error is not None:
        raise OSError(f"offline? {error}")
    os.makedirs(cache_dir, exist_ok=True)
    fd, part = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, f, 1 << 20)
        graph_def = _read_graph_def(part)
        with open(part, "wb") as f:
            f.write(graph_def.SerializeToString())
        target = os.path.join(cache_dir, GRAPH_FILE)
        os.replace(part, target)  # atomic: a crashed download never leaves a truncated graph behind
        return target
    finally:
        if os.path.exists(part):
            os.remove(part)


def load_inception(
    path: str | None, *, url: str | None = DEFAULT_URL, cache_dir: str | None = None, allow_download: bool = True
) -> InceptionNet:
    """The Inception feature network from ``path``, else the cache, else a download into the cache.

    Args:
      path: a local ``classify_image_graph_def.pb`` or the ``inception-2015-12-05.tgz`` holding it;
        ``None`` looks in ``cache_dir``. A given path is used or reported, never replaced by a download.
      url: where to fetch the archive from when nothing is found locally.
      cache_dir: where a download is kept (default :func:`default_cache_dir`).
      allow_download: fetch when neither ``path`` nor the cache has the graph.

    Returns:
      An :class:`InceptionNet` (float32 ``(N, H, W, 3)`` in [0, 255] -> ``(N, 2048)``).

    Raises:
      InceptionUnavailableError: with what went wrong and how to provide the file (names
        ``config.eval.inception_path``, the URL and the cache folder), or the install command when
        TensorFlow, which runs the graph, is not installed.
    """
    cache_dir = cache_dir or default_cache_dir()
    cached = os.path.join(cache_dir, GRAPH_FILE)
    path = None if path is None else os.path.expanduser(path)
    try:
        _tf()  # before any download: the graph runs in TensorFlow
    except ImportError as err:
        raise InceptionUnavailableError(f"{err}. `--config.eval.inception=off` skips these metrics.") from err
    try:
        if path is not None:
            if not os.path.isfile(path):
                raise _unavailable(f"config.eval.inception_path={path!r} is not a file", url, cache_dir)
            source = path
        elif os.path.isfile(cached):
            source = cached
        elif not allow_download or not url:
            raise _unavailable(
                f"config.eval.inception_path is not set, {cached} does not exist and downloading is disabled",
                url,
                cache_dir,
            )
        else:
            try:
                source = _download(url, cache_dir)
            except (OSError, http.client.HTTPException) as err:
                raise _unavailable(
                    f"config.eval.inception_path is not set, {cached} does not exist and "
                    f"{url} cannot be fetched ({type(err).__name__}: {err})",
                    url,
                    cache_dir,
                ) from err
        return feature_net(_read_graph_def(source), weights=os.path.abspath(source))
    except (ValueError, OSError) as err:  # not the graph, or unreadable
        raise _unavailable(str(err), url, cache_dir) from err


def _check_images(images01: np.ndarray) -> np.ndarray:
    """``images01`` as an array, else ValueError unless ``(N, H, W, C)``, ``C`` 1 or 3, finite, in [0, 1]."""
    x = np.asarray(images01)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (N, H, W, C) with C = 1 or 3, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("images must be finite and lie in [0, 1]; they contain NaN or inf")
    if x.size and not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(f"images must lie in [0, 1], got range [{x.min()}, {x.max()}]")
    return x


def to_rgb255(images01: np.ndarray) -> np.ndarray:
    """Images ``(N, H, W, C)`` in [0, 1], ``C`` 1 or 3 -> float32 ``(N, H, W, 3)``, 8-bit levels in [0, 255].

    Grayscale is repeated to three channels. Values are rounded to the 256 levels a saved PNG holds,
    so generated samples are measured like the uint8 test images (the usual protocol).
    Raises ValueError on another shape or values outside [0, 1].
    """
    x = np.round(_check_images(images01).astype(np.float64) * 255.0).astype(np.float32)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def inception_features(
    feature_fn: Callable[[np.ndarray], np.ndarray], images01: np.ndarray, batch_size: int = 50
) -> np.ndarray:
    """Inception pool features ``(N, 2048)`` float64 of images ``(N, H, W, C)`` in [0, 1], in batches.

    ``feature_fn`` is a :func:`load_inception` network; each batch goes through :func:`to_rgb255`
    (grayscale to RGB, [0, 1] to [0, 255]) first. Raises ValueError on bad images or ``batch_size < 1``.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 (config.eval.inception_batch_size), got {batch_size!r}")
    images01 = _check_images(images01)  # all of them, before any network work
    n = len(images01)
    out = np.empty((n, FEATURE_DIM), np.float64)
    for start in range(0, n, batch_size):
        batch = to_rgb255(images01[start : start + batch_size])
        out[start : start + len(batch)] = np.asarray(feature_fn(batch)).reshape(len(batch), FEATURE_DIM)
    return out
