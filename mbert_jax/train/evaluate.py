"""Recipe: evaluate a model directory without training (`config.recipe = "evaluate"`).

A run of zero steps: the trainer evaluates the initial model, which is the
model directory `config.init_from` (every head it has; a transformers
directory is converted, `models/resolve.py`), over the whole
held-out split, and writes WORKDIR/results.json like a training run's.

- Pretraining data (`config.data` a pretraining block): held-out masked-LM
  accuracy, cross-entropy (`mlm_loss`) and perplexity (exp of the mean
  cross-entropy over every masked position of the held-out split), and NSP
  accuracy when the model has an NSP head.
- A task (`config.data` a task block): the task's official metrics on its
  dev split, for a model directory that has the task head (the fine-tuning
  recipe's data, model and evaluator).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections

from mbert_jax.models import Model, io, resolve
from mbert_jax.train import inputs
from mbert_jax.train.finetune import FinetuneRecipe
from mbert_jax.train.forward import forward, pretraining_metrics
from mbert_jax.train.recipe import Recipe, Stage


class EvaluateRecipe(Recipe):
    """`config.init_from` on `config.data`: one stage of zero steps."""

    def __init__(self, config):
        if not config.get("init_from"):
            raise ValueError("config.init_from: the model directory to evaluate")
        self.init_from = resolve.model_dir(config.init_from, "config.init_from")
        self.model_config, self.heads = io.load_config(self.init_from)
        self.task = None
        if "task" in config.data:
            self.task = FinetuneRecipe(config)
            missing = set(self.task.heads) - set(self.heads)
            if missing:
                raise ValueError(
                    f"config.init_from={config.init_from} has no {sorted(missing)[0]} head for "
                    f"task {config.data.task} (heads: {list(self.heads)}); fine-tune it first"
                )
            return
        if "mlm" not in self.heads:
            raise ValueError(
                f"config.init_from={config.init_from} has no MLM head (heads: {list(self.heads)}); "
                "it cannot be scored on pretraining data"
            )
        data_cfg = ml_collections.ConfigDict(config.data.to_dict())
        vocab = io.vocab_path(self.init_from)
        if vocab is not None and not data_cfg.get("vocab_file"):
            data_cfg.vocab_file = str(vocab)
        self.use_nsp = "nsp" in self.heads and bool(data_cfg.get("nsp", True))
        data_cfg.nsp = self.use_nsp
        self.inputs = inputs.pretraining_inputs(data_cfg)
        if self.inputs.vocab_size != self.model_config.vocab_size:
            raise ValueError(
                f"config.init_from={config.init_from} has vocab_size "
                f"{self.model_config.vocab_size} but the data's vocabulary has "
                f"{self.inputs.vocab_size}; evaluate with the "
                "vocabulary the model was trained on (config.data.vocab_file)"
            )
        self.model = Model(self.model_config, heads=("mlm", "nsp") if self.use_nsp else ("mlm",))

    def stages(self) -> list[Stage]:
        return [Stage("evaluate", 0, {})]

    def init_params(self, rng):
        if self.task is not None:
            return self.task.init_params(rng)
        ids = jnp.zeros((1, 8), jnp.int32)
        return self.model.init(rng, ids, jnp.ones_like(ids))["params"]

    def initial_overrides(self, params):
        _, _, stored = io.load_model(self.init_from)
        return {k: stored[k] for k in params}

    def evaluate(self, stage, params, teacher_params, batch):
        if self.task is not None:
            return self.task.evaluate(stage, params, teacher_params, batch)
        out = forward(self.model, params, batch, train=False)
        return pretraining_metrics(out, batch, self.use_nsp)

    def evaluator(self):
        return self.task.evaluator() if self.task is not None else None

    def predict(self, params, batch):
        return self.task.predict(params, batch)

    def summarize(self, values: dict[str, float]) -> dict[str, float]:
        if self.task is not None:
            return values
        out = {"mlm_accuracy": values["mlm_accuracy"], "mlm_loss": values["mlm"]}
        out["perplexity"] = math.exp(values["mlm"])
        if self.use_nsp:
            out["nsp_accuracy"] = values["nsp_accuracy"]
        return out

    def eval_data(self, process_index, process_count):
        if self.task is not None:
            return self.task.eval_data(process_index, process_count)
        return self.inputs.eval(process_index, process_count)

    def final_model(self, params: Any):
        return None


def evaluate_pretraining(model_dir: str | Path, data_cfg) -> dict[str, float]:
    """Held-out MLM (and NSP) metrics of a model directory over the whole held-out split."""
    from mbert_jax.train import loop
    from mbert_jax.train.config import base_config

    config = base_config("evaluate")
    config.init_from = str(model_dir)
    config.data = ml_collections.ConfigDict(data_cfg.to_dict())
    config.train.eval_steps = 0
    return loop.run(config, EvaluateRecipe(config), None).final_eval
