"""Parameter counts by component and FLOPs per token (`mbert-jax describe`).

Counting conventions (docs/reference.md#parameter-counts): the MobileBERT paper counts the
embeddings and the blocks, not the heads; with the untied V x (T - E) MLM
output matrix and the other heads, a checkpoint holds about 12M more. Both
totals are printed and labelled.

FLOPs are analytic (2 per multiply-add of every matmul a token goes through,
plus the attention's score and context products, which grow with the
sequence length); `tests/test_summary.py` checks them against XLA's own
count of the compiled forward.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from mbert_jax.models.config import ModelConfig
from mbert_jax.models.model import Model, param_shapes


def _count(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass
class ParamCounts:
    embeddings: int
    blocks: int
    pooler: int
    mlm_head: int  # transform, its LayerNorm and the output bias
    mlm_untied_output: int
    nsp_head: int

    @property
    def backbone(self) -> int:
        """Embeddings + blocks: the paper's convention (MobileBERT 24.58M)."""
        return self.embeddings + self.blocks

    @property
    def total(self) -> int:
        """Every parameter of a pretraining checkpoint (encoder, pooler, MLM, NSP)."""
        return self.backbone + self.pooler + self.mlm_head + self.mlm_untied_output + self.nsp_head


def param_counts(config: ModelConfig) -> ParamCounts:
    shapes = param_shapes(Model(config, heads=("mlm", "nsp")))
    encoder = dict(shapes["encoder"])
    embeddings = _count(encoder.pop("embeddings"))
    pooler = _count(encoder.pop("pooler", {}))
    mlm = dict(shapes["mlm"])
    untied = _count(mlm.pop("extra_output_weights", {}))
    return ParamCounts(
        embeddings=embeddings,
        blocks=_count(encoder),
        pooler=pooler,
        mlm_head=_count(mlm),
        mlm_untied_output=untied,
        nsp_head=_count(shapes["nsp"]),
    )


def block_matmul_weights(config: ModelConfig, layer: int | None = None) -> int:
    """Multiply-adds per token of block `layer`'s dense layers (= its kernel sizes).

    `layer` picks a pruned block's heads and FFN width (`ModelConfig.layer_heads`,
    `layer_intermediate_sizes`); None: a block of `num_heads` and `intermediate_size`.
    """
    c = config
    b, i, m = c.hidden_size, c.inner_size, c.intermediate_size_at(layer)
    a = c.heads_at(layer) * c.head_dim  # the attention width (inner_size unless pruned)
    n = 0
    if c.use_bottleneck:
        n += b * i  # bottleneck input
        if c.key_query_shared_bottleneck:
            n += b * i
    q_in = i if (c.use_bottleneck_attention or c.key_query_shared_bottleneck) else b
    v_in = i if c.use_bottleneck_attention else b
    n += 2 * q_in * a + v_in * a  # query, key, value
    n += a * i  # attention output
    n += c.num_feedforward_networks * 2 * i * m
    if c.use_bottleneck:
        n += i * b  # output bottleneck
    return n


def encoder_flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Forward FLOPs per token of the embeddings and all blocks at `seq_len`."""
    c = config
    emb = {"none": 0, "dense": c.embed_size, "trigram": 3 * c.embed_size}[c.embedding_transform]
    blocks = sum(
        2 * block_matmul_weights(c, layer) + 4 * seq_len * c.heads_at(layer) * c.head_dim
        for layer in range(c.num_layers)
    )
    return 2 * emb * c.hidden_size + blocks


def mlm_flops_per_prediction(config: ModelConfig) -> int:
    """Forward FLOPs of the MLM head per predicted (masked) token."""
    t = config.mlm_transform_size
    return 2 * (config.hidden_size * t + t * config.vocab_size)


def format_flops(n: float) -> str:
    """FLOPs with a readable unit (PFLOP ... MFLOP)."""
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if n >= scale:
            return f"{n / scale:8.3f} {unit}"
    return f"{n / 1e6:8.3f} MFLOP"


def describe(name: str, config: ModelConfig, seq_lens=(128, 512)) -> str:
    """A human-readable report of one variant."""
    p = param_counts(config)
    m = lambda n: f"{n / 1e6:9.3f}M"
    g = format_flops
    c = config
    lines = [
        f"{name}: {c.num_layers} layers, hidden {c.hidden_size}, "
        + (f"intra-block {c.inner_size}, " if c.use_bottleneck else "")
        + f"{c.num_heads} heads, FFN {c.intermediate_size} x{c.num_feedforward_networks}, "
        f"E {c.embed_size} ({c.embedding_transform}), {c.normalization}, {c.hidden_act}, "
        f"sharing {c.layer_sharing}, vocab {c.vocab_size}",
    ]
    if c.fake_quant:
        lines.append(
            "  quantization-aware: every dense input, kernel and output fake-quantized to "
            f"8 bits, input ranges by moving average (decay {c.fake_quant_decay})"
        )
    if c.layer_heads is not None or c.layer_intermediate_sizes is not None:
        heads = [c.heads_at(i) for i in range(c.num_layers)]
        widths = [c.intermediate_size_at(i) for i in range(c.num_layers)]
        lines += [
            f"  per-layer heads (of {c.num_heads}, head width {c.head_dim}): "
            + " ".join(map(str, heads))
            + f"  ({sum(heads)} of {c.num_heads * c.num_layers})",
            f"  per-layer FFN widths (of {c.intermediate_size}): "
            + " ".join(map(str, widths))
            + f"  ({sum(widths)} of {c.intermediate_size * c.num_layers})",
        ]
    lines += [
        "  parameters:",
        f"    embeddings                 {m(p.embeddings)}",
        f"    encoder blocks             {m(p.blocks)}",
        f"    pooler                     {m(p.pooler)}",
        f"    MLM head (transform, bias) {m(p.mlm_head)}",
        f"    MLM untied output          {m(p.mlm_untied_output)}"
        f"  (V x {c.mlm_untied_size}: columns not tied to the word embedding)",
        f"    NSP head                   {m(p.nsp_head)}",
        "  totals:",
        f"    embeddings + blocks (MobileBERT paper convention)     {m(p.backbone)}",
        f"    + pooler (transformers' BertModel / MobileBertModel)  {m(p.backbone + p.pooler)}",
        f"    every parameter incl. MLM and NSP heads (checkpoint)  {m(p.total)}",
        "  FLOPs per token (encoder; training = 3x forward):",
    ]
    for s in seq_lens:
        if s > c.max_position_embeddings:
            continue
        f = encoder_flops_per_token(c, s)
        lines.append(f"    seq {s:4d}: forward {g(f)}   training {g(3 * f)}")
    mlm = mlm_flops_per_prediction(c)
    lines.append(f"    MLM head per predicted token: forward {g(mlm)}   training {g(3 * mlm)}")
    return "\n".join(lines)


__all__ = [
    "ParamCounts",
    "describe",
    "encoder_flops_per_token",
    "mlm_flops_per_prediction",
    "param_counts",
]
