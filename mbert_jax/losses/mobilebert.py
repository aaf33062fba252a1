"""MobileBERT layer-wise transfer: feature maps, attention, mean and variance.

For one pair of layers (the student's block l and the teacher's mapped
block), with `LN(x) = (x - mean(x)) / sqrt(var(x) + 1e-12)` over the hidden
axis (the official non-trainable `layer_norm`, applied to both):

    feature map:  mean_tokens  mean_d (LN(h_T) - LN(h_S))^2
    attention:    mean_{tokens, heads}  KL(softmax(a_T) || softmax(a_S))   (per query row)
    mean:         mean_tokens  (mu_T - mu_S)^2          (mu over the hidden axis)
    variance:     mean_tokens  |var_T - var_S|          (var over the hidden axis)

where `a` are the masked scaled pre-softmax scores the models return
(`EncoderOutput.attention_scores`).

Padding. By default only real tokens count: the token means run over real
tokens, and for attention over real query rows, with both softmaxes
restricted to the keys the query may see (real keys of its own packed
piece). That restriction matters for MobileBERT, whose models write -6 (not
-inf) at masked keys, so the model's own probabilities put some weight on
padding; "proper" here means comparing the two distributions over the real
keys only, renormalized, which makes the loss independent of how much
padding the batch has. With a dtype-min fill it equals the models' own
probabilities. `official=True` reproduces the official TF1 code
(`run_pretraining.py`): means over every position, padding included, and
the softmax over all keys as the scores stand (fill values included).

Attention form. The paper calls the attention loss a KL divergence; the
official code computes the cross-entropy `-sum p_T log p_S`, which is the KL
plus the teacher's entropy (a constant for the student: same gradients,
different value). `form="kl"` is the default, `form="cross_entropy"` the
official value; `official=True` alone changes only the padding behaviour.

Official TF1 bug, not reproduced: its mean and variance transfer compute
the teacher statistics over the whole list of teacher layers
(`tf.reduce_mean(teacher_hiddens, ...)`) instead of the current layer; the
TF2 Model Garden port compares layer by layer, and so do these functions.

Factors. The official loss sums the per-layer losses (each gated to its
stage in progressive transfer) and multiplies the sum by `factor / L`, L the
number of student layers; the factors are the strategy's config and are
given here as constants. Teacher inputs pass through `stop_gradient`.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from mbert_jax.losses.base import (
    LossSum,
    attention_pair_mask,
    check_same_shape,
    token_mask,
    weighted_sum,
)

# Official per-layer factors (`run_pretraining.py` flags of the published
# run); each layer's loss is multiplied by factor / num_layers.
FEATURE_MAP_TRANSFER_FACTOR = 100.0  # hidden_distill_factor
ATTENTION_TRANSFER_FACTOR = 1.0  # attention_distill_factor
MEAN_TRANSFER_FACTOR = 5000.0  # beta_distill_factor
VARIANCE_TRANSFER_FACTOR = 5.0  # gamma_distill_factor

LAYER_NORM_EPSILON = 1e-12  # tf.contrib.layers.layer_norm's variance epsilon
_NEG = float(jnp.finfo(jnp.float32).min)

AttentionForm = Literal["kl", "cross_entropy"]


def layer_norm(x: jax.Array, epsilon: float = LAYER_NORM_EPSILON) -> jax.Array:
    """Parameter-free LayerNorm over the last axis, in float32."""
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + epsilon)


def _hidden_pair(student: jax.Array, teacher: jax.Array, what: str) -> tuple[jax.Array, jax.Array]:
    check_same_shape(student, teacher, what)
    if student.ndim != 3:
        raise ValueError(f"{what}: expected [batch, length, hidden], got shape {student.shape}")
    return student.astype(jnp.float32), jax.lax.stop_gradient(teacher).astype(jnp.float32)


def _token_weights(attention_mask: jax.Array | None, x: jax.Array, official: bool) -> jax.Array:
    if official:
        return jnp.ones(x.shape[:2], jnp.float32)
    return token_mask(attention_mask, x.shape[:2])


def feature_map_transfer_loss(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    official: bool = False,
) -> LossSum:
    """MSE between the layer-normalized student and teacher feature maps.

    Args:
      student_hidden: [batch, length, hidden] the student block's output.
      teacher_hidden: [batch, length, hidden] the mapped teacher block's output.
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.
      official: average over every position, padding included.

    Returns:
      `LossSum` over tokens of the per-token mean over the hidden axis.
    """
    student, teacher = _hidden_pair(student_hidden, teacher_hidden, "feature map transfer")
    per_token = jnp.mean(jnp.square(layer_norm(teacher) - layer_norm(student)), axis=-1)
    return weighted_sum(per_token, _token_weights(attention_mask, student, official))


def attention_transfer_loss(
    student_scores: jax.Array,
    teacher_scores: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    form: AttentionForm = "kl",
    official: bool = False,
) -> LossSum:
    """Per-head divergence of the student's attention distributions from the teacher's.

    Args:
      student_scores: [batch, heads, query, key] masked scaled pre-softmax scores.
      teacher_scores: the teacher's, same shape (same number of heads).
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.
      form: "kl" (default, the paper) or "cross_entropy" (the official value,
        KL plus the teacher's entropy).
      official: softmax over all keys as given and average over every query
        row, padding included (the official code).

    Returns:
      `LossSum` over (batch, head, query) rows; count = heads x real queries
      (all queries when `official`).
    """
    check_same_shape(student_scores, teacher_scores, "attention transfer")
    if student_scores.ndim != 4:
        raise ValueError(
            f"attention transfer: expected [batch, heads, query, key], got {student_scores.shape}"
        )
    if form not in ("kl", "cross_entropy"):
        raise ValueError(f"form must be 'kl' or 'cross_entropy', got {form!r}")
    student = student_scores.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(teacher_scores).astype(jnp.float32)
    batch, heads, length, _ = student.shape
    if official:
        row_weights = jnp.ones((batch, heads, length), jnp.float32)
    else:
        pairs = attention_pair_mask(attention_mask, student.shape)
        student = jnp.where(pairs, student, _NEG)
        teacher = jnp.where(pairs, teacher, _NEG)
        row_weights = jnp.broadcast_to(
            jnp.any(pairs, axis=-1).astype(jnp.float32), (batch, heads, length)
        )
    log_p_student = jax.nn.log_softmax(student, axis=-1)
    log_p_teacher = jax.nn.log_softmax(teacher, axis=-1)
    p_teacher = jnp.exp(log_p_teacher)
    value = -log_p_student if form == "cross_entropy" else log_p_teacher - log_p_student
    per_row = jnp.sum(jnp.where(p_teacher > 0, p_teacher * value, 0.0), axis=-1)
    return weighted_sum(per_row, row_weights)


def _mean_var(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axis=-1)
    var = jnp.mean(jnp.square(x - mean[..., None]), axis=-1)
    return mean, var


def mean_transfer_loss(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    official: bool = False,
) -> LossSum:
    """`(mu_T - mu_S)^2` per token, mu the mean over the hidden axis (same layer).

    Args:
      student_hidden: [batch, length, hidden] the student block's output.
      teacher_hidden: [batch, length, hidden] the mapped teacher block's output.
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.
      official: average over every position, padding included (the
        official code's teacher-list bug is not reproduced either way).

    Returns:
      `LossSum` over tokens.
    """
    student, teacher = _hidden_pair(student_hidden, teacher_hidden, "mean transfer")
    per_token = jnp.square(_mean_var(teacher)[0] - _mean_var(student)[0])
    return weighted_sum(per_token, _token_weights(attention_mask, student, official))


def variance_transfer_loss(
    student_hidden: jax.Array,
    teacher_hidden: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
    official: bool = False,
) -> LossSum:
    """`|var_T - var_S|` per token, var the (biased) variance over the hidden axis.

    Args:
      student_hidden: [batch, length, hidden] the student block's output.
      teacher_hidden: [batch, length, hidden] the mapped teacher block's output.
      attention_mask: [batch, length] ints, 0 at padding; None: no padding.
      official: average over every position, padding included (the
        official code's teacher-list bug is not reproduced either way).

    Returns:
      `LossSum` over tokens.
    """
    student, teacher = _hidden_pair(student_hidden, teacher_hidden, "variance transfer")
    per_token = jnp.abs(_mean_var(teacher)[1] - _mean_var(student)[1])
    return weighted_sum(per_token, _token_weights(attention_mask, student, official))
