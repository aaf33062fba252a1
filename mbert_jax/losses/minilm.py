"""MiniLM and MiniLMv2 self-attention (relation) distillation.

A *relation* of one layer is, per (relation) head, the row-wise softmax of
scaled dot products between the token vectors of that head:

    R = softmax(X X^T / sqrt(d_x))          X: [length, d_x] of one head

and every loss here is `KL(R_T || R_S)` per row, summed over keys:

- MiniLM (Wang et al., 2020): the last layer's attention distributions
  (`minilm_attention_loss`, from the masked pre-softmax scores, so the
  relation of queries and keys) and the value relation
  softmax(V V^T / sqrt(d_head)) per attention head
  (`minilm_value_relation_loss`). Both need the same number of heads in
  student and teacher; the widths are free.
- MiniLMv2 (Wang et al., 2021): the queries (likewise keys, values) of all
  heads of one layer are concatenated (width d = heads x head_dim) and split
  into R relation heads of width d / R (`relation_heads`); R must divide both
  models' widths, but head counts, widths and depths are free
  (`minilmv2_relation_loss`, one of Q-Q, K-K, V-V per call).

Padding. Only real tokens count, as rows and as columns: a row (query) of a
padded position is left out of the sum and the count, and each row's softmax
runs over the keys the model lets it see (the real keys of its packed piece,
`make_attention_mask`), in both models, so a padded position's vectors change
nothing. The mean is over relation heads and real rows:
count = heads x real tokens. Teacher inputs pass through `stop_gradient`;
everything is computed in float32.

The attention loss renormalizes the model's scores over the visible keys, so
a model whose masked keys keep a finite fill (MobileBERT's -6) is compared on
the distribution over real keys only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbert_jax.losses.base import LossSum, check_same_shape, token_mask, weighted_sum
from mbert_jax.models.attention import make_attention_mask

# Where a key is hidden: exp underflows to 0 in float32, without the nan of -inf - -inf.
_HIDDEN = -1e30


def relation_kl(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
) -> LossSum:
    """`KL(softmax(teacher) || softmax(student))` per row over the visible keys.

    Args:
      student_logits: [batch, heads, query, key] relation (or attention) logits.
      teacher_logits: the teacher's, the same shape.
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.

    Returns:
      `LossSum` over rows; count = heads x real queries.
    """
    check_same_shape(student_logits, teacher_logits, "MiniLM relation")
    if student_logits.ndim != 4:
        raise ValueError(
            f"MiniLM relation: expected [batch, heads, query, key], got {student_logits.shape}"
        )
    batch, _, length, _ = student_logits.shape
    real = token_mask(attention_mask, (batch, length))  # checks the mask's shape
    # Each row's visible keys (a padded row keeps BERT's, the real keys: finite,
    # and the row itself gets weight 0 below).
    if attention_mask is None:
        visible = jnp.ones((batch, 1, length, length), bool)
    else:
        visible = make_attention_mask(attention_mask)
    student = jnp.where(visible, student_logits.astype(jnp.float32), _HIDDEN)
    teacher = jnp.where(visible, jax.lax.stop_gradient(teacher_logits).astype(jnp.float32), _HIDDEN)
    log_s = jax.nn.log_softmax(student, axis=-1)
    log_t = jax.nn.log_softmax(teacher, axis=-1)
    per_entry = jnp.where(visible, jnp.exp(log_t) * (log_t - log_s), 0.0)
    per_row = jnp.sum(per_entry, axis=-1)  # [batch, heads, query]
    weights = jnp.broadcast_to(real[:, None, :], per_row.shape)
    return weighted_sum(per_row, weights)


def split_relation_heads(x: jax.Array, relation_heads: int, what: str = "relation") -> jax.Array:
    """[batch, length, heads, head_dim] -> [batch, length, R, d / R], d = heads x head_dim.

    Raises:
      ValueError: R does not divide d, naming `what`.
    """
    if x.ndim != 4:
        raise ValueError(f"{what}: expected [batch, length, heads, head_dim], got {x.shape}")
    batch, length, heads, head_dim = x.shape
    width = heads * head_dim
    if relation_heads < 1 or width % relation_heads:
        raise ValueError(
            f"{what}: {relation_heads} relation heads do not divide the width {width} "
            f"({heads} heads x {head_dim})"
        )
    return x.reshape(batch, length, relation_heads, width // relation_heads)


def relation_logits(x: jax.Array) -> jax.Array:
    """[batch, length, heads, d] -> [batch, heads, length, length]: X X^T / sqrt(d) per head."""
    x = x.astype(jnp.float32)
    return jnp.einsum("bqhd,bkhd->bhqk", x, x) * (x.shape[-1] ** -0.5)


def minilm_attention_loss(
    student_scores: jax.Array,
    teacher_scores: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
) -> LossSum:
    """MiniLM's attention-distribution transfer: KL(A_T || A_S) per head and query.

    Args:
      student_scores: [batch, heads, query, key] the student layer's masked
        scaled pre-softmax scores (`EncoderOutput.attention_scores`).
      teacher_scores: the teacher layer's, the same shape (the same number of heads).
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.

    Returns:
      `LossSum` over rows; count = heads x real queries.
    """
    if student_scores.shape[1] != teacher_scores.shape[1]:
        raise ValueError(
            f"MiniLM attention transfer compares heads one to one: the student has "
            f"{student_scores.shape[1]} heads and the teacher {teacher_scores.shape[1]}"
        )
    return relation_kl(student_scores, teacher_scores, attention_mask=attention_mask)


def minilm_value_relation_loss(
    student_values: jax.Array,
    teacher_values: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
) -> LossSum:
    """MiniLM's value-relation transfer: KL of softmax(V V^T / sqrt(d_head)) per head.

    Args:
      student_values: [batch, length, heads, head_dim_S] (`EncoderOutput.values`).
      teacher_values: [batch, length, heads, head_dim_T]: the same heads, any width.
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.

    Returns:
      `LossSum` over rows; count = heads x real queries.
    """
    if student_values.ndim != 4 or teacher_values.ndim != 4:
        raise ValueError(
            "MiniLM value relation: expected [batch, length, heads, head_dim], got "
            f"{student_values.shape} and {teacher_values.shape}"
        )
    if student_values.shape[2] != teacher_values.shape[2]:
        raise ValueError(
            f"MiniLM value relation compares heads one to one: the student has "
            f"{student_values.shape[2]} heads and the teacher {teacher_values.shape[2]}"
        )
    return relation_kl(
        relation_logits(student_values),
        relation_logits(teacher_values),
        attention_mask=attention_mask,
    )


def minilmv2_relation_loss(
    student_vectors: jax.Array,
    teacher_vectors: jax.Array,
    *,
    relation_heads: int,
    attention_mask: jax.Array | None = None,
) -> LossSum:
    """MiniLMv2's multi-head self-attention relation transfer of one of Q, K or V.

    Args:
      student_vectors: [batch, length, heads_S, head_dim_S] queries, keys or
        values of the student layer (`EncoderOutput.queries` / `keys` / `values`).
      teacher_vectors: [batch, length, heads_T, head_dim_T] the same of the teacher layer.
      relation_heads: R; must divide both widths heads x head_dim.
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.

    Returns:
      `LossSum` over rows; count = R x real queries.
    """
    student = split_relation_heads(student_vectors, relation_heads, "MiniLMv2 student")
    teacher = split_relation_heads(teacher_vectors, relation_heads, "MiniLMv2 teacher")
    return relation_kl(
        relation_logits(student), relation_logits(teacher), attention_mask=attention_mask
    )
