"""MiniLM / MiniLMv2 relation losses against an independent PyTorch computation.

The reference loops over examples and heads, keeps only the real tokens of
each example (so padding is neither a row nor a column), and averages
`torch.nn.functional.kl_div` rows over heads and real tokens.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mbert_jax.losses import (
    minilm_attention_loss,
    minilm_value_relation_loss,
    minilmv2_relation_loss,
)
from mbert_jax.losses.minilm import relation_kl

LENGTH = 7
MASK = np.array([[1] * 7, [1] * 4 + [0] * 3, [1] * 5 + [0] * 2], np.int32)


def reference(student, teacher, mask, relation_heads=None):
    """Mean row KL(R_T || R_S) over relation heads and real rows.

    Args: student, teacher: [batch, length, heads, head_dim] numpy vectors;
      relation_heads: None keeps each model's own heads (MiniLM's value relation).
    """
    total, rows = 0.0, 0
    for b in range(student.shape[0]):
        real = np.flatnonzero(mask[b] > 0)
        relations = []
        for x in (student, teacher):
            x = torch.tensor(x[b, real], dtype=torch.float64)  # [n, heads, head_dim]
            n = x.shape[0]
            if relation_heads is not None:
                x = x.reshape(n, relation_heads, -1)
            x = x.permute(1, 0, 2)  # [R, n, d]
            relations.append(torch.log_softmax(x @ x.transpose(1, 2) / x.shape[-1] ** 0.5, -1))
        log_s, log_t = relations
        kl = torch.nn.functional.kl_div(log_s, log_t, log_target=True, reduction="none")
        total += float(kl.sum())
        rows += log_s.shape[0] * log_s.shape[1]
    return total / rows


def vectors(rng, heads, head_dim, batch=3):
    return rng.normal(size=(batch, LENGTH, heads, head_dim)).astype(np.float32)


@pytest.mark.parametrize(
    "student_shape, teacher_shape, relation_heads",
    [
        ((4, 16), (4, 16), 4),  # same shapes
        ((6, 8), (4, 16), 4),  # other heads and width: 48 vs 64, R = 4
        ((6, 8), (4, 16), 8),
        ((3, 4), (12, 8), 2),  # 12 vs 96
        ((6, 8), (4, 16), 1),
    ],
)
def test_minilmv2_relation_matches_torch(student_shape, teacher_shape, relation_heads):
    rng = np.random.default_rng(0)
    s, t = vectors(rng, *student_shape), vectors(rng, *teacher_shape)
    loss = minilmv2_relation_loss(
        jnp.asarray(s),
        jnp.asarray(t),
        relation_heads=relation_heads,
        attention_mask=jnp.asarray(MASK),
    )
    np.testing.assert_allclose(float(loss.mean()), reference(s, t, MASK, relation_heads), rtol=1e-5)
    assert float(loss.count) == relation_heads * MASK.sum()


def test_minilmv2_without_a_mask_counts_every_row():
    rng = np.random.default_rng(1)
    s, t = vectors(rng, 6, 8), vectors(rng, 4, 16)
    loss = minilmv2_relation_loss(jnp.asarray(s), jnp.asarray(t), relation_heads=4)
    ones = np.ones_like(MASK)
    np.testing.assert_allclose(float(loss.mean()), reference(s, t, ones, 4), rtol=1e-5)
    assert float(loss.count) == 4 * ones.size


def test_minilm_value_relation_matches_torch_with_other_head_widths():
    rng = np.random.default_rng(2)
    s, t = vectors(rng, 4, 8), vectors(rng, 4, 16)  # same heads, widths 32 vs 64
    loss = minilm_value_relation_loss(jnp.asarray(s), jnp.asarray(t), attention_mask=MASK)
    np.testing.assert_allclose(float(loss.mean()), reference(s, t, MASK), rtol=1e-5)


def attention_scores(q, k, mask, fill):
    """Masked scaled scores as the model returns them: [batch, heads, query, key]."""
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    hidden = (mask[:, None, None, :] == 0) & np.ones_like(scores, bool)
    return np.where(hidden, fill, scores).astype(np.float32)


@pytest.mark.parametrize("fill", [np.finfo(np.float32).min, -6.0])
def test_minilm_attention_matches_torch_and_ignores_the_fill(fill):
    rng = np.random.default_rng(3)
    qs, ks = vectors(rng, 4, 8), vectors(rng, 4, 8)
    qt, kt = vectors(rng, 4, 16), vectors(rng, 4, 16)
    loss = minilm_attention_loss(
        jnp.asarray(attention_scores(qs, ks, MASK, fill)),
        jnp.asarray(attention_scores(qt, kt, MASK, fill)),
        attention_mask=jnp.asarray(MASK),
    )
    # The attention distribution is softmax(q k^T / sqrt(d)) over the real keys.
    total, rows = 0.0, 0
    for b in range(3):
        real = np.flatnonzero(MASK[b])
        logs = []
        for q, k in ((qs, ks), (qt, kt)):
            qb = torch.tensor(q[b, real], dtype=torch.float64).permute(1, 0, 2)
            kb = torch.tensor(k[b, real], dtype=torch.float64).permute(1, 0, 2)
            logs.append(torch.log_softmax(qb @ kb.transpose(1, 2) / qb.shape[-1] ** 0.5, -1))
        kl = torch.nn.functional.kl_div(logs[0], logs[1], log_target=True, reduction="sum")
        total, rows = total + float(kl), rows + 4 * len(real)
    np.testing.assert_allclose(float(loss.mean()), total / rows, rtol=1e-5)


def test_padded_positions_change_nothing_values_or_gradients():
    rng = np.random.default_rng(4)
    s, t = vectors(rng, 6, 8), vectors(rng, 4, 16)
    mask = jnp.asarray(MASK)

    def loss(s, t):
        return minilmv2_relation_loss(s, t, relation_heads=4, attention_mask=mask).mean()

    value, grad = jax.value_and_grad(loss)(jnp.asarray(s), jnp.asarray(t))
    pad = (MASK == 0)[:, :, None, None]
    s2 = np.where(pad, 1e3 * rng.normal(size=s.shape), s).astype(np.float32)
    t2 = np.where(pad, -1e3 * rng.normal(size=t.shape), t).astype(np.float32)
    value2, grad2 = jax.value_and_grad(loss)(jnp.asarray(s2), jnp.asarray(t2))
    np.testing.assert_allclose(float(value2), float(value), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad2), np.asarray(grad), rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(grad)[np.broadcast_to(pad, s.shape)] == 0)  # no gradient to padding
    assert np.isfinite(np.asarray(grad)).all()


def test_identical_relations_give_zero_and_an_all_padding_row_is_finite():
    rng = np.random.default_rng(5)
    x = jnp.asarray(vectors(rng, 4, 8))
    mask = MASK.copy()
    mask[2] = 0  # an example with no real token
    loss = minilmv2_relation_loss(x, x, relation_heads=2, attention_mask=jnp.asarray(mask))
    assert abs(float(loss.mean())) < 1e-6
    assert float(loss.count) == 2 * mask.sum()
    scores = jnp.asarray(rng.normal(size=(3, 2, LENGTH, LENGTH)), jnp.float32)
    grad = jax.grad(lambda s: relation_kl(s, scores * 2, attention_mask=mask).mean())(scores)
    assert np.isfinite(np.asarray(grad)).all()


def test_packed_pieces_relate_only_within_their_piece():
    """With packed pieces (ids 1, 2), each row's softmax runs over its own piece's keys."""
    rng = np.random.default_rng(6)
    s, t = vectors(rng, 2, 8, batch=1), vectors(rng, 2, 8, batch=1)
    packed = np.array([[1, 1, 1, 2, 2, 2, 0]], np.int32)
    loss = minilmv2_relation_loss(
        jnp.asarray(s), jnp.asarray(t), relation_heads=2, attention_mask=jnp.asarray(packed)
    )
    first = reference(s[:, :3], t[:, :3], np.ones((1, 3)), 2)
    second = reference(s[:, 3:6], t[:, 3:6], np.ones((1, 3)), 2)
    np.testing.assert_allclose(float(loss.mean()), (first + second) / 2, rtol=1e-5)


def test_shape_errors_are_one_line_naming_the_width():
    x = jnp.zeros((1, 4, 6, 8))  # width 48
    y = jnp.zeros((1, 4, 4, 16))  # width 64
    with pytest.raises(ValueError, match="5 relation heads do not divide the width 48"):
        minilmv2_relation_loss(x, y, relation_heads=5)
    with pytest.raises(ValueError, match="heads one to one"):
        minilm_value_relation_loss(x, y)
    with pytest.raises(ValueError, match="heads one to one"):
        minilm_attention_loss(jnp.zeros((1, 6, 4, 4)), jnp.zeros((1, 4, 4, 4)))
