"""MLM and NSP cross-entropy against hand-written numpy and PyTorch."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mbert_jax.losses import cross_entropy, mlm_loss, nsp_loss

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(2, 3, 7)).astype(np.float32) * 3
LABELS = np.array([[1, 6, -100], [0, 3, 2]])  # -100 at a padded prediction
WEIGHTS = np.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]], np.float32)


def np_mlm(logits, labels, weights):
    total = count = 0.0
    for b in range(logits.shape[0]):
        for p in range(logits.shape[1]):
            if weights[b, p] == 0:
                continue
            row = logits[b, p].astype(np.float64)
            log_z = math.log(sum(math.exp(v) for v in row))
            total += weights[b, p] * (log_z - row[labels[b, p]])
            count += weights[b, p]
    return total, count


def test_mlm_matches_numpy():
    loss = mlm_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(WEIGHTS))
    total, count = np_mlm(LOGITS, LABELS, WEIGHTS)
    assert loss.total.dtype == jnp.float32 and loss.count.dtype == jnp.float32
    np.testing.assert_allclose(loss.total, total, rtol=1e-5)
    np.testing.assert_allclose(loss.count, count)
    np.testing.assert_allclose(loss.mean(), total / count, rtol=1e-5)


def test_mlm_matches_torch_ignore_index():
    # 0/1 weights are transformers' ignore_index=-100 convention.
    weights = (LABELS != -100).astype(np.float32)
    loss = mlm_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(weights))
    ref = torch.nn.functional.cross_entropy(
        torch.tensor(LOGITS).reshape(-1, 7), torch.tensor(LABELS).reshape(-1), ignore_index=-100
    )
    np.testing.assert_allclose(loss.mean(), ref.item(), rtol=1e-5)


def test_padded_predictions_do_not_matter():
    base = mlm_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(WEIGHTS))
    changed = LOGITS.copy()
    changed[0, 2] = 1e4  # the zero-weight prediction
    labels = LABELS.copy()
    labels[0, 2] = 5
    other = mlm_loss(jnp.asarray(changed), jnp.asarray(labels), jnp.asarray(WEIGHTS))
    np.testing.assert_array_equal(base.total, other.total)
    np.testing.assert_array_equal(base.count, other.count)
    changed[1, 0, 0] += 1.0  # a real one does
    assert mlm_loss(jnp.asarray(changed), jnp.asarray(LABELS), jnp.asarray(WEIGHTS)).total != (
        base.total
    )


def test_nsp_matches_torch():
    logits = RNG.normal(size=(5, 2)).astype(np.float32)
    labels = np.array([0, 1, 1, 0, 1])
    loss = nsp_loss(jnp.asarray(logits), jnp.asarray(labels))
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.tensor(labels))
    np.testing.assert_allclose(loss.mean(), ref.item(), rtol=1e-5)
    assert float(loss.count) == 5
    # Example weights drop padded examples of a fixed-size batch.
    weights = np.array([1, 1, 1, 0, 0], np.float32)
    part = nsp_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits[:3]), torch.tensor(labels[:3]))
    np.testing.assert_allclose(part.mean(), ref.item(), rtol=1e-5)


def test_bfloat16_jit_and_grad():
    fn = jax.jit(lambda lg: mlm_loss(lg, jnp.asarray(LABELS), jnp.asarray(WEIGHTS)).mean())
    lo = fn(jnp.asarray(LOGITS, jnp.bfloat16))
    hi = fn(jnp.asarray(LOGITS))
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, hi, rtol=2e-2)
    grad = jax.grad(fn)(jnp.asarray(LOGITS, jnp.bfloat16))
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    assert np.all(np.asarray(grad[0, 2], np.float32) == 0)  # no gradient at a padded prediction


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="labels shape"):
        cross_entropy(jnp.zeros((2, 3, 7)), jnp.zeros((2, 4), jnp.int32))
