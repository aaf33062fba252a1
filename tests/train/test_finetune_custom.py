"""Fine-tuning on the user's own files, one run per new task kind, through the trainer.

Each run starts from a model directory ("my own BERT": a random micro BERT
with its vocabulary) and a file written here, at runlocal size. The
official metrics the run reports (results.json) are then recomputed from the
saved model alone: the dev file tokenized by transformers' `BertTokenizerFast`
(not the data layer), the model run with `Model.apply`, the metrics computed
here in numpy / scipy (entity F1 with an IOB2 chunker written here). The
files, the runs and the chunker are in tests/task_files.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats
from task_files import (
    SEQ,
    finetune,
    hf_tokenizer,
    make_bert,
    pair_rows,
    predict,
    score_rows,
    tagged_sentence,
    tagging_metrics,
    topic_rows,
    write_conll,
    write_csv,
)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A random tinybert4_micro model directory with a vocabulary of the test's words."""
    return make_bert(tmp_path_factory.mktemp("bert"))


@pytest.mark.slow
def test_multiclass_csv(tmp_path, bert):
    rng = np.random.default_rng(0)
    train = write_csv(tmp_path / "train.csv", "text,topic", topic_rows(rng, 160))
    dev_rows = topic_rows(rng, 40)
    dev = write_csv(tmp_path / "dev.csv", "text,topic", dev_rows)
    results, model_dir = finetune(
        tmp_path, bert, steps=120, train_file=str(train), eval_file=str(dev), label_column="topic"
    )
    names = ("food", "music", "sports", "tech")  # sorted
    config, heads, out = predict(
        model_dir,
        hf_tokenizer(model_dir)(
            [t for t, _ in dev_rows], padding="max_length", max_length=SEQ, truncation=True
        ),
    )
    assert heads == ("classifier",) and config.label_names == names
    pred = np.asarray(out.logits).argmax(-1)
    gold = np.array([names.index(label) for _, label in dev_rows])
    f1 = []
    for c in np.union1d(pred, gold):
        tp = np.sum((pred == c) & (gold == c))
        f1.append(2 * tp / (np.sum(pred == c) + np.sum(gold == c)))
    assert results["accuracy"] == pytest.approx(np.mean(pred == gold), abs=1e-9)
    assert results["f1_macro"] == pytest.approx(np.mean(f1), abs=1e-9)
    assert results["accuracy"] > 0.5  # 4 classes: chance is 0.25


# ---------------------------------------------------------------- regression, CSV


@pytest.mark.slow
def test_regression_csv(tmp_path, bert):
    rng = np.random.default_rng(1)
    train = write_csv(tmp_path / "train.csv", "review,score", score_rows(rng, 160))
    dev_rows = score_rows(rng, 40)
    dev = write_csv(tmp_path / "dev.csv", "review,score", dev_rows)
    results, model_dir = finetune(
        tmp_path,
        bert,
        train_file=str(train),
        eval_file=str(dev),
        task_kind="regression",
        text_column="review",
        label_column="score",
    )
    enc = hf_tokenizer(model_dir)([t for t, _ in dev_rows], padding="max_length", max_length=SEQ)
    config, heads, out = predict(model_dir, enc)
    assert config.num_labels == 1 and config.label_names is None
    scores = np.asarray(out.logits)[:, 0]
    gold = np.array([float(s) for _, s in dev_rows])
    assert results["pearson"] == pytest.approx(stats.pearsonr(scores, gold)[0], abs=1e-6)
    assert results["spearman"] == pytest.approx(stats.spearmanr(scores, gold)[0], abs=1e-6)
    assert results["pearson"] > 0.5


# ---------------------------------------------------------------- pairs, JSON lines


@pytest.mark.slow
def test_sentence_pairs_jsonl(tmp_path, bert):
    rng = np.random.default_rng(2)
    train, dev = tmp_path / "train.jsonl", tmp_path / "dev.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(rng, 160)))
    dev_rows = pair_rows(rng, 40)
    dev.write_text("".join(json.dumps(r) + "\n" for r in dev_rows))
    results, model_dir = finetune(
        tmp_path,
        bert,
        train_file=str(train),
        eval_file=str(dev),
        text_column="first",
        text_pair_column="second",
    )
    tok = hf_tokenizer(model_dir)
    enc = tok(
        [r["first"] for r in dev_rows],
        [r["second"] for r in dev_rows],
        padding="max_length",
        max_length=SEQ,
    )
    assert max(sum(m) for m in enc["attention_mask"]) < SEQ  # nothing truncated
    config, _, out = predict(model_dir, enc)
    assert config.label_names == ("different", "same")
    pred = np.asarray(out.logits).argmax(-1)
    gold = np.array([config.label_names.index(r["label"]) for r in dev_rows])
    f1 = []
    for c in np.union1d(pred, gold):
        tp = np.sum((pred == c) & (gold == c))
        f1.append(2 * tp / (np.sum(pred == c) + np.sum(gold == c)))
    assert results["accuracy"] == pytest.approx(np.mean(pred == gold), abs=1e-9)
    assert results["f1_macro"] == pytest.approx(np.mean(f1), abs=1e-9)


# ---------------------------------------------------------------- tagging, CoNLL


# Batches padded to max_seq_length, or each to its longest row with rows grouped by length.
PADDING = {"full": {}, "per batch": {"pad_to_multiple": 8, "group_by_length": 4}}


@pytest.mark.slow
@pytest.mark.parametrize("padding", PADDING)
def test_conll_tagging(tmp_path, bert, padding):
    rng = np.random.default_rng(3)
    train = write_conll(tmp_path / "train.conll", [tagged_sentence(rng) for _ in range(200)])
    dev_sentences = [tagged_sentence(rng) for _ in range(40)]
    dev = write_conll(tmp_path / "dev.conll", dev_sentences)
    results, model_dir = finetune(
        tmp_path,
        bert,
        steps=60,
        train_file=str(train),
        eval_file=str(dev),
        task_kind="tagging",
        **PADDING[padding],
    )
    config, expected = tagging_metrics(model_dir, dev_sentences)
    assert config.label_names == ("O", "B-LOC", "B-PER", "I-PER")
    precision, recall = expected["precision"], expected["recall"]
    assert results["precision"] == pytest.approx(precision, abs=1e-9)
    assert results["recall"] == pytest.approx(recall, abs=1e-9)
    assert results["f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-9)
    assert results["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert results["f1"] > 0.3  # predicting O everywhere scores 0
