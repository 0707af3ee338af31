"""Test setup: two forced CPU devices (before JAX starts) so pmap paths run on any machine."""

import os

_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=2".strip()

import jax  # noqa: E402  (must follow the flag)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def n_devices() -> int:
    return jax.local_device_count()
