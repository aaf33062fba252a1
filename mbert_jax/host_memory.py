"""Keep freed host memory for reuse: faster steps of full-size models on CPU.

XLA:CPU allocates all the temporaries of one step as one block (about 1 GB
for a MobileBERT MLM+NSP step at batch 8 x 128) and frees it when the step
ends. glibc serves a block that large with `mmap` and unmaps it on `free`, so
every step faults the whole block back in, page by page, each page zeroed by
the kernel: ~290k page faults and ~0.5 s of kernel time per MobileBERT step
on a 2-core CPU, 16% of the step (`benchmarks/results/train_throughput.md`).

`keep_freed_memory()` tells glibc to keep what is freed (one arena, no
`mmap`, no trimming; `mallopt`), so the next step reuses the same pages. The
costs: the process holds on to its peak host memory until it exits, and
XLA's compiler threads share one arena, which makes compiling ~20% slower.
Runs that are mostly compilation (tests, short runs of micro models) lose;
runs of many steps of a full-size model gain. So it is off unless asked for:
`MBERT_JAX_KEEP_HOST_MEMORY=1` turns it on for `mbert-jax`; the throughput
benchmarks turn it on (`=0` turns it off there). It must run before JAX
starts its backend: XLA's threads pick their arena at their first
allocation.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV = "MBERT_JAX_KEEP_HOST_MEMORY"
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def keep_freed_memory(default: bool = False) -> bool:
    """Make glibc keep freed memory for reuse (module docstring) if `ENV` or `default` says so.

    Returns whether it was applied (never on a non-glibc system).
    """
    wanted = os.environ.get(ENV, "")
    if wanted not in ("", "0", "1"):
        raise ValueError(f"{ENV}={wanted!r}: use 1 (keep freed host memory), 0 (do not), or unset")
    if not (wanted == "1" or (wanted == "" and default)):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False  # mallopt is glibc's; other allocators behave differently
    libc = ctypes.CDLL(None)
    # M_TRIM_THRESHOLD takes an int that glibc reads as size_t: -1 means never trim.
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)
