"""Logit distillation: soft cross-entropy, KL, and MobileBERT's target mix.

With temperature T, `p_T = softmax(z_T / T)` and `p_S = softmax(z_S / T)`
over the last axis, per distribution (one per token, or per example):

    soft_cross_entropy = -sum_c p_T[c] log p_S[c]
    kl_divergence      =  sum_c p_T[c] (log p_T[c] - log p_S[c])

They differ by the teacher's entropy, a constant for the student: the same
gradients, different values. Hinton et al. multiply by T^2 so that gradient
magnitudes do not shrink as 1/T^2 (DistilBERT does: `5 * T^2 * KL`, T = 2);
`scale_by_temperature_squared` does that. Each distribution counts once
(weighted by `weights`), so the mean is PyTorch's `KLDivLoss(reduction=
"batchmean")` over the selected distributions, which is DistilBERT's
official reduction over the real tokens. TinyBERT's official soft
cross-entropy divides by the number of classes too: see
`tinybert.tinybert_prediction_loss`.

MobileBERT pre-training distillation (official `run_pretraining.py`) trains
the MLM head on the target `r * onehot(y) + (1 - r) * softmax(z_T)`,
r = `distill_ground_truth_ratio` = 0.5, with cross-entropy at the masked
positions, weighted by `masked_lm_weights`. That is the paper's
`alpha * L_MLM + (1 - alpha) * L_KD` with alpha = r, both over the same
positions. The official `distill_temperature` multiplies the teacher's final
hidden states before its MLM head (whose LayerNorm mostly undoes it) and is
1.0 in every published run; it has no equivalent here. NSP is not distilled
(use `mlm.nsp_loss`).

The teacher's logits pass through `stop_gradient`: no loss here trains the
teacher, as in the official code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbert_jax.losses.base import LossSum, check_same_shape, weighted_sum

# r of MobileBERT's pre-training distillation target (official `distill_ground_truth_ratio`).
MOBILEBERT_GROUND_TRUTH_RATIO = 0.5


def _log_probs(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
) -> tuple[jax.Array, jax.Array]:
    check_same_shape(student_logits, teacher_logits, "logits")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    teacher = jax.lax.stop_gradient(teacher_logits).astype(jnp.float32)
    student = student_logits.astype(jnp.float32)
    return (
        jax.nn.log_softmax(student / temperature, axis=-1),
        jax.nn.log_softmax(teacher / temperature, axis=-1),
    )


def _weights(weights: jax.Array | None, logits: jax.Array) -> jax.Array:
    if weights is None:
        return jnp.ones(logits.shape[:-1], jnp.float32)
    if weights.shape != logits.shape[:-1]:
        raise ValueError(
            f"weights shape {weights.shape} does not match the logits' leading shape "
            f"{logits.shape[:-1]}"
        )
    return weights


def _teacher_term(log_p_teacher: jax.Array, value: jax.Array) -> jax.Array:
    """`sum_c p_T[c] * value[c]`, with 0 where p_T underflows to 0 (no 0 * inf)."""
    p_teacher = jnp.exp(log_p_teacher)
    return jnp.sum(jnp.where(p_teacher > 0, p_teacher * value, 0.0), axis=-1)


def soft_cross_entropy(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    weights: jax.Array | None = None,
    scale_by_temperature_squared: bool = False,
) -> LossSum:
    """Cross-entropy of the student's distribution against the teacher's.

    Args:
      student_logits: [..., classes] student logits (any float dtype).
      teacher_logits: [..., classes] teacher logits (no gradient flows into them).
      temperature: T, dividing both logits.
      weights: [...] per-distribution weights (e.g. `masked_lm_weights`, or the
        attention mask for per-token logits); None weighs each distribution 1.
      scale_by_temperature_squared: multiply each term by T^2.

    Returns:
      `LossSum(sum_i w_i * CE_i, sum_i w_i)` with `CE_i = -sum_c p_T log p_S`.
    """
    log_p_student, log_p_teacher = _log_probs(student_logits, teacher_logits, temperature)
    per_item = -_teacher_term(log_p_teacher, log_p_student)
    if scale_by_temperature_squared:
        per_item = per_item * temperature**2
    return weighted_sum(per_item, _weights(weights, student_logits))


def kl_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    temperature: float = 1.0,
    weights: jax.Array | None = None,
    scale_by_temperature_squared: bool = False,
) -> LossSum:
    """KL(p_T || p_S) per distribution.

    DistilBERT's term is `kl_divergence(z_S, z_T, temperature=2.0,
    weights=attention_mask, scale_by_temperature_squared=True)` on per-token
    MLM logits, times `DISTILBERT_KL_WEIGHT` (see `cosine`).

    Args:
      student_logits: [..., classes] student logits (any float dtype).
      teacher_logits: [..., classes] teacher logits (no gradient flows into them).
      temperature: T, dividing both logits.
      weights: [...] per-distribution weights; None weighs each distribution 1.
      scale_by_temperature_squared: multiply each term by T^2.

    Returns:
      `LossSum(sum_i w_i * KL_i, sum_i w_i)`.
    """
    log_p_student, log_p_teacher = _log_probs(student_logits, teacher_logits, temperature)
    per_item = _teacher_term(log_p_teacher, log_p_teacher - log_p_student)
    if scale_by_temperature_squared:
        per_item = per_item * temperature**2
    return weighted_sum(per_item, _weights(weights, student_logits))


def pretraining_distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    *,
    ground_truth_ratio: float = MOBILEBERT_GROUND_TRUTH_RATIO,
) -> LossSum:
    """MobileBERT's MLM distillation: CE against `r * onehot(y) + (1 - r) * p_T`.

    Args:
      student_logits: [batch, P, vocab] student MLM logits at the masked positions.
      teacher_logits: [batch, P, vocab] teacher MLM logits at the same positions.
      labels: [batch, P] `masked_lm_ids` (any value where the weight is 0).
      weights: [batch, P] `masked_lm_weights`.
      ground_truth_ratio: r; 1.0 is the plain MLM loss, 0.0 pure soft CE.

    Returns:
      `LossSum` over the masked predictions.
    """
    if not 0.0 <= ground_truth_ratio <= 1.0:
        raise ValueError(f"ground_truth_ratio must be in [0, 1], got {ground_truth_ratio}")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} does not match logits {student_logits.shape}"
        )
    log_p_student, log_p_teacher = _log_probs(student_logits, teacher_logits, 1.0)
    weights = _weights(weights, student_logits)
    safe_labels = jnp.where(weights != 0, labels, 0).astype(jnp.int32)
    hard = -jnp.take_along_axis(log_p_student, safe_labels[..., None], axis=-1)[..., 0]
    soft = -_teacher_term(log_p_teacher, log_p_student)
    per_item = ground_truth_ratio * hard + (1.0 - ground_truth_ratio) * soft
    return weighted_sum(per_item, weights)
