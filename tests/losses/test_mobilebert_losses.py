"""MobileBERT layer-wise transfer losses against hand-written numpy and PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mbert_jax.losses import (
    attention_transfer_loss,
    feature_map_transfer_loss,
    layer_norm,
    mean_transfer_loss,
    variance_transfer_loss,
)

RNG = np.random.default_rng(2)
# Example 0 padded, example 1 two packed pieces plus padding, example 2 all padding.
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 2, 2, 0], [0, 0, 0, 0, 0]])
B, H, L, D = 3, 2, 5, 6
HS = (RNG.normal(size=(B, L, D)) * 2 + 0.5).astype(np.float32)
HT = (RNG.normal(size=(B, L, D)) * 3 - 0.2).astype(np.float32)


def allowed(b, q, k):
    """The model's rule, written out: real key, same piece (padded queries see all real keys)."""
    return MASK[b, k] > 0 and (MASK[b, q] == MASK[b, k] or MASK[b, q] == 0)


def make_scores(fill, seed):
    raw = np.random.default_rng(seed).normal(size=(B, H, L, L)).astype(np.float32) * 2
    for b in range(B):
        for q in range(L):
            for k in range(L):
                if not allowed(b, q, k):
                    raw[b, :, q, k] = fill
    return raw


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def np_attention(s, t, form, official):
    total = count = 0.0
    for b in range(B):
        for h in range(H):
            for q in range(L):
                if official:
                    keys = list(range(L))
                elif MASK[b, q] > 0:
                    keys = [k for k in range(L) if allowed(b, q, k)]
                else:
                    continue
                ps = softmax([float(s[b, h, q, k]) for k in keys])
                pt = softmax([float(t[b, h, q, k]) for k in keys])
                ce = -sum(p * math.log(r) for p, r in zip(pt, ps) if p > 0)
                ent = -sum(p * math.log(p) for p in pt if p > 0)
                total += ce if form == "cross_entropy" else ce - ent
                count += 1
    return total, count


def np_layer_norm(v):
    mu = sum(v) / len(v)
    var = sum((x - mu) ** 2 for x in v) / len(v)
    return [(x - mu) / math.sqrt(var + 1e-12) for x in v]


def np_token_loss(per_token, official):
    total = count = 0.0
    for b in range(B):
        for i in range(L):
            if official or MASK[b, i] > 0:
                total += per_token(HS[b, i].astype(np.float64), HT[b, i].astype(np.float64))
                count += 1
    return total, count


def fm(s, t):
    return sum((a - c) ** 2 for a, c in zip(np_layer_norm(s), np_layer_norm(t))) / D


def mean_t(s, t):
    return (t.mean() - s.mean()) ** 2


def var_t(s, t):
    return abs(t.var() - s.var())


HIDDEN_LOSSES = [
    (feature_map_transfer_loss, fm),
    (mean_transfer_loss, mean_t),
    (variance_transfer_loss, var_t),
]


@pytest.mark.parametrize("fn,ref", HIDDEN_LOSSES)
@pytest.mark.parametrize("official", [False, True])
def test_hidden_losses_match_numpy(fn, ref, official):
    loss = fn(jnp.asarray(HS), jnp.asarray(HT), attention_mask=jnp.asarray(MASK), official=official)
    total, count = np_token_loss(ref, official)
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)


@pytest.mark.parametrize("fn,ref", HIDDEN_LOSSES)
def test_hidden_losses_ignore_padding_unless_official(fn, ref):
    hs, ht = HS.copy(), HT.copy()
    hs[0, 3:] = RNG.normal(size=(2, D)) * 10
    ht[2] = RNG.normal(size=(L, D)) * 10
    for official in (False, True):
        a = fn(
            jnp.asarray(HS), jnp.asarray(HT), attention_mask=jnp.asarray(MASK), official=official
        )
        b = fn(
            jnp.asarray(hs), jnp.asarray(ht), attention_mask=jnp.asarray(MASK), official=official
        )
        assert (a.total == b.total) == (not official)


def test_layer_norm_and_official_mse_match_torch():
    x = torch.tensor(HS)
    ref = torch.nn.functional.layer_norm(x, (D,), eps=1e-12)
    np.testing.assert_allclose(layer_norm(jnp.asarray(HS)), ref.numpy(), rtol=1e-5, atol=1e-5)
    # The official loss: tf.losses.mean_squared_error of the normalized maps, padding included.
    mse = torch.nn.functional.mse_loss(ref, torch.nn.functional.layer_norm(torch.tensor(HT), (D,)))
    loss = feature_map_transfer_loss(jnp.asarray(HS), jnp.asarray(HT), official=True)
    np.testing.assert_allclose(loss.mean(), mse.item(), rtol=1e-4)


@pytest.mark.parametrize("fill", [-6.0, float(np.finfo(np.float32).min)])
@pytest.mark.parametrize("form", ["kl", "cross_entropy"])
@pytest.mark.parametrize("official", [False, True])
def test_attention_matches_numpy(fill, form, official):
    s, t = make_scores(fill, 10), make_scores(fill, 11)
    loss = attention_transfer_loss(
        jnp.asarray(s),
        jnp.asarray(t),
        attention_mask=jnp.asarray(MASK),
        form=form,
        official=official,
    )
    total, count = np_attention(s, t, form, official)
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)


def test_attention_official_matches_torch():
    s, t = make_scores(-6.0, 12), make_scores(-6.0, 13)
    ts, tt = torch.tensor(s), torch.tensor(t)
    ce = (-(torch.softmax(tt, -1) * torch.log_softmax(ts, -1)).sum(-1)).mean()
    loss = attention_transfer_loss(
        jnp.asarray(s), jnp.asarray(t), form="cross_entropy", official=True
    )
    np.testing.assert_allclose(loss.mean(), ce.item(), rtol=1e-5)
    # KL form: kl_div summed over keys, averaged over rows.
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(ts, -1), torch.softmax(tt, -1), reduction="sum"
    )
    loss = attention_transfer_loss(jnp.asarray(s), jnp.asarray(t), official=True)
    np.testing.assert_allclose(loss.mean(), kl.item() / (B * H * L), rtol=1e-5)


def test_attention_ignores_invalid_entries_unless_official():
    s, t = make_scores(-6.0, 14), make_scores(-6.0, 15)
    s2, t2 = s.copy(), t.copy()
    for b in range(B):
        for q in range(L):
            for k in range(L):
                if MASK[b, q] == 0 or not allowed(b, q, k):
                    s2[b, :, q, k] = RNG.normal(size=H) * 5
                    t2[b, :, q, k] = RNG.normal(size=H) * 5
    for official in (False, True):
        args = dict(attention_mask=jnp.asarray(MASK), official=official)
        a = attention_transfer_loss(jnp.asarray(s), jnp.asarray(t), **args)
        b = attention_transfer_loss(jnp.asarray(s2), jnp.asarray(t2), **args)
        assert (a.total == b.total) == (not official)


def test_identical_maps_give_zero_kl():
    s = make_scores(-6.0, 16)
    loss = attention_transfer_loss(jnp.asarray(s), jnp.asarray(s), attention_mask=jnp.asarray(MASK))
    np.testing.assert_allclose(loss.total, 0.0, atol=1e-5)
    assert float(loss.count) == H * (3 + 4)  # heads x real queries


def test_vmap_over_layers_and_jit():
    # Stacked layers: vmap gives one LossSum entry per layer, equal to the loop.
    stack_s = jnp.stack([jnp.asarray(HS), jnp.asarray(HT), jnp.asarray(HS) * 2])
    stack_t = jnp.stack([jnp.asarray(HT), jnp.asarray(HS), jnp.asarray(HT)])
    mask = jnp.asarray(MASK)
    fn = jax.jit(jax.vmap(lambda a, b: feature_map_transfer_loss(a, b, attention_mask=mask)))
    out = fn(stack_s, stack_t)
    for i in range(3):
        one = feature_map_transfer_loss(stack_s[i], stack_t[i], attention_mask=mask)
        np.testing.assert_allclose(out.total[i], one.total, rtol=1e-6)
        np.testing.assert_allclose(out.count[i], one.count)


@pytest.mark.parametrize("official", [False, True])
def test_attention_gradients_bfloat16(official):
    fill = float(jnp.finfo(jnp.bfloat16).min)
    s = jnp.asarray(make_scores(fill, 17), jnp.bfloat16)
    t = jnp.asarray(make_scores(-6.0, 18), jnp.bfloat16)  # fills of different size

    def fn(a):
        return attention_transfer_loss(
            a, t, attention_mask=jnp.asarray(MASK), official=official
        ).mean()

    val, grad = jax.jit(jax.value_and_grad(fn))(s)
    grad = np.asarray(grad, np.float32)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
    if not official:  # no gradient outside the valid entries
        for b in range(B):
            for q in range(L):
                for k in range(L):
                    if MASK[b, q] == 0 or not allowed(b, q, k):
                        assert np.all(grad[b, :, q, k] == 0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="student shape"):
        attention_transfer_loss(jnp.zeros((1, 2, 3, 3)), jnp.zeros((1, 4, 3, 3)))
    with pytest.raises(ValueError, match="form"):
        attention_transfer_loss(jnp.zeros((1, 2, 3, 3)), jnp.zeros((1, 2, 3, 3)), form="mse")
    with pytest.raises(ValueError, match="attention_mask"):
        feature_map_transfer_loss(
            jnp.zeros((1, 3, 4)), jnp.zeros((1, 3, 4)), attention_mask=jnp.ones((1, 4))
        )
