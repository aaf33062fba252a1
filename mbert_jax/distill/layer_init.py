"""A student's blocks copied from chosen teacher layers (DistilBERT's initialization).

Student layer i starts as teacher layer `layers[i]` (0-based), which needs
the teacher's width, heads, FFN size and unshared blocks. Used by DistilBERT
(`distill.init_layers`, with its embeddings and MLM head) and TinyBERT
(`distill.init_layers`, with or without factorized embeddings).
"""

from __future__ import annotations

import jax
import numpy as np

from mbert_jax.tree import shape_mismatch


def copied(student, teacher, what: str):
    """`teacher` (host arrays, or shapes when checking) where its shapes equal `student`'s.

    Raises:
      ValueError: naming the first parameters whose shapes differ.
    """
    diff = shape_mismatch(student, teacher, want_name="student", have_name="teacher", limit=10)
    if diff:
        raise ValueError(
            f"cannot initialize the student's {what} from the teacher's; shapes differ:\n  "
            + "\n  ".join(diff[:10])
            + "\n(the student needs the teacher's width, heads, FFN size and an unshared "
            "block; set config.distill.init_layers=() for a random student)"
        )
    return jax.tree.map(
        lambda x: x if isinstance(x, jax.ShapeDtypeStruct) else np.asarray(x), teacher
    )


def num_layers(encoder: dict) -> int:
    return len([k for k in encoder if k.startswith("layers_")])


def copy_layers(student_encoder: dict, teacher_encoder: dict, layers: tuple[int, ...]) -> dict:
    """The student's encoder tree with `layers_i` = the teacher's `layers_{layers[i]}`.

    Works on parameter trees or on their shapes (to check a config before
    anything compiles).

    Raises:
      ValueError: not one teacher layer per student layer, a layer the
        teacher lacks, or blocks of other shapes.
    """
    n_student, n_teacher = num_layers(student_encoder), num_layers(teacher_encoder)
    if len(layers) != n_student:
        raise ValueError(
            f"config.distill.init_layers has {len(layers)} entries for a {n_student}-layer "
            f"student: give one teacher layer (0-based) per student layer"
        )
    bad = [i for i in layers if not 0 <= i < n_teacher]
    if bad:
        raise ValueError(f"init_layers {list(layers)}: the teacher has layers 0..{n_teacher - 1}")
    out = dict(student_encoder)
    for i, t in enumerate(layers):
        out[f"layers_{i}"] = copied(
            student_encoder[f"layers_{i}"], teacher_encoder[f"layers_{t}"], f"layers_{i}"
        )
    return out
