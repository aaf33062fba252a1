"""`ModelConfig`: the one configuration that spans every encoder in the zoo.

BERT, IB-BERT, MobileBERT(-TINY), TinyBERT, DistilBERT and ALBERT are all
points in this field space (see `variants.py` for the named points). The
config is a frozen dataclass so that it is hashable and can be a static
attribute of Flax modules; `validate()` runs at construction and names the
offending field in every error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

Normalization = Literal["layer_norm", "no_norm"]
Activation = Literal["gelu", "gelu_tanh", "relu", "relu6", "tanh"]
EmbeddingTransform = Literal["none", "dense", "trigram"]
LayerSharing = Literal["none", "all", "attention", "ffn"]

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "relu6", "tanh")
NORMALIZATIONS = ("layer_norm", "no_norm")
EMBEDDING_TRANSFORMS = ("none", "dense", "trigram")
LAYER_SHARINGS = ("none", "all", "attention", "ffn")
DTYPES = ("float32", "bfloat16", "float16")

# Fields a fine-tuning or task-distillation config may change in a pretrained model's
# config: training numerics and regularization, and the label count of a fresh head.
TUNABLE_FIELDS = (
    "hidden_dropout",
    "attention_dropout",
    "dtype",
    "matmul_dtype",
    "remat",
    "fake_quant",
    "fake_quant_decay",
    "num_labels",
    "label_names",
)


class ConfigError(ValueError):
    """An invalid model configuration; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Fields of the encoder family.

    Widths: `hidden_size` is the inter-block width B (the width of every
    block's output, the feature map used by MobileBERT transfer). When
    `use_bottleneck` is set, each block works internally at
    `intra_bottleneck_size` (MobileBERT: 128, IB-BERT: 1024); otherwise at
    `hidden_size` (standard BERT block). `embedding_size` is the word-embedding
    width E; with `embedding_transform="trigram"` the embeddings of tokens
    t+1, t, t-1 are concatenated (3E) and projected to B (MobileBERT); with
    `"dense"` they are projected E -> B (ALBERT); with `"none"` E must equal B.

    Per-layer structure (structured pruning, `mbert_jax/prune`): `layer_heads`
    is the number of attention heads each block keeps (1..num_heads; a block
    cannot keep 0 heads: drop the whole block with a smaller `num_layers`),
    `layer_intermediate_sizes` each block's FFN width. None: every block has
    `num_heads` / `intermediate_size`. The head width stays `head_dim`
    (`inner_size // num_heads`) when heads are removed.

    `attention_mask_value`: the logit given to masked keys. `None` means a
    large negative (masked keys get zero weight, as in BERT and transformers);
    the official MobileBERT code uses -6.0 (quantization friendly), which
    replaces the score of a masked key with -6 rather than adding to it.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    # Embeddings.
    embedding_size: int | None = None  # None: equal to hidden_size.
    embedding_transform: EmbeddingTransform = "none"
    # Block structure.
    use_bottleneck: bool = False
    intra_bottleneck_size: int | None = None
    key_query_shared_bottleneck: bool = False
    use_bottleneck_attention: bool = False
    num_feedforward_networks: int = 1
    layer_sharing: LayerSharing = "none"
    # Nonlinearities and normalization.
    hidden_act: Activation = "gelu"
    normalization: Normalization = "layer_norm"
    layer_norm_eps: float = 1e-12
    attention_mask_value: float | None = None
    # Regularization and heads.
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    use_pooler: bool = True
    num_labels: int = 2
    # The class (or tag) name of each output of the classifier / token-classifier
    # head, in id order, when the task has names (None: unnamed, and regression).
    # Written into exported files' metadata and transformers' id2label.
    label_names: tuple[str, ...] | None = None
    initializer_range: float = 0.02
    # Numerics and memory.
    dtype: str = "float32"  # compute dtype; parameters are always float32.
    # Operand dtype of every matmul (None: `dtype`). "bfloat16" with dtype
    # "float32" is mixed precision: bf16 operands, float32 accumulation and
    # activations (see `matmul.py`).
    matmul_dtype: str | None = None
    remat: bool = False  # rematerialize each block in the backward pass.
    # Quantization-aware training (mbert_jax/quant): every dense layer's input and
    # kernel fake-quantized to 8 bits as the int8 TFLite file quantizes them; input
    # ranges tracked by a moving average of this decay (MobileBERT: 0.999).
    fake_quant: bool = False
    fake_quant_decay: float = 0.999
    # Per-layer structure of a pruned model (None: every block the same).
    layer_heads: tuple[int, ...] | None = None
    layer_intermediate_sizes: tuple[int, ...] | None = None

    def __post_init__(self):
        # JSON gives lists; the config must hash.
        for name in ("label_names", "layer_heads", "layer_intermediate_sizes"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def embed_size(self) -> int:
        """Word-embedding width E."""
        return self.hidden_size if self.embedding_size is None else self.embedding_size

    @property
    def inner_size(self) -> int:
        """Width inside a block (the attention context and FFN residual width)."""
        return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.inner_size // self.num_heads

    def heads_at(self, layer: int | None) -> int:
        """Attention heads of block `layer` (None: a block shared by every layer)."""
        return (
            self.num_heads if self.layer_heads is None or layer is None else self.layer_heads[layer]
        )

    def intermediate_size_at(self, layer: int | None) -> int:
        """FFN width of block `layer` (None: a block shared by every layer)."""
        if self.layer_intermediate_sizes is None or layer is None:
            return self.intermediate_size
        return self.layer_intermediate_sizes[layer]

    @property
    def mlm_transform_size(self) -> int:
        """Width of the MLM head transform (ALBERT maps down to E, others keep B)."""
        return self.embed_size if self.embedding_transform == "dense" else self.hidden_size

    @property
    def mlm_untied_size(self) -> int:
        """Columns of the MLM output matrix not tied to the word embedding."""
        return self.mlm_transform_size - self.embed_size

    @property
    def compute_dtype(self) -> Any:
        return jnp.dtype(self.dtype)

    @property
    def compute_matmul_dtype(self) -> Any:
        return jnp.dtype(self.dtype if self.matmul_dtype is None else self.matmul_dtype)

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (validated again).

        Changing `num_labels` without giving `label_names` drops names that no
        longer fit (they described the old head).
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown ModelConfig field(s) {sorted(unknown)}; valid fields: "
                f"{sorted(f.name for f in dataclasses.fields(self))}"
            )
        if (
            "num_labels" in changes
            and "label_names" not in changes
            and self.label_names is not None
            and len(self.label_names) != changes["num_labels"]
        ):
            changes["label_names"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown ModelConfig field(s) {sorted(unknown)}")
        return cls(**d)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        def fail(field: str, msg: str):
            raise ConfigError(f"ModelConfig.{field}: {msg}")

        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "max_position_embeddings",
            "num_feedforward_networks",
            "num_labels",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                fail(name, f"must be a positive integer, got {v!r}")
        if not isinstance(self.type_vocab_size, int) or self.type_vocab_size < 0:
            fail(
                "type_vocab_size",
                "must be an integer >= 0 (0: no token-type embedding), "
                f"got {self.type_vocab_size!r}",
            )
        if self.embedding_size is not None and (
            not isinstance(self.embedding_size, int) or self.embedding_size < 1
        ):
            fail(
                "embedding_size", f"must be a positive integer or None, got {self.embedding_size!r}"
            )
        for name, allowed in (
            ("hidden_act", ACTIVATIONS),
            ("normalization", NORMALIZATIONS),
            ("embedding_transform", EMBEDDING_TRANSFORMS),
            ("layer_sharing", LAYER_SHARINGS),
            ("dtype", DTYPES),
        ):
            if getattr(self, name) not in allowed:
                fail(name, f"must be one of {allowed}, got {getattr(self, name)!r}")
        if self.matmul_dtype is not None and self.matmul_dtype not in DTYPES:
            fail("matmul_dtype", f"must be None or one of {DTYPES}, got {self.matmul_dtype!r}")
        if not 0.0 <= self.fake_quant_decay < 1.0:
            fail("fake_quant_decay", f"must be in [0, 1), got {self.fake_quant_decay!r}")
        for name in ("hidden_dropout", "attention_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                fail(name, f"must be in [0, 1), got {v!r}")
        if self.embedding_transform == "none" and self.embed_size != self.hidden_size:
            fail(
                "embedding_size",
                f"is {self.embed_size} but hidden_size is {self.hidden_size}; set "
                "embedding_transform='dense' (ALBERT) or 'trigram' (MobileBERT) to project "
                "the embeddings, or make them equal",
            )
        if self.use_bottleneck:
            if self.intra_bottleneck_size is None or self.intra_bottleneck_size < 1:
                fail(
                    "intra_bottleneck_size",
                    f"must be a positive integer when use_bottleneck=True, got "
                    f"{self.intra_bottleneck_size!r}",
                )
            if self.key_query_shared_bottleneck and self.use_bottleneck_attention:
                fail(
                    "key_query_shared_bottleneck",
                    "and use_bottleneck_attention are exclusive (MobileBERT uses the first, "
                    "MobileBERT-TINY the second); set one of them to False",
                )
            if self.key_query_shared_bottleneck and self.intra_bottleneck_size > self.hidden_size:
                fail(
                    "intra_bottleneck_size",
                    f"({self.intra_bottleneck_size}) is larger than hidden_size "
                    f"({self.hidden_size}); a key/query-shared bottleneck must narrow the "
                    "block, so lower it or set key_query_shared_bottleneck=False "
                    "(the IB-BERT inverted bottleneck)",
                )
        else:
            for name in ("key_query_shared_bottleneck", "use_bottleneck_attention"):
                if getattr(self, name):
                    fail(name, "requires use_bottleneck=True")
        if self.inner_size % self.num_heads:
            width = "intra_bottleneck_size" if self.use_bottleneck else "hidden_size"
            fail(
                "num_heads",
                f"{width}={self.inner_size} is not divisible by num_heads={self.num_heads}",
            )
        if self.mlm_transform_size < self.embed_size:
            fail(
                "embedding_size",
                f"({self.embed_size}) is larger than the MLM head width "
                f"({self.mlm_transform_size}); the output matrix ties the first E columns "
                "to the word embedding, so E must not exceed it",
            )
        if self.label_names is not None:
            names = self.label_names
            if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
                fail("label_names", f"must be None or a tuple of non-empty strings, got {names!r}")
            if len(names) != self.num_labels:
                fail(
                    "label_names",
                    f"has {len(names)} names but num_labels is {self.num_labels}; give one "
                    "name per output of the head (or None)",
                )
            if len(set(names)) != len(names):
                repeated = sorted({n for n in names if names.count(n) > 1})
                fail("label_names", f"repeats {repeated}; each label needs its own name")
        self._validate_per_layer(fail)
        if self.attention_mask_value is not None and self.attention_mask_value > 0:
            fail(
                "attention_mask_value",
                f"must be negative (or None for a large negative), got {self.attention_mask_value}",
            )

    def _validate_per_layer(self, fail) -> None:
        for name, low, high, what in (
            ("layer_heads", 1, self.num_heads, f"1..num_heads={self.num_heads}"),
            ("layer_intermediate_sizes", 1, None, ">= 1"),
        ):
            values = getattr(self, name)
            if values is None:
                continue
            if not isinstance(values, tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) for v in values
            ):
                fail(name, f"must be None or a tuple of integers, got {values!r}")
            if len(values) != self.num_layers:
                fail(
                    name,
                    f"has {len(values)} entries but num_layers is {self.num_layers}; give one "
                    "per block (or None for every block the same)",
                )
            bad = [v for v in values if v < low or (high is not None and v > high)]
            if bad:
                hint = (
                    "; a block cannot keep 0 heads: drop the block instead (a smaller "
                    "num_layers, `prune(keep_layers=...)`)"
                    if name == "layer_heads" and min(bad) < 1
                    else ""
                )
                fail(name, f"has {bad}, each must be in {what}{hint}")
            if self.layer_sharing != "none":
                fail(
                    name,
                    f"cannot be combined with layer_sharing={self.layer_sharing!r} (one block "
                    "shared by every layer has one shape); set layer_sharing='none' or "
                    f"{name}=None",
                )
