"""`ModelConfig.fake_quant` in the zoo: a dense layer against numpy, the model off is the float
model, calibration and gradient accumulation of the ranges by hand."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbert_jax.losses import LossSum
from mbert_jax.models import Model, variants
from mbert_jax.models.layers import dense
from mbert_jax.models.model import dummy_inputs
from mbert_jax.quant.calibrate import calibrate
from mbert_jax.train.recipe import Recipe, Stage
from mbert_jax.train.step import TrainState, make_train_step
from mbert_jax.tree import flat


# ------------------------------------------------------------ numpy reference
def np_fake_quant(x, lo, hi):
    """TF's fake_quant_with_min_max_vars, 8 bits, written from its kernel's definition (in
    float32 as the kernel: [-6, 6] puts the zero point at 127.5 in exact arithmetic)."""
    f = np.float32
    x, lo, hi = np.asarray(x, f), f(lo), f(hi)
    scale = (hi - lo) / f(255)
    zp = f(min(max(np.floor(-lo / scale + f(0.5)), 0), 255))  # zero point from min, clamped
    n_lo, n_hi = -zp * scale, (f(255) - zp) * scale
    return np.floor((np.clip(x, n_lo, n_hi) - n_lo) / scale + f(0.5)) * scale + n_lo


def np_weight(w):
    """Symmetric narrow-range int8 per output column of an [in, out] kernel."""
    s = np.abs(w).max(axis=0) / 127.0
    return np.clip(np.floor(w / s + 0.5), -127, 127) * s


class TwoDense(nn.Module):
    config: object

    @nn.compact
    def __call__(self, x):
        h = dense(self.config, 6, ("embed", "mlp"), name="first")(x)
        return dense(self.config, 3, ("mlp", "embed"), name="second")(jnp.tanh(h) * 4)


def two_dense(fake_quant=True, decay=0.999):
    cfg = variants.get("bert_base_micro", fake_quant=fake_quant, fake_quant_decay=decay)
    model = TwoDense(cfg)
    x = np.random.default_rng(0).normal(size=(4, 5, 8)).astype(np.float32) * 3
    params = model.init(jax.random.PRNGKey(0), jnp.asarray(x))["params"]
    params = jax.tree.map(lambda p: p, nn.unbox(params))
    return model, params, x


def test_a_fake_quant_dense_layer_equals_numpy():
    model, params, x = two_dense()
    p = jax.tree.map(np.asarray, params)
    p["first"]["bias"] = np.linspace(-1, 1, 6).astype(np.float32)
    p["first"]["input_range"] = np.array([-2.5, 7.0], np.float32)
    p["first"]["output_range"] = np.array([-0.7, 0.9], np.float32)
    p["second"]["input_range"] = np.array([-3.0, 3.5], np.float32)
    p["second"]["output_range"] = np.array([-1.1, 0.4], np.float32)
    h = np_fake_quant(x, -2.5, 7.0) @ np_weight(p["first"]["kernel"]) + p["first"]["bias"]
    h = np_fake_quant(h, -0.7, 0.9)
    want = np_fake_quant(np.tanh(h) * 4, -3.0, 3.5) @ np_weight(p["second"]["kernel"])
    want = np_fake_quant(want + p["second"]["bias"], -1.1, 0.4)
    got = np.asarray(model.apply({"params": p}, jnp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_fake_quant_off_adds_nothing_and_is_the_float_model_bit_for_bit():
    cfg = variants.get("bert_base_micro")
    assert not cfg.fake_quant
    ids, mask = dummy_inputs(cfg)
    float_params = Model(cfg).init(jax.random.PRNGKey(1), ids, mask)["params"]
    assert not [k for k in flat(float_params) if k.endswith("_range")]
    off = cfg.replace(fake_quant_decay=0.5)  # the decay alone changes nothing
    a = Model(cfg).apply({"params": float_params}, ids, mask)
    b = Model(off).apply({"params": float_params}, ids, mask)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_every_dense_layer_of_a_bert_gets_a_range():
    cfg = variants.get("bert_base_micro", fake_quant=True)
    ids, mask = dummy_inputs(cfg)
    params = Model(cfg, heads=("classifier",)).init(jax.random.PRNGKey(1), ids, mask)["params"]
    names = flat(params)
    kernels = {k[: -len("/kernel")] for k in names if k.endswith("/kernel")}
    for point in ("input", "output"):
        suffix = f"/{point}_range"
        ranges = {k[: -len(suffix)] for k in names if k.endswith(suffix)}
        assert ranges == kernels
        assert all(np.array_equal(np.asarray(names[r + suffix]), [-6, 6]) for r in ranges)


def test_calibration_sets_each_range_to_the_mean_observed_with_the_ranges_before():
    model, params, x = two_dense(decay=0.0)
    x2 = x[::-1] * 0.5 + 1.0

    def outputs(p, batch):
        return model.apply({"params": p}, batch["x"])

    got = calibrate(outputs, params, [{"x": jnp.asarray(x)}, {"x": jnp.asarray(x2)}])
    p = jax.tree.map(np.asarray, params)

    def observed(v):
        return np.array([min(v.min(), 0.0), max(v.max(), 0.0)])

    def first_output(v, r_in):
        return np_fake_quant(v, *r_in) @ np_weight(p["first"]["kernel"]) + p["first"]["bias"]

    def second_input(v, r_in, r_out):
        return np.tanh(np_fake_quant(first_output(v, r_in), *r_out)) * 4

    initial = [-6.0, 6.0]
    r1_a, r1_b = observed(x), observed(x2)
    o1_a = observed(first_output(x, initial))  # batch 1 ran with the initial ranges
    o1_b = observed(first_output(x2, r1_a))  # batch 2 with batch 1's
    r2_a = observed(second_input(x, initial, initial))
    r2_b = observed(second_input(x2, r1_a, o1_a))
    want = {"first": (r1_a + r1_b) / 2, "second": (r2_a + r2_b) / 2}
    for layer, r in want.items():
        np.testing.assert_allclose(np.asarray(got[layer]["input_range"]), r, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(got["first"]["output_range"]), (o1_a + o1_b) / 2, rtol=1e-4, atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(got["first"]["kernel"]), p["first"]["kernel"])


class OneRange(Recipe):
    decay = 0.8

    def stages(self):
        return [Stage("s", 1, {"y": 1.0})]

    def loss(self, stage, params, teacher_params, batch, rng):
        from mbert_jax.quant import fake_quant as fq

        y = fq.tracked_activation(batch["x"], params["d"]["input_range"], self.decay)
        m = LossSum(jnp.sum(y * params["d"]["kernel"]), jnp.asarray(float(y.size)))
        return m.total / m.count, {"y": m}


@pytest.mark.parametrize("accum_steps", [1, 2])
def test_an_accumulated_step_moves_a_range_by_the_mean_of_its_micro_batches_steps(accum_steps):
    rows = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)
    rows[1] *= 10  # micro-batch 1 (rows 1, 3) has another range than micro-batch 0
    params = {"d": {"input_range": jnp.asarray([-6.0, 6.0]), "kernel": jnp.ones(())}}
    tx = optax.sgd(1.0)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(0))
    step = make_train_step(OneRange(), OneRange().stages()[0], tx, accum_steps=accum_steps)
    new, _ = jax.jit(step)(state, {"x": jnp.asarray(rows)}, None)

    def observed(v):
        return np.array([min(v.min(), 0.0), max(v.max(), 0.0)])

    micro = [rows[i::accum_steps] for i in range(accum_steps)]
    mean_obs = np.mean([observed(m) for m in micro], axis=0)
    want = np.array([-6.0, 6.0]) - (1 - OneRange.decay) * (np.array([-6.0, 6.0]) - mean_obs)
    np.testing.assert_allclose(np.asarray(new.params["d"]["input_range"]), want, rtol=1e-6)
