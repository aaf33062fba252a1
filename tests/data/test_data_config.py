"""Data configs: defaults that validate, and errors that name the field."""

from __future__ import annotations

import pytest

from mbert_jax.data import config as config_lib
from mbert_jax.data import corpus, tasks


def test_defaults_validate():
    c = config_lib.pretraining_data_defaults()
    config_lib.validate(c)
    assert (c.source, c.max_seq_length, c.max_predictions_per_seq, c.masked_lm_prob) == (
        "default", 128, 20, 0.15,
    )  # fmt: skip
    assert c.lowercase is None and c.nsp and not c.packing
    c.lowercase = True  # a None field takes a bool once set
    for name in tasks.TASK_NAMES:
        t = config_lib.task_data_defaults(name)
        config_lib.validate_task(t)
    assert config_lib.task_data_defaults("squad_v2").source == "json"
    assert config_lib.task_data_defaults("stdlib").source == "corpus"
    assert config_lib.task_data_defaults("wordorder").source == "corpus"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("max_predictions_per_seq", 0, "data.max_predictions_per_seq"),
        ("masked_lm_prob", 1.5, "data.masked_lm_prob"),
        ("short_seq_prob", -0.1, "data.short_seq_prob"),
        ("eval_fraction", 1.0, "data.eval_fraction"),
        ("max_seq_length", 4, "data.max_seq_length"),
        ("global_batch_size", 0, "data.global_batch_size"),
        ("num_threads", -1, "data.num_threads"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    c = config_lib.pretraining_data_defaults()
    c[field] = value
    with pytest.raises(config_lib.DataConfigError, match=message):
        config_lib.validate(c)


def test_bad_source_settings():
    c = config_lib.pretraining_data_defaults()
    c.source = "s3"
    with pytest.raises(corpus.CorpusError, match="valid sources: default, text, hf, tfds"):
        config_lib.validate(c)
    c.source, c.on_bad_utf8 = "text", "ignore"
    with pytest.raises(corpus.CorpusError, match="data.on_bad_utf8"):
        config_lib.validate(c)
    c.on_bad_utf8, c.source = "skip", "tfds"
    with pytest.raises(corpus.CorpusError, match="data.tfds_name"):
        config_lib.validate(c)


def test_task_config_errors():
    t = config_lib.task_data_defaults("squad_v1")
    t.max_query_length = 200
    with pytest.raises(config_lib.DataConfigError, match="data.max_query_length"):
        config_lib.validate_task(t)
    t = config_lib.task_data_defaults("rte")
    t.on_bad_line = "ignore"
    with pytest.raises(config_lib.DataConfigError, match="data.on_bad_line"):
        config_lib.validate_task(t)
    t = config_lib.task_data_defaults("sst2")
    t.source = "corpus"
    with pytest.raises(config_lib.DataConfigError, match="source 'tsv' or 'hf'"):
        tasks.read_examples(t, "dev")
