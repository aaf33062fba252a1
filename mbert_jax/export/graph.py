"""The JAX function that is exported: inputs at batch 1, the task's outputs by name.

`export_fn(config, heads, task, ...)` returns `fn(params, input_ids, attention_mask,
token_type_ids) -> {name: array}`. The encoder is always `Model.apply` (so
every quantization-friendly choice of the config, ReLU/relu6, NoNorm and the
-6 attention-mask fill, is the traced graph itself); only the heads the task
needs run. Outputs per task:

- classification: `logits` [1, num_labels] (the classifier head on the pooled output).
- token_classification: `logits` [1, seq_len, num_labels] (the token
  classifier at every position; a word's tag is read at its first piece).
- qa: `start_logits`, `end_logits` [1, seq_len].
- mlm: `mlm_logits` [1, seq_len, vocab] at every position.
- embedding: `embedding` [1, hidden], by default the mean of the last hidden
  state over the real (attention_mask > 0) tokens. Mean pooling is the usual
  sentence embedding of an encoder not trained with a sentence objective
  (MobileBERT has no pooler, so its [CLS] vector is a raw token state);
  `pooling="cls"` gives the encoder's pooled output instead (tanh pooler on
  [CLS] when the model has one, else the raw [CLS] state).

Tied word embeddings (design). The MLM output matrix is `concat(word table
[V, E], extra [V, T - E])`. Traced as written, the converter folds the concat
into a new [V, T] constant beside the [V, E] table of the lookup, so the table
is stored twice. Here the MLM head is computed as
`h[:, :E] @ table.T + h[:, E:] @ extra.T + bias` (same math, the transform
reuses the model's own layer builders), so the lookup and the projection read
one constant; float and fp16 files then hold it once.

The weight quantizers would still make an int8 copy for the projection
beside the lookup's table (dynamic range leaves a lookup's table float; full
int8 quantizes it per tensor, the projection per channel). In the int8 modes
the exporter therefore quantizes the word table itself, once, per row
(symmetric, int8, each row's largest magnitude is 127): the lookup gathers
int8 rows and multiplies by the row's scale, and the projection reads the
dequantized table, whose per-channel requantization by the converter gives
back exactly the same int8 bytes and scales. `tflite.tidy` then points both
at one buffer. (The lookup in these modes clamps
out-of-range ids instead of returning NaN as `nn.Embed` does; ids come from
the same vocabulary, so it only matters for invalid inputs.)

Exact GELU as TFLite's GELU op (design). BERT, TinyBERT, DistilBERT and
IB-BERT use the exact (erf) GELU. Traced as written, the converter expands
`erf` into a ~40-op float polynomial per activation (ABS, EXP, DIV, SELECT,
MUL/ADD): in a float file XNNPACK does not take its SELECTs (3 extra
delegate partitions per layer), and in an int8 file it stays float around
the int8 dense layers and dominated TinyBERT4's int8 latency (1.4x over
float). TFLite's builtin `GELU` op is computed in one kernel (one XNNPACK
node in float; a lookup table in int8) and its `approximate` option selects
the erf form (False) or the tanh form (True). The converter reaches it only
by fusing the tanh form that `jax.nn.gelu(approximate=True)` lowers to (the
StableHLO composite route is closed: jax 0.10.2 writes `vhlo.composite_v2`,
which TF 2.21's deserializer rejects). So `builtin_gelu_config` traces exact
GELU in its tanh form, purely as a carrier pattern, and
`tflite.set_gelu_exact` then sets `approximate=False` on the fused ops: the
file computes the exact GELU of the model (float parity 1e-7 on TinyBERT4),
not the tanh approximation (whose error, up to 4.7e-4, never reaches the
file). `gelu_count` is how many ops the fusion must have produced; the
exporter checks it and otherwise falls back to the erf polynomial.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax.models import layers
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.model import Model

TASKS = ("classification", "token_classification", "qa", "mlm", "embedding")
POOLINGS = ("mean", "cls")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# The model head each task needs (None: the encoder alone).
TASK_HEAD = {
    "classification": "classifier",
    "token_classification": "token_classifier",
    "qa": "qa",
    "mlm": "mlm",
    "embedding": None,
}
# The heads that `Model.__call__` runs by name (the MLM head is traced by hand here).
_RUN_HEADS = ("classifier", "token_classifier", "qa")
OUTPUT_NAMES = {
    "classification": ("logits",),
    "token_classification": ("logits",),
    "qa": ("start_logits", "end_logits"),
    "mlm": ("mlm_logits",),
    "embedding": ("embedding",),
}

WORD_TABLE = ("encoder", "embeddings", "word_embeddings", "embedding")


def word_table(params: dict) -> np.ndarray:
    """The [vocab, E] word-embedding matrix of a parameter tree."""
    x = params
    for k in WORD_TABLE:
        x = x[k]
    return np.asarray(x)


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8 quantization: `table ~= q * scale[:, None]`.

    Each row's scale is its largest magnitude / 127 (1 for an all-zero row),
    so the largest entry of every row is exactly +-127 and a per-channel
    requantization of `q * scale` reproduces `q` and `scale`.
    """
    table = np.asarray(table, np.float32)
    scale = np.abs(table).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def builtin_gelu_config(config: ModelConfig) -> ModelConfig:
    """The config to trace so that exact GELU reaches TFLite's GELU op (see the module docstring).

    Args:
      config: the model's config.

    Returns:
      `config` with `hidden_act="gelu_tanh"` (the pattern the converter fuses
      to `GELU`) when it uses exact GELU; otherwise `config` itself. The
      exported file must then go through `tflite.set_gelu_exact`.
    """
    return config.replace(hidden_act="gelu_tanh") if config.hidden_act == "gelu" else config


def gelu_count(config: ModelConfig, task: str) -> int:
    """How many activations of `hidden_act` the task's export applies.

    One per feed-forward network of every layer (shared layers are applied
    once per layer too), plus the MLM transform's for the mlm task; the
    heads of the other tasks have none (the pooler is tanh).

    Args:
      config: the model's config.
      task: one of `TASKS`.

    Returns:
      The number of activation ops the exported graph computes.
    """
    return config.num_layers * config.num_feedforward_networks + (task == "mlm")


def _mlm_logits(config: ModelConfig, mlm: dict, hidden: jax.Array, table: jax.Array):
    """The MLM head with the tied and untied parts of the output matrix as two products."""
    t, e = config.mlm_transform_size, config.embed_size
    h = layers.dense(config, t, (None, None)).apply({"params": mlm["transform"]}, hidden)
    h = layers.activation(config.hidden_act)(h)
    h = layers.norm(config, None, kind="layer_norm").apply({"params": mlm["transform_norm"]}, h)
    logits = jnp.einsum("bsd,vd->bsv", h[..., :e], table.astype(h.dtype))
    if config.mlm_untied_size:
        extra = mlm["extra_output_weights"].astype(h.dtype)
        logits = logits + jnp.einsum("bsd,vd->bsv", h[..., e:], extra)
    return (logits + mlm["output_bias"].astype(h.dtype)).astype(jnp.float32)


def _masked_mean(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    m = (attention_mask > 0).astype(hidden.dtype)[..., None]
    total = jnp.sum(hidden * m, axis=1)
    count = jnp.maximum(jnp.sum(m, axis=1), 1.0)
    return (total / count).astype(jnp.float32)


def export_fn(
    config: ModelConfig,
    heads: tuple[str, ...],
    task: str,
    *,
    quantized_table: tuple[np.ndarray, np.ndarray] | None = None,
    pooling: str = "mean",
) -> Callable[..., dict[str, jax.Array]]:
    """The function to export: `fn(params, input_ids, attention_mask, token_type_ids)`.

    Args:
      config: the model's config.
      heads: the heads `params` holds (the task's head among them; for
        "embedding" none is needed).
      task: one of `TASKS`.
      quantized_table: `quantize_rows(word table)`: the word table in int8
        with per-row scales (see the module docstring). They are constants of
        the function, not parameters: the converter folds the projection's
        dequantization `q * scale` only for constants, and must, so that its
        weights come out as the same int8 bytes as the lookup's table.
      pooling: "mean" or "cls", for the embedding task.

    Returns:
      A pure function returning `{output name: array}` (see `OUTPUT_NAMES`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    head = TASK_HEAD[task]
    if head is not None and head not in heads:
        raise ValueError(f"task {task!r} needs the {head!r} head; the model has {list(heads)}")
    model = Model(config, heads=tuple(heads))
    run_heads = (head,) if head in _RUN_HEADS else ()

    def fn(params, input_ids, attention_mask, token_type_ids):
        def lookup(next_fun, args, kwargs, context):
            # Only the word lookup is replaced; everything else runs as written.
            if (
                quantized_table is not None
                and isinstance(context.module, nn.Embed)
                and context.module.name == "word_embeddings"
                and context.method_name == "__call__"
            ):
                (ids,) = args
                q, scale = (jnp.asarray(x) for x in quantized_table)
                rows = jnp.take(q, ids, axis=0, mode="clip")
                scale = jnp.take(scale, ids, axis=0, mode="clip")
                return rows.astype(jnp.float32) * scale[..., None]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(lookup):
            out = model.apply(
                {"params": params},
                input_ids,
                attention_mask,
                token_type_ids,
                run_heads=run_heads,
            )
        if task == "classification":
            return {"logits": out.logits}
        if task == "token_classification":
            return {"logits": out.token_logits}
        if task == "qa":
            return {"start_logits": out.start_logits, "end_logits": out.end_logits}
        hidden = out.encoder.last_hidden_state
        if task == "embedding":
            if pooling == "cls":
                return {"embedding": out.encoder.pooled_output.astype(jnp.float32)}
            return {"embedding": _masked_mean(hidden, attention_mask)}
        if quantized_table is not None:
            q, scale = (jnp.asarray(x) for x in quantized_table)
            table = q.astype(jnp.float32) * scale[:, None]
        else:
            table = params[WORD_TABLE[0]][WORD_TABLE[1]][WORD_TABLE[2]][WORD_TABLE[3]]
        return {"mlm_logits": _mlm_logits(config, params["mlm"], hidden, table)}

    return fn


def reference_outputs(
    config: ModelConfig,
    heads: tuple[str, ...],
    params: dict,
    task: str,
    inputs: dict[str, np.ndarray],
    pooling: str = "mean",
) -> dict[str, np.ndarray]:
    """The JAX model's own outputs for the task (plain `Model.apply`, no export rewrites).

    Used by verification; `inputs` are [n, seq_len] int32 arrays.
    """
    model = Model(config, heads=tuple(heads))
    head = TASK_HEAD[task]

    @jax.jit
    def run(ids, mask, types):
        run_heads = () if head is None else (head,)
        out = model.apply({"params": params}, ids, mask, types, run_heads=run_heads)
        if task == "classification":
            return {"logits": out.logits}
        if task == "token_classification":
            return {"logits": out.token_logits}
        if task == "qa":
            return {"start_logits": out.start_logits, "end_logits": out.end_logits}
        if task == "mlm":
            return {"mlm_logits": out.mlm_logits}
        if pooling == "cls":
            return {"embedding": out.encoder.pooled_output}
        return {"embedding": _masked_mean(out.encoder.last_hidden_state, mask)}

    out = run(*(jnp.asarray(inputs[k], jnp.int32) for k in INPUT_NAMES))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def task_kind(config: ModelConfig, task: str) -> str:
    """What the exported outputs mean, for the file's metadata: "classification",
    "regression" (a one-output classifier without class names), "tagging", "qa",
    "mlm" or "embedding"."""
    if task == "classification":
        return "regression" if config.num_labels == 1 and not config.label_names else task
    return {"token_classification": "tagging"}.get(task, task)
