"""A model on a batch, and the metrics of its outputs: what every recipe shares.

A batch walks data -> model -> losses -> step: the data layer builds batch
dicts (`data/pipeline.py` for pretraining, `data/tasks/` for tasks), the
adapters here run a `Model` on one (`forward`: a pretraining batch, logits at
the masked positions; `task_forward`: a task batch), and the metric helpers
turn the outputs into `LossSum`s. Recipes (`train/pretrain.py`,
`train/finetune.py`, `distill/*`) compose them; none imports another recipe.

Task kinds. `TASK_KINDS` maps each `TaskData.kind` ("classification",
"regression", "tagging", "qa") to its head, the hard-label loss of the
head's outputs and the names `Evaluator.add` takes them by. A recipe asks
for `task_kind(kind).head`, takes `task_outputs(out, kind)` (the head's
outputs as a dict, `models.model.head_outputs`) and passes that dict to
`task_metrics` and `evaluator_outputs`, so it never branches on the kind.
The distillation losses of the same outputs are the table in
`distill/prediction.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mbert_jax import losses
from mbert_jax.losses import LossSum
from mbert_jax.models import Model
from mbert_jax.models.model import HEAD_OUTPUTS, head_outputs


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


def task_metrics_from_logits(logits, batch, *, regression: bool) -> dict[str, LossSum]:
    """The loss (and accuracy) of sequence classification or regression logits
    [batch, num_labels] over the valid rows (regression: MSE of column 0)."""
    valid = batch["valid"].astype(jnp.float32)
    if regression:
        err = (logits[:, 0].astype(jnp.float32) - batch["labels"]) ** 2
        return {"loss": LossSum(jnp.sum(err * valid), jnp.sum(valid))}
    return {
        "loss": losses.cross_entropy(logits, batch["labels"], valid),
        "accuracy": masked_accuracy(logits, batch["labels"], valid),
    }


def tagged_positions(batch) -> jax.Array:
    """[batch, length] 1.0 where a tagging batch has a label (each word's first piece) in a
    valid row, else 0.0: the positions every tagging loss and metric counts."""
    labels = batch["labels"]
    return (labels >= 0).astype(jnp.float32) * batch["valid"].astype(jnp.float32)[:, None]


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
    weights = tagged_positions(batch)
    return {
        "loss": losses.cross_entropy(logits, labels, weights),
        "accuracy": masked_accuracy(logits, labels, weights),
    }


def span_metrics_from_logits(start_logits, end_logits, batch) -> dict[str, LossSum]:
    """Span QA: the mean of the start and end cross-entropies over the valid rows."""
    valid = batch["valid"].astype(jnp.float32)
    start = losses.cross_entropy(start_logits, batch["start_positions"], valid)
    end = losses.cross_entropy(end_logits, batch["end_positions"], valid)
    return {"loss": LossSum((start.total + end.total) / 2, start.count)}


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """What a `TaskData.kind` needs of a model.

    Attributes:
      head: the `Model` head (`models.model.HEADS`).
      metrics: (the head's outputs, batch) -> `{"loss": ..., ["accuracy": ...]}`,
        the hard-label loss the fine-tuning minimizes.
      evaluator_keys: the `Evaluator.add` keyword of each of the head's
        outputs, in `HEAD_OUTPUTS[head]` order.
    """

    head: str
    metrics: Callable[[dict, dict], dict[str, LossSum]]
    evaluator_keys: tuple[str, ...]


TASK_KINDS = {
    "classification": TaskKind(
        "classifier",
        lambda o, b: task_metrics_from_logits(o["logits"], b, regression=False),
        ("logits",),
    ),
    "regression": TaskKind(
        "classifier",
        lambda o, b: task_metrics_from_logits(o["logits"], b, regression=True),
        ("logits",),
    ),
    "tagging": TaskKind(
        "token_classifier",
        lambda o, b: tagging_metrics_from_logits(o["token_logits"], b),
        ("logits",),
    ),
    "qa": TaskKind(
        "qa",
        lambda o, b: span_metrics_from_logits(o["start_logits"], o["end_logits"], b),
        ("start_logits", "end_logits"),
    ),
}


def task_kind(kind: str) -> TaskKind:
    """The `TASK_KINDS` entry of a `TaskData.kind`."""
    if kind not in TASK_KINDS:
        raise ValueError(f"task kind {kind!r}: one of {sorted(TASK_KINDS)}")
    return TASK_KINDS[kind]


def task_outputs(out, kind: str) -> dict[str, jax.Array]:
    """The outputs of the kind's head in a `ModelOutput`, by field name."""
    return head_outputs(out, task_kind(kind).head)


def task_metrics(outputs: dict, batch, kind: str) -> dict[str, LossSum]:
    """The task loss (and accuracy) of the head's `outputs` over the labelled items of a batch."""
    return task_kind(kind).metrics(outputs, batch)


def evaluator_outputs(outputs: dict, kind: str) -> dict[str, jax.Array]:
    """The head's outputs as `Evaluator.add` takes them (float32), for a recipe's `predict`."""
    k = task_kind(kind)
    fields = HEAD_OUTPUTS[k.head]
    return {key: outputs[f].astype(jnp.float32) for key, f in zip(k.evaluator_keys, fields)}
