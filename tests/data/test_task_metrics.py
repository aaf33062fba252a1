"""GLUE and SQuAD metrics against hand-computed values (and scipy / sklearn when installed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mbert_jax.data.tasks import metrics

PRED = np.array([1, 1, 0, 1, 0, 0, 1, 0])
GOLD = np.array([1, 0, 0, 1, 1, 0, 1, 0])
# Confusion: tp 3, fp 1, fn 1, tn 3.


def test_accuracy_f1_mcc_by_hand():
    assert metrics.accuracy(PRED, GOLD) == 6 / 8
    precision, recall = 3 / 4, 3 / 4
    assert metrics.f1_binary(PRED, GOLD) == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
    mcc = (3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4)
    assert metrics.matthews_corrcoef(PRED, GOLD) == pytest.approx(mcc)
    # Degenerate cases: a constant prediction has MCC 0, no positives F1 0.
    assert metrics.matthews_corrcoef(np.ones(4), [0, 1, 0, 1]) == 0.0
    assert metrics.f1_binary([0, 0], [0, 0]) == 0.0


def test_multiclass_mcc_by_hand():
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0, 1, 1, 1, 2, 0])
    # Confusion rows=true: [[1,1,0],[0,2,0],[1,0,1]]; t=[2,2,2], p=[2,3,1], c=4, s=6.
    expected = (4 * 6 - (2 * 2 + 2 * 3 + 2 * 1)) / math.sqrt((36 - (4 + 9 + 1)) * (36 - 12))
    assert metrics.matthews_corrcoef(p, y) == pytest.approx(expected)


def test_correlations_by_hand():
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 4.0]
    # Means 2.5 and 3.75; deviations (-1.5,-.5,.5,1.5), (-1.75,.25,1.25,.25).
    cov = -1.5 * -1.75 + -0.5 * 0.25 + 0.5 * 1.25 + 1.5 * 0.25
    sx, sy = math.sqrt(2.25 * 2 + 0.25 * 2), math.sqrt(1.75**2 + 0.25**2 * 2 + 1.25**2)
    assert metrics.pearson(x, y) == pytest.approx(cov / (sx * sy))
    # Ranks of y with the tie averaged: (1, 2.5, 4, 2.5).
    np.testing.assert_allclose(metrics.rank_average(y), [1, 2.5, 4, 2.5])
    assert metrics.spearman(x, y) == pytest.approx(metrics.pearson([1, 2, 3, 4], [1, 2.5, 4, 2.5]))


def test_against_scipy_and_sklearn():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    y[::7] = y[0]  # ties
    assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    try:
        from sklearn import metrics as skm
    except ImportError:
        return
    p, g = rng.integers(0, 3, 60), rng.integers(0, 3, 60)
    assert metrics.matthews_corrcoef(p, g) == pytest.approx(skm.matthews_corrcoef(g, p))
    assert metrics.f1_binary(PRED, GOLD) == pytest.approx(skm.f1_score(GOLD, PRED))


def test_squad_normalization_and_scores():
    assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert metrics.normalize_answer("an apple, a pear") == "apple pear"
    assert metrics.exact_match("the Eiffel Tower", "Eiffel Tower.") == 1.0
    # pred "in the city of Paris" -> [in, city, of, paris]; gold "Paris city" -> [paris, city]:
    # common 2, precision 2/4, recall 2/2, F1 = 2/3.
    assert metrics.token_f1("in the city of Paris", "Paris city") == pytest.approx(2 / 3)
    assert metrics.token_f1("", "") == 1.0 and metrics.token_f1("x", "") == 0.0
    assert metrics.token_f1("", "", v2=False) == 0.0


def test_squad_v2_breakdown():
    gold = {"a": ["Paris", "paris city"], "b": [], "c": ["1903"], "d": []}
    preds = {"a": "Paris", "b": "", "c": "in 1903", "d": "something"}
    res = metrics.squad_scores(gold, preds, version="2.0")
    # a: EM 1 F1 1; b: 1 1; c: EM 0, F1 = 2*(1/2*1)/(1.5) = 2/3; d: 0 0.
    assert res["exact"] == pytest.approx(100 * 2 / 4)
    assert res["f1"] == pytest.approx(100 * (1 + 1 + 2 / 3 + 0) / 4)
    assert res["HasAns_exact"] == pytest.approx(50.0) and res["HasAns_total"] == 2
    assert res["NoAns_exact"] == pytest.approx(50.0) and res["NoAns_total"] == 2
    v1 = metrics.squad_scores({"a": ["Paris"], "c": ["1903"]}, {"a": "Paris"}, version="1.1")
    assert v1 == {"exact": 50.0, "f1": 50.0, "total": 2}  # a missing prediction scores 0


def test_glue_metric_table():
    assert metrics.GLUE_METRICS["cola"] == ("matthews_corrcoef",)
    res = metrics.classification_metrics(metrics.GLUE_METRICS["mrpc"], PRED, GOLD)
    assert res == {"accuracy": 0.75, "f1": pytest.approx(0.75)}
