"""Vocabulary pruning (`prune/vocabulary.py`): the pruned model computes what the full one did.

Independent of the code under test: both model directories are read back
with transformers' `BertTokenizerFast` (the tokens must be the same strings)
and run with `Model.apply` (`task_files.predict`); the MLM logits of the
pruned model must be the full model's at the kept ids.
"""

import subprocess
import sys

import numpy as np
import pytest
from task_files import hf_tokenizer, make_bert, predict, write_csv

from mbert_jax.models import io
from mbert_jax.prune import vocabulary

TEXTS = ["the goal match team score", "a new song by the band", "old bread and soup"]
HELD_OUT = ["peter went to paris", "the team"]


@pytest.mark.parametrize("heads", [("classifier",), ("mlm",)])
def test_the_pruned_model_computes_what_the_full_model_did(tmp_path, heads):
    full = make_bert(tmp_path, heads=heads)
    pruned = vocabulary.prune_vocabulary(full, tmp_path / "pruned", TEXTS, HELD_OUT)
    config, _ = io.load_config(pruned.path)
    assert config.vocab_size == len(pruned.kept) < pruned.vocab_size
    a, b = hf_tokenizer(full), hf_tokenizer(pruned.path)
    for text in TEXTS:
        assert a.tokenize(text) == b.tokenize(text)
        assert "[UNK]" not in b.tokenize(text)
    # The kept ids are the specials and every id of the texts, in their original order.
    used = {i for t in TEXTS for i in a(t)["input_ids"]} | {a.convert_tokens_to_ids("[MASK]")}
    assert used <= set(pruned.kept.tolist()) and list(pruned.kept) == sorted(pruned.kept)
    enc_a = a(TEXTS, padding="max_length", max_length=12, return_tensors="np")
    enc_b = b(TEXTS, padding="max_length", max_length=12, return_tensors="np")
    np.testing.assert_array_equal(pruned.kept[enc_b["input_ids"]], enc_a["input_ids"])
    _, _, out_a = predict(full, enc_a)
    _, _, out_b = predict(pruned.path, enc_b)
    if heads == ("classifier",):
        np.testing.assert_allclose(out_b.logits, out_a.logits, atol=1e-5)
    else:
        np.testing.assert_allclose(
            out_b.mlm_logits, np.asarray(out_a.mlm_logits)[..., pruned.kept], atol=1e-4
        )
    # Held-out words outside the texts become [UNK]; "the team" does not.
    assert "[UNK]" in b.tokenize("peter went to paris")
    assert 0 < pruned.unknown_rate < 1
    assert pruned.changed_rate == 0.5  # "the team" is tokenized as before


def test_bad_input_names_the_problem(tmp_path):
    full = make_bert(tmp_path, heads=("classifier",))
    with pytest.raises(ValueError, match="no texts"):
        vocabulary.prune_vocabulary(full, tmp_path / "out", [])
    (full / io.VOCAB_FILE).unlink()
    with pytest.raises(ValueError, match=r"has no vocab\.txt"):
        vocabulary.prune_vocabulary(full, tmp_path / "out", TEXTS)
    assert not (tmp_path / "out").exists()


def test_the_command_reads_a_csv_and_names_a_missing_column(tmp_path):
    full = make_bert(tmp_path, heads=("classifier",))
    data = tmp_path / "train.csv"
    write_csv(data, "sentence,label", [[t, "x"] for t in TEXTS])
    cmd = [sys.executable, "-m", "mbert_jax", "prune-vocab", "--model", str(full)]
    cmd += ["--out", str(tmp_path / "out"), "--texts", str(data)]
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "no column 'text'" in bad.stderr and "['sentence', 'label']" in bad.stderr
    assert not (tmp_path / "out").exists()
    ok = subprocess.run([*cmd, "--text-column", "sentence"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "vocabulary pruned to" in ok.stdout
    assert io.load_config(tmp_path / "out")[0].vocab_size < io.load_config(full)[0].vocab_size
