"""A model directory: the portable form of a trained model.

    DIR/model_config.json   {"config": ModelConfig fields (label_names as a list), "heads": [...]}
    DIR/params.safetensors  every parameter, keyed by its '/'-joined path
    DIR/vocab.txt           the WordPiece vocabulary (when known)

The trainer writes one at the end of every run (beside its orbax training
checkpoints, which also hold optimizer state); fine-tuning, export and
`transformers` conversion read it. Writes are atomic: files go to a
temporary sibling directory that is renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from pathlib import Path

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from mbert_jax import files, tree
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.model import validate_heads

CONFIG_FILE = "model_config.json"
PARAMS_FILE = "params.safetensors"
VOCAB_FILE = "vocab.txt"


def flatten(params: dict) -> dict[str, np.ndarray]:
    """Host numpy copies of every parameter, by '/'-joined name (`mbert_jax.tree`)."""
    return {k: np.asarray(jax.device_get(v)) for k, v in tree.flat(params).items()}


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """The nested parameter tree of a flat ('/'-named) mapping."""
    return tree.unflat(flat)


def save_model(
    directory: str | os.PathLike,
    config: ModelConfig,
    heads: tuple[str, ...],
    params: dict,
    vocab_file: str | os.PathLike | None = None,
) -> Path:
    """Write a model directory atomically; returns its path."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_dir(directory)
    try:
        meta = {"config": config.to_dict(), "heads": list(validate_heads(heads))}
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_file(flatten(params), str(tmp / PARAMS_FILE))
        files.plain_mode(tmp / PARAMS_FILE)
        if vocab_file is not None:
            shutil.copyfile(vocab_file, tmp / VOCAB_FILE)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


class UnreadableFileError(ValueError):
    """A weight file that exists but cannot be read (truncated, overwritten, not readable)."""


# What readers raise on a file that is there but cannot be read: safetensors its
# SafetensorError, torch a RuntimeError or UnpicklingError, a file cut short
# mid-read an OSError or EOFError.
_READ_ERRORS = (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError)


@contextlib.contextmanager
def reading(path: str | os.PathLike):
    """A reader's error on an unreadable weight file as a one-line `UnreadableFileError`."""
    try:
        yield
    except FileNotFoundError:
        raise
    except PermissionError:
        raise UnreadableFileError(
            f"{path}: cannot be read (permission denied); make it readable (chmod a+r)"
        ) from None
    except _READ_ERRORS as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnreadableFileError(
            f"{path}: cannot be read ({reason}); the file is damaged or incomplete (an "
            "interrupted copy or save?): copy it again, or save the model again"
        ) from None


def read_safetensors(path: str | os.PathLike, prefixes: tuple[str, ...] = ()) -> dict:
    """The tensors of a safetensors file (only those under `prefixes`, when given), flat."""
    with reading(path), safe_open(str(path), framework="numpy") as f:
        keys = [k for k in f.keys() if not prefixes or k.startswith(prefixes)]  # noqa: SIM118
        return {k: f.get_tensor(k) for k in keys}


def is_model_dir(directory: str | os.PathLike) -> bool:
    d = Path(directory)
    return (d / CONFIG_FILE).is_file() and (d / PARAMS_FILE).is_file()


def load_config(directory: str | os.PathLike) -> tuple[ModelConfig, tuple[str, ...]]:
    """Read a model directory's `(config, heads)` without its parameters."""
    d = Path(directory)
    if not is_model_dir(d):
        raise FileNotFoundError(
            f"{d} is not a model directory (expected {CONFIG_FILE} and {PARAMS_FILE}); "
            "pass the directory a training run wrote (WORKDIR/model) or one from save_model"
        )
    meta = json.loads((d / CONFIG_FILE).read_text())
    return ModelConfig.from_dict(meta["config"]), validate_heads(meta["heads"])


def load_model(directory: str | os.PathLike) -> tuple[ModelConfig, tuple[str, ...], dict]:
    """Read a model directory: `(config, heads, params)` with numpy parameters."""
    config, heads = load_config(directory)
    return config, heads, unflatten(read_safetensors(Path(directory) / PARAMS_FILE))


def vocab_path(directory: str | os.PathLike) -> Path | None:
    p = Path(directory) / VOCAB_FILE
    return p if p.is_file() else None
