"""Suite-wide hooks.

Scheduling under `pytest -n 2` (CI's 2-core machine): the longest tests come
first, and `--dist loadgroup` (pyproject.toml) hands each worker one test at a
time, so a worker that finishes early takes the next test instead of idling
while the other works through a pre-assigned chunk (xdist's default `load`
gave the first worker the first 60 tests, all the long ones: minutes of one
idle core at the end). The quickstart and trainer modules are `xdist_group`s,
so their module fixtures (one quickstart run, one reference run) run once
(with pytest < 9: see `pytest_configure`).
"""

from __future__ import annotations

import importlib.metadata
import os

import jax
import pytest
from xla_flags import FAST_COMPILE

# Before any test initializes the backend (a user's own XLA_FLAGS are kept).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

# Test files whose tests take minutes, longest first; then the other slow
# tests, then the fast ones. The sort is stable, so order within a group is
# the collection order.
LONGEST_FIRST = ("tests/test_quickstart.py", "tests/train/test_trainer.py")


def _rank(item) -> int:
    path = item.nodeid.split("::", 1)[0]
    if path in LONGEST_FIRST:
        return LONGEST_FIRST.index(path)
    return len(LONGEST_FIRST) + (item.get_closest_marker("slow") is None)


def pytest_collection_modifyitems(config, items):
    items.sort(key=_rank)


def _version(package: str) -> tuple[int, int]:
    major, minor = importlib.metadata.version(package).split(".")[:2]
    return int(major), int(minor)


def pytest_configure(config):
    # pytest-xdist up to 3.8 groups `xdist_group` tests by renaming
    # `item._nodeid`, which pytest 9 no longer reads: the group is split over
    # the workers and its module fixture (the whole quickstart) runs on each.
    broken = _version("pytest") >= (9, 0) and _version("pytest-xdist") <= (3, 8)
    if broken and config.getoption("dist", "no") == "loadgroup":
        raise pytest.UsageError(
            "pytest >= 9 with pytest-xdist <= 3.8 ignores xdist_group under --dist loadgroup "
            '(slow, fixtures run twice); install the pinned versions: pip install -e ".[test]"'
        )


@pytest.fixture(scope="session", autouse=True)
def shared_compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache for the whole run.

    Tests build the same micro models' programs again and again (in new
    closures, in other xdist workers, in the CLI subprocesses); with one
    cache directory each program is compiled once per run. In-process tests
    use it through `jax.config`, subprocesses through the variable the CLI
    reads. The cache only skips compilation: every program still runs.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers
    path = root / "xla_cache"
    path.mkdir(exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    os.environ["MBERT_JAX_COMPILE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """The converted-model cache (`models/resolve.py`) in a temporary directory, never in ~.

    `MBERT_JAX_CACHE` also moves the data cache's default (`data/tokenized.py`)
    there, for this process and the CLI subprocesses tests start. A test that
    needs an empty cache sets the variable to its own `tmp_path`.
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers, like the compilation cache
    root = root / "mbert_jax_cache"
    root.mkdir(exist_ok=True)
    previous = os.environ.get("MBERT_JAX_CACHE")
    os.environ["MBERT_JAX_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("MBERT_JAX_CACHE", None)
    else:
        os.environ["MBERT_JAX_CACHE"] = previous
