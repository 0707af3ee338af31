"""Host memory allocation for CPU runs: keep freed memory in the process instead of unmapping it.

Why: XLA:CPU allocates each executable's temporary buffer afresh on every call (about 480 MiB
per device for the demo train step at batch 128). glibc serves blocks above 32 MiB with ``mmap``
and gives them back with ``munmap``, so every step page-faults the whole buffer again. On the
2-core development machine that was about 240,000 minor faults and 20% of the step. With
``mallopt`` set to one arena, no ``mmap`` blocks and no trimming, the freed buffer is reused
and the faults disappear. XLA frees buffers asynchronously, so the heap still grows for the
first few calls before the freed blocks are reused, and how soon that happens depends on the
machine: the benchmark reports faults per step (``minor_faults_per_call``) under the mode in use.

Process-wide and only effective before JAX starts its backends (threads pick their arena at
their first allocation), so the entry points (``main``, ``benchmarks.run``) call
:func:`configure` first thing, beside ``parallel.force_host_devices``. The cost: the process's
resident memory stays at its peak, and all threads share one malloc arena.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import platform
import resource

MODES = ("auto", "retain", "system")

# glibc <malloc.h> parameter numbers for mallopt.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int that glibc stores as size_t: -1 becomes SIZE_MAX, "never trim". The
# largest positive int (2 GiB) is not enough: the MNIST step frees more than that at once, and
# trimming it made every other step fault 0.8M pages in again.
_NEVER_TRIM = -1


def accelerator_plugin_installed() -> bool:
    """True if a JAX GPU/TPU plugin is installed or ``JAX_PLATFORMS`` names a non-CPU platform."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return any(p.strip() not in ("", "cpu") for p in platforms.split(","))
    # GPU plugins install into the jax_plugins namespace (xla_cuda12, ...); TPUs need libtpu.
    try:
        import jax_plugins

        if any(True for _ in pkgutil.iter_modules(jax_plugins.__path__)):
            return True
    except ImportError:
        pass
    return importlib.util.find_spec("libtpu") is not None


def configure(mode: str) -> dict:
    """Applies the host allocator ``mode``; returns ``{"mode", "applied", "reason"}`` for logs.

    ``retain``: glibc ``mallopt`` with one arena, no ``mmap``-served blocks and no trimming, so
    XLA:CPU's per-call buffers are reused instead of page-faulted in again. ``system``: leave
    malloc alone. ``auto``: ``retain`` unless an accelerator plugin is installed (then the big
    buffers live on the device and the host keeps glibc's defaults). Call before JAX creates
    its backends; later calls reach only threads that have not allocated yet.
    """
    if mode not in MODES:
        raise ValueError(f"config.host_allocator must be one of {MODES}, got {mode!r}")
    if mode == "system":
        return {"mode": mode, "applied": False, "reason": "glibc defaults requested"}
    if mode == "auto" and accelerator_plugin_installed():
        return {"mode": mode, "applied": False, "reason": "accelerator plugin installed: host defaults kept"}
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return {
            "mode": mode,
            "applied": False,
            "reason": f"needs glibc, found {platform.system()} {platform.libc_ver()}",
        }
    libc = ctypes.CDLL(None)
    ok = all(
        libc.mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
    )
    return {"mode": mode, "applied": ok, "reason": "one arena, no mmap blocks, no trim" if ok else "mallopt refused"}


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``), to count faults per step."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
