"""Pieces the TinyBERT, DistilBERT and BERT-of-Theseus recipes share.

- Model blocks of a teacher: `{path, variant, overrides, seed}`. A model
  directory (`path`, written by any run as WORKDIR/model) is the normal
  teacher; an empty path builds a randomly initialized `variant` (seeded),
  which only makes sense for tests and smoke runs, so it logs a warning.
- `LoadedModel`: a model's config, heads and host parameters, plus the
  boxed abstract parameters the trainer needs to shard it.
- `TaskSetup`: the downstream-task data of a task-distillation recipe (the
  vocabulary comes from the teacher's model directory), with the
  `predict` / `evaluator` pair the trainer uses for official metrics.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mbert_jax.models import Model, ModelConfig, io
from mbert_jax.models import variants as variants_lib

log = logging.getLogger(__name__)


def teacher_block(variant: str = "bert_base", path: str = "", seed: int = 0, **overrides):
    """`{path, variant, overrides, seed}`: a model directory, or a random `variant` when empty.

    `variant`, `overrides` (a `model_block`'s) and `seed` only matter for a
    random model; a directory brings its own config.
    """
    from mbert_jax.train.config import model_block

    block = model_block(variant, **overrides)
    block.path = path
    block.seed = seed
    return block


def overrides_of(block) -> dict:
    """The `ModelConfig` overrides a block sets (fields left unset, None, are skipped)."""
    return {k: v for k, v in dict(block.get("overrides", {}) or {}).items() if v is not None}


def dummy_ids() -> tuple[jax.Array, jax.Array]:
    ids = jnp.zeros((1, 8), jnp.int32)
    return ids, jnp.ones_like(ids)


def boxed_params(model: Model, rng: jax.Array) -> Any:
    """`model.init(...)["params"]`, boxed with logical axis names."""
    return model.init(rng, *dummy_ids())["params"]


def abstract_params(model: Model) -> Any:
    """The boxed abstract parameters (`jax.eval_shape`, allocates nothing)."""
    return jax.eval_shape(lambda: boxed_params(model, jax.random.PRNGKey(0)))


def to_host(tree: Any) -> Any:
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def select_heads(params: dict, heads: tuple[str, ...]) -> dict:
    """The `encoder` subtree plus the named heads."""
    return {k: params[k] for k in ("encoder", *heads)}


@dataclasses.dataclass
class LoadedModel:
    """A model from a directory (or a random one) with the heads a recipe uses.

    Attributes:
      config: its `ModelConfig`.
      heads: the heads kept (a subset of those stored).
      path: the model directory; None for a random model.
      seed: the init seed of a random model.
    """

    config: ModelConfig
    heads: tuple[str, ...]
    path: Path | None
    seed: int = 0

    @property
    def model(self) -> Model:
        return Model(self.config, heads=self.heads)

    @property
    def vocab_file(self) -> Path | None:
        return io.vocab_path(self.path) if self.path is not None else None

    def abstract(self) -> Any:
        return abstract_params(self.model)

    def host_params(self) -> dict:
        """Numpy parameters of the encoder and `heads` (read again on every call)."""
        if self.path is None:
            params = boxed_params(self.model, jax.random.PRNGKey(self.seed))
            return to_host(nn.meta.unbox(params))
        _, _, params = io.load_model(self.path)
        return select_heads(params, self.heads)


def load_model_block(
    block,
    *,
    heads: tuple[str, ...],
    what: str = "teacher",
    vocab_size: int | None = None,
    num_labels: int | None = None,
) -> LoadedModel:
    """Resolve a `teacher_block` into a `LoadedModel`.

    Args:
      block: `{path, variant, overrides, seed}`.
      heads: heads the recipe needs; a model directory must have them.
      what: the config field, for messages ("teacher", "augment.mlm_teacher").
      vocab_size: the data's vocabulary size; must match a stored model.
      num_labels: the task's label count; must match a stored classifier.

    Raises:
      ValueError: a missing head, or a vocabulary / label count that differs.
    """
    path = str(block.get("path", "") or "")
    if not path:
        log.warning(
            "config.%s.path is empty: using a RANDOMLY INITIALIZED %s (%s) -- only for tests "
            "and smoke runs, the result means nothing",
            what,
            what,
            block.variant,
        )
        forced = {}
        if vocab_size is not None:
            forced["vocab_size"] = vocab_size
        if num_labels is not None:
            forced["num_labels"] = num_labels
        overrides = overrides_of(block)
        overrides.update(forced)
        config = variants_lib.get(block.variant, **overrides)
        return LoadedModel(config, tuple(heads), None, int(block.get("seed", 0)))
    config, stored_heads, _ = io.load_model(path)
    missing = [h for h in heads if h not in stored_heads]
    if missing:
        hint = {
            "mlm": "a pretrained BERT (e.g. WORKDIR/model of configs/pretrain_ibbert.py)",
            "classifier": "a fine-tuned model (WORKDIR/model of configs/finetune.py)",
        }
        raise ValueError(
            f"config.{what}.path={path} has heads {list(stored_heads)} but this recipe needs "
            f"{missing}: give " + " or ".join(hint.get(h, h) for h in missing)
        )
    if vocab_size is not None and config.vocab_size != vocab_size:
        raise ValueError(
            f"config.{what}.path={path} has vocab_size {config.vocab_size} but the data's "
            f"vocabulary has {vocab_size} tokens; distillation feeds both models the same ids, "
            "so use the teacher's vocab.txt for the data"
        )
    if num_labels is not None and "classifier" in heads and config.num_labels != num_labels:
        raise ValueError(
            f"config.{what}.path={path} classifies into {config.num_labels} labels but the task "
            f"has {num_labels}; fine-tune the teacher on this task first"
        )
    return LoadedModel(config, tuple(heads), Path(path))


def with_teacher_vocab(data_config, teacher_path: str):
    """A copy of a pretraining data config that reads the teacher's vocab.txt.

    Distillation gives both models the same ids, so an empty
    `data.vocab_file` (learn one) is replaced by the teacher directory's
    vocabulary; synthetic data and random teachers are left alone.
    """
    if data_config.get("source") == "synthetic" or not teacher_path or data_config.vocab_file:
        return data_config
    vocab = io.vocab_path(teacher_path)
    if vocab is None:
        raise ValueError(
            f"{teacher_path} has no vocab.txt; set config.data.vocab_file to the teacher's"
        )
    c = ml_collections.ConfigDict(data_config.to_dict())
    c.vocab_file = str(vocab)
    return c


# ---------------------------------------------------------------------- task data
class TaskSetup:
    """Task batches, vocabulary and official evaluation for a task-distillation recipe.

    The vocabulary is `config.data.vocab_file`, else the teacher directory's
    vocab.txt, else (random teachers only) the vocabulary learned from the
    embedded corpus, so that smoke runs need no files.
    """

    def __init__(self, data_config, teacher_path: str = "", prepare=None):
        from mbert_jax.data import build_task_data, load_tokenizer, pipeline
        from mbert_jax.data import config as data_config_lib

        vocab = data_config.vocab_file or (
            str(io.vocab_path(teacher_path) or "") if teacher_path else ""
        )
        if vocab:
            tokenizer = load_tokenizer(vocab, data_config.lowercase)
        elif teacher_path:
            raise ValueError(
                f"{teacher_path} has no vocab.txt; set config.data.vocab_file to the teacher's"
            )
        else:
            log.warning("no vocabulary given: using the one learned from the embedded corpus")
            tokenizer = pipeline.get_tokenizer(data_config_lib.get_config())
        self.tokenizer = tokenizer
        src = Path(tokenizer.source)
        self.vocab = src / "vocab.txt" if src.is_dir() else src
        c = data_config
        if prepare is not None:  # e.g. augmentation: a directory with the task's files
            c = ml_collections.ConfigDict(data_config.to_dict())
            c.data_dir = str(prepare(tokenizer))
        self.data = build_task_data(
            c,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            tokenizer=tokenizer,
        )
        if self.data.squad:
            raise ValueError(
                f"config.data.task={c.task}: this recipe distils sequence classification and "
                "regression (GLUE, stdlib); SQuAD is not supported"
            )
        self.num_labels = self.data.num_labels
        self.regression = self.data.is_regression


def task_metrics_from_logits(logits: jax.Array, batch: dict, regression: bool) -> dict:
    """`finetune.task_metrics` for bare classifier logits."""
    from mbert_jax.train.finetune import task_metrics

    return task_metrics(_Logits(logits), batch, squad=False, regression=regression)


@dataclasses.dataclass
class _Logits:
    logits: jax.Array
