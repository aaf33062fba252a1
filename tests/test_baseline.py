"""The bag-of-words naive Bayes baseline against a hand computation, and its task reading."""

from __future__ import annotations

import numpy as np
import pytest

from mbert_jax import baseline
from mbert_jax.data import config as config_lib

TRAIN = (["a a b", "B, c!", "A"], np.array([0, 1, 0]))


def test_words_are_lower_cased_runs_of_word_characters():
    assert baseline.words("Call get_config(), then RUN 2 times.") == [
        "call", "get_config", "then", "run", "2", "times",
    ]  # fmt: skip


def test_naive_bayes_against_a_hand_computation():
    vocab = baseline.Vocabulary(TRAIN[0])
    assert vocab.ids == {"a": 0, "b": 1, "c": 2}
    nb = baseline.NaiveBayes.fit(vocab.bags(TRAIN[0]), TRAIN[1], 2, len(vocab))
    # Class 0 has the words a a b a (4), class 1 b c (2); add-one over 3 words.
    np.testing.assert_allclose(np.exp(nb.log_prior), [2 / 3, 1 / 3])
    np.testing.assert_allclose(
        np.exp(nb.log_likelihood), [[4 / 7, 2 / 7, 1 / 7], [1 / 5, 2 / 5, 2 / 5]]
    )
    # "b c d": P(0) P(b|0) P(c|0) = 2/3 * 2/7 * 1/7 = 4/147 against 1/3 * 2/5 * 2/5 = 4/75
    # (d is unknown and ignored); "A a": 2/3 * (4/7)^2 = 32/147 against 1/3 * (1/5)^2 = 1/75;
    # "": the priors.
    dev = vocab.bags(["b c d", "A a", ""])
    j0, j1 = np.array([4 / 147, 32 / 147, 2 / 3]), np.array([4 / 75, 1 / 75, 1 / 3])
    np.testing.assert_allclose(nb.log_joint(dev), np.log(np.stack([j0, j1], 1)))
    np.testing.assert_allclose(nb.predict_proba(dev)[:, 0], j0 / (j0 + j1))
    np.testing.assert_array_equal(nb.predict(dev), [1, 0, 0])


def test_score_reports_accuracy_and_its_standard_error():
    r = baseline.score("toy", TRAIN, (["b c", "a", "c c", "a b"], np.array([1, 0, 0, 1])), 2)
    # Predictions 1, 0, 1, 0 (a b: 2/3 * 4/7 * 2/7 = 16/147 > 1/3 * 1/5 * 2/5 = 2/75).
    assert (r.accuracy, r.dev_rows, r.train_rows) == (0.5, 4, 3)
    assert r.stderr == pytest.approx((0.25 / 4) ** 0.5)


def test_evaluate_reads_a_task_through_the_data_layer(tmp_path):
    rows = {
        "train": [("good fine film", 1), ("bad dull film", 0), ("good plot", 1), ("dull", 0)],
        "dev": [("a good one", 1), ("so dull", 0), ("bad good bad", 0)],
    }
    for split, examples in rows.items():
        lines = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in examples]
        (tmp_path / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    c = config_lib.task_data_defaults("sst2")
    c.data_dir, c.cache_dir = str(tmp_path), str(tmp_path / "cache")
    r = baseline.evaluate(c)
    assert (r.accuracy, r.train_rows, r.dev_rows) == (1.0, 4, 3)

    c.task = "stsb"
    with pytest.raises(ValueError, match="regression"):
        baseline.evaluate(c)
    c.task, c.data_dir = "mrpc", ""
    with pytest.raises(config_lib.DataConfigError, match="data.data_dir"):
        baseline.evaluate(c)
