"""Dynamic masking: BERT's budget, the 80/10/10 split, whole words, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mbert_jax.data.masking import Masker, example_rng, thread_example_rng

V = 100
SPECIAL_IDS = [0, 1, 2, 3, 4]  # PAD UNK CLS SEP MASK
CONT_IDS = set(range(50, 100))  # "##" tokens in this toy vocabulary


def make_masker(**kw) -> Masker:
    special = np.zeros(V, bool)
    special[SPECIAL_IDS] = True
    continuation = np.zeros(V, bool)
    continuation[list(CONT_IDS)] = True
    return Masker(
        mask_id=4,
        special=special,
        continuation=continuation,
        random_ids=np.flatnonzero(~special).astype(np.int32),
        **kw,
    )


def sequence(rng, n=60):
    body = rng.integers(5, 50, n - 3)
    mid = (n - 3) // 2
    return np.concatenate([[2], body[:mid], [3], body[mid:], [3]]).astype(np.int32)


def test_budget_matches_bert_formula():
    m = make_masker(masked_lm_prob=0.15, max_predictions=20)
    # min(max_predictions, max(1, round(n * p))) computed by hand.
    assert m.num_to_predict(128) == 19  # round(19.2)
    assert m.num_to_predict(200) == 20  # capped
    assert m.num_to_predict(3) == 1  # at least one
    assert m.num_to_predict(10) == 2  # round(1.5) = 2 (banker's rounding, as Python 3)


def test_positions_are_sorted_non_special_and_labels_are_originals():
    m = make_masker(max_predictions=20)
    rng = np.random.default_rng(0)
    for i in range(50):
        ids = sequence(rng)
        out, pos, labels = m.apply(ids, example_rng(1, 0, i))
        assert len(pos) == m.num_to_predict(len(ids))
        assert np.all(np.diff(pos) > 0)
        assert not np.isin(ids[pos], SPECIAL_IDS).any()
        np.testing.assert_array_equal(labels, ids[pos])
        unchanged = np.setdiff1d(np.arange(len(ids)), pos)
        np.testing.assert_array_equal(out[unchanged], ids[unchanged])


def test_80_10_10_statistics():
    m = make_masker(max_predictions=60, masked_lm_prob=0.5)
    rng = np.random.default_rng(1)
    masked = kept = rand = 0
    for i in range(2000):
        ids = sequence(rng)
        out, pos, labels = m.apply(ids, example_rng(7, 0, i))
        masked += np.sum(out[pos] == 4)
        same = out[pos] == labels
        kept += np.sum(same)
        rand += np.sum(~same & (out[pos] != 4))
    total = masked + kept + rand
    # A random replacement can equal the original (1 in 95 here): kept ~ 0.1 + 0.1/95.
    assert abs(masked / total - 0.8) < 0.01
    assert abs(kept / total - (0.1 + 0.1 / 95)) < 0.01
    assert abs(rand / total - (0.1 - 0.1 / 95)) < 0.01


def test_random_tokens_never_special():
    m = make_masker(max_predictions=60, masked_lm_prob=0.9)
    rng = np.random.default_rng(2)
    for i in range(300):
        ids = sequence(rng)
        out, pos, _ = m.apply(ids, example_rng(3, 0, i))
        replaced = out[pos][out[pos] != 4]
        assert not np.isin(replaced, SPECIAL_IDS).any()


def test_every_candidate_equally_likely():
    m = make_masker(max_predictions=5, masked_lm_prob=0.15)
    ids = np.array([2] + list(range(5, 35)) + [3], np.int32)  # 30 candidates, budget 5
    counts = np.zeros(len(ids))
    for i in range(6000):
        _, pos, _ = m.apply(ids, example_rng(0, 0, i))
        counts[pos] += 1
    freq = counts[1:-1] / 6000
    assert counts[0] == counts[-1] == 0
    np.testing.assert_allclose(freq, 5 / 30, atol=0.03)


def test_whole_word_masking_keeps_words_whole():
    m = make_masker(max_predictions=8, masked_lm_prob=0.3, whole_word=True)
    # Words: [10 60 61] [11] [12 62] [13] [14 63 64 65] [15] ...
    body = [10, 60, 61, 11, 12, 62, 13, 14, 63, 64, 65, 15, 16, 66, 17, 18]
    ids = np.array([2, *body, 3], np.int32)
    words = [[1, 2, 3], [4], [5, 6], [7], [8, 9, 10, 11], [12], [13, 14], [15], [16]]
    for i in range(200):
        _, pos, _ = m.apply(ids, example_rng(5, 1, i))
        chosen = set(pos.tolist())
        assert len(chosen) <= m.num_to_predict(len(ids))
        for w in words:
            assert chosen.isdisjoint(w) or chosen.issuperset(w), (pos, w)


def test_example_rng_is_a_pure_function_of_its_key():
    a = example_rng(3, 2, 10).random(5)
    np.testing.assert_array_equal(a, example_rng(3, 2, 10).random(5))
    for other in (example_rng(4, 2, 10), example_rng(3, 3, 10), example_rng(3, 2, 11)):
        assert not np.allclose(a, other.random(5))
    assert not np.allclose(a, example_rng(3, 2, 10, stream=1).random(5))
    with pytest.raises(ValueError, match="out of range"):
        example_rng(-1, 0, 0)


def test_masks_differ_between_epochs_but_repeat_within_one():
    m = make_masker()
    ids = sequence(np.random.default_rng(4))
    p0 = m.apply(ids, example_rng(0, 0, 5))[1]
    assert np.array_equal(p0, m.apply(ids, example_rng(0, 0, 5))[1])
    assert not np.array_equal(p0, m.apply(ids, example_rng(0, 1, 5))[1])


def test_thread_rng_is_the_same_stream():
    for key in [(0, 0, 0), (3, 2, 10), (2**61, 7, 2**39)]:
        expected = example_rng(*key, stream=1).random(9)
        thread_example_rng(5, 5, 5).random(3)  # leave the thread's generator mid-stream
        np.testing.assert_array_equal(thread_example_rng(*key, stream=1).random(9), expected)
