"""Calibration / evaluation data: GLUE-style TSV, text and npz, tokenized with the model's vocab."""

from __future__ import annotations

import numpy as np
import pytest
from export_helpers import write_vocab

from mbert_jax.export.data import load_examples
from mbert_jax.export.tflite import ExportError


@pytest.fixture
def vocab(tmp_path):
    return write_vocab(tmp_path / "vocab.txt", 40)  # [PAD] [UNK] [CLS] [SEP] [MASK] w0..w34


def test_glue_tsv_sentence_pairs_with_labels(tmp_path, vocab):
    path = tmp_path / "dev.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\tw1 w2\tw3\t1\n1\tw4\tw5 w6 w7\t0\n")
    ex = load_examples(path, seq_len=8, vocab_file=vocab)
    # [CLS]=2 w1=6 w2=7 [SEP]=3 w3=8 [SEP]=3, then [PAD]=0
    np.testing.assert_array_equal(ex.input_ids[0], [2, 6, 7, 3, 8, 3, 0, 0])
    np.testing.assert_array_equal(ex.token_type_ids[0], [0, 0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(ex.attention_mask[1], [1, 1, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(ex.labels["labels"], [1, 0])


def test_text_lines_are_truncated_to_the_sequence_length(tmp_path, vocab):
    path = tmp_path / "text.txt"
    path.write_text("w1 w2 w3 w4 w5 w6 w7 w8\n\nw9\n")
    ex = load_examples(path, seq_len=4, vocab_file=vocab)
    np.testing.assert_array_equal(ex.input_ids, [[2, 6, 7, 3], [2, 14, 3, 0]])
    assert ex.labels == {}


def test_bad_data_files_are_clear_errors(tmp_path, vocab):
    tsv = tmp_path / "x.tsv"
    tsv.write_text("a\tb\nw1\tw2\n")
    with pytest.raises(ExportError, match="cannot tell the text columns"):
        load_examples(tsv, seq_len=8, vocab_file=vocab)
    with pytest.raises(ExportError, match="no vocab.txt"):
        load_examples(tsv, seq_len=8, vocab_file=None)
    with pytest.raises(ExportError, match="does not exist"):
        load_examples(tmp_path / "missing.txt", seq_len=8, vocab_file=vocab)
    labels = tmp_path / "y.tsv"
    labels.write_text("sentence\tlabel\nw1\tpositive\n")
    with pytest.raises(ExportError, match="must be integer class ids"):
        load_examples(labels, seq_len=8, vocab_file=vocab)
