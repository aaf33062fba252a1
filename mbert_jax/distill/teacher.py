"""The frozen teacher of every distillation recipe: its config block, loading and checks.

MobileBERT, TinyBERT, DistilBERT, BERT-of-Theseus (the predecessor) and the
augmentation's MLM teacher all describe, load, check and shard their teacher
the same way:

- `teacher_block(variant, path, seed=, dtype=, matmul_dtype=, **overrides)` is
  the config block `{path, variant, overrides, seed, dtype, matmul_dtype}`. `path` is a model
  directory (`models/io.py`; every run writes one as WORKDIR/model) or a
  transformers directory (converted on the fly and cached, `models/resolve.py`)
  and brings its own config. An empty path builds a randomly initialized
  `variant` with the block's `overrides` (a `model_block`'s: every
  `ModelConfig` field, settable from the command line) and `seed`, drawn on
  the host by `host_init` (no compile). A random teacher only makes sense for
  tests and smoke runs, so it logs a loud warning.
- `dtype` ("float32" or "bfloat16") is the dtype the teacher's parameters are
  held in on the devices and its forward computes in (`Teacher.run_config`
  and `Teacher.model`); it wins over the `ModelConfig.dtype` of a stored
  config. Copies of teacher parameters into a student are always float32.
  `matmul_dtype` (None, or e.g. "bfloat16" with dtype "float32": mixed
  precision, `models/matmul.py`) sets `ModelConfig.matmul_dtype` of the run
  the same way; None keeps the stored (or declared) one. The weights used
  only in matmuls (`matmul.OPERAND_ONLY`) are then held in that operand
  dtype (`matmul.frozen_dtype`): the same outputs, without a per-step cast.
- `read_config` gives the config (no parameters) before the data is known;
  `load_teacher` returns a `Teacher` whose heads, vocabulary and label count
  are checked against the recipe, with messages naming the config field. A
  missing MLM head points to configs/fit_mlm_head.py, which fits one on the
  frozen encoder.
  `Teacher.read` reads only the subtrees asked for (the encoder and the
  recipe's heads by default) from params.safetensors and checks them against
  the model's shapes; `Teacher.abstract` gives the boxed abstract parameters
  the trainer shards the teacher with.
- `teacher_data_config`: a data block that reads the teacher's vocabulary.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mbert_jax.models import Model, ModelConfig, io, matmul, resolve
from mbert_jax.models.config import DTYPES
from mbert_jax.models.model import dummy_inputs
from mbert_jax.models.variants import block_overrides, from_block
from mbert_jax.parallel import sharding as sharding_lib
from mbert_jax.train.config import model_block
from mbert_jax.tree import flat, shape_mismatch

log = logging.getLogger(__name__)

TEACHER_DTYPES = ("float32", "bfloat16")

# What a missing head asks for, in messages.
_HEAD_HINTS = {
    "mlm": "a pretrained BERT (WORKDIR/model of configs/pretrain_ibbert.py, or any "
    "pretraining run)",
    "classifier": "a fine-tuned model (WORKDIR/model of configs/finetune.py)",
}


def teacher_block(
    variant: str = "bert_base",
    path: str = "",
    *,
    seed: int = 0,
    dtype: str = "float32",
    matmul_dtype: str | None = None,
    **overrides,
) -> ml_collections.ConfigDict:
    """The config block of a frozen teacher: `{path, variant, overrides, seed, dtype, ...}`.

    Args:
      variant: the zoo variant of a random teacher (empty `path`).
      path: a model directory; it brings its own config, so `variant`,
        `overrides` and `seed` are then unused.
      seed: the host-init seed of a random teacher.
      dtype: "float32" or "bfloat16": how the teacher is held and run.
      matmul_dtype: the operand dtype of its matmuls (None: as stored or declared).
      **overrides: `ModelConfig` fields of a random teacher (see
        `train.config.model_block`; all are settable from the command line).

    Returns:
      The block.
    """
    block = model_block(variant, **overrides)
    block.path = path
    block.seed = seed
    block.dtype = dtype
    block.matmul_dtype = ml_collections.FieldReference(matmul_dtype, field_type=str)
    return block


def describe(block, what: str = "teacher") -> str:
    """`config.<what>.path=...`, or `config.<what>.variant=...` for a random teacher."""
    path = block.get("path", "") or ""
    return f"config.{what}.path={path}" if path else f"config.{what}.variant={block.variant}"


def _check_dtype(block, what: str) -> str:
    dtype = block.get("dtype", "float32")
    if dtype not in TEACHER_DTYPES:
        raise ValueError(f"config.{what}.dtype={dtype!r}: one of {TEACHER_DTYPES}")
    matmul_dtype = block.get("matmul_dtype")
    if matmul_dtype is not None and matmul_dtype not in DTYPES:
        raise ValueError(f"config.{what}.matmul_dtype={matmul_dtype!r}: None or one of {DTYPES}")
    declared = block_overrides(block).get("dtype")
    if declared is not None and declared != dtype:
        raise ValueError(
            f"config.{what}.overrides.dtype={declared!r} differs from config.{what}.dtype="
            f"{dtype!r}; set config.{what}.dtype alone (the teacher's parameter and compute dtype)"
        )
    return dtype


def _model_dir(path: str | Path, what: str) -> Path:
    """The model directory of `config.<what>.path` (a transformers one converted, `resolve`)."""
    return resolve.model_dir(path, f"config.{what}.path")


def missing_heads_message(
    path: str, stored: tuple[str, ...], missing: list[str], what: str, needed_by: str = ""
) -> str:
    """`config.<what>.path=P has heads [...] but R needs [...]: give ...` and the way out.

    A missing MLM head can be fitted on the frozen encoder (configs/fit_mlm_head.py).
    """
    msg = (
        f"config.{what}.path={path} has heads {list(stored)} but {needed_by or 'this recipe'} "
        f"needs {missing}: give " + " or ".join(_HEAD_HINTS.get(h, h) for h in missing)
    )
    if "mlm" in missing:
        msg += (
            f", or fit an MLM head on its frozen encoder (mbert-jax train --config "
            f"configs/fit_mlm_head.py:model={path} --workdir DIR, then "
            f"--config.{what}.path=DIR/model)"
        )
    return msg


def read_config(
    block, *, heads: tuple[str, ...] = (), what: str = "teacher", needed_by: str = ""
) -> ModelConfig:
    """The model config of a teacher block, without reading any parameters.

    A model directory's stored config (which must have `heads`), or the random
    variant's with the block's overrides (its vocabulary and labels as
    declared: `load_teacher` fits them to the data). A transformers directory
    is converted first (`models/resolve.py`, cached).

    Args:
      block: the teacher block.
      heads: the heads the recipe needs.
      what: the config field, for messages.
      needed_by: what needs the heads, for the message (e.g. "DistilBERT's
        soft targets (config.distill.loss_weights.kl)"); default "this recipe".

    Raises:
      ValueError: a bad dtype, a path that is neither a model nor a
        transformers directory, or a missing head, naming the config field.
    """
    _check_dtype(block, what)
    if not block.get("path"):
        return from_block(block)
    return _stored(block, heads, what, needed_by)[1]


def _stored(block, heads, what, needed_by) -> tuple[Path, ModelConfig]:
    """The model directory of a block's path and its config, checked for `heads`."""
    d = _model_dir(block.path, what)
    config, stored_heads = io.load_config(d)
    missing = [h for h in heads if h not in stored_heads]
    if missing:
        raise ValueError(missing_heads_message(block.path, stored_heads, missing, what, needed_by))
    return d, config


def stored_heads(block, what: str = "teacher") -> tuple[str, ...] | None:
    """The heads a teacher block's model directory holds; None for a random teacher
    (drawn with whatever heads a recipe asks for). For recipes whose need of a head
    depends on their settings (MobileBERT: the MLM head only for PD)."""
    if not block.get("path"):
        return None
    return io.load_config(_model_dir(block.path, what))[1]


def load_teacher(
    block,
    *,
    heads: tuple[str, ...],
    what: str = "teacher",
    vocab_size: int | None = None,
    num_labels: int | None = None,
    needed_by: str = "",
) -> Teacher:
    """Resolve a teacher block into a `Teacher`, checked against the recipe's data.

    Args:
      block: `{path, variant, overrides, seed, dtype}` (`teacher_block`).
      heads: the heads the recipe runs or copies; a model directory must have them.
      what: the config field, for messages ("teacher", "augment.mlm_teacher").
      vocab_size: the data's vocabulary size; a stored teacher must have it,
        a random one is built with it.
      num_labels: the task's label count; likewise for a classifier.
      needed_by: what needs `heads`, for the missing-head message (`read_config`).

    Raises:
      ValueError: see `read_config`; a vocabulary or label count that differs.
    """
    seed = int(block.get("seed", 0))
    if not block.get("path"):
        dtype = _check_dtype(block, what)
        log.warning(
            "config.%s.path is empty: the %s is a RANDOMLY INITIALIZED %s (seed %d) -- only for "
            "tests and smoke runs, the result means nothing; pass --config.%s.path=WORKDIR/model "
            "of a training run",
            what,
            what,
            block.variant,
            seed,
            what,
        )
        forced = {"vocab_size": vocab_size, "num_labels": num_labels}
        config = from_block(block, **{k: v for k, v in forced.items() if v is not None})
        return Teacher(config, tuple(heads), None, dtype, seed, what, block.get("matmul_dtype"))
    _check_dtype(block, what)
    path, config = _stored(block, heads, what, needed_by)
    if vocab_size is not None and config.vocab_size != vocab_size:
        raise ValueError(
            f"config.data: the data's vocabulary has {vocab_size} tokens but "
            f"config.{what}.path={block.path} has vocab_size={config.vocab_size}; distillation "
            f"feeds both models the same ids, so use the {what}'s vocab.txt "
            "(config.data.vocab_file)"
        )
    if num_labels is not None and "classifier" in heads and config.num_labels != num_labels:
        raise ValueError(
            f"config.{what}.path={block.path} classifies into {config.num_labels} labels but the "
            f"task has {num_labels}; fine-tune the {what} on this task first"
        )
    return Teacher(config, tuple(heads), path, block.dtype, seed, what, block.get("matmul_dtype"))


@dataclasses.dataclass
class Teacher:
    """A frozen model from a directory (or a random one) with the heads a recipe uses.

    Attributes:
      config: its `ModelConfig` as stored (or declared by the block).
      heads: the heads kept (a subset of those stored).
      path: the model directory; None for a random model.
      dtype: the block's `dtype`: the parameters are held and the forward
        computes in it (`run_config`); matmul-only weights are held in the
        operand dtype (`matmul.frozen_dtype`).
      seed: the host-init seed of a random model.
      what: the config field it comes from, for messages.
      matmul_dtype: the block's `matmul_dtype` (None: the config's).
    """

    config: ModelConfig
    heads: tuple[str, ...]
    path: Path | None
    dtype: str = "float32"
    seed: int = 0
    what: str = "teacher"
    matmul_dtype: str | None = None
    _random: dict | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def run_config(self) -> ModelConfig:
        """`config` computing in `dtype` (and `matmul_dtype`): the config the teacher runs with."""
        run = {"dtype": self.dtype}
        if self.matmul_dtype is not None:
            run["matmul_dtype"] = self.matmul_dtype
        return self.config.replace(**run)

    @property
    def model(self) -> Model:
        return Model(self.run_config, heads=self.heads)

    @property
    def vocab_file(self) -> Path | None:
        return io.vocab_path(self.path) if self.path is not None else None

    @property
    def prefixes(self) -> tuple[str, ...]:
        """The flat-key prefixes of its subtrees: the encoder and its heads."""
        return ("encoder/", *(f"{h}/" for h in self.heads))

    def abstract(self) -> Any:
        """The boxed abstract parameters in their held dtypes (`jax.eval_shape`: no allocation)."""
        model = self.model
        boxed = jax.eval_shape(
            lambda: model.init(jax.random.key(0), *dummy_inputs(model.config))["params"]
        )

        def held(path, s):
            name = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)][-1]
            return jax.ShapeDtypeStruct(s.shape, matmul.frozen_dtype(name, model.config))

        return jax.tree_util.tree_map_with_path(held, boxed)

    def read(self, prefixes: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Float32 host parameters under `prefixes` (default: all), flat ('/'-keys), checked.

        A directory is read again on each call, only the tensors asked for; a
        random model is drawn once and kept.

        Raises:
          ValueError: the stored parameters do not match the model's shapes.
        """
        prefixes = self.prefixes if prefixes is None else tuple(prefixes)
        # Not `param_shapes`: its unboxing adds sharding constraints, which fail
        # on abstract values inside the trainer's mesh context.
        shapes = sharding_lib.unbox(self.abstract())
        if self.path is None:
            if self._random is None:
                self._random = flat(host_init(shapes, self.config.initializer_range, self.seed))
            return {k: v for k, v in self._random.items() if k.startswith(prefixes)}
        want = {k: v for k, v in flat(shapes).items() if k.startswith(prefixes)}
        have = read_params(self.path, prefixes)
        problems = shape_mismatch(want, have, want_name="model_config.json", have_name="file")
        if problems:
            raise ValueError(
                f"config.{self.what}.path={str(self.path)!r}: its parameters do not match its "
                "model_config.json (other shapes, missing or unexpected parameters): "
                + "; ".join(problems[:5])
            )
        return {k: np.asarray(v, np.float32) for k, v in have.items()}

    def host_params(self, dtype: str | None = None) -> dict:
        """Numpy parameters of the encoder and `heads`, nested, in `dtype` (default: held).

        The trainer's `load_teacher_params` takes the held dtypes (`abstract`);
        copies into a student ask for "float32".
        """
        cfg = self.run_config

        def cast(key, v):
            held = matmul.frozen_dtype(key.rsplit("/", 1)[-1], cfg)
            return v.astype(jnp.dtype(dtype) if dtype else held)

        return io.unflatten({k: cast(k, v) for k, v in self.read().items()})


# ------------------------------------------------------------------ parameters
def host_init(shapes, initializer_range: float, seed: int) -> dict:
    """Random float32 parameters on the host, drawn like the zoo's initializers.

    Norm scales are ones, biases zeros, every other leaf (kernels, embedding
    tables, extra output weights) normal with std `initializer_range` (see
    `models.layers`). For the random teacher of tests and smoke runs: numpy
    draws cost nothing, where compiling the model's `init` takes seconds.

    Args:
      shapes: a tree of `jax.ShapeDtypeStruct` (e.g. `models.param_shapes(model)`).
      initializer_range: the model's `initializer_range`.
      seed: the numpy seed.

    Returns:
      A tree of numpy float32 arrays like `shapes`.
    """
    rng = np.random.default_rng(seed)

    def one(path, s):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "scale":
            return np.ones(s.shape, np.float32)
        if name.endswith("bias"):
            return np.zeros(s.shape, np.float32)
        return (rng.standard_normal(s.shape) * initializer_range).astype(np.float32)

    return jax.tree_util.tree_map_with_path(one, shapes)


def read_params(directory: str | Path, prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The parameters under `prefixes` of a model directory, flat ('/'-keys), as stored.

    Only those tensors are read from params.safetensors.
    """
    return io.read_safetensors(Path(directory) / io.PARAMS_FILE, prefixes)


# ------------------------------------------------------------------------ data
def teacher_data_config(data_config, teacher_path: str, what: str = "teacher"):
    """A pretraining data block that reads the teacher directory's vocab.txt.

    `teacher_path` may be a transformers directory (`_model_dir` converts it,
    with the vocabulary of its vocab.txt or tokenizer.json).

    Both models read the same `input_ids`, so the data must use the teacher's
    vocabulary: an empty `vocab_file` (learn one) becomes the teacher's, and
    `teacher_vocab_file` makes the data layer check that they are equal.
    Synthetic data and random teachers are left alone.

    Raises:
      ValueError: `teacher_path` is neither a model nor a transformers
        directory, or has no vocabulary and `data_config.vocab_file` is empty.
    """
    if data_config.get("source") == "synthetic" or not teacher_path:
        return data_config
    vocab = io.vocab_path(_model_dir(teacher_path, what))
    if vocab is None:
        if data_config.get("vocab_file"):
            return data_config
        raise ValueError(
            f"config.{what}.path={teacher_path} has no vocab.txt; set config.data.vocab_file "
            f"to the {what}'s"
        )
    c = ml_collections.ConfigDict(data_config.to_dict())
    if not c.get("vocab_file"):
        c.vocab_file = str(vocab)
    if not c.get("teacher_vocab_file"):
        c.teacher_vocab_file = str(vocab)
    return c
