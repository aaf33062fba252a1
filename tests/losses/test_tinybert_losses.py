"""TinyBERT losses against hand-written numpy and the official PyTorch code."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mbert_jax.losses import (
    tinybert_attention_loss,
    tinybert_embedding_loss,
    tinybert_hidden_loss,
    tinybert_prediction_loss,
)

RNG = np.random.default_rng(3)
MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 2, 0, 0]])
B, H, L, DS, DT = 2, 3, 5, 4, 6
MIN = float(np.finfo(np.float32).min)


def allowed(b, q, k):
    return MASK[b, k] > 0 and (MASK[b, q] == MASK[b, k] or MASK[b, q] == 0)


def make_scores(fill, seed):
    raw = np.random.default_rng(seed).normal(size=(B, H, L, L)).astype(np.float32) * 2
    for b in range(B):
        for q in range(L):
            for k in range(L):
                if not allowed(b, q, k):
                    raw[b, :, q, k] = fill
    return raw


def np_attention_mse(s, t):
    total = count = 0.0
    for b in range(B):
        for h in range(H):
            for q in range(L):
                for k in range(L):
                    if MASK[b, q] > 0 and allowed(b, q, k):
                        total += (float(s[b, h, q, k]) - float(t[b, h, q, k])) ** 2
                        count += 1
    return total, count


def torch_official_attention(s, t):
    """The official loop body (general_distill.py / task_distill.py)."""
    student_att, teacher_att = torch.tensor(s), torch.tensor(t)
    student_att = torch.where(student_att <= -1e2, torch.zeros_like(student_att), student_att)
    teacher_att = torch.where(teacher_att <= -1e2, torch.zeros_like(teacher_att), teacher_att)
    return torch.nn.MSELoss()(student_att, teacher_att).item()


@pytest.mark.parametrize("fills", [(MIN, MIN), (-6.0, MIN), (-6.0, -6.0)])
def test_attention_matches_numpy(fills):
    s, t = make_scores(fills[0], 1), make_scores(fills[1], 2)
    loss = tinybert_attention_loss(jnp.asarray(s), jnp.asarray(t), attention_mask=jnp.asarray(MASK))
    total, count = np_attention_mse(s, t)
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)


def test_attention_official_matches_torch():
    s, t = make_scores(MIN, 3), make_scores(MIN, 4)
    loss = tinybert_attention_loss(jnp.asarray(s), jnp.asarray(t), official=True)
    np.testing.assert_allclose(loss.mean(), torch_official_attention(s, t), rtol=1e-5)
    assert float(loss.count) == s.size
    # TinyBERT's own models add -10000 at masked keys; the threshold catches it too.
    s2 = np.where(s == MIN, -10000.0 + RNG.normal(size=s.shape), s).astype(np.float32)
    loss2 = tinybert_attention_loss(jnp.asarray(s2), jnp.asarray(t), official=True)
    np.testing.assert_allclose(loss2.total, loss.total, rtol=1e-6)


def test_attention_invalid_entries_only_matter_when_official():
    s, t = make_scores(MIN, 5), make_scores(MIN, 6)
    s2, t2 = s.copy(), t.copy()
    s2[0, :, 4, :] = RNG.normal(size=(H, L))  # padded query row
    t2[1, :, 3:, :] = RNG.normal(size=(H, 2, L))
    s2[1, :, 0, 2] = 3.0  # a key of another packed piece
    for official in (False, True):
        args = dict(attention_mask=jnp.asarray(MASK), official=official)
        a = tinybert_attention_loss(jnp.asarray(s), jnp.asarray(t), **args)
        b = tinybert_attention_loss(jnp.asarray(s2), jnp.asarray(t2), **args)
        assert (a.total == b.total) == (not official)


def test_attention_gradient_with_different_fills():
    s = jnp.asarray(make_scores(-6.0, 7), jnp.bfloat16)
    t = jnp.asarray(make_scores(MIN, 8), jnp.bfloat16)
    for official in (False, True):
        fn = lambda a, o=official: tinybert_attention_loss(
            a, t, attention_mask=jnp.asarray(MASK), official=o
        ).mean()
        val, grad = jax.value_and_grad(fn)(s)
        assert np.isfinite(val) and np.all(np.isfinite(np.asarray(grad, np.float32)))


HS = RNG.normal(size=(B, L, DS)).astype(np.float32)
HT = RNG.normal(size=(B, L, DT)).astype(np.float32)
W = RNG.normal(size=(DS, DT)).astype(np.float32) * 0.5
BIAS = RNG.normal(size=(DT,)).astype(np.float32)


def np_hidden(official):
    total = count = 0.0
    for b in range(B):
        for i in range(L):
            if not official and MASK[b, i] == 0:
                continue
            for j in range(DT):
                proj = sum(float(HS[b, i, c]) * float(W[c, j]) for c in range(DS)) + float(BIAS[j])
                total += (proj - float(HT[b, i, j])) ** 2 / DT
            count += 1
    return total, count


@pytest.mark.parametrize("fn", [tinybert_hidden_loss, tinybert_embedding_loss])
@pytest.mark.parametrize("official", [False, True])
def test_hidden_matches_numpy(fn, official):
    loss = fn(
        jnp.asarray(HS),
        jnp.asarray(HT),
        projection=jnp.asarray(W),
        projection_bias=jnp.asarray(BIAS),
        attention_mask=jnp.asarray(MASK),
        official=official,
    )
    total, count = np_hidden(official)
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)


def test_hidden_official_and_projection_gradient_match_torch():
    w = torch.tensor(W, requires_grad=True)
    bias = torch.tensor(BIAS, requires_grad=True)
    ref = torch.nn.MSELoss()(torch.tensor(HS) @ w + bias, torch.tensor(HT))
    ref.backward()

    def fn(w_, b_):
        return tinybert_hidden_loss(
            jnp.asarray(HS), jnp.asarray(HT), projection=w_, projection_bias=b_, official=True
        ).mean()

    val, (gw, gb) = jax.value_and_grad(fn, argnums=(0, 1))(jnp.asarray(W), jnp.asarray(BIAS))
    np.testing.assert_allclose(val, ref.item(), rtol=1e-5)
    np.testing.assert_allclose(gw, w.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gb, bias.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_hidden_padding_and_shapes():
    hs = HS.copy()
    hs[1, 3:] = 100.0
    kw = dict(projection=jnp.asarray(W), attention_mask=jnp.asarray(MASK))
    a = tinybert_hidden_loss(jnp.asarray(HS), jnp.asarray(HT), **kw)
    b = tinybert_hidden_loss(jnp.asarray(hs), jnp.asarray(HT), **kw)
    np.testing.assert_array_equal(a.total, b.total)
    c = tinybert_hidden_loss(
        jnp.asarray(hs), jnp.asarray(HT), official=True, projection=kw["projection"]
    )
    assert (
        c.total
        != tinybert_hidden_loss(
            jnp.asarray(HS), jnp.asarray(HT), official=True, projection=kw["projection"]
        ).total
    )
    with pytest.raises(ValueError, match="projection shape"):
        tinybert_hidden_loss(jnp.asarray(HS), jnp.asarray(HT), projection=jnp.zeros((DT, DS)))
    with pytest.raises(ValueError, match="after the projection"):
        tinybert_hidden_loss(jnp.asarray(HS), jnp.asarray(HT))
    # Equal widths need no projection.
    same = tinybert_hidden_loss(jnp.asarray(HT), jnp.asarray(HT) + 1.0)
    np.testing.assert_allclose(same.mean(), 1.0, rtol=1e-6)


LS = RNG.normal(size=(4, 3)).astype(np.float32) * 2
LT = RNG.normal(size=(4, 3)).astype(np.float32) * 2


def np_prediction(t):
    total = 0.0
    for i in range(LS.shape[0]):
        s_row, t_row = LS[i].astype(np.float64) / t, LT[i].astype(np.float64) / t
        log_zs = math.log(sum(math.exp(v) for v in s_row))
        zt = sum(math.exp(v) for v in t_row)
        total += -sum(math.exp(tv) / zt * (sv - log_zs) for sv, tv in zip(s_row, t_row))
    return total


@pytest.mark.parametrize("t", [1.0, 2.5])
def test_prediction_matches_numpy_and_official(t):
    loss = tinybert_prediction_loss(jnp.asarray(LS), jnp.asarray(LT), temperature=t)
    np.testing.assert_allclose(loss.total, np_prediction(t), rtol=1e-5)
    np.testing.assert_allclose(loss.count, 4)
    # Official soft_cross_entropy: (-targets_prob * student_likelihood).mean().
    ls, lt = torch.tensor(LS) / t, torch.tensor(LT) / t
    ref = (-torch.softmax(lt, -1) * torch.log_softmax(ls, -1)).mean()
    official = tinybert_prediction_loss(
        jnp.asarray(LS), jnp.asarray(LT), temperature=t, official=True
    )
    np.testing.assert_allclose(official.mean(), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(official.mean() * 3, loss.mean(), rtol=1e-6)
