"""The "prune" recipe on every task kind fine-tuning has: regression, CoNLL tagging and
SQuAD-style QA (classification: test_recipe.py).

Fast: the recovery's KD term of each kind against numpy (KL at temperature T, times T^2,
over the items the kind counts). Slow (end to end): a micro BERT fine-tuned on each kind's
files (tests/task_files.py), half its heads and neurons pruned and recovered a few steps
through the command line's entry point; the dev metrics the run reports are recomputed from
the saved pruned model alone (transformers' tokenizer, `Model.apply`, numpy), and its
structure is the one asked for.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from task_files import Tasks, run

from mbert_jax import losses
from mbert_jax.distill import prediction
from mbert_jax.models import io


def kl_np(s, t, temperature):
    """KL(p_t || p_s) per distribution over the last axis, times T^2 (float64)."""

    def log_softmax(x):
        x = x / temperature
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ls, lt = log_softmax(np.float64(s)), log_softmax(np.float64(t))
    return (np.exp(lt) * (lt - ls)).sum(-1) * temperature**2


def test_each_kinds_kd_term_is_kl_over_the_items_it_counts():
    rng = np.random.default_rng(0)
    b, n, c, t = 3, 5, 4, 2.0
    valid = np.array([1, 1, 0], np.float32)
    # tagging: the labelled positions (label >= 0) of valid rows
    labels = rng.integers(-1, c, (b, n)).astype(np.int32)
    s, te = rng.normal(size=(2, b, n, c)).astype(np.float32)
    got = prediction.logit_distillation(
        "tagging",
        {"token_logits": jnp.asarray(s)},
        {"token_logits": jnp.asarray(te)},
        {"labels": labels, "valid": valid},
        divergence=losses.kl_divergence,
        temperature=t,
    )
    w = (labels >= 0) * valid[:, None]
    np.testing.assert_allclose(float(got.mean()), (kl_np(s, te, t) * w).sum() / w.sum(), rtol=1e-5)
    # qa: start and end over each row's real positions, averaged, per valid row
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int32)
    out = {}
    for name in ("student", "teacher"):
        out[name] = {
            k: rng.normal(size=(b, n)).astype(np.float32) for k in ("start_logits", "end_logits")
        }
    got = prediction.logit_distillation(
        "qa",
        out["student"],
        out["teacher"],
        {"attention_mask": mask, "valid": valid},
        divergence=losses.kl_divergence,
        temperature=t,
    )
    per_row = []
    for i in range(b):
        real = mask[i] > 0
        terms = [
            kl_np(out["student"][k][i][real], out["teacher"][k][i][real], t)
            for k in ("start_logits", "end_logits")
        ]
        per_row.append(sum(terms) / 2)
    want = (np.array(per_row) * valid).sum() / valid.sum()
    np.testing.assert_allclose(float(got.mean()), want, rtol=1e-5)
    # regression: the squared error of the scores, no temperature
    s, te = rng.normal(size=(2, b, 1)).astype(np.float32)
    got = prediction.logit_distillation(
        "regression", {"logits": s}, {"logits": te}, {"valid": valid},
        divergence=losses.kl_divergence, temperature=t,
    )  # fmt: skip
    want = (((s - te)[:, 0] ** 2) * valid).sum() / valid.sum()
    np.testing.assert_allclose(float(got.mean()), want, rtol=1e-5)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return Tasks(tmp_path_factory.mktemp("prune_kinds"))


@pytest.mark.slow
# Regression and SQuAD end to end out of CI for time (each fine-tunes its own teacher): CI runs
# tagging end to end and every kind's KD term above; `pytest -m heavy` runs all three.
@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("regression", marks=pytest.mark.heavy),
        "tagging",
        pytest.param("squad", marks=pytest.mark.heavy),
    ],
)
def test_prune_recovers_each_kind(tasks, kind, tmp_path):
    task, data, metrics, teacher = tasks(kind)
    overrides = {
        "init_from": str(teacher),
        "prune.importance_batches": 2,
        "train.steps": 3,
        "train.eval_every": 3,
        "train.checkpoint_every": 3,
        "train.log_every": 3,
        **data,
    }
    results, student = run(f"configs/prune.py:runlocal,task={task}", tmp_path, overrides)
    # The run's dev metrics are those of the saved, smaller model.
    _, got = metrics(student)
    for name, value in got.items():
        assert results[name] == pytest.approx(value, abs=1e-5), name
    assert results["kd"] >= 0 and results["params"] < results["unpruned_params"]
    t_cfg, t_heads = io.load_config(teacher)
    s_cfg, s_heads = io.load_config(student)
    assert s_heads == t_heads
    n = t_cfg.num_layers
    assert sum(s_cfg.heads_at(i) for i in range(n)) == n * t_cfg.num_heads // 2
    assert all(s_cfg.intermediate_size_at(i) == t_cfg.intermediate_size // 2 for i in range(n))
