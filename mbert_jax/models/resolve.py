"""A model input: a model directory, or a transformers directory converted on the fly.

Every config field that names a model to read -- `config.teacher.path`,
`config.init_from`, `config.augment.mlm_teacher.path`, `mbert-jax export
--checkpoint` -- goes through `model_dir(path, what)`, which returns a model
directory (`models/io.py`):

- a model directory is returned as it is;
- a transformers `save_pretrained` directory (config.json + model.safetensors,
  pytorch_model.bin or a sharded index; the BERT and MobileBERT classes
  `models/hf.py` converts, with or without pretraining heads) is converted
  with `hf.hf_to_model_dir` into the cache, and the cached directory is
  returned. Its vocabulary is the directory's vocab.txt, else tokenizer.json's
  WordPiece vocabulary;
- anything else is a one-line ValueError naming `what` (the config field)
  and both accepted forms.

The cache is `$MBERT_JAX_CACHE/models`, else `~/.cache/mbert_jax/models` (the
data cache's root, `data/tokenized.py`). An entry is keyed by a hash of the
resolved path, the size and mtime of config.json, the weight files and the
tokenizer files, and the package version, so touching the weights (or
upgrading the package) converts again; an entry is written to a temporary
directory and renamed into place (the first writer wins), so a failed or
concurrent conversion leaves nothing half-written. Each call logs one INFO
line: `converted X -> Y` or `using cached Y`.

`mbert-jax convert from-hf` writes the same conversion to a directory of the
user's choosing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from mbert_jax import __version__, files
from mbert_jax.models import hf, io

log = logging.getLogger(__name__)

ENV_CACHE_DIR = "MBERT_JAX_CACHE"  # shared with the data cache (`data/tokenized.py`)
# The files of a transformers directory besides its weights that the conversion reads.
KEY_FILES = (hf.HF_CONFIG_FILE, io.VOCAB_FILE, hf.TOKENIZER_JSON)


def cache_dir() -> Path:
    """`$MBERT_JAX_CACHE/models`, else `~/.cache/mbert_jax/models`."""
    root = os.environ.get(ENV_CACHE_DIR) or os.path.join("~", ".cache", "mbert_jax")
    return Path(os.path.expanduser(root)) / "models"


def cache_key(directory: str | os.PathLike) -> str:
    """The cache entry name of a transformers directory: what decides the conversion, hashed."""
    d = Path(directory).resolve()
    files = {}
    for f in [*(d / n for n in KEY_FILES), *hf.weight_files(d)]:
        if f.is_file():
            st = f.stat()
            files[f.name] = [st.st_size, st.st_mtime_ns]
    blob = json.dumps({"path": str(d), "files": files, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def model_dir(path: str | os.PathLike, what: str) -> Path:
    """The model directory of `path`: itself, or its cached conversion from transformers.

    Args:
      path: a model directory or a transformers `save_pretrained` directory.
      what: the config field (or flag) that named it, for messages, e.g.
        "config.teacher.path".

    Returns:
      A model directory (`io.is_model_dir`).

    Raises:
      ValueError: `path` is neither form; `hf.ConversionError` (a ValueError)
        naming `what` when transformers' model cannot be expressed.
    """
    d = Path(path)
    if io.is_model_dir(d):
        return d
    if not hf.is_hf_dir(d):
        raise ValueError(
            f"{what}={str(path)!r} is not a model directory ({io.CONFIG_FILE} + "
            f"{io.PARAMS_FILE}, e.g. WORKDIR/model of a run) or a transformers directory "
            f"({hf.HF_CONFIG_FILE} + {hf.SAFETENSORS_FILE} or {hf.BIN_FILE})"
        )
    entry = cache_dir() / cache_key(d)
    if io.is_model_dir(entry):
        log.info("%s: using cached %s (converted from %s)", what, entry, d)
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_dir(entry)
    try:
        try:
            hf.hf_to_model_dir(d, tmp / "model")
        except hf.ConversionError as e:
            raise hf.ConversionError(f"{what}={str(path)!r}: {e}") from None
        source = {"source": str(d.resolve()), "version": __version__}
        (tmp / "model" / "source.json").write_text(json.dumps(source, indent=2) + "\n")
        try:
            os.replace(tmp / "model", entry)
        except OSError:  # another process converted it first
            if not io.is_model_dir(entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s: converted %s -> %s", what, d, entry)
    return entry
