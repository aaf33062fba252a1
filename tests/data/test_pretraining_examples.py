"""Pretraining examples: segments, chunks, NSP pairs, truncation, layout."""

from __future__ import annotations

import types

import numpy as np
import pytest
from data_helpers import CLS, PAD, SEP, masker, original_ids, synthetic_docs, write_tokenized

from mbert_jax.data import pipeline, pretraining
from mbert_jax.data.report import InputReport
from mbert_jax.data.tokenized import TokenizedCorpus


def examples(tmp_path, docs, *, S=32, nsp=True, short_seq_prob=0.1, seed=0):
    corpus = TokenizedCorpus(write_tokenized(tmp_path / "corpus", docs))
    m = S - (3 if nsp else 2)
    segments = pretraining.make_segments(corpus, m, InputReport())
    all_docs = np.arange(len(docs))
    chunks = pretraining.plan_chunks(
        segments, all_docs, m, short_seq_prob, np.random.default_rng(seed), overshoot=nsp
    )
    return pretraining.PretrainingExamples(
        corpus,
        segments,
        chunks,
        pretraining.Rows.one_per_row(len(chunks)),
        all_docs,
        masker(max_predictions=5),
        cls_id=CLS,
        sep_id=SEP,
        pad_id=PAD,
        max_seq_length=S,
        nsp=nsp,
        seed=seed,
        stream=0,
    )


def build(ex, index, epoch=0, nsp=True):
    spec = pipeline.batch_spec(
        type(
            "C", (), {"max_seq_length": ex.max_seq_length, "max_predictions_per_seq": 5, "nsp": nsp}
        )
    )
    out = {k: np.zeros((1, *shape), dtype) for k, (shape, dtype) in spec.items()}
    ex.write_into(out, 0, index, epoch)
    return {k: v[0] for k, v in out.items()}


def bert_truncate(la, lb, max_tokens):
    """BERT's truncate_seq_pair loop, on lengths."""
    while la + lb > max_tokens:
        if la > lb:
            la -= 1
        else:
            lb -= 1
    return la, lb


def test_truncate_pair_matches_bert_loop():
    for la in range(0, 30):
        for lb in range(0, 30):
            for m in (1, 7, 20, 40):
                assert pretraining.truncate_pair(la, lb, m) == bert_truncate(la, lb, m), (la, lb, m)


def test_long_lines_are_split_into_near_equal_pieces(tmp_path):
    docs = [[[7] * 10, [8] * 3], [[9] * 4]]
    corpus = TokenizedCorpus(write_tokenized(tmp_path / "c", docs))
    report = InputReport()
    seg = pretraining.make_segments(corpus, 4, report)
    # 10 tokens -> 3 pieces of 3, 3, 4; the other lines fit.
    np.testing.assert_array_equal(seg.lengths, [3, 3, 4, 3, 4])
    np.testing.assert_array_equal(seg.starts, [0, 3, 6, 10, 13])
    np.testing.assert_array_equal(seg.doc_offsets, [0, 4, 5])
    assert list(report.notes.values()) == [1]


@pytest.mark.parametrize("overshoot", [True, False])
def test_chunks_partition_documents(tmp_path, overshoot):
    docs = synthetic_docs(10)
    corpus = TokenizedCorpus(write_tokenized(tmp_path / "c", docs))
    seg = pretraining.make_segments(corpus, 20, InputReport())
    ch = pretraining.plan_chunks(
        seg, np.arange(10), 20, 0.3, np.random.default_rng(1), overshoot=overshoot
    )
    lens = seg.lengths
    for d in range(10):
        mine = np.flatnonzero(ch.doc == d)
        lo, hi = seg.doc_offsets[d], seg.doc_offsets[d + 1]
        assert ch.begin[mine[0]] == lo and ch.end[mine[-1]] == hi
        np.testing.assert_array_equal(ch.begin[mine[1:]], ch.end[mine[:-1]])
        for c in mine:
            b, e, t = ch.begin[c], ch.end[c], ch.target[c]
            assert 2 <= t <= 20
            n = lens[b:e].sum()
            if overshoot:  # BERT: stop as soon as the target is reached
                assert n >= t or e == hi
                assert lens[b : e - 1].sum() < t
            else:  # never exceed the target unless one segment does
                assert n <= t or e - b == 1
                assert e == hi or n + lens[e] > t


def test_nsp_pairs_follow_or_come_from_another_document(tmp_path):
    docs = synthetic_docs(8)
    ex = examples(tmp_path, docs)
    labels_multi = []
    for i in range(len(ex)):
        for epoch in range(3):
            row = build(ex, i, epoch)
            ids = original_ids(row)
            n = int(row["attention_mask"].sum())
            assert ids[0] == CLS and ids[n - 1] == SEP and np.all(ids[n:] == PAD)
            seps = np.flatnonzero(ids[:n] == SEP)
            assert len(seps) == 2
            a, b = ids[1 : seps[0]], ids[seps[0] + 1 : n - 1]
            assert len(a) >= 1 and len(b) >= 1
            np.testing.assert_array_equal(
                row["token_type_ids"][:n], [0] * (seps[0] + 1) + [1] * (n - seps[0] - 1)
            )
            np.testing.assert_array_equal(row["position_ids"], np.arange(32))
            doc_a, doc_b = (a - 1000) // 100, (b - 1000) // 100
            line_a, line_b = (a - 1000) % 100, (b - 1000) % 100
            assert len(set(doc_a)) == 1 and np.all(np.diff(line_a) >= 0)
            chunk_doc = ex.chunks.doc[i]
            assert doc_a[0] == chunk_doc
            label = int(row["next_sentence_labels"])
            if label == 0:
                assert set(doc_b) == {chunk_doc} and line_b.min() > line_a.max()
                if len(a) + len(b) < 29:  # not truncated: B starts right after A
                    assert line_b[0] == line_a[-1] + 1
            else:
                assert len(set(doc_b)) == 1 and doc_b[0] != chunk_doc
            if ex.chunks.end[i] - ex.chunks.begin[i] >= 2:
                labels_multi.append(label)
            else:
                assert label == 1  # a one-segment chunk always gets a random B
    assert abs(np.mean(labels_multi) - 0.5) < 0.08, np.mean(labels_multi)


def test_examples_are_deterministic_and_fresh_per_epoch(tmp_path):
    ex = examples(tmp_path, synthetic_docs(6))
    r0 = build(ex, 3, epoch=0)
    again = build(ex, 3, epoch=0)
    for k in r0:
        np.testing.assert_array_equal(r0[k], again[k])
    differs = [
        not np.array_equal(build(ex, i, 0)["input_ids"], build(ex, i, 1)["input_ids"])
        for i in range(len(ex))
    ]
    assert np.mean(differs) > 0.8


def test_single_segment_examples_without_nsp_keep_every_token(tmp_path):
    docs = synthetic_docs(6)
    ex = examples(tmp_path, docs, nsp=False)
    seen = []
    for i in range(len(ex)):
        row = build(ex, i, nsp=False)
        assert "next_sentence_labels" not in row
        ids = original_ids(row)
        n = int(row["attention_mask"].sum())
        assert ids[0] == CLS and ids[n - 1] == SEP and not (ids[1 : n - 1] == SEP).any()
        assert np.all(row["token_type_ids"] == 0)
        seen.extend(ids[1 : n - 1].tolist())
    everything = [t for d in docs for line in d for t in line]
    assert seen == everything  # chunks in plan order cover the corpus exactly once


def test_masked_weights_count_the_budget(tmp_path):
    ex = examples(tmp_path, synthetic_docs(6))
    for i in range(len(ex)):
        row = build(ex, i)
        n = int(row["attention_mask"].sum())
        k = int(row["masked_lm_weights"].sum())
        assert k == min(5, max(1, round(n * 0.15)))
        assert np.all(row["masked_lm_positions"][k:] == 0) and np.all(row["masked_lm_ids"][k:] == 0)


def test_nsp_needs_two_documents(tmp_path):
    with pytest.raises(ValueError, match="at least 2 documents"):
        examples(tmp_path, synthetic_docs(1))


@pytest.mark.parametrize("eval_fraction", [0.0, 0.05])
def test_a_single_document_corpus_suggests_turning_nsp_off(eval_fraction):
    c = types.SimpleNamespace(
        eval_fraction=eval_fraction, eval_max_documents=100, nsp=True, split_seed=0
    )
    with pytest.raises(ValueError) as e:
        pipeline.split_documents(1, c)
    message = str(e.value)
    assert "data.nsp=False" in message and "eval_fraction" not in message
    assert "\n" not in message
    c.nsp, c.eval_fraction = False, 0.0
    train, held_out = pipeline.split_documents(1, c)
    assert list(train) == [0] and list(held_out) == []
