"""Written outputs get ordinary modes (`mbert_jax/files.py`).

Model directories, exported files and data caches are written under a
temporary sibling and renamed; the temporaries of `tempfile` are 0600/0700,
which would make a saved model unreadable to the other users of a shared
file system. Each writer is run under two umasks and the modes are compared
with what `open()` / `mkdir()` give under the same umask.
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from mbert_jax import files
from mbert_jax.data import tokenized
from mbert_jax.export import tflite
from mbert_jax.models import ModelConfig, io


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_umask_is_read_without_changing_it(umask):
    assert files.umask() == umask
    assert files.umask() == umask


def test_temporaries_have_plain_modes(tmp_path, umask):
    d = files.temp_dir(tmp_path / "out")
    fd, f = files.temp_file(tmp_path / "out.bin")
    os.close(fd)
    assert d.parent == tmp_path and d.name.startswith(".out.")
    assert mode(d) == 0o777 & ~umask
    assert mode(f) == 0o666 & ~umask


def test_saved_model_exported_file_and_cache_are_readable(tmp_path, umask):
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "f").write_text("x")
    dir_mode, file_mode = mode(reference), mode(reference / "f")

    model = io.save_model(tmp_path / "model", ModelConfig(), (), {"w": np.zeros(2, np.float32)})
    exported = tflite.write_atomic(tmp_path / "export" / "model.tflite", lambda: b"bytes")
    cache = tokenized.write_atomic_dir(
        tmp_path / "cache" / "entry", lambda d: (d / "meta.json").write_text("{}")
    )
    assert mode(model) == dir_mode
    assert {mode(p) for p in model.iterdir()} == {file_mode}
    assert mode(exported) == file_mode
    assert mode(cache) == dir_mode and mode(cache / "meta.json") == file_mode
    leftovers = [p for p in tmp_path.rglob(".*")]
    assert leftovers == []
