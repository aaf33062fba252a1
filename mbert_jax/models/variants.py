"""The named variants with their published shapes, and a `micro` size of each.

`get(name)` returns a `ModelConfig`; `NAME_micro` is the same structure with
few layers and small widths (tests, CPU runs, the quickstart). Full-size
shapes are those of the official configs (docs/reference.md#mobilebert-architectures).
"""

from __future__ import annotations

from mbert_jax.models.config import ModelConfig

_BERT = dict(
    vocab_size=30522,
    max_position_embeddings=512,
    type_vocab_size=2,
    hidden_act="gelu",
    normalization="layer_norm",
)

# The MobileBERT family: B = 512 between blocks, 24 layers, 4 heads, E = 128
# trigram embedding.
_MOBILEBERT_FAMILY = dict(
    _BERT,
    hidden_size=512,
    num_layers=24,
    num_heads=4,
    embedding_size=128,
    embedding_transform="trigram",
    use_bottleneck=True,
)

_MOBILEBERT = dict(
    _MOBILEBERT_FAMILY,
    intra_bottleneck_size=128,
    intermediate_size=512,
    num_feedforward_networks=4,
    key_query_shared_bottleneck=True,
    hidden_act="relu",
    normalization="no_norm",
    attention_mask_value=-6.0,  # official code; transformers uses a large negative
    hidden_dropout=0.0,
    attention_dropout=0.1,
    use_pooler=False,
)

VARIANTS: dict[str, dict] = {
    "bert_base": dict(_BERT, hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    "bert_large": dict(
        _BERT, hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096
    ),
    # The MobileBERT teacher: inverted bottleneck (512 -> 1024 inside each block).
    "ibbert_large": dict(
        _MOBILEBERT_FAMILY,
        intra_bottleneck_size=1024,
        intermediate_size=4096,
        num_feedforward_networks=1,
        attention_mask_value=-6.0,  # the official code fills masked keys with -6 in every model
    ),
    "mobilebert": dict(_MOBILEBERT),
    "mobilebert_tiny": dict(
        _MOBILEBERT,
        num_feedforward_networks=2,
        key_query_shared_bottleneck=False,
        use_bottleneck_attention=True,
    ),
    # Quantization-aware-training config: relu6 bounds activations for int8.
    "mobilebert_qat": dict(_MOBILEBERT, hidden_act="relu6"),
    "tinybert4": dict(_BERT, hidden_size=312, num_layers=4, num_heads=12, intermediate_size=1200),
    "tinybert6": dict(_BERT, hidden_size=768, num_layers=6, num_heads=12, intermediate_size=3072),
    # MiniLM-L6-H384 (Wang et al., 2020; the published 22M model): 12 heads of 32.
    "minilm6": dict(_BERT, hidden_size=384, num_layers=6, num_heads=12, intermediate_size=1536),
    # DistilBERT: no token-type embeddings, no pooler.
    "distilbert6": dict(
        _BERT,
        hidden_size=768,
        num_layers=6,
        num_heads=12,
        intermediate_size=3072,
        type_vocab_size=0,
        use_pooler=False,
    ),
    # ALBERT-base: factorized embedding (E = 128) and all layers shared.
    "albert_base": dict(
        _BERT,
        vocab_size=30000,
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        intermediate_size=3072,
        embedding_size=128,
        embedding_transform="dense",
        layer_sharing="all",
        hidden_act="gelu_tanh",
        hidden_dropout=0.0,
        attention_dropout=0.0,
    ),
}

# Micro sizes: same structure, small. The MobileBERT family keeps B equal and
# heads equal between teacher and students (layer-wise transfer needs it);
# the BERT teachers are deep enough for TinyBERT's / DistilBERT's layer maps
# (bert_base_micro has 6 layers: tinybert4_micro takes every 3rd, 6 -> 2).
_MICRO_COMMON = dict(vocab_size=2048, max_position_embeddings=128)
MICRO: dict[str, dict] = {
    "bert_base": dict(hidden_size=64, num_layers=6, num_heads=4, intermediate_size=256),
    "bert_large": dict(hidden_size=96, num_layers=8, num_heads=4, intermediate_size=384),
    "ibbert_large": dict(
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        embedding_size=32,
        intra_bottleneck_size=128,
        intermediate_size=256,
    ),
    "mobilebert": dict(
        hidden_size=64,
        num_layers=4,
        num_heads=4,
        embedding_size=32,
        intra_bottleneck_size=32,
        intermediate_size=64,
    ),
    "tinybert4": dict(hidden_size=48, num_layers=2, num_heads=4, intermediate_size=192),
    "tinybert6": dict(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=256),
    # Narrower than bert_base_micro and with other heads (6 of 8): MiniLMv2 needs neither equal.
    "minilm6": dict(hidden_size=48, num_layers=2, num_heads=6, intermediate_size=192),
    "distilbert6": dict(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=256),
    "albert_base": dict(
        hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256, embedding_size=16
    ),
}
MICRO["mobilebert_tiny"] = MICRO["mobilebert"]
MICRO["mobilebert_qat"] = MICRO["mobilebert"]

MICRO_SUFFIX = "_micro"


def names() -> list[str]:
    """Every valid variant name: the full sizes, then the micro sizes."""
    return list(VARIANTS) + [n + MICRO_SUFFIX for n in VARIANTS]


def get(name: str, **overrides) -> ModelConfig:
    """The `ModelConfig` of a named variant, with optional field overrides.

    Raises:
      ValueError: for an unknown name, listing the valid names.
    """
    base = name.removesuffix(MICRO_SUFFIX)
    if base not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; valid variants: {', '.join(names())}")
    fields = dict(VARIANTS[base])
    if name.endswith(MICRO_SUFFIX):
        fields.update(_MICRO_COMMON)
        fields.update(MICRO[base])
    fields.update(overrides)
    return ModelConfig(**fields)


# Tuple-valued ModelConfig fields; a config block holds them as the command line gives
# them, a string "4,2,4,4".
TUPLE_FIELDS = ("layer_heads", "layer_intermediate_sizes")


def block_overrides(block) -> dict:
    """The overrides a config block sets (unset fields are None and are left out; the
    per-layer fields' strings "4,2,4,4" become tuples of ints)."""
    out = {k: v for k, v in dict(block.get("overrides", {}) or {}).items() if v is not None}
    for name in TUPLE_FIELDS:
        if isinstance(out.get(name), str):
            out[name] = _int_tuple(out[name], name)
    return out


def _int_tuple(text: str, name: str) -> tuple[int, ...]:
    items = text.strip().strip("()[]").replace(" ", "").split(",")
    try:
        return tuple(int(x) for x in items if x)
    except ValueError:
        raise ValueError(
            f"overrides.{name}={text!r}: whole numbers, one per block, e.g. {name}=4,2,4,4"
        ) from None


def from_block(block, **forced) -> ModelConfig:
    """The `ModelConfig` of a config block `{variant, overrides}` (see `train.config.model_block`).

    `forced` fields (e.g. the tokenizer's vocab_size) win over the block's
    overrides; a conflicting explicit override is an error naming the field.
    """
    overrides = block_overrides(block)
    for name, value in forced.items():
        if name in overrides and overrides[name] != value:
            raise ValueError(
                f"model override {name}={overrides[name]} conflicts with {value} required by "
                f"the data (e.g. the tokenizer's vocabulary); remove the override"
            )
        overrides[name] = value
    return get(block["variant"], **overrides)
