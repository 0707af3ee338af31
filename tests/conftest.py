"""Test setup: two forced CPU devices (before JAX starts) so pmap paths run on any machine."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=2".strip()

import atexit  # noqa: E402
import contextlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Caches the code keeps in ~/.cache (Inception weights, reference statistics of test splits) go to a
# folder of this session: tests neither read a user's cache nor leave files in it.
_XDG_CACHE = tempfile.mkdtemp(prefix="xdg_cache_")
atexit.register(shutil.rmtree, _XDG_CACHE, ignore_errors=True)
os.environ["XDG_CACHE_HOME"] = _XDG_CACHE

import jax  # noqa: E402  (must follow the flag)
import pytest  # noqa: E402

# Identical computations compiled by different tests (each train run builds its own step) are
# compiled once: a persistent cache private to this session.
_CACHE_DIR = tempfile.mkdtemp(prefix="jax_cache_")
atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def n_devices() -> int:
    return jax.local_device_count()


@pytest.fixture(scope="session")
def raises_naming():
    """``raises_naming(field, ...)``: expects a ``ValueError`` whose message names ``field`` as a whole word.

    A plain ``match=field`` also accepts a message that names a longer field containing it (or a
    mangled one); this does not.
    """

    def expect(field: str, exc: type[Exception] = ValueError) -> contextlib.AbstractContextManager:
        return pytest.raises(exc, match=rf"(?<![\w.]){re.escape(field)}(?![\w])")

    return expect


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """A Cloud Storage emulator on 127.0.0.1 (:mod:`gcs_emulator`) with the bucket ``bucket``, stopped after the session."""
    import gcs_emulator

    with gcs_emulator.running(tmp_path_factory.mktemp("gcs") / "root") as server:
        yield server


@pytest.fixture
def emulated_env(emulator):
    """``os.environ`` pointing at the emulator for one test, restored after (``storage.configure`` adds to it)."""
    import fsspec

    saved, saved_conf = dict(os.environ), {k: dict(v) for k, v in fsspec.config.conf.items()}
    os.environ["STORAGE_EMULATOR_HOST"] = emulator.host
    yield emulator
    os.environ.clear()
    os.environ.update(saved)
    fsspec.config.conf.clear()
    fsspec.config.conf.update(saved_conf)
