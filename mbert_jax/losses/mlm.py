"""Hard-label cross-entropy: masked LM and next-sentence prediction.

`mlm_loss` is BERT's masked LM loss: the model computes logits only at the
gathered `masked_lm_positions` ([batch, P, vocab]); `masked_lm_weights` is 1
at real predictions and 0 where the position list is padded, so

    mlm = sum_i w_i * CE(logits_i, y_i) / sum_i w_i.

The official BERT and MobileBERT code divide by `sum(w) + 1e-5`; the
`LossSum` divides by `sum(w)` exactly (and gives 0 when it is 0). The same
function takes per-token logits ([batch, length, vocab], DistilBERT) with a
weight of 0 wherever the label is ignored (transformers' -100); labels at
zero-weight positions may hold any value.

`nsp_loss` is the mean cross-entropy of the [CLS] classifier over the
examples (0 = "is next", 1 = "random"); optional example weights drop
padded examples of a fixed-size batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbert_jax.losses.base import LossSum, weighted_sum


def cross_entropy(
    logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None
) -> LossSum:
    """Weighted cross-entropy of integer labels, summed over items.

    Args:
      logits: [..., classes] unnormalized scores (any float dtype; computed in float32).
      labels: [...] integer class ids; ignored (any value) where the weight is 0.
      weights: [...] per-item weights; None weighs every item 1.

    Returns:
      `LossSum(sum_i w_i * -log softmax(logits_i)[y_i], sum_i w_i)`.
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels shape {labels.shape} does not match logits {logits.shape}")
    if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe_labels = jnp.where(weights != 0, labels, 0).astype(jnp.int32)
    picked = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    return weighted_sum(-picked, weights)


def mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> LossSum:
    """Masked LM cross-entropy over the masked positions.

    Args:
      logits: [batch, P, vocab] logits at `masked_lm_positions` (or
        [batch, length, vocab] at every position).
      labels: [batch, P] `masked_lm_ids`, the original tokens.
      weights: [batch, P] `masked_lm_weights`: 1 at real predictions, 0 at padding.

    Returns:
      `LossSum` over the predictions (count = number of real predictions).
    """
    return cross_entropy(logits, labels, weights)


def nsp_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> LossSum:
    """Next-sentence prediction cross-entropy.

    Args:
      logits: [batch, 2] NSP logits.
      labels: [batch] `next_sentence_labels` (0 = is next, 1 = random).
      weights: [batch] optional example weights (0 for padded examples).

    Returns:
      `LossSum` over the examples.
    """
    return cross_entropy(logits, labels, weights)
