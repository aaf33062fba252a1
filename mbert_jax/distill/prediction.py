"""The prediction-layer (logit) distillation term of every task kind: one table.

A task-distilled student learns the teacher's outputs of the task's head
(`train.forward.task_outputs`: a dict of the head's `ModelOutput` fields).
`PREDICTION_LOSSES` maps each `TaskData.kind` to its loss; with
p = softmax(z / t) at temperature t and the teacher's side under
`stop_gradient`:

    classification  -sum_c p_T[c] log p_S[c]            per valid row (TinyBERT's soft CE)
    regression      (z_S - z_T)^2                        per valid row (official task_distill.py)
    tagging         -sum_c p_T[c] log p_S[c]            per labelled token: each word's first
                                                         piece in a valid row, the positions the
                                                         fine-tuning's loss counts
    qa              (CE_start + CE_end) / 2              per valid row, each a soft CE over the
                                                         real positions of the window (padding
                                                         is left out of both distributions)

Each returns a `LossSum` whose mean is the average over those items, the
same reduction as the kind's hard-label loss (`train.forward.TASK_KINDS`),
so one weight means the same for every kind. `official=True` is the
official TinyBERT reduction of the kind it has (classification: the soft CE
also divided by the number of classes); the kinds the official code lacks
(tagging, qa) have no official variant and ignore it. The temperature does
not apply to regression.

`logit_distillation` is the same table with a choice of divergence (KL or
soft cross-entropy, times T^2), for the prune recipe's recovery.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mbert_jax import losses
from mbert_jax.losses import LossSum
from mbert_jax.train.forward import tagged_positions

# Logits of padded positions, out of a span distribution (exp underflows to exactly 0).
_MASKED = -1e9


def classification_loss(student, teacher, batch, *, temperature, official) -> LossSum:
    return losses.tinybert_prediction_loss(
        student["logits"],
        teacher["logits"],
        temperature=temperature,
        weights=batch["valid"].astype(jnp.float32),
        official=official,
    )


def regression_loss(student, teacher, batch, *, temperature, official) -> LossSum:
    del temperature, official  # a squared error: no temperature, the same reduction
    valid = batch["valid"].astype(jnp.float32)
    err = jnp.square(
        student["logits"][:, 0].astype(jnp.float32)
        - jax.lax.stop_gradient(teacher["logits"][:, 0]).astype(jnp.float32)
    )
    return LossSum(jnp.sum(err * valid), jnp.sum(valid))


def tagging_loss(
    student, teacher, batch, *, temperature, official, divergence=None, scale=False
) -> LossSum:
    del official
    return (divergence or losses.soft_cross_entropy)(
        student["token_logits"],
        teacher["token_logits"],
        temperature=temperature,
        weights=tagged_positions(batch),
        scale_by_temperature_squared=scale,
    )


def span_loss(
    student, teacher, batch, *, temperature, official, divergence=None, scale=False
) -> LossSum:
    del official
    valid = batch["valid"].astype(jnp.float32)
    real = batch["attention_mask"] > 0
    total = 0.0
    for field in ("start_logits", "end_logits"):
        s, t = (jnp.where(real, x[field].astype(jnp.float32), _MASKED) for x in (student, teacher))
        total = (
            total
            + (divergence or losses.soft_cross_entropy)(
                s, t, temperature=temperature, weights=valid, scale_by_temperature_squared=scale
            ).total
        )
    return LossSum(total / 2, jnp.sum(valid))


def logit_distillation(
    kind: str, student: dict, teacher: dict, batch, *, divergence, temperature: float
) -> LossSum:
    """Any kind's logits distilled with `divergence` (`losses.kl_divergence` or
    `soft_cross_entropy`) at `temperature`, times T^2, over the items the kind's
    prediction loss counts (the prune recipe's recovery); regression: the squared error."""
    if kind == "classification":
        return divergence(
            student["logits"],
            teacher["logits"],
            temperature=temperature,
            weights=batch["valid"].astype(jnp.float32),
            scale_by_temperature_squared=True,
        )
    if kind == "regression":
        return regression_loss(student, teacher, batch, temperature=temperature, official=False)
    if kind not in PREDICTION_LOSSES:
        raise ValueError(f"task kind {kind!r}: one of {sorted(PREDICTION_LOSSES)}")
    return PREDICTION_LOSSES[kind](
        student,
        teacher,
        batch,
        temperature=temperature,
        official=False,
        divergence=divergence,
        scale=True,
    )


PREDICTION_LOSSES: dict[str, Callable[..., LossSum]] = {
    "classification": classification_loss,
    "regression": regression_loss,
    "tagging": tagging_loss,
    "qa": span_loss,
}


def prediction_loss(
    kind: str, student: dict, teacher: dict, batch, *, temperature=1.0, official=False
) -> LossSum:
    """The prediction-layer loss of a task kind (see the module docstring).

    Args:
      kind: a `TaskData.kind`.
      student, teacher: the head's outputs (`train.forward.task_outputs`).
      batch: the task batch (`valid`; tagging `labels`; qa `attention_mask`).
      temperature: t of the soft cross-entropies.
      official: the official TinyBERT reduction (classification only).
    """
    if kind not in PREDICTION_LOSSES:
        raise ValueError(f"task kind {kind!r}: one of {sorted(PREDICTION_LOSSES)}")
    return PREDICTION_LOSSES[kind](
        student, teacher, batch, temperature=float(temperature), official=bool(official)
    )
