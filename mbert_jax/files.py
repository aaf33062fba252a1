"""Temporary siblings for atomic writes, created with the modes of ordinary files.

Every output of the package (model directories, exported `.tflite` files,
data caches) is written under a temporary name beside its destination and
renamed into place, so a failed or killed write leaves nothing half-made.
`tempfile.mkstemp` and `mkdtemp` create their file 0600 and their directory
0700 (private scratch space); renamed into place, those modes would make a
model or an exported file unreadable to the other users of a shared machine
or file system. These helpers create the temporaries the same way and then
give them the modes `open()` and `mkdir()` would have (0666 and 0777 less the
process umask); `plain_mode` does the same for a file some library wrote
private (safetensors' `save_file` writes 0600).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def plain_mode(path: str | os.PathLike) -> None:
    """Give `path` the mode `open()` (a file) or `mkdir()` (a directory) would have given it."""
    full = 0o777 if os.path.isdir(path) else 0o666
    os.chmod(path, full & ~umask())


def temp_dir(final: str | os.PathLike) -> Path:
    """An empty directory beside `final` (same file system), with a plain directory's mode."""
    final = Path(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    plain_mode(tmp)
    return tmp


def temp_file(final: str | os.PathLike) -> tuple[int, str]:
    """`(fd, path)` of a new file beside `final`, with a plain file's mode (as `mkstemp`)."""
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.fchmod(fd, 0o666 & ~umask())
    return fd, tmp


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary sibling: readers see the old file or the new."""
    path = Path(path)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
