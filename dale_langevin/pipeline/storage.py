"""Where ``gs://`` paths go: the one module that sets up the storage clients, for Cloud Storage or its emulator.

Five clients touch a bucket: ``etils.epath`` (every file of :mod:`.workdir`, Orbax's metadata and
TFDS's dataset metadata), TensorStore (Orbax's array data), google-cloud-storage (Orbax asks it
whether a bucket has a hierarchical namespace) and ArrayRecord's C++ reader (the records of a
prepared TFDS set in a ``gs://`` data directory, read by ``tfds.data_source``).
:func:`configure` points them the same way, once per process, before the first ``gs://`` access:

- epath reaches ``gs://`` through fsspec's ``gcsfs`` (``EPATH_USE_TF=false``), never through
  TensorFlow's file system, whose Cloud Storage endpoint is fixed; so the code path a test drives
  against the emulator is the one a TPU VM uses against Cloud Storage. gcsfs's directory listings
  are not cached: TensorStore and other processes write to the same folders behind its back.
- When ``STORAGE_EMULATOR_HOST`` is set (``HOST:PORT`` or ``http://HOST:PORT``, the variable Google's
  own clients read), every client talks to that endpoint with anonymous credentials: gcsfs
  (``token="anon"``, and its plain client: the zonal-bucket probe it adds by default speaks gRPC
  over TLS, which an emulator does not), TensorStore (``TENSORSTORE_GCS_HTTP_URL``), ArrayRecord
  (``CLOUD_STORAGE_EMULATOR_ENDPOINT``, google-cloud-cpp's variable: without it the reader waits on
  Cloud Storage's metadata server, and hangs where there is none) and google-cloud-storage (which
  reads ``STORAGE_EMULATOR_HOST`` itself, and needs its ``http://``).

Settings already present in the environment are kept (``EPATH_USE_TF=true`` puts TensorFlow back).
epath makes its TensorFlow-or-fsspec choice once per process, at its first operation on any path,
local ones included; so ``EPATH_USE_TF`` is set when this module is imported, which importing
:mod:`dale_langevin.pipeline` does before any of its paths is touched.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

os.environ.setdefault("EPATH_USE_TF", "false")  # see the module docstring: too late once epath has chosen

EMULATOR_VARIABLE = "STORAGE_EMULATOR_HOST"
_OBJECT_STORES = ("gs://", "s3://")


def emulator_endpoint(environ: MutableMapping[str, str] | None = None) -> str | None:
    """The Cloud Storage emulator's URL from ``STORAGE_EMULATOR_HOST`` (``http://`` added when missing); else ``None``.

    Raises ``ValueError`` for a value that is not ``HOST:PORT`` or an ``http(s)://`` URL.
    """
    environ = os.environ if environ is None else environ
    value = environ.get(EMULATOR_VARIABLE, "").strip()
    if value in ("", "default"):  # "default" is how gcsfs spells "not set"
        return None
    if "://" not in value:
        value = f"http://{value}"
    scheme, _, rest = value.partition("://")
    host = rest.split("/", 1)[0]
    if scheme not in ("http", "https") or not host or host.startswith(":"):
        raise ValueError(
            f"{EMULATOR_VARIABLE} must be HOST:PORT or http(s)://HOST:PORT, got {environ[EMULATOR_VARIABLE]!r}"
        )
    return value.rstrip("/")


def configure(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Points epath, gcsfs, TensorStore and ArrayRecord at Cloud Storage, or at the emulator; returns its URL or ``None``.

    Idempotent; call it before the first ``gs://`` access (``main`` does, and so does every
    :class:`.workdir.Workdir` on a bucket). ``environ`` defaults to ``os.environ``, which the clients read.
    """
    environ = os.environ if environ is None else environ
    environ.setdefault("EPATH_USE_TF", "false")
    endpoint = emulator_endpoint(environ)
    import fsspec

    options = fsspec.config.conf.setdefault("gcs", {})
    options.setdefault("use_listings_cache", False)
    if endpoint is None:
        return None
    environ[EMULATOR_VARIABLE] = endpoint  # with its scheme: google-cloud-storage (Orbax's bucket probe) needs one
    environ.setdefault("TENSORSTORE_GCS_HTTP_URL", endpoint)
    environ.setdefault("CLOUD_STORAGE_EMULATOR_ENDPOINT", endpoint)
    # TensorStore logs an error per process when it finds no credentials file; a test token is anonymous enough.
    environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "anonymous")
    options.setdefault("token", "anon")
    from gcsfs.core import GCSFileSystem

    for protocol in ("gs", "gcs"):  # the plain client, whichever one gcsfs's import registered
        fsspec.register_implementation(protocol, GCSFileSystem, clobber=True)
    return endpoint


def is_object_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies in a bucket (``gs://``, ``s3://``): objects appear whole and cannot be appended to."""
    return os.fspath(path).startswith(_OBJECT_STORES)
