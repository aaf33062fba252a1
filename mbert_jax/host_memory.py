"""Keep freed host memory for reuse when JAX computes on the CPU.

XLA:CPU allocates all the temporaries of one step as one block (about 1 GB
for a MobileBERT MLM+NSP step at batch 8 x 128) and frees it when the step
ends. glibc serves a block that large with `mmap` and unmaps it on `free`, so
every step faults the whole block back in, page by page, each page zeroed by
the kernel: ~290k page faults and ~0.5 s of kernel time per MobileBERT step
on a 2-core CPU, 15% of the step (`benchmarks/results/train_throughput.md`).

`keep_freed_memory()` tells glibc to keep what is freed (one arena, no
`mmap`, no trimming; `mallopt`), so the next step reuses the same pages. The
process then holds on to its peak host memory until it exits. It must run
before JAX starts its backend: XLA's threads pick their allocator arena at
their first allocation. The `mbert-jax` command calls it first, and the
benchmarks and the test suite too.

`MBERT_JAX_KEEP_HOST_MEMORY=1` or `=0` forces it on or off. Unset, it is on
when JAX can only use the CPU (`JAX_PLATFORMS=cpu`, or no GPU/TPU plugin
installed): on an accelerator the steps' temporaries live in device memory,
and one shared arena could slow a busy multi-threaded input pipeline.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

ENV = "MBERT_JAX_KEEP_HOST_MEMORY"
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
# Modules of JAX's accelerator backends (TPU, and the plugins JAX discovers).
ACCELERATOR_MODULES = ("libtpu", "jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin")


def cpu_only() -> bool:
    """Whether JAX will compute on the CPU, decided without starting a backend."""
    platforms = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    return not any(importlib.util.find_spec(name) for name in ACCELERATOR_MODULES)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); True if applied."""
    wanted = os.environ.get(ENV)
    if wanted not in (None, "", "0", "1"):
        raise ValueError(f"{ENV}={wanted!r}: use 1 (keep freed host memory), 0 (do not), or unset")
    if wanted == "0" or (wanted != "1" and not cpu_only()):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False  # mallopt is glibc's; other allocators behave differently
    libc = ctypes.CDLL(None)
    # M_TRIM_THRESHOLD takes an int that glibc reads as size_t: -1 means never trim.
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
