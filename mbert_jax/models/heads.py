"""Task heads: masked LM, next-sentence prediction, classification/regression, span QA,
token classification (tagging)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbert_jax.models import layers, matmul
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.layers import BATCH, EMBED, EMBED_IN, LENGTH, VOCAB


def gather_positions(hidden: jax.Array, positions: jax.Array) -> jax.Array:
    """[batch, length, d] at [batch, P] positions -> [batch, P, d]."""
    return jnp.take_along_axis(hidden, positions[:, :, None].astype(jnp.int32), axis=1)


class MLMHead(nn.Module):
    """Transform (Dense, activation, LayerNorm), then the output matrix and a bias.

    The output matrix is `concat(word_embeddings [V, E], extra [V, T - E])`
    where T is the transform width: BERT and ALBERT (T = E) are fully tied;
    MobileBERT (E = 128, T = 512) is tied in the first 128 columns and untied
    (`extra_output_weights`) in the other 384. The transform's norm is always
    a real LayerNorm, as in the official MobileBERT.

    The two parts are applied as two products whose logits are added, never
    concatenated: the concatenation copied the whole [V, T] matrix every step
    (62 MB for MobileBERT) and its gradient was split again.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: jax.Array, word_table: jax.Array) -> jax.Array:
        cfg = self.config
        t = cfg.mlm_transform_size
        h = layers.dense(cfg, t, (EMBED_IN, EMBED), name="transform")(hidden)
        h = layers.activation(cfg.hidden_act)(h)
        h = layers.norm(cfg, EMBED, kind="layer_norm", name="transform_norm")(h)
        e = word_table.shape[1]
        logits = matmul.einsum("...d,vd->...v", h[..., :e], word_table, cfg)
        if cfg.mlm_untied_size:
            extra = self.param(
                "extra_output_weights",
                # Laid out like the word table whose columns it continues.
                layers.kernel_init(cfg, (VOCAB, EMBED_IN)),
                (cfg.vocab_size, cfg.mlm_untied_size),
                jnp.float32,
            )
            logits = logits + matmul.einsum("...d,vd->...v", h[..., e:], extra, cfg)
        bias = self.param("output_bias", layers.zeros_init((VOCAB,)), (cfg.vocab_size,))
        logits = logits + bias.astype(cfg.compute_dtype)
        return layers.constrain(logits, (BATCH, LENGTH, VOCAB))


class ClassifierHead(nn.Module):
    """(Dropout then) a dense layer on the pooled output.

    NSP (2 classes, no dropout, as in BERT pretraining), sequence
    classification, or regression (`num_outputs=1`).
    """

    config: ModelConfig
    num_outputs: int
    dropout: bool = True

    @nn.compact
    def __call__(self, pooled: jax.Array, deterministic: bool = True) -> jax.Array:
        x = pooled
        if self.dropout:
            x = nn.Dropout(rate=self.config.hidden_dropout)(x, deterministic=deterministic)
        logits = layers.dense(self.config, self.num_outputs, (EMBED, None), name="dense")(x)
        return logits.astype(jnp.float32)


class SpanHead(nn.Module):
    """Span question answering: start and end logits per token."""

    config: ModelConfig

    @nn.compact
    def __call__(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = layers.dense(self.config, 2, (EMBED, None), name="dense")(hidden)
        logits = logits.astype(jnp.float32)
        return logits[..., 0], logits[..., 1]


class TokenClassifierHead(nn.Module):
    """Token classification (tagging, e.g. NER): dropout, then a dense layer at every position.

    As transformers' `BertForTokenClassification`: the last hidden state, not
    the pooled output, so the head needs no pooler.
    """

    config: ModelConfig
    num_outputs: int

    @nn.compact
    def __call__(self, hidden: jax.Array, deterministic: bool = True) -> jax.Array:
        x = nn.Dropout(rate=self.config.hidden_dropout)(hidden, deterministic=deterministic)
        logits = layers.dense(self.config, self.num_outputs, (EMBED, None), name="dense")(x)
        return logits.astype(jnp.float32)
