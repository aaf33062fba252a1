"""Batches padded to their own length, and rows grouped by length (loader.py).

A toy source whose rows say who they are (every token of row i is i + 1, so
a batch's rows can be read back) and have random lengths. Expected widths
and orders are computed here from the plain stream and the lengths.
"""

from __future__ import annotations

import numpy as np
import pytest

from mbert_jax.data import loader

S, G = 32, 8


class Rows:
    def __init__(self, n: int, seed: int = 0):
        self.lengths = np.random.default_rng(seed).integers(3, S + 1, n)

    def __len__(self):
        return len(self.lengths)

    def write_into(self, out, b, index, epoch):
        n = self.lengths[index]
        out["input_ids"][b, :n] = index + 1
        out["attention_mask"][b, :n] = 1
        out["labels"][b] = index


SPEC = {
    "input_ids": ((S,), np.int32),
    "attention_mask": ((S,), np.int32),
    "labels": ((), np.int32),
    "valid": ((), np.float32),
}


def iterator(source, *, endless=True, p=0, n=1, **kw):
    return loader.make_iterator(
        source,
        SPEC,
        global_batch_size=G,
        process_index=p,
        process_count=n,
        seed=3,
        stream=0,
        endless=endless,
        fingerprint_parts={"toy": 1},
        options=dict(num_threads=0),
        **kw,
    )


def take(it, k):
    return [next(it) for _ in range(k)]


def rows_of(batch):
    """The row ids of a batch, read back from its tokens (-1: padding row)."""
    return [int(r[0]) - 1 if v else -1 for r, v in zip(batch["input_ids"], batch["valid"])]


@pytest.mark.parametrize("multiple", [1, 8])
def test_batches_padded_to_their_longest_row(multiple):
    src = Rows(50)
    plain = take(iterator(src), 12)
    padded = take(iterator(src, pad_multiple=multiple), 12)
    for a, b in zip(plain, padded):
        longest = max(src.lengths[i] for i in a["labels"])
        width = min(S, -(-longest // multiple) * multiple)
        assert b["input_ids"].shape == (G, width) == b["attention_mask"].shape
        np.testing.assert_array_equal(b["input_ids"], a["input_ids"][:, :width])
        assert not a["input_ids"][:, width:].any()  # only padding was cut
        np.testing.assert_array_equal(b["labels"], a["labels"])


def test_eval_pass_padded_per_batch_with_padding_rows():
    src = Rows(21)
    batches = list(iterator(src, endless=False, pad_multiple=4))
    assert [rows_of(b) for b in batches] == [
        list(range(0, 8)),
        list(range(8, 16)),
        [16, 17, 18, 19, 20, -1, -1, -1],
    ]
    for b in batches:
        longest = max(src.lengths[i] for i in rows_of(b) if i >= 0)
        assert b["input_ids"].shape[1] == min(S, -(-longest // 4) * 4)


def test_grouped_eval_pass_is_sorted_by_length():
    src = Rows(21)
    batches = list(iterator(src, endless=False, pad_multiple=1, group=1))
    rows = [i for b in batches for i in rows_of(b) if i >= 0]
    assert rows == list(np.argsort(src.lengths, kind="stable"))
    assert [b["input_ids"].shape[1] for b in batches] == [
        max(src.lengths[rows[k : k + G]]) for k in range(0, 21, G)
    ]


def test_grouped_rows_are_similar_in_length_and_each_epoch_is_complete():
    n, windows = 64, 4  # N a multiple of G: batches and windows align with epochs
    src = Rows(n)
    plain = [i for b in take(iterator(src), 2 * n // G) for i in b["labels"]]
    grouped = take(iterator(src, group=windows, pad_multiple=1), 2 * n // G)
    rows = [list(b["labels"]) for b in grouped]
    per_window = windows * G
    for epoch in range(2):
        epoch_rows = [i for r in rows[epoch * n // G : (epoch + 1) * n // G] for i in r]
        assert sorted(epoch_rows) == list(range(n))
        for w in range(0, n, per_window):
            # A window holds the same rows as the plain shuffle's window...
            window = epoch_rows[w : w + per_window]
            assert sorted(window) == sorted(plain[epoch * n + w : epoch * n + w + per_window])
            # ...cut, once sorted by length, into batches of consecutive lengths.
            ranges = sorted(
                (min(src.lengths[r]), max(src.lengths[r])) for r in np.reshape(window, (windows, G))
            )
            assert all(hi <= lo for (_, hi), (lo, _) in zip(ranges, ranges[1:]))
    # Grouping saves padding: the mean width is below the plain stream's.
    assert np.mean([b["input_ids"].shape[1] for b in grouped]) < np.mean(
        [max(src.lengths[r]) for r in np.reshape(plain, (-1, G))]
    )


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_together_make_the_single_host_batch(hosts):
    src = Rows(45)  # not a multiple of G: batches span epochs
    one = take(iterator(src, group=3, pad_multiple=8), 10)
    parts = [take(iterator(src, group=3, pad_multiple=8, p=p, n=hosts), 10) for p in range(hosts)]
    for t, batch in enumerate(one):
        for k in batch:
            np.testing.assert_array_equal(
                batch[k], np.concatenate([parts[p][t][k] for p in range(hosts)])
            )


def test_resume_and_a_state_of_another_order():
    src = Rows(40)
    it = iterator(src, group=2, pad_multiple=4)
    take(it, 7)
    state = it.get_state()
    rest = take(it, 5)
    again = iterator(src, group=2, pad_multiple=4)
    again.set_state(state)
    for a, b in zip(rest, take(again, 5)):
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
    with pytest.raises(ValueError, match="another data stream"):
        iterator(src).set_state(state)  # the plain order is another stream
    iterator(src, pad_multiple=4).set_state(iterator(src).get_state())  # same rows: accepted
