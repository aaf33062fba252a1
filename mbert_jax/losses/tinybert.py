"""TinyBERT transformer-layer, embedding and prediction distillation.

For a student layer m mapped to teacher layer g(m):

    attention:  MSE(A_S, A_T), A the masked scaled pre-softmax scores,
                averaged over heads (and entries)
    hidden:     MSE(H_S W_h + b_h, H_T)
    embedding:  MSE(E_S W_e + b_e, E_T)
    prediction: CE(z_T / t, z_S / t) = -sum_c softmax(z_T / t) log softmax(z_S / t)

Projections. The hidden and embedding losses take the projection as
arguments (`projection` [d_S, d_T] and optional `projection_bias` [d_T]); the
parameters belong to the strategy's trainable params, and gradients reach
them through these arguments. The official code uses one shared `fit_dense`
(a `Linear` with bias) for the embedding output and every layer; pass the
same arrays to both losses to reproduce that, or separate W_e and W_h as in
the paper. `projection=None` requires equal widths. The product runs in
float32.

Padding. By default only real tokens count: hidden and embedding MSE
average the per-token mean over the hidden axis over real tokens; attention
MSE averages over the valid entries (real query, key visible to it: the real
keys of its packed piece), every head counting once, so it equals
PyTorch's `MSELoss` restricted to those entries. The other entries (the
models' fill value, the dtype's min or MobileBERT's -6, and padded query
rows) are left out of both the sum and the count, so fills that differ
between student and teacher do no harm.

`official=True` reproduces the official code (`general_distill.py`,
`task_distill.py`): attention maps have every entry <= -100 set to 0 in both
(`torch.where(x <= -1e2, 0, x)`; TinyBERT's models add -10000 at masked
keys; a -6 fill is not caught) and `MSELoss` averages over all entries,
padded query rows included; the hidden and embedding MSE average over all
positions; the prediction soft cross-entropy is `(-p_T * log p_S).mean()`,
which also divides by the number of classes. Teacher inputs pass through
`stop_gradient`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbert_jax.losses.base import (
    LossSum,
    attention_pair_mask,
    check_same_shape,
    token_mask,
    weighted_sum,
)
from mbert_jax.losses.logits import soft_cross_entropy

OFFICIAL_MASK_THRESHOLD = -100.0  # official: scores <= -1e2 are zeroed in both maps


def tinybert_attention_loss(
    student_scores: jax.Array,
    teacher_scores: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    official: bool = False,
) -> LossSum:
    """MSE of the pre-softmax attention scores.

    Args:
      student_scores: [batch, heads, query, key] masked scaled pre-softmax scores.
      teacher_scores: the mapped teacher layer's, same shape (same number of heads).
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.
      official: zero entries <= -100 in both maps and average over all entries.

    Returns:
      `LossSum` over entries; count = heads x valid (query, key) pairs
      (every entry when `official`).
    """
    check_same_shape(student_scores, teacher_scores, "TinyBERT attention")
    if student_scores.ndim != 4:
        raise ValueError(
            f"TinyBERT attention: expected [batch, heads, query, key], got {student_scores.shape}"
        )
    student = student_scores.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(teacher_scores).astype(jnp.float32)
    if official:
        student = jnp.where(student <= OFFICIAL_MASK_THRESHOLD, 0.0, student)
        teacher = jnp.where(teacher <= OFFICIAL_MASK_THRESHOLD, 0.0, teacher)
        return weighted_sum(jnp.square(student - teacher), jnp.ones((), jnp.float32))
    pairs = attention_pair_mask(attention_mask, student.shape)
    # Select before subtracting: two fills of different size would give a
    # huge (even inf) difference whose gradient must not exist.
    diff = jnp.where(pairs, student, 0.0) - jnp.where(pairs, teacher, 0.0)
    return weighted_sum(jnp.square(diff), pairs.astype(jnp.float32))


def _projected_mse(
    student: jax.Array,
    teacher: jax.Array,
    projection: jax.Array | None,
    projection_bias: jax.Array | None,
    attention_mask: jax.Array | None,
    official: bool,
    what: str,
) -> LossSum:
    if student.ndim != 3 or teacher.ndim != 3:
        raise ValueError(
            f"{what}: expected [batch, length, hidden], got {student.shape} and {teacher.shape}"
        )
    student = student.astype(jnp.float32)
    if projection is not None:
        if projection.shape != (student.shape[-1], teacher.shape[-1]):
            raise ValueError(
                f"{what}: projection shape {projection.shape} must be (student width "
                f"{student.shape[-1]}, teacher width {teacher.shape[-1]})"
            )
        student = student @ projection.astype(jnp.float32)
    if projection_bias is not None:
        student = student + projection_bias.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(teacher).astype(jnp.float32)
    check_same_shape(student, teacher, what + " (after the projection)")
    per_token = jnp.mean(jnp.square(student - teacher), axis=-1)
    if official:
        weights = jnp.ones(student.shape[:2], jnp.float32)
    else:
        weights = token_mask(attention_mask, student.shape[:2])
    return weighted_sum(per_token, weights)


def tinybert_hidden_loss(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    *,
    projection: jax.Array | None = None,
    projection_bias: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    official: bool = False,
) -> LossSum:
    """MSE between the projected student hidden states and the teacher's.

    Args:
      student_hidden: [batch, length, d_S] the student layer's output.
      teacher_hidden: [batch, length, d_T] the mapped teacher layer's output.
      projection: W_h [d_S, d_T] (trainable, owned by the strategy); None when
        d_S == d_T and no projection is wanted.
      projection_bias: optional bias [d_T].
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.
      official: average over every position, padding included.

    Returns:
      `LossSum` over tokens of the per-token mean over the teacher's hidden axis.
    """
    return _projected_mse(
        student_hidden,
        teacher_hidden,
        projection,
        projection_bias,
        attention_mask,
        official,
        "TinyBERT hidden",
    )


def tinybert_embedding_loss(
    student_embeddings: jax.Array,
    teacher_embeddings: jax.Array,
    *,
    projection: jax.Array | None = None,
    projection_bias: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    official: bool = False,
) -> LossSum:
    """MSE between the projected student embedding output and the teacher's.

    Args:
      student_embeddings: [batch, length, d_S] `EncoderOutput.embedding_output`.
      teacher_embeddings: [batch, length, d_T] the teacher's embedding output.
      projection: W_e [d_S, d_T] (the official code shares W_h here).
      projection_bias: optional bias [d_T].
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.
      official: average over every position, padding included.

    Returns:
      `LossSum` over tokens of the per-token mean over the teacher's hidden axis.
    """
    return _projected_mse(
        student_embeddings,
        teacher_embeddings,
        projection,
        projection_bias,
        attention_mask,
        official,
        "TinyBERT embedding",
    )


def tinybert_prediction_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    weights: jax.Array | None = None,
    official: bool = False,
) -> LossSum:
    """Prediction-layer soft cross-entropy `CE(z_T / t, z_S / t)` (no t^2 factor).

    Args:
      student_logits: [..., classes] student logits.
      teacher_logits: [..., classes] teacher logits.
      temperature: t.
      weights: [...] per-example weights; None weighs each example 1.
      official: count each example `classes` times, as the official
        `(-p_T * log p_S).mean()` does (the loss is divided by the number of classes).

    Returns:
      `LossSum` over examples (or example x class entries when `official`).
    """
    loss = soft_cross_entropy(
        student_logits, teacher_logits, temperature=temperature, weights=weights
    )
    if official:
        loss = LossSum(loss.total, loss.count * student_logits.shape[-1])
    return loss
