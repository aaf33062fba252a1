"""Suite-wide hooks.

The longest tests run first: with `pytest -n 2` each worker then fills the
rest of its time with short tests, instead of one worker running the
end-to-end quickstart alone at the end while the other idles (this cut
minutes off CI's wall time on the 2-core machine).
"""

from __future__ import annotations

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
