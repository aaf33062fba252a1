"""DistilBERT's cosine embedding loss on hidden states, and its loss weights.

Per real token t, with target +1 (PyTorch's `CosineEmbeddingLoss`):

    cos_t = <h_S, h_T> / sqrt((|h_S|^2 + eps) (|h_T|^2 + eps)),  eps = 1e-12
    loss  = mean over real tokens of (1 - cos_t)

DistilBERT (`distiller.py`) applies it to the last hidden layer, selecting
the real tokens with the attention mask (`masked_select`) before the loss:
the official code already masks properly, so there is no separate official
option. The full DistilBERT objective is

    DISTILBERT_KL_WEIGHT * kl_divergence(z_S, z_T, temperature=T, weights=mask,
                                         scale_by_temperature_squared=True)
    + DISTILBERT_MLM_WEIGHT * mlm_loss + DISTILBERT_COSINE_WEIGHT * cosine,

T = `DISTILBERT_TEMPERATURE`, each term the mean of its own `LossSum`.
The teacher's states pass through `stop_gradient`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbert_jax.losses.base import LossSum, check_same_shape, token_mask, weighted_sum

DISTILBERT_TEMPERATURE = 2.0
DISTILBERT_KL_WEIGHT = 5.0  # alpha_ce
DISTILBERT_MLM_WEIGHT = 2.0  # alpha_mlm
DISTILBERT_COSINE_WEIGHT = 1.0  # alpha_cos

COSINE_EPSILON = 1e-12  # PyTorch's cosine_embedding_loss epsilon (ATen Loss.cpp)


def cosine_embedding_loss(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
) -> LossSum:
    """`1 - cos(h_S, h_T)` per real token.

    Args:
      student_hidden: [batch, length, hidden] student hidden states.
      teacher_hidden: [batch, length, hidden] teacher hidden states (same width).
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.

    Returns:
      `LossSum` over real tokens.
    """
    check_same_shape(student_hidden, teacher_hidden, "cosine embedding")
    if student_hidden.ndim != 3:
        raise ValueError(
            f"cosine embedding: expected [batch, length, hidden], got {student_hidden.shape}"
        )
    student = student_hidden.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(teacher_hidden).astype(jnp.float32)
    dot = jnp.sum(student * teacher, axis=-1)
    norms = (jnp.sum(jnp.square(student), axis=-1) + COSINE_EPSILON) * (
        jnp.sum(jnp.square(teacher), axis=-1) + COSINE_EPSILON
    )
    per_token = 1.0 - dot * jax.lax.rsqrt(norms)
    return weighted_sum(per_token, token_mask(attention_mask, student.shape[:2]))
