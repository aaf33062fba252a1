"""MobileBERT's side of the teacher: what the student needs of it, and what it copies.

- `check_fit`: can this student learn from this teacher (block width, heads,
  copied tables, layer map, sequence length)? Every error names the field.
- `copy_into`: the teacher's embeddings and MLM head into the student.

Loading, checking and sharding the teacher itself is shared by every recipe
(`teacher.py`).
"""

from __future__ import annotations

import numpy as np

from mbert_jax.distill import layer_map as layer_map_lib
from mbert_jax.distill.mobilebert.stages import parse_layer_map
from mbert_jax.models import ModelConfig, io
from mbert_jax.tree import flat

TEACHER_HEADS = ("mlm",)
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
