"""Training rules (labels) and the per-stage optax chain, against hand-computed values."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mbert_jax.train.labels import make_labels, trained_fraction
from mbert_jax.train.optimizers import default_optimizer_config, make_optimizer, make_schedule

PARAMS = {
    "encoder": {
        "layers_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
        "layers_1": {"kernel": jnp.ones((4, 2)), "bias": jnp.ones((2,))},
    },
    "head": {"kernel": jnp.ones((2, 2))},
}


def test_first_matching_rule_wins():
    labels = make_labels(PARAMS, [("encoder/layers_1/.*", 1.0), ("encoder/.*", 0.1), (".*", None)])
    assert labels["encoder"]["layers_1"]["kernel"] == "x1"
    assert labels["encoder"]["layers_0"]["bias"] == "x0.1"
    assert labels["head"]["kernel"] == "frozen"
    assert trained_fraction(PARAMS, labels) == (12 + 4 + 8 + 2, 12 + 4 + 8 + 2 + 4)


def test_unmatched_parameters_and_unused_rules_fail():
    with pytest.raises(ValueError, match="match no training rule.*head/kernel"):
        make_labels(PARAMS, [("encoder/.*", 1.0)])
    with pytest.raises(ValueError, match=r"\['encodr/.\*'\] match no parameter"):
        make_labels(PARAMS, [("encodr/.*", 1.0), (".*", 1.0)])


def _schedule_cfg(**kw):
    cfg = default_optimizer_config().schedule
    cfg.update(kw)
    return cfg


def test_schedules_match_hand_computed_values():
    lin = make_schedule(1.0, 10, _schedule_cfg(kind="linear", warmup_steps=2, end_factor=0.0))
    # warm-up 0 -> 1 over 2 steps, then linear 1 -> 0 over the remaining 8.
    np.testing.assert_allclose([lin(s) for s in (0, 1, 2, 6, 10)], [0, 0.5, 1.0, 0.5, 0.0])
    sqrt = make_schedule(
        1.0, 11, _schedule_cfg(kind="polynomial", warmup_fraction=0.1, end_factor=0.9, power=0.5)
    )
    # MobileBERT's per-phase schedule: 10% warm-up (1 step), then sqrt decay 1.0 -> 0.9.
    expected = [(1 - 0.9) * (1 - (s - 1) / 10) ** 0.5 + 0.9 for s in (1, 6, 11)]
    np.testing.assert_allclose([sqrt(s) for s in (1, 6, 11)], expected, rtol=1e-6)
    const = make_schedule(3.0, 5, _schedule_cfg(kind="constant", warmup_fraction=0.0))
    assert float(const(4)) == 3.0


def _opt(name="adamw", **kw):
    cfg = default_optimizer_config()
    cfg.name = name
    cfg.learning_rate = 0.1
    cfg.clip_norm = 0.0
    cfg.weight_decay = 0.0
    cfg.schedule.kind = "constant"
    cfg.schedule.warmup_fraction = 0.0
    cfg.update(kw)
    return cfg


def test_frozen_leaves_have_no_state_and_no_update_and_multipliers_scale():
    labels = make_labels(PARAMS, [("encoder/layers_1/.*", 1.0), ("encoder/.*", 0.5), (".*", None)])
    tx, _ = make_optimizer(_opt(), labels, steps=10)
    state = tx.init(PARAMS)
    state_leaves = jax.tree.leaves(state)
    # Adam's moments exist for the 4 trained leaves only (x2 moments x2 partitions' counts).
    n_params_in_state = sum(x.size for x in state_leaves if x.ndim > 0)
    assert n_params_in_state == 2 * (12 + 4 + 8 + 2)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, state, PARAMS)
    # Adam's first step moves every coordinate by lr (sign of the gradient).
    np.testing.assert_allclose(updates["encoder"]["layers_1"]["kernel"], -0.1, rtol=1e-5)
    np.testing.assert_allclose(updates["encoder"]["layers_0"]["kernel"], -0.05, rtol=1e-5)
    assert float(jnp.abs(updates["head"]["kernel"]).max()) == 0.0


def test_clipping_ignores_frozen_gradients():
    """A huge gradient on a frozen leaf must not shrink the trained leaves' clipped gradients.

    Adam's first step is scale-free, so the effect shows in the second step:
    the moments of step 1 hold the clipped gradient.
    """
    labels = make_labels(PARAMS, [("head/.*", None), (".*", 1.0)])
    tx, _ = make_optimizer(_opt(clip_norm=1.0), labels, steps=10)

    def second_update(frozen_grad):
        state = tx.init(PARAMS)
        g1 = jax.tree.map(jnp.ones_like, PARAMS)
        g1["head"]["kernel"] = jnp.full((2, 2), frozen_grad)
        _, state = tx.update(g1, state, PARAMS)
        g2 = jax.tree.map(lambda p: 3.0 * jnp.ones_like(p), PARAMS)
        updates, _ = tx.update(g2, state, PARAMS)
        return updates

    with_huge, with_zero = second_update(1e6), second_update(0.0)
    np.testing.assert_allclose(
        with_huge["encoder"]["layers_0"]["kernel"], with_zero["encoder"]["layers_0"]["kernel"]
    )
    assert float(jnp.abs(with_huge["head"]["kernel"]).max()) == 0.0


def test_weight_decay_and_lamb_skip_vectors():
    labels = make_labels(PARAMS, [(".*", 1.0)])
    params = jax.tree.map(lambda p: 2.0 * p, PARAMS)
    zeros = jax.tree.map(jnp.zeros_like, params)
    # AdamW with a zero gradient: kernels decay by lr * wd * p, biases do not move.
    tx, _ = make_optimizer(_opt(weight_decay=0.5), labels, steps=10)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(
        updates["encoder"]["layers_0"]["kernel"], -0.1 * 0.5 * 2.0, rtol=1e-6
    )
    np.testing.assert_allclose(updates["encoder"]["layers_0"]["bias"], 0.0)
    # LAMB: trust ratio ||p|| / ||u|| on matrices, plain Adam step on biases.
    tx, _ = make_optimizer(_opt(name="lamb"), labels, steps=10)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    k = updates["encoder"]["layers_0"]["kernel"]
    # Adam step of ones is ones; trust ratio = ||2 * ones(3,4)|| / ||ones(3,4)|| = 2.
    np.testing.assert_allclose(k, -0.1 * 2.0, rtol=1e-5)
    np.testing.assert_allclose(updates["encoder"]["layers_0"]["bias"], -0.1, rtol=1e-5)


def test_bad_optimizer_config_names_the_field():
    from mbert_jax.train.optimizers import validate_optimizer_config

    cfg = default_optimizer_config()
    cfg.name = "sgdd"
    with pytest.raises(ValueError, match="config.optimizer.name"):
        validate_optimizer_config(cfg)
    cfg = default_optimizer_config()
    cfg.schedule.kind = "exp"
    with pytest.raises(ValueError, match="config.optimizer.schedule.kind"):
        validate_optimizer_config(ml_collections.ConfigDict(cfg))


def lamb_by_hand(params, grads_seq, lr, b1, b2, eps, wd):
    """Two-leaf LAMB in numpy (Adam moments with bias correction, decay and the trust
    ratio ||p|| / ||u|| for the matrix; a plain Adam step for the vector)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, grads in enumerate(grads_seq, 1):
        for k in p:
            g = np.asarray(grads[k], np.float64)
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            if p[k].ndim > 1:
                u = u + wd * p[k]
                u = u * (np.linalg.norm(p[k]) / np.linalg.norm(u))
            p[k] = p[k] - lr * u
    return p


def test_lamb_matches_a_numpy_implementation_with_decay_on_random_values():
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(5, 3)), "bias": rng.normal(size=(3,))}
    grads_seq = [{k: rng.normal(size=x.shape) for k, x in params.items()} for _ in range(3)]
    cfg = _opt(name="lamb", learning_rate=0.05, weight_decay=0.1, b1=0.8, b2=0.95, eps=1e-6)
    f32 = {k: jnp.asarray(x, jnp.float32) for k, x in params.items()}
    tx, _ = make_optimizer(cfg, make_labels(f32, [(".*", 1.0)]), steps=10)
    state, got = tx.init(f32), f32
    for grads in grads_seq:
        updates, state = tx.update({k: jnp.asarray(g, jnp.float32) for k, g in grads.items()},
                                   state, got)  # fmt: skip
        got = optax.apply_updates(got, updates)
    want = lamb_by_hand(params, grads_seq, 0.05, 0.8, 0.95, 1e-6, 0.1)
    for k in params:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=2e-5, atol=1e-6)
    assert not np.allclose(want["kernel"], params["kernel"])
