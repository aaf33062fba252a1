"""The XLA flags of the suite's processes: conftest.py sets them, subprocess tests keep them.

Compiling dominates the suite on a CPU: it builds hundreds of small programs
and runs each for a few steps. `--xla_backend_optimization_level=0` turns
off LLVM's optimization of the generated machine code (XLA's HLO passes,
which decide what is computed and in which order, still run), which cuts
the suite's time by about a quarter on the 2-core CI machine. Users,
benchmarks and the quickstart keep XLA's default.
"""

FAST_COMPILE = "--xla_backend_optimization_level=0"


def with_devices(count: int) -> str:
    """XLA_FLAGS for a subprocess with `count` forced host devices."""
    return f"{FAST_COMPILE} --xla_force_host_platform_device_count={count}"
