"""The per-kind prediction-layer losses of task distillation against numpy on fixed logits,
and the task-kind table every task recipe reads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbert_jax.distill import prediction
from mbert_jax.models import Model, init_params, variants
from mbert_jax.models.model import HEAD_OUTPUTS, head_outputs
from mbert_jax.train import forward

RNG = np.random.default_rng(0)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def soft_ce(s, t, temperature=1.0):
    """-sum_c p_T log p_S per distribution, in float64."""
    s, t = np.asarray(s, np.float64) / temperature, np.asarray(t, np.float64) / temperature
    return -(np.exp(log_softmax(t)) * log_softmax(s)).sum(-1)


def loss(kind, s, t, batch, **kw):
    got = prediction.prediction_loss(
        kind, jax.tree.map(jnp.asarray, s), jax.tree.map(jnp.asarray, t), batch, **kw
    )
    return float(got.total), float(got.count), float(got.mean())


def test_classification_soft_cross_entropy_over_valid_rows():
    s, t = RNG.normal(size=(4, 5)), 3 * RNG.normal(size=(4, 5))
    valid = np.array([1, 1, 0, 1], np.float32)
    batch = {"valid": jnp.asarray(valid)}
    per_row = soft_ce(s, t, 2.0)
    _, count, mean = loss("classification", {"logits": s}, {"logits": t}, batch, temperature=2.0)
    assert count == 3 and mean == pytest.approx(per_row[[0, 1, 3]].mean(), rel=1e-5)
    # official: the mean over example x class entries (divided by the number of classes)
    _, count, mean = loss("classification", {"logits": s}, {"logits": t}, batch, official=True)
    assert count == 15 and mean == pytest.approx(soft_ce(s, t)[[0, 1, 3]].sum() / 15, rel=1e-5)


def test_regression_mse_on_the_teachers_prediction():
    s, t = RNG.normal(size=(5, 1)), RNG.normal(size=(5, 1))
    valid = np.array([1, 0, 1, 1, 1], np.float32)
    batch = {"valid": jnp.asarray(valid), "labels": jnp.asarray(RNG.normal(size=5))}
    _, count, mean = loss("regression", {"logits": s}, {"logits": t}, batch, temperature=3.0)
    keep = valid > 0
    assert count == 4  # the temperature does not apply to a squared error
    assert mean == pytest.approx(np.mean((s[keep, 0] - t[keep, 0]) ** 2), rel=1e-5)


def test_tagging_soft_cross_entropy_over_first_pieces_of_valid_rows():
    B, S, C = 3, 6, 4
    s, t = RNG.normal(size=(B, S, C)), 2 * RNG.normal(size=(B, S, C))
    labels = np.array(
        [
            [-1, 2, -1, 0, -1, -1],  # [CLS] w1 ##piece w2 [SEP] pad
            [-1, 1, 3, 3, -1, -1],
            [-1, 0, 1, -1, -1, -1],  # a padding row of the last eval batch
        ],
        np.int32,
    )
    valid = np.array([1, 1, 0], np.float32)
    batch = {"labels": jnp.asarray(labels), "valid": jnp.asarray(valid)}
    _, count, mean = loss(
        "tagging", {"token_logits": s}, {"token_logits": t}, batch, temperature=1.5
    )
    mask = (labels >= 0) & (valid[:, None] > 0)
    assert count == mask.sum() == 5
    assert mean == pytest.approx(soft_ce(s, t, 1.5)[mask].mean(), rel=1e-5)


def test_span_soft_cross_entropy_over_real_positions():
    B, S = 3, 7
    outs = [
        {f: RNG.normal(size=(B, S)) * k for f in ("start_logits", "end_logits")} for k in (1, 3)
    ]
    mask = np.ones((B, S), np.int32)
    mask[0, 5:] = 0
    mask[1, 3:] = 0
    # Padded positions with huge logits must not count: they are out of both distributions.
    for o in outs:
        o["start_logits"][mask == 0] = 50.0
    valid = np.array([1, 1, 0], np.float32)
    batch = {"attention_mask": jnp.asarray(mask), "valid": jnp.asarray(valid)}
    _, count, mean = loss("qa", outs[0], outs[1], batch, temperature=2.0)
    expected = []
    for b in (0, 1):
        real = mask[b] > 0
        ce = [soft_ce(outs[0][f][b, real], outs[1][f][b, real], 2.0) for f in HEAD_OUTPUTS["qa"]]
        expected.append(np.mean(ce))
    assert count == 2 and mean == pytest.approx(np.mean(expected), rel=1e-5)


def test_no_gradient_reaches_the_teacher():
    s, t = jnp.asarray(RNG.normal(size=(2, 3))), jnp.asarray(RNG.normal(size=(2, 3)))
    batch = {"valid": jnp.ones((2,))}
    for kind in ("classification", "regression"):
        g = jax.grad(
            lambda s, t, kind=kind: prediction.prediction_loss(
                kind, {"logits": s}, {"logits": t}, batch
            ).mean(),
            argnums=(0, 1),
        )(s, t)
        assert float(jnp.abs(g[0]).max()) > 0 and float(jnp.abs(g[1]).max()) == 0.0


def test_every_task_kind_has_a_head_a_loss_and_evaluator_names():
    assert set(prediction.PREDICTION_LOSSES) == set(forward.TASK_KINDS)
    cfg = variants.get("tinybert4_micro", vocab_size=40, num_labels=3)
    heads = tuple(sorted({k.head for k in forward.TASK_KINDS.values()}))
    model = Model(cfg, heads=heads)
    params = init_params(model, jax.random.PRNGKey(0))
    ids = jnp.asarray(RNG.integers(5, 40, (2, 8)), jnp.int32)
    out = model.apply({"params": params}, ids, jnp.ones_like(ids))
    for kind, spec in forward.TASK_KINDS.items():
        outputs = forward.task_outputs(out, kind)
        assert tuple(outputs) == HEAD_OUTPUTS[spec.head]
        assert len(forward.evaluator_outputs(outputs, kind)) == len(spec.evaluator_keys)
    # apply_heads on the final hidden state is what __call__ returns
    again = model.apply(
        {"params": params},
        out.encoder.last_hidden_state,
        out.encoder.pooled_output,
        heads,
        method=Model.apply_heads,
    )
    for head in heads:
        for field, value in head_outputs(out, head).items():
            np.testing.assert_array_equal(again[field], value)
    with pytest.raises(ValueError, match="did not run"):
        head_outputs(model.apply({"params": params}, ids, run_heads=("qa",)), "classifier")
