"""Head and neuron importance (Michel et al., 2019) against finite differences.

The reference differentiates a hand-written float64 numpy BERT
(`numpy_bert.py`) by central differences over each gate: nothing of the
model code or of JAX's autodiff is in it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpy_bert
import optax
import pytest
from flax import traverse_util

from mbert_jax.losses import LossSum
from mbert_jax.models import variants
from mbert_jax.models.model import Model, param_shapes
from mbert_jax.prune import fisher_importance, importance


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def random_params(config, seed=0, scale=0.3):
    rng = np.random.RandomState(seed)
    flat = traverse_util.flatten_dict(param_shapes(Model(config, ("classifier",))))
    return traverse_util.unflatten_dict(
        {
            k: (k[-1] == "scale") + scale * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in flat.items()
        }
    )


def make_batches(config, count=2, batch=3, length=8, seed=2):
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        ids = rng.randint(1, config.vocab_size, (batch, length)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[0, length - 2 :] = 0
        labels = rng.randint(0, config.num_labels, batch).astype(np.int32)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def finite_difference_gradients(config, params, batch, eps=1e-5):
    """d loss / d gate of `batch`'s mean loss by central differences: (heads, neurons)."""
    n = config.num_layers
    heads = [np.zeros(config.heads_at(i)) for i in range(n)]
    neurons = [np.zeros(config.intermediate_size_at(i)) for i in range(n)]

    def loss(head_gates, neuron_gates):
        out = numpy_bert.forward(
            params,
            batch["input_ids"],
            batch["attention_mask"],
            eps=config.layer_norm_eps,
            head_gates=head_gates,
            neuron_gates=neuron_gates,
        )
        return numpy_bert.cross_entropy(out["logits"], batch["labels"])

    for kind, grads in (("heads", heads), ("neurons", neurons)):
        for layer in range(n):
            for j in range(len(grads[layer])):
                diffs = []
                for sign in (1.0, -1.0):
                    g = {
                        "heads": [np.ones(len(h)) for h in heads],
                        "neurons": [np.ones(len(m)) for m in neurons],
                    }
                    g[kind][layer][j] += sign * eps
                    diffs.append(loss(g["heads"], g["neurons"]))
                grads[layer][j] = (diffs[0] - diffs[1]) / (2 * eps)
    return heads, neurons


def uneven_micro():
    """A micro TinyBERT whose two blocks have other head counts and FFN widths."""
    return variants.get(
        "tinybert4_micro",
        intermediate_size=24,
        num_labels=3,
        layer_heads=(4, 3),
        layer_intermediate_sizes=(24, 10),
    )


def _mean_of(config, params, batches, f, eps):
    """The mean over `batches` of f(central-difference gradient), per block: (heads, neurons)."""
    grads = [finite_difference_gradients(config, params, b, eps) for b in batches]
    layers = range(config.num_layers)
    return tuple(
        [np.mean([f(g[part][i]) for g in grads], axis=0) for i in layers] for part in (0, 1)
    )


def finite_difference_scores(config, params, batches, eps=1e-5):
    """Mean over batches of |d loss / d gate| by central differences, per block."""
    return _mean_of(config, params, batches, np.abs, eps)


def finite_difference_fisher(config, params, batches, eps=1e-5):
    """Mean over every row of (d loss_row / d gate)^2, by central differences, per block."""
    rows = [
        {k: v[i : i + 1] for k, v in b.items()} for b in batches for i in range(len(b["labels"]))
    ]
    return _mean_of(config, params, rows, np.square, eps)


def test_importance_equals_finite_differences_of_an_independent_forward():
    config = uneven_micro()
    params = random_params(config)
    batches = make_batches(config)
    fd_heads, fd_neurons = finite_difference_scores(config, params, batches)
    model = Model(config, ("classifier",))

    raw = importance(model, params, batches, normalize=False)
    assert raw.batches == 2
    for ours, ref in zip(raw.heads + raw.neurons, fd_heads + fd_neurons, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=2e-3, atol=1e-6 * np.abs(ref).max())

    scores = importance(model, params, iter(batches))
    for ours, ref in zip(scores.heads + scores.neurons, fd_heads + fd_neurons, strict=True):
        np.testing.assert_allclose(ours, ref / np.linalg.norm(ref), rtol=2e-3, atol=1e-6)
        assert np.linalg.norm(ours) == pytest.approx(1.0)


def test_fisher_importance_equals_squared_per_row_finite_differences():
    config = uneven_micro()
    params = random_params(config)
    batches = make_batches(config)  # 2 batches of 3 rows, padded tokens in one row
    fd_heads, fd_neurons = finite_difference_fisher(config, params, batches)
    fisher = fisher_importance(Model(config, ("classifier",)), params, batches)
    assert fisher.batches == 2
    for ours, ref in zip(fisher.heads + fisher.neurons, fd_heads + fd_neurons, strict=True):
        np.testing.assert_allclose(ours, ref, rtol=5e-3, atol=1e-6 * np.abs(ref).max())
    # Not the square of the batch gradient: the per-row squares are averaged.
    michel = importance(Model(config, ("classifier",)), params, batches, normalize=False)
    assert not np.allclose(fisher.heads[0], np.square(michel.heads[0]), rtol=0.1)

    # A row that a LossSum loss does not count (a padding row: valid 0) is not an example.
    def counted_loss(out, batch):
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["labels"])
        return LossSum(jnp.sum(ce * batch["valid"]), jnp.sum(batch["valid"]))

    padded = [dict(b, valid=np.array([1.0, 1.0, 1.0])) for b in batches]
    padded[1]["valid"] = np.array([1.0, 0.0, 1.0])
    kept = [batches[0], {k: v[[0, 2]] for k, v in batches[1].items()}]
    want = fisher_importance(Model(config, ("classifier",)), params, kept)
    got = fisher_importance(Model(config, ("classifier",)), params, padded, counted_loss)
    for a, b in zip(got.heads + got.neurons, want.heads + want.neurons, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


def test_stacked_ffns_get_a_score_per_ffn_and_empty_data_is_an_error():
    config = variants.get("mobilebert_micro", num_layers=2)
    model = Model(config, ("classifier",))
    params = random_params(config, scale=0.05)
    scores = importance(model, params, make_batches(config, count=1))
    assert [h.shape for h in scores.heads] == [(4,), (4,)]
    assert [m.shape for m in scores.neurons] == [(4, 64), (4, 64)]
    with pytest.raises(ValueError, match="at least one batch"):
        importance(model, params, [])


def test_rematerialized_blocks_give_the_same_scores():
    config = variants.get("tinybert4_micro", num_labels=3)
    params = random_params(config, scale=0.1)
    batches = make_batches(config, count=1)
    plain = importance(Model(config, ("classifier",)), params, batches)
    remat = importance(Model(config.replace(remat=True), ("classifier",)), params, batches)
    for a, b in zip(plain.heads + plain.neurons, remat.heads + remat.neurons, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
