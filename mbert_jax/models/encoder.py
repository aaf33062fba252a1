"""The encoder: embeddings, a stack of blocks, optional pooler.

Layers are separate modules (`layers_0`, `layers_1`, ...) rather than one
`nn.scan`: progressive transfer freezes and trains individual layers, which
needs one parameter leaf per layer, and runs only the first `num_layers`
blocks of a stage. ALBERT sharing passes one attention and/or FFN part to
every block, so shared parameters exist once (under `shared_attention` /
`shared_ffn`).

Intermediates: the forward can return the embedding output, every block's
output (the feature maps), every layer's masked pre-softmax scores and
probabilities, and every layer's per-head queries, keys and values (MiniLM).
They are ordinary return values, so under `jax.jit` asking for none of them
costs nothing (XLA removes what is not returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax.models import layers
from mbert_jax.models.attention import make_attention_mask
from mbert_jax.models.block import AttentionPart, Block, FFNPart
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.embeddings import Embeddings
from mbert_jax.models.layers import EMBED, EMBED_IN


@flax.struct.dataclass
class EncoderOutput:
    """What the encoder returns.

    Attributes:
      last_hidden_state: [batch, length, hidden], the output of the last block run.
      pooled_output: [batch, hidden], tanh pooler on [CLS] (or raw [CLS] when the
        model has no pooler); None when not all layers were run.
      embedding_output: [batch, length, hidden], the embedding layer's output.
      hidden_states: per block, its output (the feature map), when asked.
      attention_scores: per block, the masked scaled pre-softmax scores
        [batch, heads, length, length], when asked.
      attention_probs: per block, the attention probabilities, when asked.
      queries, keys, values: per block, the projected per-head vectors
        [batch, length, heads, head_dim], when asked (`output_qkv`).
    """

    last_hidden_state: jax.Array
    pooled_output: jax.Array | None = None
    embedding_output: jax.Array | None = None
    hidden_states: tuple[jax.Array, ...] | None = None
    attention_scores: tuple[jax.Array, ...] | None = None
    attention_probs: tuple[jax.Array, ...] | None = None
    queries: tuple[jax.Array, ...] | None = None
    keys: tuple[jax.Array, ...] | None = None
    values: tuple[jax.Array, ...] | None = None


def check_inputs(config: ModelConfig, input_ids: Any, token_type_ids: Any = None) -> None:
    """Check shapes, and values when they are concrete (not traced).

    Under `jax.jit` values are not known; the data pipeline and the exporters
    call this on host arrays so that out-of-range ids never reach the model.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
    length = input_ids.shape[1]
    if length > config.max_position_embeddings:
        raise ValueError(
            f"inputs of length {length} are longer than the position table "
            f"(ModelConfig.max_position_embeddings={config.max_position_embeddings}); "
            "truncate the inputs or raise max_position_embeddings"
        )
    for name, ids, limit in (
        ("input_ids", input_ids, config.vocab_size),
        ("token_type_ids", token_type_ids, config.type_vocab_size),
    ):
        if ids is None or isinstance(ids, jax.core.Tracer):
            continue
        ids = np.asarray(ids)
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= max(limit, 1):
            field = "vocab_size" if name == "input_ids" else "type_vocab_size"
            raise ValueError(
                f"{name} has values in [{lo}, {hi}] outside the table of "
                f"ModelConfig.{field}={limit}; check that the tokenizer matches the model"
            )


class Encoder(nn.Module):
    """Embeddings + `num_layers` blocks (+ pooler)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embeddings = Embeddings(cfg)
        shared_attention = shared_ffn = None
        if cfg.layer_sharing in ("all", "attention"):
            shared_attention = self.shared_attention = AttentionPart(cfg)
        if cfg.layer_sharing in ("all", "ffn"):
            shared_ffn = self.shared_ffn = FFNPart(cfg)
        block = nn.remat(Block, static_argnums=(3,)) if cfg.remat else Block
        self.layers = [
            block(cfg, shared_attention=shared_attention, shared_ffn=shared_ffn, layer=i)
            for i in range(cfg.num_layers)
        ]
        if cfg.use_pooler:
            self.pooler = layers.dense(cfg, cfg.hidden_size, (EMBED_IN, EMBED), name="pooler")

    def word_table(self) -> jax.Array:
        return self.embeddings.word_table()

    def pool(self, hidden: jax.Array) -> jax.Array:
        cls = hidden[:, 0]
        if self.config.use_pooler:
            return jnp.tanh(self.pooler(cls))
        return cls

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        deterministic: bool = True,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        output_qkv: bool = False,
        num_layers: int | None = None,
        stop_gradient_below: int | None = None,
        head_gates: Sequence[jax.Array] | None = None,
        neuron_gates: Sequence[jax.Array] | None = None,
        layer_gates: jax.Array | Sequence[jax.Array] | None = None,
    ) -> EncoderOutput:
        """Runs the encoder.

        Args:
          input_ids: [batch, length] int token ids.
          attention_mask: [batch, length] ints, 0 at padding; positive values
            are packed-piece ids (see `make_attention_mask`). None: no padding.
          token_type_ids: [batch, length] segment ids (A = 0, B = 1).
          position_ids: [batch, length] positions (restart per packed piece).
          deterministic: disables dropout when True.
          output_hidden_states: also return every block's output.
          output_attentions: also return every layer's scores and probabilities.
          output_qkv: also return every layer's queries, keys and values.
          num_layers: run only the first `num_layers` blocks (progressive
            transfer stage l runs l blocks); the pooler is skipped when fewer
            than all blocks run.
          stop_gradient_below: no gradient flows into blocks below this index
            (nor the embeddings): the input of block `stop_gradient_below` is
            a `stop_gradient`.
          head_gates: per block, a [heads] multiplier of each head's context
            (structured pruning: 0 removes a head, the gradient at 1 is its
            importance); None: no gates.
          neuron_gates: per block, a [width] (or [num_feedforward_networks,
            width]) multiplier of each FFN neuron's activation; None: no gates.
          layer_gates: per block a scalar g: the block's output becomes
            g x block(x) + (1 - g) x x, so g = 0 skips the block exactly (its
            input passes on) and g = 1 runs it; None: no gates (layer
            importance, `prune.layers`).

        Returns:
          An `EncoderOutput`.
        """
        cfg = self.config
        check_inputs(cfg, input_ids, token_type_ids)
        run = cfg.num_layers if num_layers is None else num_layers
        if not 0 <= run <= cfg.num_layers:
            raise ValueError(f"num_layers={num_layers} outside [0, {cfg.num_layers}]")
        # The piece ids also keep MobileBERT's trigram input within each packed piece.
        pieces = attention_mask
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        mask = make_attention_mask(attention_mask)
        for name, gates in (
            ("head_gates", head_gates),
            ("neuron_gates", neuron_gates),
            ("layer_gates", layer_gates),
        ):
            if gates is not None and len(gates) != cfg.num_layers:
                raise ValueError(f"{name} has {len(gates)} entries for {cfg.num_layers} blocks")

        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic, pieces=pieces)
        embedding_output = x
        hidden, scores, probs, qkv = [], [], [], []
        for i in range(run):
            if stop_gradient_below is not None and i == stop_gradient_below:
                x = jax.lax.stop_gradient(x)
            y, s, p, layer_qkv = self.layers[i](
                x,
                mask,
                deterministic,
                None if head_gates is None else head_gates[i],
                None if neuron_gates is None else neuron_gates[i],
            )
            if layer_gates is None:
                x = y
            else:
                g = jnp.asarray(layer_gates[i], y.dtype)
                x = g * y + (1 - g) * x
            hidden.append(x)
            scores.append(s)
            probs.append(p)
            qkv.append(layer_qkv)
        if stop_gradient_below is not None and stop_gradient_below >= run:
            x = jax.lax.stop_gradient(x)
        return EncoderOutput(
            last_hidden_state=x,
            pooled_output=self.pool(x) if run == cfg.num_layers else None,
            embedding_output=embedding_output,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attention_scores=tuple(scores) if output_attentions else None,
            attention_probs=tuple(probs) if output_attentions else None,
            queries=tuple(q for q, _, _ in qkv) if output_qkv else None,
            keys=tuple(k for _, k, _ in qkv) if output_qkv else None,
            values=tuple(v for _, _, v in qkv) if output_qkv else None,
        )
