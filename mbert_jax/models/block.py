"""The transformer block, covering BERT and the IB-BERT / MobileBERT bottleneck.

A block is two parts, so that ALBERT-style sharing can share either one:

- `AttentionPart(prev)`: with a bottleneck, `layer_input = Norm(Dense(prev))`
  to the intra-block width; queries/keys/values come from `prev`, from a
  separate key/query bottleneck (MobileBERT) or from `layer_input`
  (MobileBERT-TINY); then `Norm(Dense(context) + layer_input)`.
  Without a bottleneck this is the post-LN BERT attention sublayer.
- `FFNPart(x, prev)`: `num_feedforward_networks` stacked FFNs, each
  `Norm(Dense(act(Dense(x))) + x)`, then with a bottleneck the output
  projection back to the inter-block width `Norm(Dropout(Dense(x)) + prev)`.

Gates (structured pruning, `mbert_jax/prune`): an optional per-head gate
multiplies each head's context before the output projection, and an
optional per-neuron gate each FFN's activations; without them the forward
is unchanged. A gate of 0 is the same as removing the head or neuron.

Dropout placement follows the official code (and transformers): with a
bottleneck only the output projection has hidden dropout.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from mbert_jax.models import layers
from mbert_jax.models.attention import SelfAttention
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.layers import BATCH, EMBED, HEADS, INNER, KV, LENGTH, MLP


def inner_name(config: ModelConfig) -> str:
    """Logical name of the intra-block width."""
    return INNER if config.use_bottleneck else EMBED


class AttentionPart(nn.Module):
    """Bottleneck inputs, self-attention, output projection, residual and norm.

    `layer` is the block's index, for its per-layer head count
    (`ModelConfig.layer_heads`); None for a part shared by every layer.
    """

    config: ModelConfig
    layer: int | None = None

    @nn.compact
    def __call__(
        self,
        prev: jax.Array,
        mask: jax.Array,
        deterministic: bool = True,
        head_gate: jax.Array | None = None,
    ):
        cfg = self.config
        heads = cfg.heads_at(self.layer)
        inner = inner_name(cfg)
        if cfg.use_bottleneck:
            x = layers.dense(cfg, cfg.inner_size, (EMBED, inner), name="bottleneck_input")(prev)
            layer_input = layers.norm(cfg, inner, name="bottleneck_input_norm")(x)
            if cfg.use_bottleneck_attention:
                q = k = v = layer_input
                names = (inner, inner, inner)
            elif cfg.key_query_shared_bottleneck:
                x = layers.dense(cfg, cfg.inner_size, (EMBED, inner), name="kq_bottleneck")(prev)
                q = k = layers.norm(cfg, inner, name="kq_bottleneck_norm")(x)
                v = prev
                names = (inner, inner, EMBED)
            else:
                q = k = v = prev
                names = (EMBED, EMBED, EMBED)
        else:
            layer_input = q = k = v = prev
            names = (EMBED, EMBED, EMBED)

        context, scores, probs, qkv = SelfAttention(cfg, names, heads=heads, name="self_attention")(
            q, k, v, mask, deterministic
        )
        if head_gate is not None:  # [heads]: scales each head's context
            context = context * head_gate.astype(context.dtype)[:, None]
        out = layers.dense(cfg, cfg.inner_size, (HEADS, KV, inner), axis=(-2, -1), name="output")(
            context
        )
        if not cfg.use_bottleneck:
            out = nn.Dropout(rate=cfg.hidden_dropout)(out, deterministic=deterministic)
        out = layers.norm(cfg, inner, name="output_norm")(out + layer_input)
        return layers.constrain(out, (BATCH, LENGTH, inner)), scores, probs, qkv


class FeedForward(nn.Module):
    """`Norm(Dropout?(Dense(act(Dense(x)))) + x)` at the intra-block width."""

    config: ModelConfig
    dropout: bool
    width: int | None = None  # a pruned block's FFN width (None: config.intermediate_size)

    @nn.compact
    def __call__(
        self, x: jax.Array, deterministic: bool = True, gate: jax.Array | None = None
    ) -> jax.Array:
        cfg = self.config
        inner = inner_name(cfg)
        width = cfg.intermediate_size if self.width is None else self.width
        h = layers.dense(cfg, width, (inner, MLP), name="intermediate")(x)
        h = layers.activation(cfg.hidden_act)(h)
        if gate is not None:  # [width]: scales each neuron's activation
            h = h * gate.astype(h.dtype)
        h = layers.constrain(h, (BATCH, LENGTH, MLP))
        y = layers.dense(cfg, cfg.inner_size, (MLP, inner), name="output")(h)
        if self.dropout:
            y = nn.Dropout(rate=cfg.hidden_dropout)(y, deterministic=deterministic)
        return layers.norm(cfg, inner, name="output_norm")(y + x)


class FFNPart(nn.Module):
    """The stacked FFNs and, with a bottleneck, the output projection to the block width.

    `layer` is the block's index, for its per-layer FFN width
    (`ModelConfig.layer_intermediate_sizes`); None for a part shared by every layer.
    `neuron_gate` is [width] with one FFN per block, [num_feedforward_networks,
    width] (one row per FFN) otherwise.
    """

    config: ModelConfig
    layer: int | None = None

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        prev: jax.Array,
        deterministic: bool = True,
        neuron_gate: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        count = cfg.num_feedforward_networks
        width = cfg.intermediate_size_at(self.layer)
        if neuron_gate is not None:
            if neuron_gate.ndim == 1:
                neuron_gate = neuron_gate[None]
            if neuron_gate.shape != (count, width):
                raise ValueError(
                    f"neuron gate of shape {neuron_gate.shape} for a block of {count} FFN(s) "
                    f"of width {width}; expected ({width},) or ({count}, {width})"
                )
        for i in range(count):
            last = i == count - 1
            ffn = FeedForward(
                cfg, dropout=last and not cfg.use_bottleneck, width=width, name=f"ffn_{i}"
            )
            x = ffn(x, deterministic, None if neuron_gate is None else neuron_gate[i])
        if cfg.use_bottleneck:
            y = layers.dense(cfg, cfg.hidden_size, (INNER, EMBED), name="output_bottleneck")(x)
            y = nn.Dropout(rate=cfg.hidden_dropout)(y, deterministic=deterministic)
            x = layers.norm(cfg, EMBED, name="output_bottleneck_norm")(y + prev)
        return layers.constrain(x, (BATCH, LENGTH, EMBED))


class Block(nn.Module):
    """One encoder layer. `shared_attention` / `shared_ffn` are parts shared across layers (ALBERT).

    `layer` is the block's index (its per-layer heads and FFN width). Returns
    the block output (the feature map, [batch, length, hidden]), the
    attention scores and probabilities ([batch, heads, length, length]) and
    the `(query, key, value)` projections ([batch, length, heads, head_dim]).
    """

    config: ModelConfig
    shared_attention: nn.Module | None = None
    shared_ffn: nn.Module | None = None
    layer: int | None = None

    def setup(self):
        if self.shared_attention is None:
            self.attention = AttentionPart(self.config, layer=self.layer)
        if self.shared_ffn is None:
            self.ffn = FFNPart(self.config, layer=self.layer)

    def __call__(
        self,
        prev: jax.Array,
        mask: jax.Array,
        deterministic: bool = True,
        head_gate: jax.Array | None = None,
        neuron_gate: jax.Array | None = None,
    ):
        attention = self.attention if self.shared_attention is None else self.shared_attention
        ffn = self.ffn if self.shared_ffn is None else self.shared_ffn
        x, scores, probs, qkv = attention(prev, mask, deterministic, head_gate)
        out = ffn(x, prev, deterministic, neuron_gate)
        return out, scores, probs, qkv
