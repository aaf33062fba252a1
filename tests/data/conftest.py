"""Fixtures of the data-layer tests."""

from __future__ import annotations

import pytest
from data_helpers import write_text_corpus

from mbert_jax.data import config as config_lib


@pytest.fixture
def text_config(tmp_path):
    """A pretraining data config over a small text corpus, with a learned vocabulary."""
    corpus = write_text_corpus(tmp_path / "text", repeat=6)
    c = config_lib.pretraining_data_defaults()
    c.source = "text"
    c.text_files = str(corpus)
    c.cache_dir = str(tmp_path / "cache")
    c.train_vocab_size = 200
    c.train_vocab_min_frequency = 1
    c.max_seq_length = 32
    c.max_predictions_per_seq = 5
    c.global_batch_size = 8
    c.eval_fraction = 0.2
    c.num_threads = 0
    return c
