"""Recipe: plain MLM + NSP pretraining (the IB-BERT teacher, or any model of the zoo)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mbert_jax.models import Model
from mbert_jax.models.variants import from_block
from mbert_jax.train import inputs
from mbert_jax.train.forward import forward, pretraining_metrics
from mbert_jax.train.recipe import Recipe, Stage


class PretrainRecipe(Recipe):
    """MLM + NSP from scratch, one stage of `config.train.steps`."""

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
