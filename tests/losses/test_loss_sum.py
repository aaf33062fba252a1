"""(sum, count) semantics, jit / vmap / psum and bfloat16 gradients of every loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbert_jax import losses
from mbert_jax.losses import LossSum, combine

RNG = np.random.default_rng(5)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
N, H, L, D = 4, 2, 4, 8
HS = RNG.normal(size=(N, L, D)).astype(np.float32)
HT = RNG.normal(size=(N, L, D)).astype(np.float32)
HT6 = RNG.normal(size=(N, L, 6)).astype(np.float32)
W = RNG.normal(size=(D, 6)).astype(np.float32)
VALID = (MASK[:, None, :, None] > 0) & (MASK[:, None, None, :] > 0)
SS = np.where(VALID, RNG.normal(size=(N, H, L, L)), -6.0).astype(np.float32)
ST = np.where(VALID, RNG.normal(size=(N, H, L, L)), -6.0).astype(np.float32)
LS = RNG.normal(size=(N, L, 5)).astype(np.float32)
LT = RNG.normal(size=(N, L, 5)).astype(np.float32)
LABELS = RNG.integers(0, 5, size=(N, L))
CS = RNG.normal(size=(N, 3)).astype(np.float32)
CT = RNG.normal(size=(N, 3)).astype(np.float32)


def _hidden(fn, **kw):
    return lambda hs, i: fn(hs, HT[i], attention_mask=MASK[i], **kw)


def _scores(fn, **kw):
    return lambda ss, i: fn(ss, ST[i], attention_mask=MASK[i], **kw)


def _logits(fn, **kw):
    return lambda ls, i: fn(ls, LT[i], weights=MASK[i].astype(np.float32), **kw)


# name -> (student input, loss(student, batch index)); the rest comes from the globals.
CASES = {
    "mlm": (LS, lambda ls, i: losses.mlm_loss(ls, LABELS[i], MASK[i].astype(np.float32))),
    "nsp": (CS, lambda cs, i: losses.nsp_loss(cs[:, :2], LABELS[i, 0] % 2)),
    "soft_ce": (LS, _logits(losses.soft_cross_entropy, temperature=2.0)),
    "kl_t2": (
        LS,
        _logits(losses.kl_divergence, temperature=2.0, scale_by_temperature_squared=True),
    ),
    "pd": (
        LS,
        lambda ls, i: losses.pretraining_distillation_loss(
            ls, LT[i], LABELS[i], MASK[i].astype(np.float32)
        ),
    ),
    "feature_map": (HS, _hidden(losses.feature_map_transfer_loss)),
    "feature_map_official": (HS, _hidden(losses.feature_map_transfer_loss, official=True)),
    "mean": (HS, _hidden(losses.mean_transfer_loss)),
    "variance": (HS, _hidden(losses.variance_transfer_loss)),
    "attention_kl": (SS, _scores(losses.attention_transfer_loss)),
    "attention_ce_official": (
        SS,
        _scores(losses.attention_transfer_loss, form="cross_entropy", official=True),
    ),
    "tinybert_attention": (SS, _scores(losses.tinybert_attention_loss)),
    "tinybert_attention_official": (SS, _scores(losses.tinybert_attention_loss, official=True)),
    "tinybert_hidden": (
        HS,
        lambda hs, i: losses.tinybert_hidden_loss(hs, HT6[i], projection=W, attention_mask=MASK[i]),
    ),
    "tinybert_prediction_official": (
        CS,
        lambda cs, i: losses.tinybert_prediction_loss(cs, CT[i], temperature=2.0, official=True),
    ),
    "cosine": (HS, _hidden(losses.cosine_embedding_loss)),
}


def test_loss_sum_mean_merge_combine():
    a = LossSum(jnp.float32(3.0), jnp.float32(2.0))
    b = LossSum(jnp.float32(1.0), jnp.float32(6.0))
    np.testing.assert_allclose(a.mean(), 1.5)
    np.testing.assert_allclose(a.merge(b).mean(), 0.5)
    np.testing.assert_allclose(combine([a, b, a]).mean(), 7.0 / 10.0)
    assert float(LossSum(jnp.float32(0.0), jnp.float32(0.0)).mean()) == 0.0
    assert float(combine([]).count) == 0.0
    # A count of zero has a zero (not nan) gradient.
    grad = jax.grad(lambda x: LossSum(x * 0.0, jnp.float32(0.0)).mean())(1.0)
    assert float(grad) == 0.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_concatenated_batches_equal_merged_sums(name):
    student, fn = CASES[name]
    whole = fn(jnp.asarray(student), np.arange(N))
    first = fn(jnp.asarray(student[:1]), np.arange(1))
    rest = fn(jnp.asarray(student[1:]), np.arange(1, N))
    merged = first.merge(rest)
    assert whole.total.shape == () and whole.total.dtype == jnp.float32
    np.testing.assert_allclose(whole.total, merged.total, rtol=1e-5)
    np.testing.assert_allclose(whole.count, merged.count)
    np.testing.assert_allclose(whole.mean(), merged.mean(), rtol=1e-5)
    # Averaging the two halves' means is not the same thing where counts differ.
    assert float(first.count) != float(rest.count)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_bfloat16_and_finite_gradients(name):
    student, fn = CASES[name]
    idx = np.arange(N)
    step = jax.jit(jax.value_and_grad(lambda x: fn(x, idx).mean()))
    val32, grad32 = step(jnp.asarray(student))
    val16, grad16 = step(jnp.asarray(student, jnp.bfloat16))
    assert val16.dtype == jnp.float32
    np.testing.assert_allclose(val16, val32, rtol=5e-2, atol=1e-3)
    for g in (grad32, grad16):
        g = np.asarray(g, np.float32)
        assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_psum_across_a_named_axis():
    # Two "devices", each with two examples: psum of the LossSums = the whole batch.
    student, fn = CASES["feature_map"]

    def per_device(x, mask, teacher):
        loss = losses.feature_map_transfer_loss(x, teacher, attention_mask=mask)
        return jax.lax.psum(loss, "devices")

    shard = lambda a: a.reshape(2, N // 2, *a.shape[1:])
    out = jax.vmap(per_device, axis_name="devices")(
        shard(jnp.asarray(student)), shard(jnp.asarray(MASK)), shard(jnp.asarray(HT))
    )
    whole = fn(jnp.asarray(student), np.arange(N))
    np.testing.assert_allclose(out.total[0], whole.total, rtol=1e-6)
    np.testing.assert_allclose(out.count[1], whole.count)


def _micro_outputs():
    """Student (MobileBERT, -6 fill) and teacher (IB-BERT) micro models on a padded batch."""
    from mbert_jax.models import Model, variants

    small = dict(num_layers=1, vocab_size=64, max_position_embeddings=8)
    ids = jnp.asarray(RNG.integers(1, 64, size=(N, L)))
    outs = []
    for i, name in enumerate(("mobilebert_micro", "ibbert_large_micro")):
        model = Model(variants.get(name, **small), heads=())

        @jax.jit
        def run(key, ids, mask, model=model):
            params = model.init(key, ids, mask)["params"]
            return model.apply(
                {"params": params},
                ids,
                mask,
                output_hidden_states=True,
                output_attentions=True,
            )

        outs.append(run(jax.random.key(i), ids, jnp.asarray(MASK)))
    return outs


MICRO_HEADS = 4


@pytest.mark.slow
def test_losses_accept_model_outputs():
    student, teacher = _micro_outputs()
    s, t = student.encoder, teacher.encoder
    mask = jnp.asarray(MASK)
    for layer in range(1):
        fm = losses.feature_map_transfer_loss(
            s.hidden_states[layer], t.hidden_states[layer], attention_mask=mask
        )
        att = losses.attention_transfer_loss(
            s.attention_scores[layer], t.attention_scores[layer], attention_mask=mask
        )
        official = losses.attention_transfer_loss(
            s.attention_scores[layer], t.attention_scores[layer], official=True
        )
        assert np.isfinite(fm.mean()) and float(fm.count) == MASK.astype(bool).sum()
        assert np.isfinite(att.mean()) and float(att.count) == MICRO_HEADS * MASK.astype(bool).sum()
        assert float(official.count) == N * MICRO_HEADS * L and official.total != att.total
