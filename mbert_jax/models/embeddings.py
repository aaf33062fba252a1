"""Input embeddings: word (optionally trigram or factorized), position, token type."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbert_jax.models import layers
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.layers import BATCH, EMBED, EMBED_IN, LENGTH, VOCAB


def trigram(x: jax.Array, pieces: jax.Array | None = None) -> jax.Array:
    """Concatenate the embeddings of tokens t+1, t, t-1 (zeros past the ends): [B, S, 3E].

    `pieces` ([B, S] packed-piece ids as in the attention mask, 0 at padding):
    a neighbour in another real piece counts as past the end, so packed
    sequences do not see each other. Padding neighbours are kept, as in the
    official code and transformers.
    """
    zeros = jnp.zeros_like(x[:, :1])
    next_tok = jnp.concatenate([x[:, 1:], zeros], axis=1)
    prev_tok = jnp.concatenate([zeros, x[:, :-1]], axis=1)
    if pieces is not None:
        edge = jnp.zeros_like(pieces[:, :1])
        next_piece = jnp.concatenate([pieces[:, 1:], edge], axis=1)
        prev_piece = jnp.concatenate([edge, pieces[:, :-1]], axis=1)

        def other_piece(neighbour):
            return ((pieces > 0) & (neighbour > 0) & (neighbour != pieces))[..., None]

        next_tok = jnp.where(other_piece(next_piece), 0, next_tok)
        prev_tok = jnp.where(other_piece(prev_piece), 0, prev_tok)
    return jnp.concatenate([next_tok, x, prev_tok], axis=-1)


class Embeddings(nn.Module):
    """BERT embeddings, with MobileBERT's trigram input and ALBERT's factorization.

    `word_embeddings` is [vocab, E]; with `embedding_transform` "trigram" the
    concatenated [3E] trigram is projected to the block width B, with "dense"
    the [E] embedding is (ALBERT). Position and token-type embeddings are
    B wide and added after the projection; then the norm and dropout.
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        # Lookup tables keep their width unsharded over FSDP (`embed_in`): the
        # gradient of a gather cannot follow a width-sharded table without an
        # all-to-all, which GSPMD would replace by a full rematerialization.
        self.word_embeddings = layers.embed(
            cfg, cfg.vocab_size, cfg.embed_size, (VOCAB, EMBED_IN), name="word_embeddings"
        )
        self.position_embeddings = layers.embed(
            cfg,
            cfg.max_position_embeddings,
            cfg.hidden_size,
            (None, EMBED_IN),
            "position_embeddings",
        )
        if cfg.type_vocab_size > 0:
            self.token_type_embeddings = layers.embed(
                cfg, cfg.type_vocab_size, cfg.hidden_size, (None, EMBED_IN), "token_type_embeddings"
            )
        if cfg.embedding_transform != "none":
            self.embedding_transform = layers.dense(
                cfg, cfg.hidden_size, (EMBED_IN, EMBED), name="embedding_transform"
            )
        self.norm = layers.norm(cfg, EMBED)
        self.dropout = nn.Dropout(rate=cfg.hidden_dropout)

    def word_table(self) -> jax.Array:
        """The [vocab, E] word-embedding matrix (tied into the MLM output)."""
        return self.word_embeddings.embedding

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        deterministic: bool = True,
        pieces: jax.Array | None = None,
    ) -> jax.Array:
        cfg = self.config
        x = layers.constrain(self.word_embeddings(input_ids), (BATCH, LENGTH, EMBED))
        if cfg.embedding_transform == "trigram":
            x = trigram(x, pieces)
        if cfg.embedding_transform != "none":
            x = self.embedding_transform(x)
        if position_ids is None:
            position_ids = jnp.arange(input_ids.shape[1], dtype=jnp.int32)[None, :]
        x = x + self.position_embeddings(position_ids)
        if cfg.type_vocab_size > 0:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.norm(x)
        x = self.dropout(x, deterministic=deterministic)
        return layers.constrain(x, (BATCH, LENGTH, EMBED))
