"""A student's embeddings initialized from a wider teacher's table by low-rank factorization.

A student whose word embedding is narrower than the teacher's cannot copy
the teacher's table, but it can start from its best low-rank approximation
(ALBERT's factorized embedding, fitted to a table that already knows the
vocabulary). With the teacher's effective word table W (V x H_T: the table
itself, or ALBERT's table times its projection plus bias) and its SVD
W = U S V^T, for a student with embedding width k and hidden width H_S:

    word table      A = U_k S_k                                  V x k
    projection      B = V_k^T P                                  k x H_S
    position table  (teacher's first rows) P                     L x H_S
    token types     (teacher's first rows) P                     T x H_S

where P (H_T x H_S) is the PCA basis of the teacher's word-embedding rows,
uncentered (the first H_S right singular vectors of W, which minimize the
reconstruction error of the rows themselves), or the identity when
H_S == H_T, so that a student as wide as the teacher stays in its
coordinates. The student's embedding before its norm is then

    A[token] B + pos P + type P = (W_k[token] + pos + type) P,

the rank-k approximation W_k = U_k S_k V_k^T of the teacher's, projected on
the student's width (exact at k = H_S = H_T). How B enters depends on the
student's `embedding_transform`: "dense" (ALBERT) takes it as its kernel
(bias zero); "trigram" (MobileBERT: [t+1, t, t-1] concatenated, 3k -> H_S)
puts it in the middle slot with both neighbour slots and the bias zero;
"none" (k == H_S) stores the product A B as its table. A student without
token types gets the teacher's type-0 row folded into its positions (the
teacher adds it to every single-segment input); a teacher without token
types gives zero type tables. The embedding norm is copied when the
student is as wide as the teacher and normalizes the same way (the student's
embedding output then approximates the teacher's); otherwise it keeps its
initialization (a LayerNorm over H_S coordinates is not the projection of
one over H_T, and a NoNorm is not a LayerNorm).

A teacher with trigram embeddings (IB-BERT) has no per-token table to
factorize; it passes its embeddings on by copying (`mobilebert/fit.py`).

Used by the MobileBERT recipe for a student fitted to a stock BERT
(`mobilebert/fit.py`) and by `config.distill.init_embeddings="factorized"`
of TinyBERT (`tinybert/recipe.py`).
"""

from __future__ import annotations

import numpy as np

from mbert_jax.models import ModelConfig, io
from mbert_jax.tree import flat

PREFIX = "encoder/embeddings/"
INIT_EMBEDDINGS = ("random", "factorized")


def check(student: ModelConfig, teacher: ModelConfig, *, teacher_name: str) -> None:
    """Can the student's embeddings be factorized from the teacher's? Errors name the field.

    Raises:
      ValueError: a trigram teacher, or a student wider than the teacher
        (hidden or embedding width, positions, token types).
    """
    field = "config.student.overrides"
    if teacher.embedding_transform == "trigram":
        raise ValueError(
            f"{teacher_name}: the teacher's trigram embedding has no per-token table to "
            "factorize; give the student the teacher's embedding layout (embedding_size, "
            "embedding_transform) so that it is copied"
        )
    if student.hidden_size > teacher.hidden_size:
        raise ValueError(
            f"{field}.hidden_size={student.hidden_size}: a factorized embedding projects the "
            f"teacher's {teacher.hidden_size}-wide table onto the student's width, which must "
            "not be larger"
        )
    if student.embed_size > teacher.hidden_size:
        raise ValueError(
            f"{field}.embedding_size={student.embed_size}: the teacher's table has rank at most "
            f"{teacher.hidden_size}; lower it"
        )
    if student.max_position_embeddings > teacher.max_position_embeddings:
        raise ValueError(
            f"{field}.max_position_embeddings={student.max_position_embeddings}: the teacher "
            f"({teacher_name}) has {teacher.max_position_embeddings} positions; lower it"
        )
    if teacher.type_vocab_size and student.type_vocab_size > teacher.type_vocab_size:
        raise ValueError(
            f"{field}.type_vocab_size={student.type_vocab_size}: the teacher ({teacher_name}) "
            f"has {teacher.type_vocab_size} token types; lower it"
        )


def copies_norm(student: ModelConfig, teacher: ModelConfig) -> bool:
    """The embedding norm is copied: same width and same normalization."""
    return student.hidden_size == teacher.hidden_size and (
        student.normalization == teacher.normalization
    )


def teacher_word_table(teacher: dict[str, np.ndarray], config: ModelConfig) -> np.ndarray:
    """The teacher's effective V x H word table (ALBERT's: table @ kernel + bias)."""
    table = np.asarray(teacher[PREFIX + "word_embeddings/embedding"], np.float64)
    if config.embedding_transform == "dense":
        kernel = np.asarray(teacher[PREFIX + "embedding_transform/kernel"], np.float64)
        bias = np.asarray(teacher[PREFIX + "embedding_transform/bias"], np.float64)
        table = table @ kernel + bias
    return table


def factorize(table: np.ndarray, rank: int, width: int):
    """`(A, B, P)` of a V x H table (see the module docstring): A = U_k S_k, B = V_k^T P.

    Args:
      table: the teacher's word table W.
      rank: k, the student's embedding width.
      width: H_S, the student's hidden width (<= H).
    """
    u, s, vt = np.linalg.svd(np.asarray(table, np.float64), full_matrices=False)
    hidden = table.shape[1]
    basis = np.eye(hidden) if width == hidden else vt[:width].T
    return u[:, :rank] * s[:rank], vt[:rank] @ basis, basis


def factorized_embeddings(
    teacher: dict[str, np.ndarray], teacher_config: ModelConfig, student: ModelConfig
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The student's embedding tables and projection from the teacher's (float32, flat keys).

    Args:
      teacher: the teacher's parameters, flat ('/'-keys), at least `encoder/embeddings/`.
      teacher_config, student: the two model configs (`check` them first).

    Returns:
      `(leaves, P)`: the student's `encoder/embeddings/...` leaves except its
      norm, and the H_T x H_S basis P (e.g. to map the student's width back).
    """
    k, width = student.embed_size, student.hidden_size
    a, b, basis = factorize(teacher_word_table(teacher, teacher_config), k, width)
    out = {}
    if student.embedding_transform == "none":
        out["word_embeddings/embedding"] = a @ b
    else:
        out["word_embeddings/embedding"] = a
        kernel = b
        if student.embedding_transform == "trigram":  # slots [t+1, t, t-1]
            kernel = np.concatenate([np.zeros_like(b), b, np.zeros_like(b)], axis=0)
        out["embedding_transform/kernel"] = kernel
        out["embedding_transform/bias"] = np.zeros(width)
    position = np.asarray(teacher[PREFIX + "position_embeddings/embedding"], np.float64)
    position = position[: student.max_position_embeddings] @ basis
    t_types = teacher_config.type_vocab_size
    types = (
        np.asarray(teacher[PREFIX + "token_type_embeddings/embedding"], np.float64) @ basis
        if t_types
        else None
    )
    if student.type_vocab_size:
        out["token_type_embeddings/embedding"] = (
            types[: student.type_vocab_size]
            if types is not None
            else np.zeros((student.type_vocab_size, width))
        )
    elif types is not None:
        position = position + types[0]
    out["position_embeddings/embedding"] = position
    if copies_norm(student, teacher_config):
        for key in ("scale", "bias"):
            if PREFIX + "norm/" + key in teacher:
                out["norm/" + key] = np.asarray(teacher[PREFIX + "norm/" + key])
    return {PREFIX + key: v.astype(np.float32) for key, v in out.items()}, basis.astype(np.float32)


def init_embeddings(
    params, teacher: dict[str, np.ndarray], teacher_config: ModelConfig, student: ModelConfig
):
    """`params` (a student tree with `encoder/`) with its embeddings factorized from the teacher.

    Returns:
      `(new params, P)`; see `factorized_embeddings`.

    Raises:
      ValueError: a leaf whose shape does not match the student's (a config
        that `check` would have refused).
    """
    leaves, basis = factorized_embeddings(teacher, teacher_config, student)
    out = flat(params)
    for key, value in leaves.items():
        if key not in out or tuple(out[key].shape) != value.shape:
            have = tuple(out[key].shape) if key in out else "nothing"
            raise ValueError(f"factorized {key} is {value.shape} but the student has {have}")
        out[key] = value
    return io.unflatten(out), basis
