"""Host allocator (``hostmem``): ``retain`` keeps freed big blocks in the heap, so they are not faulted in again.

``mallopt`` changes the whole process, so the fault counts are measured in fresh subprocesses.
"""

import json
import platform
import subprocess
import sys

import pytest

from dale_langevin.cpu import hostmem

_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# What configure() changes is glibc's handling of one big block: a 64 MiB malloc, written, then
# freed, eight times. Under glibc's defaults it is above the mmap threshold (32 MiB at most), so
# each round maps fresh pages, faults all 16,384 of them in and unmaps them at free. With one
# arena, no mmap blocks and no trimming, the freed block stays in the heap and the next round
# reuses it: only the first round faults. Plain malloc, not an XLA buffer: XLA frees its buffers
# from other threads at times of its own, so its fault counts vary between machines (a CI machine
# once showed no reuse in XLA's pattern); the benchmark reports those per step
# (``minor_faults_per_call``).
_PROBE = """
import ctypes, json, sys
from dale_langevin.cpu import hostmem
record = hostmem.configure(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size, faults = 64 * 2**20, []
for _ in range(8):
    before = hostmem.minor_faults()
    block = libc.malloc(size)
    libc.memset(block, 1, size)
    libc.free(block)
    faults.append(hostmem.minor_faults() - before)
print(json.dumps({"record": record, "faults": faults}))
"""
_PAGES = 64 * 2**20 // 4096


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not _GLIBC, reason="mallopt tuning is glibc-only; configure() reports 'not applied' elsewhere")
def test_retain_reuses_a_freed_big_block_instead_of_faulting_it_in_again():
    system, retain = _probe("system"), _probe("retain")
    assert system["record"]["applied"] is False and retain["record"]["applied"] is True
    # The premise: under glibc's defaults every round faults in (nearly) every page again.
    assert min(system["faults"]) > 0.9 * _PAGES, system
    # Measured here: 0 faults in rounds 2-8 (a page or two of slack for the interpreter itself).
    assert max(retain["faults"][1:]) < 0.01 * _PAGES, retain


def test_auto_keeps_glibc_defaults_when_an_accelerator_is_configured(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert hostmem.accelerator_plugin_installed()
    assert hostmem.configure("auto") == {
        "mode": "auto",
        "applied": False,
        "reason": "accelerator plugin installed: host defaults kept",
    }
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not hostmem.accelerator_plugin_installed()


def test_system_mode_is_a_no_op_and_bad_modes_name_the_field():
    assert hostmem.configure("system")["applied"] is False
    with pytest.raises(ValueError, match=r"config\.host_allocator must be one of \('auto', 'retain', 'system'\)"):
        hostmem.configure("tcmalloc")
