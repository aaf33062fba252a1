"""The teacher side of MobileBERT distillation: fit checks, loading, copies.

- `read_model_config`: a teacher model directory's config, without its parameters.
- `check_fit`: can this student learn from this teacher (block width, heads,
  copied tables, layer map, sequence length)? Every error names the field.
- `read_params` / `check_params`: the teacher's parameters from its
  `params.safetensors`, only the subtrees asked for, checked against the model.
- `copy_into`: the teacher's embeddings and MLM head into the student.
- `host_init`: random parameters drawn on the host like the zoo's
  initializers (the random teacher of tests and smoke runs).
- `teacher_data_config`: the data block with the teacher's vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from mbert_jax.distill import layer_map as layer_map_lib
from mbert_jax.distill.mobilebert_stages import parse_layer_map
from mbert_jax.models import ModelConfig, io

TEACHER_HEADS = ("mlm",)
TEACHER_PREFIXES = ("encoder/", "mlm/")
# Copied from the teacher and frozen during transfer (the embedding norm only
# when both models use the same normalization).
COPIED_EMBEDDINGS = (
    "encoder/embeddings/word_embeddings/",
    "encoder/embeddings/position_embeddings/",
    "encoder/embeddings/token_type_embeddings/",
    "encoder/embeddings/embedding_transform/",
)
COPIED_HEAD = ("mlm/",)
EMBEDDING_NORM = "encoder/embeddings/norm/"

# Fields the copied tables and head need equal: (field, why).
_COPY_FIELDS = (
    ("embedding_size", "the word embeddings are copied from the teacher"),
    ("embedding_transform", "the embedding transformation is copied from the teacher"),
    ("type_vocab_size", "the token-type table is copied from the teacher"),
    ("max_position_embeddings", "the position table is copied from the teacher"),
)


def read_model_config(directory: str | Path) -> tuple[ModelConfig, tuple[str, ...]]:
    """`(config, heads)` of a model directory without reading its parameters."""
    d = Path(directory)
    if not io.is_model_dir(d):
        raise ValueError(
            f"config.teacher.path={str(d)!r} is not a model directory (needs {io.CONFIG_FILE} "
            f"and {io.PARAMS_FILE}); pass WORKDIR/model of a configs/pretrain_ibbert.py run"
        )
    meta = json.loads((d / io.CONFIG_FILE).read_text())
    return ModelConfig.from_dict(meta["config"]), tuple(meta["heads"])


def check_fit(
    student: ModelConfig, teacher: ModelConfig, distill, *, teacher_name: str, max_seq_length: int
) -> tuple[int, ...]:
    """Check that the student can learn from the teacher; returns the layer map.

    Args:
      student, teacher: the two model configs (vocabularies are checked later,
        against the data).
      distill: the `config.distill` block.
      teacher_name: how the teacher was given (path or variant), for messages.
      max_seq_length: `config.data.max_seq_length`.

    Raises:
      ValueError: naming the config field to change.
    """

    def differ(field: str, why: str) -> None:
        s, t = getattr(student, field), getattr(teacher, field)
        if s != t:
            raise ValueError(
                f"config.student.overrides.{field}: the student has {field}={s!r} but the "
                f"teacher ({teacher_name}) has {t!r}; {why}"
            )

    if distill.strategy == "pkt" and student.layer_sharing != "none":
        raise ValueError(
            f"config.distill.strategy='pkt' trains one block per stage, but the student shares "
            f"its layers (layer_sharing={student.layer_sharing!r}); use strategy 'jkt' or 'akt'"
        )
    differ(
        "hidden_size",
        "feature-map transfer compares the block outputs, and the copied MLM head and "
        "embedding transformation are that wide (MobileBERT and IB-BERT both use B = 512)",
    )
    if distill.attention_factor > 0:
        differ(
            "num_heads",
            "attention transfer compares the maps head by head (or set "
            "config.distill.attention_factor=0 to transfer feature maps only)",
        )
    for field, why in _COPY_FIELDS:
        differ(field, why)
    longest = min(student.max_position_embeddings, teacher.max_position_embeddings)
    if max_seq_length > longest:
        raise ValueError(
            f"config.data.max_seq_length={max_seq_length} exceeds the position tables "
            f"({longest}); lower it"
        )
    try:
        return layer_map_lib.layer_map(
            parse_layer_map(distill.layer_map), student.num_layers, teacher.num_layers
        )
    except layer_map_lib.LayerMapError as e:
        raise ValueError(f"config.distill.layer_map={distill.layer_map!r}: {e}") from None


def flat(tree) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def host_init(shapes, initializer_range: float, seed: int) -> dict:
    """Random float32 parameters on the host, drawn like the zoo's initializers.

    Norm scales are ones, biases zeros, every other leaf (kernels, embedding
    tables, extra output weights) normal with std `initializer_range` (see
    `models.layers`). For the random teacher of tests and smoke runs: numpy
    draws cost nothing, where compiling the model's `init` takes seconds.

    Args:
      shapes: a tree of `jax.ShapeDtypeStruct` (e.g. `param_shapes(model)`).
      initializer_range: the model's `initializer_range`.
      seed: the numpy seed.

    Returns:
      A tree of numpy float32 arrays like `shapes`.
    """
    rng = np.random.default_rng(seed)

    def one(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(s.shape, np.float32)
        if name.endswith("bias"):
            return np.zeros(s.shape, np.float32)
        return (rng.standard_normal(s.shape) * initializer_range).astype(np.float32)

    return jax.tree_util.tree_map_with_path(one, shapes)


def read_params(directory: str | Path, prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The parameters under `prefixes` of a model directory, flat ('/'-keys), as stored."""
    with safe_open(str(Path(directory) / io.PARAMS_FILE), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}  # noqa: SIM118


def check_params(have: dict[str, Any], want: dict[str, Any], where: str) -> None:
    """Raise naming `where` unless `have` has exactly the keys and shapes of `want` (flat)."""
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = sorted(
        k for k in set(want) & set(have) if tuple(want[k].shape) != tuple(np.shape(have[k]))
    )
    if missing or extra or differ:
        raise ValueError(
            f"{where}: its parameters do not match its model_config.json (missing "
            f"{missing[:5]}, unexpected {extra[:5]}, other shapes {differ[:5]})"
        )


def copy_into(params, teacher: dict[str, np.ndarray], prefixes: tuple[str, ...]):
    """`params` with every leaf under `prefixes` replaced by the teacher's (float32).

    Args:
      params: the student's parameter tree.
      teacher: the teacher's parameters, flat ('/'-keys).
      prefixes: the subtrees to copy.

    Returns:
      `(new params, number of leaves copied)`.

    Raises:
      ValueError: naming a leaf the teacher lacks or has in another shape.
    """
    out = flat(params)
    copied = 0
    for key, value in out.items():
        if not key.startswith(prefixes):
            continue
        if key not in teacher or teacher[key].shape != tuple(value.shape):
            have = teacher[key].shape if key in teacher else "nothing"
            raise ValueError(
                f"cannot copy {key} from the teacher: the student needs {tuple(value.shape)}, "
                f"the teacher has {have}"
            )
        out[key] = np.asarray(teacher[key], np.float32)
        copied += 1
    return io.unflatten(out), copied


def teacher_data_config(config):
    """`config.data`, taking the teacher directory's vocab.txt unless one is set.

    Both models read the same `input_ids`, so the data must use the teacher's
    vocabulary; `teacher_vocab_file` makes the data layer check it.
    """
    data = config.data
    if data.source == "synthetic" or not config.teacher.path:
        return data
    vocab = io.vocab_path(config.teacher.path)
    if vocab is None:
        return data
    data = ml_collections.ConfigDict(data.to_dict())
    if not data.get("vocab_file"):
        data.vocab_file = str(vocab)
    if not data.get("teacher_vocab_file"):
        data.teacher_vocab_file = str(vocab)
    return data
