"""Recipe: fine-tuning on a downstream task (GLUE, SQuAD, the embedded `stdlib` task,
or the user's own data: `data.task="custom"`).

The encoder comes from a model directory (`config.init_from`, e.g.
WORKDIR/model of a pretraining or distillation run, or a transformers
directory, converted and cached by `models/resolve.py`); the task head
(classifier, regressor, span QA or token classifier) starts fresh. The
head follows `TaskData.kind` (`train.forward.TASK_KINDS`): "classification"
/ "regression" the classifier on the pooled output, "qa" the span head,
"tagging" the token classifier at every position (loss: the mean
cross-entropy over the labelled positions, each word's first piece). Held-out evaluation reports
the loss and accuracy in the jitted step and the task's official metrics
(accuracy, F1, Matthews, Pearson/Spearman, SQuAD EM/F1, entity-level
precision / recall / F1) on the host, over the whole dev split. The saved
model's config carries the task's `label_names`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mbert_jax.models import Model, io, resolve
from mbert_jax.models.config import TUNABLE_FIELDS
from mbert_jax.models.variants import block_overrides, from_block
from mbert_jax.train.forward import (
    evaluator_outputs,
    task_forward,
    task_kind,
    task_metrics,
    task_outputs,
)
from mbert_jax.train.recipe import Recipe, Stage
from mbert_jax.tree import shape_mismatch


class FinetuneRecipe(Recipe):
    """One stage of `config.train.steps` on the task in `config.data`."""

    def __init__(self, config):
        from mbert_jax.data import build_task_data, load_tokenizer

        self.config = config
        self.init_from = None  # the model directory (a transformers one converted, cached)
        if config.get("init_from"):
            self.init_from = resolve.model_dir(config.init_from, "config.init_from")
        pretrained_config = None
        if self.init_from is not None:
            pretrained_config, _ = io.load_config(self.init_from)
        vocab = config.data.vocab_file or (
            io.vocab_path(self.init_from) if self.init_from is not None else None
        )
        if not vocab:
            raise ValueError(
                "config.data.vocab_file: set it, or config.init_from to a model directory "
                "with a vocab.txt"
            )
        tokenizer = load_tokenizer(vocab, config.data.lowercase)
        self.vocab = Path(tokenizer.source)
        self.data = build_task_data(
            config.data,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            tokenizer=tokenizer,
        )
        self.squad = self.data.squad
        self.regression = self.data.is_regression
        self.kind = self.data.kind
        overrides = block_overrides(config.model)
        overrides["num_labels"] = self.data.num_labels
        overrides["label_names"] = self.data.label_names
        if pretrained_config is not None:
            bad = sorted(set(overrides) - set(TUNABLE_FIELDS))
            if bad:
                raise ValueError(
                    f"config.model.overrides {bad} would change the pretrained architecture of "
                    f"config.init_from={config.init_from}; only {TUNABLE_FIELDS} may be set when "
                    "fine-tuning"
                )
            self.model_config = pretrained_config.replace(**overrides)
        else:
            self.model_config = from_block(config.model, **overrides)
        if self.model_config.vocab_size != tokenizer.vocab_size:
            raise ValueError(
                f"the model's vocab_size ({self.model_config.vocab_size}) differs from the "
                f"task vocabulary's ({tokenizer.vocab_size}, {vocab})"
            )
        self.heads = (task_kind(self.kind).head,)
        self.model = Model(self.model_config, heads=self.heads)

    def stages(self) -> list[Stage]:
        return [Stage("finetune", int(self.config.train.steps), {"loss": 1.0})]

    def init_params(self, rng):
        ids = jnp.zeros((1, 8), jnp.int32)
        return self.model.init(rng, ids, jnp.ones_like(ids))["params"]

    def initial_overrides(self, params):
        if self.init_from is None:
            return params
        _, _, pretrained = io.load_model(self.init_from)
        problems = shape_mismatch(
            params["encoder"], pretrained["encoder"], want_name="model", have_name="pretrained"
        )
        if problems:
            raise ValueError(
                f"config.init_from={self.config.init_from} does not fit this model:\n  "
                + "\n  ".join(problems[:20])
            )
        return {**params, "encoder": jax.tree.map(jnp.asarray, pretrained["encoder"])}

    def _metrics(self, out, batch):
        return task_metrics(task_outputs(out, self.kind), batch, self.kind)

    def loss(self, stage, params, teacher_params, batch, rng):
        out = task_forward(self.model, params, batch, train=True, rng=rng)
        metrics = self._metrics(out, batch)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return self._metrics(task_forward(self.model, params, batch, train=False), batch)

    # Host-side official metrics over the whole dev split (see Trainer._evaluate).
    def predict(self, params, batch) -> dict[str, jax.Array]:
        out = task_forward(self.model, params, batch, train=False)
        return evaluator_outputs(task_outputs(out, self.kind), self.kind)

    def evaluator(self):
        return self.data.evaluator()

    def train_data(self, process_index, process_count):
        return self.data.train

    def eval_data(self, process_index, process_count):
        return self.data.eval_iterator()

    def vocab_file(self):
        return self.vocab / "vocab.txt" if self.vocab.is_dir() else self.vocab

    def final_model(self, params: Any):
        return self.model_config, self.heads, params
