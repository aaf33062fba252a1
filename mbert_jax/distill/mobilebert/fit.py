"""MobileBERT's side of the teacher: what the student needs of it, and what it copies.

- `fit_student`: a student block shaped after the teacher (`config.student.fit`,
  the `student=fit` option of configs/mobilebert_*.py), resolved when the
  recipe starts, since the teacher is often known only from the command line.
- `check_fit`: can this student learn from this teacher (block width, heads,
  embeddings, MLM head, layer map, sequence length)? Every error names the
  field. It returns a `Fit`: the layer map, and whether the embeddings are
  copied or factorized and the MLM head copied.
- `copy_into`: the teacher's embeddings and MLM head into the student.

Two kinds of teacher. An IB-BERT (the paper's) has the student's embedding
layout (E = 128 trigram, B = 512): its embeddings and MLM head are copied and
frozen. A stock BERT (e.g. all-MiniLM-L6-v2: 384 wide, dense 384-wide
embeddings, maybe no MLM head) has not: where the layouts differ, the
student's embeddings are initialized from the teacher's table by low-rank
factorization (`distill/embedding_init.py`: the trigram's middle slot takes
V_k^T, so the embedding starts as the rank-E approximation of the teacher's)
and train with block 1 (`stages.py`); the MLM head is not copied (its output
matrix is tied to a table of another width) and the teacher's head is needed
only when PD runs.

Loading, checking and sharding the teacher itself is shared by every recipe
(`teacher.py`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mbert_jax.distill import embedding_init
from mbert_jax.distill import layer_map as layer_map_lib
from mbert_jax.models import ModelConfig, io, variants
from mbert_jax.models.variants import block_overrides
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

FFN_RATIO = 4  # MobileBERT: intermediate 512 = 4 x bottleneck 128


def bottleneck_size(hidden_size: int, num_heads: int) -> int:
    """The multiple of `num_heads` nearest `hidden_size / 4` (MobileBERT: 512 / 4 = 128).

    384 wide with 12 heads gives 96: the 128 of a 384-wide MobileBERT would
    need a head count that divides it, which 12 does not.
    """
    return max(num_heads, math.floor(hidden_size / 4 / num_heads + 0.5) * num_heads)


def fit_student(block, teacher: ModelConfig) -> dict:
    """The student block `{variant, overrides}` shaped after `teacher` (`config.student.fit`).

    The variant (a MobileBERT: `mobilebert`, `mobilebert_tiny`, ...) gives the
    block structure: its stacked FFNs, key/query-shared bottleneck or
    bottleneck attention, NoNorm, ReLU, trigram embedding, dropout. The
    teacher gives the shape: its depth, inter-block width B = its hidden
    size (feature-map transfer compares the block outputs), its head count
    (attention transfer compares the maps head by head), its position and
    token-type tables; the intra-block bottleneck is the multiple of the
    head count nearest B / 4 (`bottleneck_size`: 96 for a 384-wide, 12-head
    teacher), each FFN 4x the bottleneck, and the embedding width E the
    variant's (128; micro 32) or the teacher's if smaller. The vocabulary
    is the data's, which is the teacher's. Overrides set in the block win
    over the fitted values.

    Args:
      block: `config.student` (`{variant, overrides, fit}`).
      teacher: the teacher's config (`teacher.read_config`).

    Raises:
      ValueError: the variant has no bottleneck (fitting makes a MobileBERT).
    """
    base = variants.get(block["variant"])
    if not base.use_bottleneck:
        raise ValueError(
            f"config.student.fit=True shapes a MobileBERT after the teacher, but "
            f"config.student.variant={block['variant']!r} has no bottleneck; use mobilebert "
            "or mobilebert_tiny (or set fit=False)"
        )
    explicit = block_overrides(block)
    fitted = {
        "num_layers": teacher.num_layers,
        "hidden_size": teacher.hidden_size,
        "num_heads": teacher.num_heads,
        "max_position_embeddings": teacher.max_position_embeddings,
        "type_vocab_size": teacher.type_vocab_size,
        "embedding_size": min(base.embed_size, teacher.embed_size),
    }
    fitted.update({k: v for k, v in explicit.items() if k in fitted})
    intra = explicit.get(
        "intra_bottleneck_size", bottleneck_size(fitted["hidden_size"], fitted["num_heads"])
    )
    fitted["intra_bottleneck_size"] = intra
    fitted["intermediate_size"] = explicit.get("intermediate_size", FFN_RATIO * intra)
    return {"variant": block["variant"], "overrides": {**explicit, **fitted}}


def student_block(config, teacher: ModelConfig):
    """`config.student`, fitted to `teacher` when `config.student.fit` is set (`fit_student`)."""
    if config.student.get("fit", False):
        return fit_student(config.student, teacher)
    return config.student


def describe_student(config: ModelConfig) -> str:
    """One line of a student's shape, for the log."""
    c = config
    return (
        f"{c.num_layers} blocks, inter-block {c.hidden_size}, bottleneck {c.inner_size}, "
        f"{c.num_heads} heads, FFN {c.intermediate_size} x{c.num_feedforward_networks}, "
        f"E {c.embed_size} ({c.embedding_transform}), {c.normalization}, {c.hidden_act}"
    )


@dataclasses.dataclass(frozen=True)
class Fit:
    """How a student learns from its teacher (`check_fit`).

    Attributes:
      layer_map: the teacher layer of student layers 0..L (`layer_map.py`).
      embeddings: "copied" (same layout: copied and frozen) or "factorized"
        (`embedding_init.py`; they train with block 1).
      copy_head: the MLM head is copied (same layout, and the teacher has one).
      teacher_heads: the teacher's heads the recipe loads: ("mlm",) when it
        has one (PD, the copy, `teacher_mlm_accuracy`), else ().
    """

    layer_map: tuple[int, ...]
    embeddings: str
    copy_head: bool
    teacher_heads: tuple[str, ...]


def check_fit(
    student: ModelConfig,
    teacher: ModelConfig,
    distill,
    *,
    teacher_name: str,
    max_seq_length: int,
    teacher_heads: tuple[str, ...] | None = None,
) -> Fit:
    """Check that the student can learn from the teacher; returns how (`Fit`).

    Args:
      student, teacher: the two model configs (vocabularies are checked later,
        against the data).
      distill: the `config.distill` block.
      teacher_name: how the teacher was given (path or variant), for messages.
      max_seq_length: `config.data.max_seq_length`.
      teacher_heads: the heads the teacher's directory holds (None: a random
        teacher, drawn with any head asked for).

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
        "feature-map transfer compares the block outputs (MobileBERT and IB-BERT both use "
        "B = 512; the option student=fit shapes the student after the teacher)",
    )
    if distill.attention_factor > 0:
        differ(
            "num_heads",
            "attention transfer compares the maps head by head (or set "
            "config.distill.attention_factor=0 to transfer feature maps only)",
        )
    same_layout = all(getattr(student, f) == getattr(teacher, f) for f, _ in _COPY_FIELDS)
    if same_layout:
        embeddings = "copied"
    elif teacher.embedding_transform == "trigram":  # an IB-BERT: its tables must fit as they are
        for field, why in _COPY_FIELDS:
            differ(field, why)
    else:
        embedding_init.check(student, teacher, teacher_name=teacher_name)
        embeddings = "factorized"
    has_mlm = teacher_heads is None or "mlm" in teacher_heads
    if not has_mlm and (distill.strategy == "akt" or distill.pd_steps > 0):
        raise ValueError(
            f"{teacher_name} has no MLM head, which pre-training distillation needs "
            f"(config.distill.pd_steps={distill.pd_steps}, strategy {distill.strategy!r}); set "
            "config.distill.pd_steps=0 with strategy pkt or jkt (layer-wise transfer only), or "
            "give config.teacher.path a teacher with an MLM head (configs/fit_mlm_head.py fits "
            "one on a frozen encoder)"
        )
    longest = min(student.max_position_embeddings, teacher.max_position_embeddings)
    if max_seq_length > longest:
        raise ValueError(
            f"config.data.max_seq_length={max_seq_length} exceeds the position tables "
            f"({longest}); lower it"
        )
    mapping = layer_map_lib.from_config(distill.layer_map, student.num_layers, teacher.num_layers)
    if distill.attention_factor > 0:  # per block: a pruned teacher or student
        layer_map_lib.check_heads(
            student,
            teacher,
            mapping,
            "set config.distill.attention_factor=0 to transfer feature maps only",
        )
    return Fit(
        layer_map=mapping,
        embeddings=embeddings,
        copy_head=same_layout and has_mlm,
        teacher_heads=TEACHER_HEADS if has_mlm else (),
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
