"""Packing: the plan, the per-piece masks, and the attention they imply."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import CLS, PAD, SEP, masker, original_ids, synthetic_docs, write_tokenized

from mbert_jax.data import config as config_lib
from mbert_jax.data import packing, pipeline, pretraining
from mbert_jax.data.report import InputReport
from mbert_jax.data.tokenized import TokenizedCorpus


def test_pack_places_every_item_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 40, 500)
    rows = packing.pack(lengths, 64, np.random.default_rng(1))
    assert sorted(rows.chunks.tolist()) == list(range(500))
    for r in range(len(rows)):
        items = rows.chunks[rows.offsets[r] : rows.offsets[r + 1]]
        assert len(items) >= 1 and lengths[items].sum() <= 64
    # Far fewer rows than items, and well filled.
    assert len(rows) < 0.5 * 500
    assert packing.fill_fraction(rows, lengths, 64) > 0.85


def test_pack_rejects_an_item_longer_than_a_row():
    with pytest.raises(ValueError, match="exceeds the row length"):
        packing.pack(np.array([3, 70]), 64, np.random.default_rng(0))


def packed_examples(tmp_path, S=48):
    docs = synthetic_docs(12, seed=3)
    corpus = TokenizedCorpus(write_tokenized(tmp_path / "c", docs))
    m = S - 2
    seg = pretraining.make_segments(corpus, m, InputReport())
    all_docs = np.arange(len(docs))
    chunks = pretraining.plan_chunks(
        seg, all_docs, m, 0.5, np.random.default_rng(0), overshoot=False
    )
    lengths = seg.ends[chunks.end - 1] - seg.starts[chunks.begin] + 2
    rows = packing.pack(lengths, S, np.random.default_rng(0))
    ex = pretraining.PretrainingExamples(
        corpus, seg, chunks, rows, all_docs, masker(max_predictions=8),
        cls_id=CLS, sep_id=SEP, pad_id=PAD, max_seq_length=S, nsp=False, seed=0, stream=0,
    )  # fmt: skip
    return ex, docs


def build(ex):
    c = type(
        "C", (), {"max_seq_length": ex.max_seq_length, "max_predictions_per_seq": 8, "nsp": False}
    )
    spec = pipeline.batch_spec(c)
    out = {k: np.zeros((len(ex), *shape), dtype) for k, (shape, dtype) in spec.items()}
    for i in range(len(ex)):
        ex.write_into(out, i, i, 0)
    return out


def test_packed_rows_hold_whole_pieces_with_their_own_ids_and_positions(tmp_path):
    ex, docs = packed_examples(tmp_path)
    out = build(ex)
    assert len(ex) < len(ex.chunks)  # something was packed
    all_tokens = []
    for r in range(len(ex)):
        row = {k: v[r] for k, v in out.items()}
        ids, am, pos = original_ids(row), row["attention_mask"], row["position_ids"]
        n_pieces = ex.rows.offsets[r + 1] - ex.rows.offsets[r]
        real = am > 0
        assert am.max() == n_pieces and np.all(ids[~real] == PAD)
        assert np.all(row["token_type_ids"] == 0)
        for piece in range(1, n_pieces + 1):
            where = np.flatnonzero(am == piece)
            assert np.all(np.diff(where) == 1)  # contiguous
            np.testing.assert_array_equal(pos[where], np.arange(len(where)))
            seq = ids[where]
            assert seq[0] == CLS and seq[-1] == SEP and not np.isin(seq[1:-1], [CLS, SEP]).any()
            all_tokens.extend(seq[1:-1].tolist())
        # Predictions never fall on a piece's [CLS]/[SEP] nor on padding.
        k = int(row["masked_lm_weights"].sum())
        p = row["masked_lm_positions"][:k]
        assert real[p].all() and not np.isin(ids[p], [CLS, SEP]).any()
    everything = sorted(t for d in docs for line in d for t in line)
    assert sorted(all_tokens) == everything


def test_attention_stays_inside_pieces(tmp_path):
    jnp = pytest.importorskip("jax.numpy")
    from mbert_jax.models.attention import make_attention_mask

    ex, _ = packed_examples(tmp_path)
    am = build(ex)["attention_mask"]
    mask = np.asarray(make_attention_mask(jnp.asarray(am)))[:, 0]
    # Independent expectation: query i sees key j iff both real and in the same piece.
    expected = (am[:, :, None] == am[:, None, :]) & (am[:, None, :] > 0)
    expected |= (am[:, :, None] == 0) & (am[:, None, :] > 0)  # padding queries see real keys
    np.testing.assert_array_equal(mask, expected)


def test_packing_with_nsp_is_a_config_error():
    c = config_lib.pretraining_data_defaults()
    c.packing = True
    with pytest.raises(config_lib.DataConfigError, match="packing needs nsp=False"):
        config_lib.validate(c)
    c.nsp = False
    config_lib.validate(c)
