"""Packing several short sequences into one row.

Short documents (docstrings often are) give short examples, and a batch of
mostly-padding rows wastes the accelerator. With `data.packing` on, whole
`[CLS] chunk [SEP]` sequences (pieces) are placed into rows of
`max_seq_length` tokens. In a packed row:

- `attention_mask` is the 1-based id of the piece each token belongs to (0
  at padding); `models.attention.make_attention_mask` lets a query see only
  the keys of its own piece, so pieces cannot read each other.
- `position_ids` restart at 0 in every piece, `token_type_ids` are 0.
- Masked-LM positions are drawn over the whole row (never on a piece's
  [CLS]/[SEP]); each is a token of exactly one piece, so the loss stays
  inside pieces too.

Packing is for MLM-only objectives (DistilBERT-style, `data.nsp=False`):
one next-sentence label per row cannot describe several pairs, so asking
for packing with NSP is a configuration error.

The packing plan is static (from the plan seed): the chunks are shuffled,
then placed first-fit into a small window of open rows (the oldest open row
is closed when none fits). Shuffling first mixes documents within rows;
the window keeps the plan linear in the number of chunks. Rows are then
shuffled per epoch like unpacked examples.
"""

from __future__ import annotations

import numpy as np

from mbert_jax.data.pretraining import Rows


def pack(lengths: np.ndarray, capacity: int, rng: np.random.Generator, open_rows: int = 8) -> Rows:
    """Place items of `lengths` (each <= capacity) into rows of `capacity`.

    Args:
      lengths: int [n] length of each item (its full length, [CLS]/[SEP] included).
      capacity: the row length.
      rng: shuffles the items first.
      open_rows: how many partly filled rows are searched for a fit.

    Returns:
      `Rows` with `packed=True`; every item is in exactly one row.
    """
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(
            f"an item of length {int(lengths.max())} exceeds the row length {capacity}"
        )
    rows: list[list[int]] = []
    open_: list[tuple[int, list[int]]] = []  # (free tokens, items)
    for i in rng.permutation(len(lengths)):
        n = int(lengths[i])
        for j, (free, items) in enumerate(open_):
            if free >= n:
                items.append(int(i))
                open_[j] = (free - n, items)
                break
        else:
            if len(open_) == open_rows:
                rows.append(open_.pop(0)[1])
            open_.append((capacity - n, [int(i)]))
    rows.extend(items for _, items in open_)
    offsets = np.zeros(len(rows) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    chunks = np.asarray([i for r in rows for i in r], np.int64)
    return Rows(offsets, chunks, packed=True)


def fill_fraction(rows: Rows, lengths: np.ndarray, capacity: int) -> float:
    """Share of row tokens that are real (not padding)."""
    return float(np.asarray(lengths)[rows.chunks].sum()) / max(1, len(rows) * capacity)
