"""Conversion to and from transformers' PyTorch BERT and MobileBERT checkpoints.

A transformers checkpoint directory (the `save_pretrained` layout:
`config.json` plus `model.safetensors`, a sharded `model.safetensors.index.json`,
or `pytorch_model.bin`) of `BertModel`, `BertForPreTraining`,
`BertForMaskedLM`, `BertForNextSentencePrediction`,
`BertForSequenceClassification`, `BertForQuestionAnswering`,
`BertForTokenClassification` or their `MobileBert*` counterparts loads into
our `(ModelConfig, heads, params)`;
`save_hf` writes our params back as a directory that transformers'
`from_pretrained` loads. Weights are read with safetensors into numpy (torch
is imported only for a `.bin` checkpoint) and transformed with numpy: a torch
`Linear` weight is `[out, in]`, our `DenseGeneral` kernels are `[in, out]`,
`[in, heads, head_dim]` (query/key/value) or `[heads, head_dim, out]`
(attention output).

Heads. Sequence and token classification both name their weights
`classifier.*` (of the same shape); config.json's `architectures`
(`*ForTokenClassification`) tells our `token_classifier` head from the
`classifier`. `id2label` / `label2id` carry our `label_names` (transformers'
placeholder names `LABEL_0`, `LABEL_1`, ... read back as None).

Field mapping. transformers' `hidden_act` "gelu" is the exact erf GELU (ours
"gelu"); "gelu_new" / "gelu_pytorch_tanh" are the tanh approximation (ours
"gelu_tanh"). MobileBERT fields map one to one (`trigram_input` <->
`embedding_transform="trigram"`, `normalization_type` <-> `normalization`);
MobileBERT's `classifier_activation` (a tanh pooler) is our `use_pooler`.
Note that transformers' `MobileBertConfig` defaults to
`classifier_activation=True` while the official MobileBERT has no pooler (raw
[CLS]); our `mobilebert` variants write `classifier_activation=False`.

Differences that cannot be expressed, and what happens:

- `attention_mask_value` (official MobileBERT: masked keys get logit -6):
  transformers always adds a large negative to masked keys, so with padding
  its outputs differ from ours. `save_hf` writes the value as an extra
  `attention_mask_value` field of config.json (transformers ignores it,
  `load_hf` restores it) and warns; use `attention_mask_value=None` for
  identical outputs on padded batches.
- transformers builds MobileBERT's embedding LayerNorm and the last FFN's
  LayerNorm (`MobileBertOutput.LayerNorm`) without `eps`, so they use
  torch's default 1e-5 while the other norms use `layer_norm_eps` (1e-12).
  It only matters for `normalization="layer_norm"` in the MobileBERT class
  (NoNorm has no eps); both directions warn in that case.
- transformers' MobileBERT projects queries and keys from an
  `intra_bottleneck_size`-wide input even when they come from the block
  input, so a bottleneck block without `key_query_shared_bottleneck` or
  `use_bottleneck_attention` (IB-BERT: 512 -> 1024) fails there with a shape
  error unless `intra_bottleneck_size == hidden_size`; `save_hf` refuses it.
- Anything else transformers lacks (layer sharing, a bottleneck, NoNorm,
  trigram or factorized embeddings in the BERT class, `type_vocab_size=0`,
  an ALBERT-style MLM head in the MobileBERT class, an NSP or classifier head
  without the tanh pooler in the BERT class) raises `ConversionError` naming
  the field.
- A class without a pooler (`*ForMaskedLM`, `*ForQuestionAnswering`,
  `*ForTokenClassification`) still
  gets our pooler weights in its file when we have them (transformers reports
  them as unused); loading keeps them, so the round trip is exact.

The command line: `mbert-jax convert to-hf MODEL_DIR HF_DIR` and
`mbert-jax convert from-hf HF_DIR MODEL_DIR` (the vocabulary: HF_DIR's
vocab.txt, else its tokenizer.json's WordPiece vocabulary). Config fields
that read a model also take a transformers directory as it is: `resolve.py`
converts it with `hf_to_model_dir` and caches the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from mbert_jax import files, tree
from mbert_jax.models import io
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.model import HEADS, Model, param_shapes, validate_heads


class ConversionError(ValueError):
    """A model that one side cannot express; the message names the field."""


MODEL_TYPES = ("bert", "mobilebert")
_PREFIX = {"bert": "bert.", "mobilebert": "mobilebert."}
_CLASS_PREFIX = {"bert": "Bert", "mobilebert": "MobileBert"}
# heads -> transformers class suffix, and whether that class has a pooler.
_ARCHITECTURES: dict[tuple[str, ...], tuple[str, bool]] = {
    (): ("Model", True),
    ("mlm", "nsp"): ("ForPreTraining", True),
    ("mlm",): ("ForMaskedLM", False),
    ("nsp",): ("ForNextSentencePrediction", True),
    ("classifier",): ("ForSequenceClassification", True),
    ("qa",): ("ForQuestionAnswering", False),
    ("token_classifier",): ("ForTokenClassification", False),
}
ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "relu6": "relu6",
    "tanh": "tanh",
}
ACT_TO_HF = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_new",
    "relu": "relu",
    "relu6": "relu6",
    "tanh": "tanh",
}
_EPS_WARNING = (
    "transformers' MobileBERT builds the embedding LayerNorm and the last FFN's LayerNorm "
    "(MobileBertOutput.LayerNorm) with eps=1e-5 instead of layer_norm_eps; with "
    "normalization='layer_norm' its outputs differ slightly from ours"
)

HF_CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_JSON = "tokenizer.json"


def _fail(field: str, msg: str):
    raise ConversionError(f"ModelConfig.{field}: {msg}")


def canonical_heads(heads: Sequence[str]) -> tuple[str, ...]:
    """`heads` validated and in the order of `model.HEADS`."""
    heads = validate_heads(heads)
    return tuple(h for h in HEADS if h in heads)


# ----------------------------------------------------------------- configs
def infer_model_type(config: ModelConfig) -> str:
    """MobileBERT's class when the config uses anything only it has, else BERT's."""
    mobile = (
        config.use_bottleneck
        or config.embedding_transform == "trigram"
        or config.normalization == "no_norm"
        or config.num_feedforward_networks > 1
    )
    return "mobilebert" if mobile else "bert"


def config_from_hf(hf_config: Mapping, has_pooler: bool | None = None) -> ModelConfig:
    """Our `ModelConfig` for a transformers `config.json` dict.

    Args:
      hf_config: the parsed config.json of a BERT or MobileBERT checkpoint.
      has_pooler: whether the checkpoint holds pooler weights (our
        `use_pooler`); None: what the config implies (BERT: True, MobileBERT:
        `classifier_activation`).

    Raises:
      ConversionError: for a model type or field our models cannot express.
    """
    c = dict(hf_config)
    model_type = c.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConversionError(
            f"config.json model_type={model_type!r} is not supported; supported: {MODEL_TYPES}"
        )
    act = c.get("hidden_act", "gelu")
    if act not in ACT_FROM_HF:
        raise ConversionError(
            f"config.json hidden_act={act!r} has no equivalent; supported: {sorted(ACT_FROM_HF)}"
        )
    for field, ok in (
        ("is_decoder", not c.get("is_decoder", False)),
        ("add_cross_attention", not c.get("add_cross_attention", False)),
        ("position_embedding_type", c.get("position_embedding_type", "absolute") == "absolute"),
    ):
        if not ok:
            raise ConversionError(f"config.json {field}={c[field]!r} is not supported")
    num_labels = len(c["id2label"]) if c.get("id2label") else c.get("num_labels", 2)
    label_names = label_names_from_hf(c.get("id2label"), num_labels)
    fields = dict(
        vocab_size=c.get("vocab_size", 30522),
        hidden_size=c.get("hidden_size", 768 if model_type == "bert" else 512),
        num_layers=c.get("num_hidden_layers", 12 if model_type == "bert" else 24),
        num_heads=c.get("num_attention_heads", 12 if model_type == "bert" else 4),
        intermediate_size=c.get("intermediate_size", 3072 if model_type == "bert" else 512),
        max_position_embeddings=c.get("max_position_embeddings", 512),
        type_vocab_size=c.get("type_vocab_size", 2),
        hidden_act=ACT_FROM_HF[act],
        layer_norm_eps=c.get("layer_norm_eps", 1e-12),
        hidden_dropout=c.get("hidden_dropout_prob", 0.1 if model_type == "bert" else 0.0),
        attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
        initializer_range=c.get("initializer_range", 0.02),
        num_labels=num_labels,
        label_names=label_names,
        attention_mask_value=c.get("attention_mask_value"),
    )
    if model_type == "bert":
        fields["use_pooler"] = True if has_pooler is None else has_pooler
        return ModelConfig(**fields)

    hidden, embed = fields["hidden_size"], c.get("embedding_size", 128)
    bottleneck = c.get("use_bottleneck", True)
    bottleneck_attention = bottleneck and c.get("use_bottleneck_attention", False)
    kq_shared = (
        bottleneck and not bottleneck_attention and c.get("key_query_shared_bottleneck", True)
    )
    intra = c.get("intra_bottleneck_size", 128) if bottleneck else None
    if bottleneck and not (kq_shared or bottleneck_attention) and intra != hidden:
        raise ConversionError(
            "config.json: transformers' MobileBERT cannot run a bottleneck block whose queries "
            "and keys come from the block input (key_query_shared_bottleneck=False, "
            f"use_bottleneck_attention=False) with intra_bottleneck_size={intra} != "
            f"hidden_size={hidden}"
        )
    if c.get("trigram_input", True):
        transform = "trigram"
    else:
        transform = "none" if embed == hidden else "dense"
    normalization = c.get("normalization_type", "no_norm")
    if normalization == "layer_norm":
        warnings.warn(_EPS_WARNING, stacklevel=2)
    pooler = c.get("classifier_activation", True)
    fields.update(
        embedding_size=None if transform == "none" else embed,
        embedding_transform=transform,
        use_bottleneck=bottleneck,
        intra_bottleneck_size=intra,
        key_query_shared_bottleneck=kq_shared,
        use_bottleneck_attention=bottleneck_attention,
        num_feedforward_networks=c.get("num_feedforward_networks", 4),
        normalization=normalization,
        use_pooler=pooler if has_pooler is None else has_pooler,
    )
    return ModelConfig(**fields)


def label_names_from_hf(id2label: Mapping | None, num_labels: int) -> tuple[str, ...] | None:
    """Our `label_names` of a config.json `id2label` (None for transformers' `LABEL_i` names).

    Raises:
      ConversionError: `id2label` does not name the ids 0 .. num_labels - 1.
    """
    if not id2label:
        return None
    names = {int(k): str(v) for k, v in id2label.items()}
    if sorted(names) != list(range(num_labels)):
        raise ConversionError(
            f"config.json id2label has ids {sorted(names)}; expected 0 .. {num_labels - 1}"
        )
    ordered = tuple(names[i] for i in range(num_labels))
    if ordered == tuple(f"LABEL_{i}" for i in range(num_labels)):
        return None
    return ordered


def check_expressible(
    config: ModelConfig, heads: Sequence[str] = (), model_type: str | None = None
) -> str:
    """Check that transformers can hold `config` with `heads`; returns the model type.

    Raises:
      ConversionError: naming the first field transformers cannot express.
    """
    heads = canonical_heads(heads)
    model_type = model_type or infer_model_type(config)
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"model_type={model_type!r}; supported: {MODEL_TYPES}")
    if heads not in _ARCHITECTURES:
        raise ConversionError(
            f"heads {list(heads)} match no transformers class; supported head sets: "
            f"{[list(h) for h in _ARCHITECTURES]}"
        )
    if config.layer_sharing != "none":
        _fail("layer_sharing", f"{config.layer_sharing!r}: transformers' {model_type} has none")
    for field in ("layer_heads", "layer_intermediate_sizes"):
        if getattr(config, field) is not None:
            _fail(
                field,
                f"{getattr(config, field)}: transformers' {model_type} gives every layer the same "
                "heads and FFN width (transformers 5 dropped prune_heads), so a model pruned "
                "per layer cannot be exported; export it as a model directory or TFLite",
            )
    if config.type_vocab_size < 1:
        _fail("type_vocab_size", f"must be >= 1 in transformers' {model_type}")
    if model_type == "bert":
        for field, ok, why in (
            ("use_bottleneck", not config.use_bottleneck, "BERT has no bottleneck"),
            ("normalization", config.normalization == "layer_norm", "BERT has only LayerNorm"),
            ("embedding_transform", config.embedding_transform == "none", "BERT has none"),
            ("num_feedforward_networks", config.num_feedforward_networks == 1, "BERT has 1"),
        ):
            if not ok:
                _fail(field, f"{getattr(config, field)!r} is not expressible: {why}")
        if not config.use_pooler and {"nsp", "classifier"} & set(heads):
            _fail(
                "use_pooler",
                "False, but transformers' BERT feeds the NSP / classifier head through a tanh "
                "pooler; use the MobileBERT class (classifier_activation=False) instead",
            )
        return model_type
    if (
        config.use_bottleneck
        and not (config.key_query_shared_bottleneck or config.use_bottleneck_attention)
        and config.inner_size != config.hidden_size
    ):
        _fail(
            "key_query_shared_bottleneck",
            "False with use_bottleneck_attention=False: transformers' MobileBERT projects "
            f"queries and keys from an intra_bottleneck_size={config.inner_size} wide input "
            f"but they come from the {config.hidden_size} wide block input (IB-BERT), so it "
            "fails with a shape error",
        )
    if config.embedding_transform == "dense" and "mlm" in heads:
        _fail(
            "embedding_transform",
            "'dense' comes with an ALBERT-style MLM head (hidden -> E, fully tied) that "
            "transformers' MobileBERT lacks; convert the model without the MLM head",
        )
    return model_type


def _warn_differences(config: ModelConfig, heads: tuple[str, ...], model_type: str) -> None:
    """Warn about what transformers computes differently for an expressible config."""
    if model_type == "mobilebert" and config.normalization == "layer_norm":
        warnings.warn(_EPS_WARNING, stacklevel=3)
    if model_type == "bert" and not config.use_pooler and _ARCHITECTURES[heads][1]:
        warnings.warn(
            "use_pooler=False but transformers' Bert" + _ARCHITECTURES[heads][0] + " has a "
            "pooler: it will be randomly initialized (pooler_output is meaningless)",
            stacklevel=3,
        )
    if config.attention_mask_value is not None:
        warnings.warn(
            f"attention_mask_value={config.attention_mask_value}: transformers gives masked "
            "keys a large negative logit instead, so on padded batches its outputs differ from "
            "ours (the value is kept in config.json for load_hf)",
            stacklevel=3,
        )


def config_to_hf(
    config: ModelConfig, heads: Sequence[str] = (), model_type: str | None = None
) -> dict:
    """The transformers config.json dict of `config` with `heads` (see `check_expressible`)."""
    heads = canonical_heads(heads)
    model_type = check_expressible(config, heads, model_type)
    _warn_differences(config, heads, model_type)
    suffix, _ = _ARCHITECTURES[heads]
    c = config
    out = {
        "architectures": [_CLASS_PREFIX[model_type] + suffix],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "intermediate_size": c.intermediate_size,
        "hidden_act": ACT_TO_HF[c.hidden_act],
        "hidden_dropout_prob": c.hidden_dropout,
        "attention_probs_dropout_prob": c.attention_dropout,
        "max_position_embeddings": c.max_position_embeddings,
        "type_vocab_size": c.type_vocab_size,
        "initializer_range": c.initializer_range,
        "layer_norm_eps": c.layer_norm_eps,
        "pad_token_id": 0,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }
    if c.label_names is not None or {"classifier", "token_classifier"} & set(heads):
        names = c.label_names or tuple(f"LABEL_{i}" for i in range(c.num_labels))
        out["id2label"] = {str(i): name for i, name in enumerate(names)}
        out["label2id"] = {name: i for i, name in enumerate(names)}
    if model_type == "mobilebert":
        out.update(
            embedding_size=c.embed_size,
            trigram_input=c.embedding_transform == "trigram",
            use_bottleneck=c.use_bottleneck,
            intra_bottleneck_size=c.inner_size,
            true_hidden_size=c.inner_size,
            use_bottleneck_attention=c.use_bottleneck_attention,
            key_query_shared_bottleneck=c.key_query_shared_bottleneck,
            num_feedforward_networks=c.num_feedforward_networks,
            normalization_type=c.normalization,
            classifier_activation=c.use_pooler,
        )
    if c.attention_mask_value is not None:
        out["attention_mask_value"] = c.attention_mask_value
    return out


# ----------------------------------------------------------------- weights
@dataclasses.dataclass(frozen=True)
class _Entry:
    """One tensor: its transformers key, our '/'-joined path and how it maps.

    kind "copy" (same array), "vector" (a reshape) or "linear" (torch
    `[out, in]` -> our `[*in_dims, *out_dims]` with `n_in` input axes).
    """

    hf: str
    ours: str
    kind: str
    n_in: int = 1


def _linear(hf: str, ours: str, n_in: int = 1) -> list[_Entry]:
    return [
        _Entry(f"{hf}.weight", f"{ours}/kernel", "linear", n_in),
        _Entry(f"{hf}.bias", f"{ours}/bias", "vector"),
    ]


def _norm(hf: str, ours: str) -> list[_Entry]:
    return [
        _Entry(f"{hf}.weight", f"{ours}/scale", "copy"),
        _Entry(f"{hf}.bias", f"{ours}/bias", "copy"),
    ]


def _ffn(hf: str, ours: str) -> list[_Entry]:
    return (
        _linear(f"{hf}intermediate.dense", f"{ours}/intermediate")
        + _linear(f"{hf}output.dense", f"{ours}/output")
        + _norm(f"{hf}output.LayerNorm", f"{ours}/output_norm")
    )


def _weight_map(
    config: ModelConfig, heads: tuple[str, ...], model_type: str, prefix: str
) -> list[_Entry]:
    """Every tensor of the transformers model and where it lives in our params."""
    c = config
    emb = f"{prefix}embeddings."
    entries = [
        _Entry(
            f"{emb}{n}_embeddings.weight", f"encoder/embeddings/{n}_embeddings/embedding", "copy"
        )
        for n in ("word", "position", "token_type")
    ]
    entries += _norm(f"{emb}LayerNorm", "encoder/embeddings/norm")
    if c.embedding_transform != "none":
        entries += _linear(
            f"{emb}embedding_transformation", "encoder/embeddings/embedding_transform"
        )
    for i in range(c.num_layers):
        hf, ours = f"{prefix}encoder.layer.{i}.", f"encoder/layers_{i}"
        att = f"{ours}/attention"
        if c.use_bottleneck:
            entries += _linear(f"{hf}bottleneck.input.dense", f"{att}/bottleneck_input")
            entries += _norm(f"{hf}bottleneck.input.LayerNorm", f"{att}/bottleneck_input_norm")
            if c.key_query_shared_bottleneck:
                entries += _linear(f"{hf}bottleneck.attention.dense", f"{att}/kq_bottleneck")
                entries += _norm(f"{hf}bottleneck.attention.LayerNorm", f"{att}/kq_bottleneck_norm")
        for name in ("query", "key", "value"):
            entries += _linear(f"{hf}attention.self.{name}", f"{att}/self_attention/{name}")
        entries += _linear(f"{hf}attention.output.dense", f"{att}/output", n_in=2)
        entries += _norm(f"{hf}attention.output.LayerNorm", f"{att}/output_norm")
        # transformers runs ffn.0 .. ffn.{F-2}, then the block's own
        # intermediate/output as the last FFN (our ffn_{F-1}).
        last = c.num_feedforward_networks - 1
        for j in range(last):
            entries += _ffn(f"{hf}ffn.{j}.", f"{ours}/ffn/ffn_{j}")
        entries += _ffn(hf, f"{ours}/ffn/ffn_{last}")
        if c.use_bottleneck:
            entries += _linear(f"{hf}output.bottleneck.dense", f"{ours}/ffn/output_bottleneck")
            entries += _norm(
                f"{hf}output.bottleneck.LayerNorm", f"{ours}/ffn/output_bottleneck_norm"
            )
    if c.use_pooler:
        entries += _linear(f"{prefix}pooler.dense", "encoder/pooler")
    if "mlm" in heads:
        entries += _linear("cls.predictions.transform.dense", "mlm/transform")
        entries += _norm("cls.predictions.transform.LayerNorm", "mlm/transform_norm")
        entries.append(_Entry("cls.predictions.bias", "mlm/output_bias", "copy"))
        if model_type == "mobilebert" and c.mlm_untied_size:
            entries.append(
                _Entry("cls.predictions.dense.weight", "mlm/extra_output_weights", "linear")
            )
    if "nsp" in heads:
        entries += _linear("cls.seq_relationship", "nsp/dense")
    if "classifier" in heads:
        entries += _linear("classifier", "classifier/dense")
    if "qa" in heads:
        entries += _linear("qa_outputs", "qa/dense")
    if "token_classifier" in heads:  # transformers names it like the sequence classifier
        entries += _linear("classifier", "token_classifier/dense")
    return entries


def _to_ours(entry: _Entry, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if entry.kind == "linear":
        x = x.T
    if math.prod(x.shape) != math.prod(shape) or (entry.kind == "copy" and x.shape != shape):
        raise ConversionError(
            f"{entry.hf} has shape {tuple(x.shape)} but {entry.ours} needs {shape}; "
            "config.json does not match the weights"
        )
    return np.ascontiguousarray(x.reshape(shape))


def _to_hf(entry: _Entry, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if entry.kind == "linear":
        n_in = math.prod(x.shape[: entry.n_in])
        return np.ascontiguousarray(x.reshape(n_in, -1).T)
    if entry.kind == "vector":
        return x.reshape(-1)
    return x


def _is_token_classification(architectures: Sequence[str] | None) -> bool:
    return any(str(a).endswith("ForTokenClassification") for a in architectures or ())


def _detect(
    state: Mapping[str, np.ndarray], model_type: str, architectures: Sequence[str] | None = ()
) -> tuple[str, tuple[str, ...]]:
    """The key prefix of the encoder ('bert.', 'mobilebert.' or '') and the heads present.

    `classifier.*` is the token classifier when config.json's `architectures`
    name a `*ForTokenClassification` class, else the sequence classifier.
    """
    prefix = _PREFIX[model_type]
    if not any(k.startswith(prefix) for k in state):
        prefix = ""
    tagging = _is_token_classification(architectures)
    present = {
        "mlm": "cls.predictions.bias" in state,
        "nsp": "cls.seq_relationship.weight" in state,
        "classifier": "classifier.weight" in state and not tagging,
        "qa": "qa_outputs.weight" in state,
        "token_classifier": "classifier.weight" in state and tagging,
    }
    return prefix, tuple(h for h in HEADS if present[h])


def _normalize_keys(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old checkpoints name LayerNorm parameters gamma / beta."""
    out = {}
    for k, v in state.items():
        if ".LayerNorm." in k:
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
                "LayerNorm.beta", "LayerNorm.bias"
            )
        out[k] = v
    return out


def params_from_hf(
    config: ModelConfig,
    state: Mapping[str, np.ndarray],
    model_type: str,
    architectures: Sequence[str] | None = (),
) -> tuple[tuple[str, ...], dict]:
    """Our `(heads, params)` from a transformers state dict of numpy arrays.

    Args:
      config: our config (from `config_from_hf`).
      state: tensor name -> array, as in the checkpoint file.
      model_type: "bert" or "mobilebert".
      architectures: config.json's `architectures` (they tell a token
        classifier's `classifier.*` from a sequence classifier's).

    Raises:
      ConversionError: for a shape mismatch, a missing tensor, an untied
        output embedding, or tensors our model has no place for.
    """
    state = _normalize_keys(state)
    prefix, heads = _detect(state, model_type, architectures)
    check_expressible(config, heads, model_type)  # e.g. our 'dense' embedding + MobileBERT MLM
    shapes = tree.flat(param_shapes(Model(config, heads)))
    entries = _weight_map(config, heads, model_type, prefix)
    flat, used = {}, set()
    for e in entries:
        if e.hf not in state:
            raise ConversionError(f"the checkpoint has no tensor {e.hf!r}, which {e.ours} needs")
        flat[e.ours] = _to_ours(e, state[e.hf], tuple(shapes[e.ours].shape))
        used.add(e.hf)
    if set(flat) != set(shapes):
        raise ConversionError(f"no transformers tensor for {sorted(set(shapes) - set(flat))}")

    # The output embedding is tied in our MLM head (decoder.weight is the
    # word embedding and decoder.bias the output bias).
    emb = state[f"{prefix}embeddings.word_embeddings.weight"]
    for key, tied_to in (
        ("cls.predictions.decoder.weight", emb),
        ("cls.predictions.decoder.bias", state.get("cls.predictions.bias")),
    ):
        if key in state:
            if tied_to is None or not np.array_equal(np.asarray(state[key]), np.asarray(tied_to)):
                raise ConversionError(
                    f"{key} differs from the tensor it is tied to; untied output embeddings "
                    "(tie_word_embeddings=False) are not supported"
                )
            used.add(key)

    def unused(k: str) -> bool:  # tensors transformers holds but never uses
        return (
            k.endswith((".position_ids", ".token_type_ids"))
            or (config.embedding_transform == "none" and ".embedding_transformation." in k)
            or (config.use_bottleneck_attention and ".bottleneck.attention." in k)
            or (k == "cls.predictions.dense.weight" and np.size(state[k]) == 0)
        )

    left = sorted(k for k in state if k not in used and not unused(k))
    if left:
        raise ConversionError(
            f"{len(left)} tensor(s) of the checkpoint have no place in our model, e.g. "
            f"{left[:10]}; check config.json (model_type, heads, sizes)"
        )
    return heads, tree.unflat(flat)


def params_to_hf(
    config: ModelConfig, heads: Sequence[str], params: Mapping, model_type: str | None = None
) -> dict[str, np.ndarray]:
    """The transformers state dict (numpy float32) of our params.

    Tied tensors (`cls.predictions.decoder.*`) are left out, as
    `save_pretrained` does; transformers ties them when loading.
    """
    heads = canonical_heads(heads)
    model_type = check_expressible(config, heads, model_type)
    suffix, _ = _ARCHITECTURES[heads]
    prefix = "" if suffix == "Model" else _PREFIX[model_type]
    flat = io.flatten(params)
    shapes = tree.flat(param_shapes(Model(config, heads)))
    if set(flat) != set(shapes) or any(flat[k].shape != shapes[k].shape for k in shapes):
        missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
        raise ConversionError(
            f"params do not match the config and heads: missing {missing[:10]}, "
            f"unexpected {extra[:10]} (or shapes differ)"
        )
    state = {e.hf: _to_hf(e, flat[e.ours]) for e in _weight_map(config, heads, model_type, prefix)}
    if model_type == "mobilebert":
        p = f"{prefix}embeddings.embedding_transformation"
        if config.embedding_transform == "none":
            # transformers holds the (unused) projection anyway; write an identity.
            state[f"{p}.weight"] = np.eye(config.hidden_size, dtype=np.float32)
            state[f"{p}.bias"] = np.zeros(config.hidden_size, np.float32)
        if "mlm" in heads and not config.mlm_untied_size:
            state["cls.predictions.dense.weight"] = np.zeros((0, config.vocab_size), np.float32)
    return state


# ----------------------------------------------------------------- files
def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    out = {}
    with io.reading(path), safe_open(str(path), framework="np") as f:
        for k in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
            try:
                out[k] = f.get_tensor(k)
            except (TypeError, ValueError):  # bfloat16: numpy has no such dtype
                with safe_open(str(path), framework="flax") as g:
                    out[k] = np.asarray(g.get_tensor(k).astype("float32"))
    return out


def _read_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{path} is a PyTorch pickle; reading it needs torch (pip install torch), or "
            "re-save the checkpoint with safetensors"
        ) from e
    with io.reading(path):
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight files `read_state_dict` reads (an index with its shards), or [] when none."""
    d = Path(directory)
    for index in (SAFETENSORS_INDEX, BIN_INDEX):
        if (d / index).is_file():
            shards = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            return [d / index, *(d / f for f in shards)]
    for name in (SAFETENSORS_FILE, BIN_FILE):
        if (d / name).is_file():
            return [d / name]
    return []


def is_hf_dir(directory: str | os.PathLike) -> bool:
    """A `save_pretrained` directory: config.json and weights."""
    return (Path(directory) / HF_CONFIG_FILE).is_file() and bool(weight_files(directory))


def read_state_dict(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a `save_pretrained` directory (safetensors preferred over .bin)."""
    d = Path(directory)
    files = [f for f in weight_files(d) if not f.name.endswith(".json")]
    if not files:
        raise FileNotFoundError(
            f"{d} holds no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX}, {BIN_FILE} or {BIN_INDEX}"
        )
    state = {}
    for f in files:
        state.update(_read_bin(f) if f.suffix == ".bin" else _read_safetensors(f))
    return state


def load_hf(directory: str | os.PathLike) -> tuple[ModelConfig, tuple[str, ...], dict]:
    """Load a transformers BERT / MobileBERT directory: `(config, heads, params)`.

    The heads follow the tensors present (`cls.predictions.*` -> "mlm",
    `cls.seq_relationship.*` -> "nsp", `classifier.*` -> "classifier", or
    "token_classifier" for a `*ForTokenClassification` class, `qa_outputs.*`), and
    `use_pooler` whether pooler weights are present. Params are numpy float32.
    """
    d = Path(directory)
    if not (d / HF_CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{d} has no {HF_CONFIG_FILE}; pass a save_pretrained directory")
    hf_config = json.loads((d / HF_CONFIG_FILE).read_text())
    state = read_state_dict(d)
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ConversionError(
            f"model_type={model_type!r} is not supported; supported: {MODEL_TYPES}"
        )
    prefix, _ = _detect(state, model_type)
    config = config_from_hf(hf_config, has_pooler=f"{prefix}pooler.dense.weight" in state)
    heads, params = params_from_hf(config, state, model_type, hf_config.get("architectures"))
    return config, heads, params


def _tokenizer_config(model_type: str, config: ModelConfig, do_lower_case: bool) -> dict:
    return {
        "tokenizer_class": _CLASS_PREFIX[model_type] + "Tokenizer",
        "do_lower_case": do_lower_case,
        "model_max_length": config.max_position_embeddings,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }


def save_hf(
    directory: str | os.PathLike,
    config: ModelConfig,
    heads: Sequence[str],
    params: Mapping,
    *,
    model_type: str | None = None,
    vocab_file: str | os.PathLike | None = None,
    do_lower_case: bool = True,
) -> Path:
    """Write our params as a transformers directory (config.json + model.safetensors).

    Args:
      directory: the output directory (replaced atomically).
      config, heads, params: our model.
      model_type: "bert" or "mobilebert"; None picks MobileBERT when the config
        uses a bottleneck, trigram embeddings, NoNorm or stacked FFNs.
      vocab_file: a WordPiece vocab.txt to copy, with a tokenizer_config.json.
      do_lower_case: written into tokenizer_config.json.

    Returns:
      The directory. `<Class>.from_pretrained(directory)` loads it, where the
      class follows the heads: () -> `BertModel`, ("mlm", "nsp") ->
      `BertForPreTraining`, ("mlm",) -> `BertForMaskedLM`, ... (or `MobileBert*`).

    Raises:
      ConversionError: when transformers cannot express the config (see the module doc).
    """
    from safetensors.numpy import save_file

    heads = canonical_heads(heads)
    hf_config = config_to_hf(config, heads, model_type)
    model_type = hf_config["model_type"]
    state = params_to_hf(config, heads, params, model_type)
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_dir(directory)
    try:
        (tmp / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(state, str(tmp / SAFETENSORS_FILE), metadata={"format": "pt"})
        files.plain_mode(tmp / SAFETENSORS_FILE)
        if vocab_file is not None:
            shutil.copyfile(vocab_file, tmp / io.VOCAB_FILE)
            tok = _tokenizer_config(model_type, config, do_lower_case)
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok, indent=2) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


# ----------------------------------------------------------------- model dirs
def model_dir_to_hf(
    src: str | os.PathLike, dst: str | os.PathLike, model_type: str | None = None
) -> Path:
    """Convert a model directory (`mbert_jax.models.io`) into a transformers directory."""
    config, heads, params = io.load_model(src)
    return save_hf(dst, config, heads, params, model_type=model_type, vocab_file=io.vocab_path(src))


def wordpiece_vocab(directory: str | os.PathLike) -> list[str] | None:
    """The WordPiece vocabulary (tokens in id order) of a directory's tokenizer.json.

    None when there is no tokenizer.json or its model is not WordPiece.

    Raises:
      ConversionError: the vocabulary's ids are not 0 .. n - 1.
    """
    path = Path(directory) / TOKENIZER_JSON
    if not path.is_file():
        return None
    model = json.loads(path.read_text(encoding="utf-8")).get("model") or {}
    if model.get("type") != "WordPiece":
        return None
    by_id = {int(i): tok for tok, i in model["vocab"].items()}
    if sorted(by_id) != list(range(len(by_id))):
        raise ConversionError(f"{path}: the WordPiece vocab's ids are not 0 .. {len(by_id) - 1}")
    return [by_id[i] for i in range(len(by_id))]


def hf_to_model_dir(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert a transformers directory into a model directory (`mbert_jax.models.io`).

    The vocabulary is the directory's vocab.txt, else tokenizer.json's
    WordPiece vocabulary (`wordpiece_vocab`), else none.
    """
    config, heads, params = load_hf(src)
    vocab = io.vocab_path(src)
    if vocab is not None:
        return io.save_model(dst, config, heads, params, vocab_file=vocab)
    tokens = wordpiece_vocab(src)
    if tokens is None:
        return io.save_model(dst, config, heads, params)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / io.VOCAB_FILE
        vocab.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
        return io.save_model(dst, config, heads, params, vocab_file=vocab)


def main(argv: list[str] | None = None) -> int:
    """`mbert-jax convert {to-hf,from-hf} SRC DST [--model-type T]`."""
    parser = argparse.ArgumentParser(
        prog="mbert-jax convert",
        description="Convert between a model directory and a transformers directory.",
    )
    parser.add_argument("direction", choices=["to-hf", "from-hf"])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=None, help="to-hf only")
    args = parser.parse_args(argv)
    try:
        if args.direction == "to-hf":
            out = model_dir_to_hf(args.src, args.dst, args.model_type)
        else:
            out = hf_to_model_dir(args.src, args.dst)
    except (ConversionError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
