"""Fake quantization against TensorFlow's own kernels, and the moving-average ranges by hand.

The reference for the arithmetic and the straight-through gradients is
`tf.quantization.fake_quant_with_min_max_vars(_per_channel)`, the op whose
ranges the TFLite converter turns into int8 tensors. The moving average is
recomputed with numpy from the batches' own minima and maxima.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow as tf

from mbert_jax.quant import fake_quant as fq
from mbert_jax.train import labels as labels_lib
from mbert_jax.train.optimizers import STATS, default_optimizer_config, make_optimizer, with_stats


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("lo, hi", [(-6.0, 6.0), (-1.3, 2.7), (0.5, 3.0), (-3.0, -0.2)])
def test_activation_equals_tensorflow(lo, hi, jit):
    x = np.random.default_rng(0).normal(size=2000).astype(np.float32) * 4
    want = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=8).numpy()
    f = jax.jit(fq.activation) if jit else fq.activation
    got = np.asarray(f(jnp.asarray(x), jnp.float32(lo), jnp.float32(hi)))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert len(np.unique(got)) <= 256


def test_activation_gradient_is_tensorflows_clipped_straight_through():
    x = np.linspace(-9, 9, 301).astype(np.float32)
    g = np.random.default_rng(1).normal(size=x.shape).astype(np.float32)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = tf.quantization.fake_quant_with_min_max_vars(xt, -1.3, 2.7, num_bits=8)
    want = tape.gradient(y, xt, output_gradients=tf.constant(g)).numpy()
    _, vjp = jax.vjp(lambda v: fq.activation(v, jnp.float32(-1.3), jnp.float32(2.7)), x)
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), want)
    assert 0 < np.count_nonzero(want) < len(x)  # both sides of the range are exercised


def test_weight_equals_tensorflow_per_channel_narrow_range():
    w = np.random.default_rng(2).normal(size=(3, 16, 8)).astype(np.float32)
    got = np.asarray(fq.weight(jnp.asarray(w), (0, 1)))  # per output channel (last axis)
    m = np.abs(w).max(axis=(0, 1))
    want = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        w.reshape(-1, 8), -m, m, num_bits=8, narrow_range=True
    ).numpy()
    np.testing.assert_allclose(got.reshape(-1, 8), want, atol=1e-6)
    for c in range(8):  # 255 levels at most, symmetric around 0, the extreme exact
        assert len(np.unique(got[..., c])) <= 255
        assert np.abs(got[..., c]).max() == pytest.approx(m[c], rel=1e-6)


def test_weight_gradient_passes_straight_through_and_zero_channels_stay_zero():
    w = np.random.default_rng(3).normal(size=(4, 3)).astype(np.float32)
    w[:, 1] = 0.0
    g = np.random.default_rng(4).normal(size=w.shape).astype(np.float32)
    y, vjp = jax.vjp(lambda v: fq.weight(v, (0,)), jnp.asarray(w))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), g)
    assert np.all(np.asarray(y)[:, 1] == 0) and np.all(np.isfinite(np.asarray(y)))


def test_the_range_cotangent_is_the_moving_average_step():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(4, 7)).astype(np.float32) * 3)
    r = jnp.asarray([-6.0, 6.0])
    grad = jax.grad(lambda rr: jnp.sum(fq.tracked_activation(x, rr, 0.9)))(r)
    observed = np.array([min(float(x.min()), 0.0), max(float(x.max()), 0.0)])
    np.testing.assert_allclose(np.asarray(grad), 0.1 * (np.asarray(r) - observed), rtol=1e-6)
    # the value is the fixed-range fake quantization
    np.testing.assert_array_equal(
        np.asarray(fq.tracked_activation(x, r, 0.9)), np.asarray(fq.activation(x, r[0], r[1]))
    )


def _optimizer(params, clip_norm):
    cfg = ml_collections.ConfigDict(default_optimizer_config())
    cfg.clip_norm = clip_norm
    cfg.schedule.kind = "constant"
    cfg.schedule.warmup_fraction = 0.0
    labels = labels_lib.make_labels(params, [(".*", 1.0)])
    return make_optimizer(cfg, labels, steps=100)[0]


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_ranges_follow_the_moving_average_of_the_batches_ranges(clip_norm):
    """N optimizer steps leave r_N = d r_{N-1} + (1 - d) observed_N, the numpy recursion,
    untouched by clipping, weight decay and the learning-rate schedule of the weights."""
    decay, steps = 0.9, 12
    rng = np.random.default_rng(6)
    batches = [
        rng.normal(size=(8, 5)).astype(np.float32) * rng.uniform(0.5, 9) for _ in range(steps)
    ]
    params = {"dense": {"input_range": jnp.asarray([-6.0, 6.0]), "kernel": jnp.ones((5, 3))}}

    def loss(p, x):  # huge weight gradients: a shared clipping norm would shrink the EMA step
        return 1e4 * jnp.sum(
            fq.tracked_activation(x, p["dense"]["input_range"], decay) @ p["dense"]["kernel"]
        )

    tx = _optimizer(params, clip_norm)
    state = tx.init(params)
    want = np.array([-6.0, 6.0])
    for x in batches:
        grads = jax.grad(loss)(params, jnp.asarray(x))
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        want = decay * want + (1 - decay) * np.array([min(x.min(), 0.0), max(x.max(), 0.0)])
    np.testing.assert_allclose(np.asarray(params["dense"]["input_range"]), want, rtol=1e-5)


def test_only_trained_range_leaves_are_statistics():
    labels = {"a": {"input_range": "x1", "kernel": "x1"}, "b": {"input_range": labels_lib.FROZEN}}
    assert with_stats(labels) == {
        "a": {"input_range": STATS, "kernel": "x1"},
        "b": {"input_range": labels_lib.FROZEN},
    }
