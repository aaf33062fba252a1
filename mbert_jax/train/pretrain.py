"""Recipe: plain MLM + NSP pretraining (the IB-BERT teacher, or any model of the zoo).

From scratch (`config.model`), or from a pretrained model (`config.init_from`:
a model directory or a transformers directory, `models/resolve.py`), whose
config, vocabulary (when `config.data.vocab_file` is empty) and parameters it
starts from; every head the stored model has and the run trains is copied,
the others start fresh. `config.rules` (optional; default: train everything)
are the stage's training rules (`labels.py`): `(("mlm/.*", 1.0), (".*", None))`
fits an MLM head on a frozen encoder (configs/fit_mlm_head.py), leaving the
encoder's parameters bit-identical; the backward pass skips frozen
parameters (`stop_frozen`).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from mbert_jax.models import Model, io, resolve
from mbert_jax.models.config import TUNABLE_FIELDS
from mbert_jax.models.variants import block_overrides, from_block
from mbert_jax.train import inputs
from mbert_jax.train.forward import forward, pretraining_metrics
from mbert_jax.train.labels import FROZEN, make_labels
from mbert_jax.train.recipe import PretrainingDataRecipe, Stage
from mbert_jax.tree import shape_mismatch

log = logging.getLogger(__name__)


def _rules(config) -> tuple[tuple[str, float | None], ...]:
    rules = config.get("rules") or ((".*", 1.0),)
    return tuple((str(p), None if r is None else float(r)) for p, r in rules)


def stop_frozen(params, rules):
    """`params` with `jax.lax.stop_gradient` on the leaves `rules` freeze.

    Their gradients are zeroed by the optimizer anyway (`optimizers.py`); cut
    here, the backward pass skips them, so a head fitted on a frozen encoder
    costs about a forward of the encoder per step instead of a full step.
    """
    if all(rule not in (None, 0.0) for _, rule in rules):
        return params
    labels = make_labels(params, rules)
    return jax.tree.map(
        lambda p, label: jax.lax.stop_gradient(p) if label == FROZEN else p, params, labels
    )


class PretrainRecipe(PretrainingDataRecipe):
    """MLM (+ NSP) from scratch or from `config.init_from`, one stage of `config.train.steps`."""

    def __init__(self, config):
        self.config = config
        self.rules = _rules(config)
        self.init_from = None  # the model directory (a transformers one converted, cached)
        data_cfg, stored = config.data, None
        if config.get("init_from"):
            self.init_from = resolve.model_dir(config.init_from, "config.init_from")
            stored, _ = io.load_config(self.init_from)
            vocab = io.vocab_path(self.init_from)
            if data_cfg.get("source") != "synthetic" and vocab and not data_cfg.get("vocab_file"):
                data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
                data_cfg.vocab_file = str(vocab)
        elif any(rule is None or rule == 0.0 for _, rule in self.rules):
            raise ValueError(
                f"config.rules {list(self.rules)} freeze parameters but config.init_from is "
                "empty, so they would stay random; set config.init_from to the pretrained model "
                "(configs/fit_mlm_head.py:model=PATH)"
            )
        self.inputs = inputs.pretraining_inputs(data_cfg)
        self.use_nsp = bool(config.data.get("nsp", True))
        if stored is None:
            self.model_config = from_block(config.model, vocab_size=self.inputs.vocab_size)
        else:
            overrides = block_overrides(config.model)
            bad = sorted(set(overrides) - set(TUNABLE_FIELDS))
            if bad:
                raise ValueError(
                    f"config.model.overrides {bad} would change the architecture of "
                    f"config.init_from={config.init_from}; only {TUNABLE_FIELDS} may be set"
                )
            if stored.vocab_size != self.inputs.vocab_size:
                raise ValueError(
                    f"config.init_from={config.init_from} has vocab_size {stored.vocab_size} but "
                    f"the data's vocabulary has {self.inputs.vocab_size}; use its vocabulary "
                    "(config.data.vocab_file, or config.data.vocab_size for synthetic data)"
                )
            self.model_config = stored.replace(**overrides)
        heads = ("mlm", "nsp") if self.use_nsp else ("mlm",)
        self.model = Model(self.model_config, heads=heads)

    def stages(self) -> list[Stage]:
        weights = {"mlm": 1.0, "nsp": 1.0} if self.use_nsp else {"mlm": 1.0}
        return [Stage("pretrain", int(self.config.train.steps), weights, self.rules)]

    def init_params(self, rng):
        ids = jnp.zeros((1, 8), jnp.int32)
        return self.model.init(rng, ids, jnp.ones_like(ids))["params"]

    def initial_overrides(self, params):
        if self.init_from is None:
            return params
        _, _, stored = io.load_model(self.init_from)
        copied = [k for k in params if k in stored]
        problems = []
        for k in copied:
            problems += shape_mismatch(params[k], stored[k], want_name="model", have_name="stored")
        if problems:
            raise ValueError(
                f"config.init_from={self.config.init_from} does not fit this model:\n  "
                + "\n  ".join(problems[:20])
            )
        fresh = sorted(set(params) - set(copied))
        log.info("from config.init_from: %s copied, %s fresh", copied, fresh or "nothing")
        return {**params, **{k: jax.tree.map(jnp.asarray, stored[k]) for k in copied}}

    def loss(self, stage, params, teacher_params, batch, rng):
        out = forward(self.model, stop_frozen(params, stage.rules), batch, train=True, rng=rng)
        metrics = pretraining_metrics(out, batch, self.use_nsp)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return pretraining_metrics(
            forward(self.model, params, batch, train=False), batch, self.use_nsp
        )

    def final_model(self, params: Any):
        return self.model_config, self.model.heads, params
