"""Recipe: plain MLM + NSP pretraining (the IB-BERT teacher, or any model of the zoo)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mbert_jax import losses
from mbert_jax.losses import LossSum
from mbert_jax.models import Model
from mbert_jax.models.variants import from_block
from mbert_jax.train import inputs
from mbert_jax.train.recipe import Recipe, Stage

PRETRAINING_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_labels",
)


def masked_accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> LossSum:
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    return LossSum(jnp.sum(correct * weights), jnp.sum(weights))


def forward(model: Model, params, batch, *, train: bool, rng=None, **kwargs):
    """The model on a pretraining batch (logits at the masked positions)."""
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


class PretrainRecipe(Recipe):
    """MLM + NSP from scratch, one stage of `config.train.steps`."""

    batch_keys = PRETRAINING_KEYS

    def __init__(self, config):
        self.config = config
        self.data = inputs.pretraining_inputs(config.data)
        self.use_nsp = bool(config.data.get("nsp", True))
        self.model_config = from_block(config.model, vocab_size=self.data.vocab_size)
        heads = ("mlm", "nsp") if self.use_nsp else ("mlm",)
        self.model = Model(self.model_config, heads=heads)

    def stages(self) -> list[Stage]:
        weights = {"mlm": 1.0, "nsp": 1.0} if self.use_nsp else {"mlm": 1.0}
        return [Stage("pretrain", int(self.config.train.steps), weights)]

    def init_params(self, rng):
        ids = jnp.zeros((1, 8), jnp.int32)
        return self.model.init(rng, ids, jnp.ones_like(ids))["params"]

    def loss(self, stage, params, teacher_params, batch, rng):
        out = forward(self.model, params, batch, train=True, rng=rng)
        metrics = pretraining_metrics(out, batch, self.use_nsp)
        objective = sum(w * metrics[k].mean() for k, w in stage.loss_weights.items())
        return objective, metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return pretraining_metrics(
            forward(self.model, params, batch, train=False), batch, self.use_nsp
        )

    def train_data(self, process_index, process_count):
        return self.data.train(process_index, process_count)

    def eval_data(self, process_index, process_count):
        return self.data.eval(process_index, process_count)

    def vocab_file(self):
        return self.data.vocab_file

    def final_model(self, params: Any):
        return self.model_config, self.model.heads, params
