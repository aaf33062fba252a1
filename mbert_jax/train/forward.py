"""A model on a batch, and the metrics of its outputs: what every recipe shares.

A batch walks data -> model -> losses -> step: the data layer builds batch
dicts (`data/pipeline.py` for pretraining, `data/tasks.py` for tasks), the
adapters here run a `Model` on one (`forward`: a pretraining batch, logits at
the masked positions; `task_forward`: a task batch), and the metric helpers
turn the outputs into `LossSum`s. Recipes (`train/pretrain.py`,
`train/finetune.py`, `distill/*`) compose them; none imports another recipe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mbert_jax import losses
from mbert_jax.losses import LossSum
from mbert_jax.models import Model


def forward(model: Model, params, batch, *, train: bool, rng=None, **kwargs):
    """The model on a pretraining batch (logits at the masked positions).

    Args:
      model: the `Model`.
      params: its parameters.
      batch: a pretraining batch (`input_ids`, `attention_mask`,
        `token_type_ids`, optional `position_ids`, `masked_lm_positions`).
      train: dropout on (needs `rng`).
      rng: the dropout key.
      **kwargs: passed to `Model.__call__` (`num_layers`, `run_heads`, ...).

    Returns:
      The `ModelOutput`.
    """
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        batch.get("position_ids"),
        batch["masked_lm_positions"],
        deterministic=not train,
        rngs={"dropout": rng} if train else None,
        **kwargs,
    )


def task_forward(model: Model, params, batch, *, train: bool, rng=None, **kwargs):
    """The model on a task batch (dropout when `train`); `kwargs` go to `Model.__call__`."""
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        batch.get("position_ids"),
        deterministic=not train,
        rngs={"dropout": rng} if train else None,
        **kwargs,
    )


def masked_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> LossSum:
    """Accuracy of `argmax(logits)` against `labels` over the rows `weights` selects."""
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    return LossSum(jnp.sum(correct * weights), jnp.sum(weights))


def pretraining_metrics(out, batch, use_nsp: bool) -> dict[str, LossSum]:
    """MLM (and NSP) losses and accuracies of a model output."""
    metrics = {
        "mlm": losses.mlm_loss(out.mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"]),
        "mlm_accuracy": masked_accuracy(
            out.mlm_logits, batch["masked_lm_ids"], batch["masked_lm_weights"]
        ),
    }
    if use_nsp:
        labels = batch["next_sentence_labels"]
        valid = batch.get("valid", jnp.ones(labels.shape, jnp.float32))
        metrics["nsp"] = losses.nsp_loss(out.nsp_logits, labels, valid)
        metrics["nsp_accuracy"] = masked_accuracy(out.nsp_logits, labels, valid)
    return metrics


def task_metrics(out, batch, *, squad: bool, regression: bool) -> dict[str, LossSum]:
    """The task loss (and accuracy) over the valid rows of a batch."""
    if squad:
        valid = batch["valid"].astype(jnp.float32)
        start = losses.cross_entropy(out.start_logits, batch["start_positions"], valid)
        end = losses.cross_entropy(out.end_logits, batch["end_positions"], valid)
        return {"loss": LossSum((start.total + end.total) / 2, start.count)}
    return task_metrics_from_logits(out.logits, batch, regression=regression)


def task_metrics_from_logits(logits, batch, *, regression: bool) -> dict[str, LossSum]:
    """`task_metrics` of sequence classification or regression logits [batch, num_labels].

    For logits of a forward assembled by hand (BERT-of-Theseus's mixed stack).
    """
    valid = batch["valid"].astype(jnp.float32)
    if regression:
        err = (logits[:, 0].astype(jnp.float32) - batch["labels"]) ** 2
        return {"loss": LossSum(jnp.sum(err * valid), jnp.sum(valid))}
    return {
        "loss": losses.cross_entropy(logits, batch["labels"], valid),
        "accuracy": masked_accuracy(logits, batch["labels"], valid),
    }


def tagging_metrics(out, batch) -> dict[str, LossSum]:
    """`tagging_metrics_from_logits` of a model output's `token_logits`."""
    return tagging_metrics_from_logits(out.token_logits, batch)


def tagging_metrics_from_logits(logits, batch) -> dict[str, LossSum]:
    """Token classification: cross-entropy and accuracy over the labelled positions.

    Args:
      logits: [batch, length, num_labels].
      batch: with `labels` int [batch, length] (-1: no tag, e.g. a word's
        later pieces, [CLS], [SEP], padding) and `valid` [batch].

    Returns:
      `loss` and `accuracy` as (sum, count) over the positions whose label
      is >= 0 in valid rows, so the mean is per labelled word, whatever the
      padding.
    """
    labels = batch["labels"]
    weights = (labels >= 0).astype(jnp.float32) * batch["valid"].astype(jnp.float32)[:, None]
    return {
        "loss": losses.cross_entropy(logits, labels, weights),
        "accuracy": masked_accuracy(logits, labels, weights),
    }
