"""Entity-level precision / recall / F1 (conlleval semantics) and macro F1, by hand."""

from __future__ import annotations

import pytest

from mbert_jax.data.tasks import metrics


@pytest.mark.parametrize(
    "tags, expected",
    [
        # Plain IOB2.
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        # An entity at the very end, and one of a single word at the start.
        (["B-ORG", "O", "O", "B-PER", "I-PER", "I-PER"], [("ORG", 0, 0), ("PER", 3, 5)]),
        # I- without a B- begins an entity (conlleval), also right at the start.
        (["I-PER", "I-PER", "O", "I-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        # B-X B-X: two entities; B-X I-Y: the type change ends X and I-Y begins Y.
        (
            ["B-PER", "B-PER", "B-LOC", "I-ORG"],
            [("PER", 0, 0), ("PER", 1, 1), ("LOC", 2, 2), ("ORG", 3, 3)],
        ),
        # IOB1 (CoNLL-2003's original files): I- begins, B- only splits adjacent same-type entities.
        (
            ["I-LOC", "I-LOC", "B-LOC", "O", "I-MISC"],
            [("LOC", 0, 1), ("LOC", 2, 2), ("MISC", 4, 4)],
        ),
        # IOBES: E- and S- close entities; an I- after E- begins a new one.
        (
            ["B-PER", "E-PER", "S-LOC", "I-LOC", "E-LOC"],
            [("PER", 0, 1), ("LOC", 2, 2), ("LOC", 3, 4)],
        ),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_entities_follow_conlleval(tags, expected):
    assert metrics.entities(tags) == expected


def test_tagging_scores_by_hand():
    gold = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],  # PER(0,1), LOC(3,3)
        ["B-ORG", "I-ORG", "I-ORG", "O"],  # ORG(0,2)
        ["O", "B-MISC"],  # MISC(1,1)
    ]
    pred = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right; (3,3) found with the wrong type
        ["B-ORG", "I-ORG", "O", "O"],  # ORG(0,1): the span is short, not a match
        ["I-MISC", "I-MISC"],  # MISC(0,1): starts one word early, not a match
    ]
    # Gold entities 4, predicted 4 (PER, ORG@3, ORG(0,1), MISC(0,1)), correct 1.
    p, r = 1 / 4, 1 / 4
    # Words right: 4 of 5 (all but word 3), 3 of 4, 0 of 2 (I-MISC is not B-MISC) -> 7 of 11.
    got = metrics.tagging_scores(gold, pred)
    assert got["precision"] == pytest.approx(p)
    assert got["recall"] == pytest.approx(r)
    assert got["f1"] == pytest.approx(2 * p * r / (p + r))
    assert got["accuracy"] == pytest.approx(7 / 11)


def test_tagging_scores_edge_cases():
    # Nothing predicted: precision and F1 are 0 (not NaN); nothing to find: recall 0.
    got = metrics.tagging_scores([["B-PER", "O"]], [["O", "O"]])
    assert (got["precision"], got["recall"], got["f1"], got["accuracy"]) == (0.0, 0.0, 0.0, 0.5)
    got = metrics.tagging_scores([["O"]], [["B-PER"]])
    assert (got["precision"], got["recall"], got["f1"]) == (0.0, 0.0, 0.0)
    assert metrics.tagging_scores([["B-X", "I-X"]], [["B-X", "I-X"]])["f1"] == 1.0
    with pytest.raises(ValueError, match="2 gold tags but 1"):
        metrics.tagging_scores([["O", "O"]], [["O"]])


def test_entity_scheme():
    assert metrics.is_entity_scheme(["O", "B-PER", "I-PER", "E-LOC", "S-LOC"])
    assert not metrics.is_entity_scheme(["NN", "VB"])  # POS tags
    assert not metrics.is_entity_scheme(["O", "B-"])  # a prefix without a type


def test_f1_macro_by_hand():
    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 2, 0]
    # Class 0: tp 1, fp 1, fn 1 -> 1/2. Class 1: tp 2, fp 1, fn 0 -> 4/5. Class 2: tp 1,
    # fp 0, fn 1 -> 2/3.
    assert metrics.f1_macro(p, y) == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    # A class only predicted counts with F1 0 (sklearn's labels = union of both).
    assert metrics.f1_macro([0, 3], [0, 0]) == pytest.approx((2 / 3 + 0.0) / 2)
