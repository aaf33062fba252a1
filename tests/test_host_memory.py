"""`mbert_jax.host_memory`: freed host memory is kept for reuse when asked for.

Each check runs in a fresh interpreter: the allocator settings hold for the
whole process and must be made before anything allocates from threads.
"""

import os
import platform
import subprocess
import sys

import pytest

from mbert_jax import host_memory

# Touch 256 MiB from malloc, free it, do it again: the second round page-faults
# (kernel maps and zeroes fresh pages) unless the freed block was kept.
FAULTS_ON_SECOND_ROUND = """
import ctypes, resource
from mbert_jax import host_memory
applied = host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 256 << 20
for round in range(2):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults)
"""


def faults_on_second_round(keep: str) -> tuple[bool, int]:
    env = dict(os.environ, MBERT_JAX_KEEP_HOST_MEMORY=keep)
    out = subprocess.run(
        [sys.executable, "-c", FAULTS_ON_SECOND_ROUND], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    pages = (256 << 20) // os.sysconf("SC_PAGE_SIZE")
    applied, faults = faults_on_second_round("1")
    assert applied and faults < pages // 100, faults
    # The premise: by default glibc unmaps the block and the pages fault again.
    applied, faults = faults_on_second_round("0")
    assert not applied and faults > pages // 2, faults


def test_off_unless_asked_and_a_bad_value_names_the_variable(monkeypatch):
    monkeypatch.delenv(host_memory.ENV, raising=False)
    assert not host_memory.keep_freed_memory()
    monkeypatch.setenv(host_memory.ENV, "0")
    assert not host_memory.keep_freed_memory(default=True)
    monkeypatch.setenv(host_memory.ENV, "yes")
    with pytest.raises(ValueError, match="MBERT_JAX_KEEP_HOST_MEMORY='yes'"):
        host_memory.keep_freed_memory()


def test_the_command_reads_the_variable():
    env = dict(os.environ, MBERT_JAX_KEEP_HOST_MEMORY="yes")
    cmd = [sys.executable, "-m", "mbert_jax", "describe", "mobilebert"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "MBERT_JAX_KEEP_HOST_MEMORY='yes'" in out.stderr, out.stderr
    env["MBERT_JAX_KEEP_HOST_MEMORY"] = "1"
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "mobilebert" in out.stdout, out.stderr
