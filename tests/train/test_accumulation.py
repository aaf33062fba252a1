"""Gradient accumulation is exact: `accum_steps=k` is the step of the whole batch at once.

The batch's rows hold very different numbers of real tokens, masked
positions and valid NSP rows, so its micro-batches do too (one of them has
no valid NSP row at all): an average of the micro-batches' means would be
off by far more than the tolerance. The reference is the `accum_steps=1`
step on the same batch, with dropout off; plain SGD with rate 1, so the
parameter change is the gradient itself.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbert_jax.train.config import base_config, model_block
from mbert_jax.train.inputs import synthetic_data_config
from mbert_jax.train.pretrain import PretrainRecipe
from mbert_jax.train.step import TrainState, make_train_step

ROWS, LENGTH, PREDICTIONS = 8, 16, 5
# Per row: real tokens, masked positions, whether its NSP label counts.
# Micro-batch i of k holds rows i, i + k, ... (`split_microbatches`): with
# k = 2 they count 17 and 4 masked tokens, with k = 4 the last one no NSP row.
REAL = [16, 3, 12, 2, 16, 5, 9, 4]
MASKED = [5, 1, 4, 0, 5, 2, 3, 1]
VALID = [1, 1, 1, 0, 1, 1, 1, 0]


def uneven_batch(vocab_size: int) -> dict[str, jax.Array]:
    g = np.random.default_rng(0)
    ids = g.integers(5, vocab_size, (ROWS, LENGTH)).astype(np.int32)
    mask = (np.arange(LENGTH)[None] < np.array(REAL)[:, None]).astype(np.int32)
    positions = np.zeros((ROWS, PREDICTIONS), np.int32)
    for r, (n, real) in enumerate(zip(MASKED, REAL)):
        positions[r, :n] = np.sort(g.choice(np.arange(1, real), n, replace=False))
    return {
        k: jnp.asarray(v)
        for k, v in {
            "input_ids": ids * mask,
            "attention_mask": mask,
            "token_type_ids": (np.arange(LENGTH)[None] >= LENGTH // 2) * mask,
            "position_ids": np.broadcast_to(np.arange(LENGTH, dtype=np.int32), (ROWS, LENGTH)),
            "masked_lm_positions": positions,
            "masked_lm_ids": np.take_along_axis(ids, positions, 1),
            "masked_lm_weights": (np.arange(PREDICTIONS)[None] < np.array(MASKED)[:, None]).astype(
                np.float32
            ),
            "next_sentence_labels": g.integers(0, 2, ROWS).astype(np.int32),
            "valid": np.array(VALID, np.float32),
        }.items()
    }


def dots(compiled) -> int:
    return len(re.findall(r" dot\(", compiled.as_text()))


@pytest.fixture(scope="module")
def runs():
    c = base_config("pretrain")
    c.model = model_block(
        "bert_base_micro", num_layers=2, hidden_dropout=0.0, attention_dropout=0.0
    )
    c.data = synthetic_data_config(
        global_batch_size=ROWS, max_seq_length=LENGTH, max_predictions_per_seq=PREDICTIONS
    )
    recipe = PretrainRecipe(c)
    stage = recipe.stages()[0]
    params = recipe.init_params(jax.random.PRNGKey(0))
    tx = optax.sgd(1.0)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(1))
    batch = uneven_batch(recipe.inputs.vocab_size)
    out = {}
    for k in (1, 2, 4):
        compiled = (
            jax.jit(make_train_step(recipe, stage, tx, k)).lower(state, batch, None).compile()
        )
        new_state, metrics = compiled(state, batch, None)
        grads = jax.tree.map(lambda new, old: old - new, new_state.params, params)
        out[k] = (metrics, grads, new_state.params, dots(compiled))
    return out


def test_the_batch_is_uneven_across_micro_batches():
    for k, expected in ((2, [17, 4]), (4, [10, 3, 7, 1])):
        assert [sum(MASKED[i::k]) for i in range(k)] == expected
    assert [sum(VALID[i::4]) for i in range(4)] == [2, 2, 2, 0]


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_step_is_the_whole_batch_step(runs, k):
    ref_metrics, ref_grads, ref_params, _ = runs[1]
    metrics, grads, params, _ = runs[k]
    assert float(metrics["nonfinite"].total) == 0.0
    assert float(metrics["objective"].total) == pytest.approx(
        float(ref_metrics["objective"].total), rel=1e-5
    )
    # Metric sums stay exact sums: the counts are the whole batch's.
    assert float(metrics["mlm"].count) == sum(MASKED) == float(ref_metrics["mlm"].count)
    assert float(metrics["nsp"].count) == sum(VALID) == float(ref_metrics["nsp"].count)
    for name in ("mlm", "nsp", "mlm_accuracy", "nsp_accuracy"):
        np.testing.assert_allclose(metrics[name].total, ref_metrics[name].total, rtol=1e-5)
        assert float(metrics[name].count) == float(ref_metrics[name].count)
    assert float(metrics["grad_norm"].total) == pytest.approx(
        float(ref_metrics["grad_norm"].total), rel=1e-5
    )
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(ref_grads))
    for (path, g), ref in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)
    ):
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5 * scale, err_msg=str(path))
    for p, ref in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(p, ref, rtol=1e-5, atol=1e-5 * scale)


def test_the_counts_pass_costs_no_matmul(runs):
    """The whole batch's counts come from the masks: XLA drops that pass's forward."""
    assert runs[2][3] == runs[4][3] == runs[1][3] > 0
