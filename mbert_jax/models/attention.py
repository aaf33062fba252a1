"""Multi-head self-attention and the attention mask.

The attention maps that distillation needs are the masked, scaled,
pre-softmax scores (MobileBERT and TinyBERT transfer), the probabilities
and the per-head queries, keys and values (MiniLM's relations); the module
returns them alongside the context, and XLA drops them when the caller does
not use them.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbert_jax.models import layers
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.layers import BATCH, HEADS, KV, LENGTH, LENGTH_KV


def make_attention_mask(attention_mask: jax.Array) -> jax.Array:
    """Boolean [batch, 1, query, key] mask from a [batch, length] integer mask.

    `attention_mask` is 0 at padding. Any positive value is the id of the
    packed piece a token belongs to: a real query sees the real keys of its
    own piece. With a plain 0/1 mask that is every real key, as in BERT;
    padding queries also see every real key (as in BERT and transformers),
    so outputs at padded positions match the reference implementations.
    """
    m = attention_mask.astype(jnp.int32)
    query = m[:, :, None]
    key = m[:, None, :]
    allowed = (key > 0) & ((query == key) | (query == 0))
    return allowed[:, None, :, :]


class SelfAttention(nn.Module):
    """Scaled dot-product attention over `heads` heads (default `num_heads`) of width `head_dim`.

    Returns the context [batch, length, heads, head_dim], the masked scaled
    scores [batch, heads, query, key], the probabilities (same shape) and the
    projected `(query, key, value)`, each [batch, length, heads, head_dim].
    """

    config: ModelConfig
    input_names: tuple[str, str, str]  # logical width names of the q, k, v inputs
    heads: int | None = None  # a pruned block's head count (None: config.num_heads)

    @nn.compact
    def __call__(
        self,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        mask: jax.Array,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array, jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
        cfg = self.config
        heads = cfg.num_heads if self.heads is None else self.heads
        head_dim = cfg.head_dim
        q_name, k_name, v_name = self.input_names

        def project(x, width_name, name):
            y = layers.dense(cfg, (heads, head_dim), (width_name, HEADS, KV), name=name)(x)
            return layers.constrain(y, (BATCH, LENGTH, HEADS, KV))

        q = project(query, q_name, "query")
        k = project(key, k_name, "key")
        v = project(value, v_name, "value")

        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * jnp.asarray(head_dim**-0.5, q.dtype)
        # Masked keys get a fixed logit (replace, not add): -6 in the official
        # MobileBERT, the dtype's lowest value otherwise (zero weight).
        fill = (
            jnp.finfo(scores.dtype).min
            if cfg.attention_mask_value is None
            else jnp.asarray(cfg.attention_mask_value, scores.dtype)
        )
        scores = jnp.where(mask, scores, fill)
        scores = layers.constrain(scores, (BATCH, HEADS, LENGTH, LENGTH_KV))
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(cfg.compute_dtype)
        dropped = nn.Dropout(rate=cfg.attention_dropout)(probs, deterministic=deterministic)
        context = jnp.einsum("bhqk,bkhd->bqhd", dropped, v)
        context = layers.constrain(context, (BATCH, LENGTH, HEADS, KV))
        return context, scores, probs, (q, k, v)
