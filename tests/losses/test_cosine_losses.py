"""DistilBERT's cosine loss against hand-written numpy and PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch

from mbert_jax.losses import cosine_embedding_loss

RNG = np.random.default_rng(4)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
HS = RNG.normal(size=(3, 4, 5)).astype(np.float32)
HT = RNG.normal(size=(3, 4, 5)).astype(np.float32)


def np_cosine(hs, ht, mask):
    total = count = 0.0
    for b in range(hs.shape[0]):
        for i in range(hs.shape[1]):
            if mask[b, i] == 0:
                continue
            s, t = hs[b, i].astype(np.float64), ht[b, i].astype(np.float64)
            dot = sum(a * c for a, c in zip(s, t))
            cos = dot / math.sqrt(sum(a * a for a in s) * sum(c * c for c in t))
            total += 1 - cos
            count += 1
    return total, count


def test_matches_numpy():
    loss = cosine_embedding_loss(jnp.asarray(HS), jnp.asarray(HT), attention_mask=jnp.asarray(MASK))
    total, count = np_cosine(HS, HT, MASK)
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)


def test_matches_distilbert_official_torch():
    # distiller.py: masked_select the real tokens, CosineEmbeddingLoss(reduction="mean"), target 1.
    sel = torch.tensor(MASK).bool()
    s, t = torch.tensor(HS)[sel], torch.tensor(HT)[sel]
    ref = torch.nn.CosineEmbeddingLoss(reduction="mean")(s, t, torch.ones(s.shape[0]))
    loss = cosine_embedding_loss(jnp.asarray(HS), jnp.asarray(HT), attention_mask=jnp.asarray(MASK))
    np.testing.assert_allclose(loss.mean(), ref.item(), rtol=1e-5)
    # Tiny vectors: the epsilon is PyTorch's.
    tiny = np.full((1, 1, 5), 1e-5, np.float32)
    ref = torch.nn.functional.cosine_embedding_loss(
        torch.tensor(tiny[0]), torch.tensor(tiny[0]), torch.ones(1)
    )
    np.testing.assert_allclose(
        cosine_embedding_loss(jnp.asarray(tiny), jnp.asarray(tiny)).mean(), ref.item(), rtol=1e-3
    )


def test_padding_does_not_matter():
    hs = HS.copy()
    hs[0, 3] = 0.0  # a zero vector at padding
    hs[2, 1:] = RNG.normal(size=(3, 5)) * 50
    a = cosine_embedding_loss(jnp.asarray(HS), jnp.asarray(HT), attention_mask=jnp.asarray(MASK))
    b = cosine_embedding_loss(jnp.asarray(hs), jnp.asarray(HT), attention_mask=jnp.asarray(MASK))
    np.testing.assert_array_equal(a.total, b.total)
    assert cosine_embedding_loss(jnp.asarray(hs), jnp.asarray(HT)).total != (
        cosine_embedding_loss(jnp.asarray(HS), jnp.asarray(HT)).total
    )
    grad = jax.grad(
        lambda x: cosine_embedding_loss(
            x, jnp.asarray(HT, jnp.bfloat16), attention_mask=jnp.asarray(MASK)
        ).mean()
    )(jnp.asarray(hs, jnp.bfloat16))
    grad = np.asarray(grad, np.float32)
    assert np.all(np.isfinite(grad)) and np.all(grad[0, 3] == 0)
