"""Token classification export: TFLite float verified on CoNLL data, metadata, label names.

Also classification eval data with string labels (mapped by the model's
label names) and the transformers directory of a tagging model.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
import transformers
from export_helpers import make_model_dir, run_file

from mbert_jax.export import cli, tflite
from mbert_jax.export.data import load_examples
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export
from mbert_jax.export.tflite import ExportError
from mbert_jax.models import Model, hf

TAGS = ("O", "B-PER", "I-PER", "B-LOC")
SEQ = 16


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A tinybert4_micro token classifier with tag names, random (perturbed) weights."""
    root = tmp_path_factory.mktemp("tagger")
    return make_model_dir(
        root, "tinybert4_micro", heads=("token_classifier",), num_labels=4, label_names=TAGS
    )


def conll(path, sentences):
    path.write_text("".join("".join(f"{w} {t}\n" for w, t in s) + "\n" for s in sentences))
    return path


SENTENCES = [
    [("w5", "B-PER"), ("w6", "I-PER"), ("w7", "O"), ("w8", "B-LOC")],
    [("w9", "O"), ("w1001", "B-LOC"), ("w12", "O")],
    [("w3", "B-PER"), ("w4", "O")],
]


def test_conll_eval_data_labels_each_words_first_piece(tmp_path, tagger):
    directory, config, _ = tagger
    ex = load_examples(
        conll(tmp_path / "dev.conll", SENTENCES),
        seq_len=SEQ,
        vocab_file=directory / "vocab.txt",
        task="token_classification",
        label_names=TAGS,
    )
    # [CLS] w5 w6 w7 w8 [SEP]: ids = 5 + word number; tags by TAGS' order; -1 elsewhere.
    np.testing.assert_array_equal(ex.input_ids[0, :6], [2, 10, 11, 12, 13, 3])
    np.testing.assert_array_equal(ex.labels["labels"][0, :7], [-1, 1, 2, 0, 3, -1, -1])
    np.testing.assert_array_equal(ex.labels["labels"][1, :5], [-1, 0, 3, 0, -1])
    bad = conll(tmp_path / "bad.conll", [[("w5", "B-ORG")]])
    with pytest.raises(ExportError, match=rf"{bad}:1: label 'B-ORG' is not one of the model's"):
        load_examples(
            bad, seq_len=SEQ, vocab_file=directory / "vocab.txt", task="token_classification",
            label_names=TAGS,
        )  # fmt: skip


def entity_f1(gold_rows, pred_rows):
    """Micro entity F1 of IOB2 rows, with a chunker written here."""

    def spans(tags):
        out, cur = set(), None
        for i, tag in enumerate([*tags, "O"]):
            p, _, kind = tag.partition("-")
            if cur and (p != "I" or kind != cur[0]):
                out.add((cur[0], cur[1], i - 1))
                cur = None
            if p == "B" or (p == "I" and cur is None):
                cur = (kind, i)
        return out

    found = expected = correct = 0
    for g, p in zip(gold_rows, pred_rows):
        gs, ps = spans(g), spans(p)
        found, expected, correct = found + len(ps), expected + len(gs), correct + len(gs & ps)
    precision, recall = correct / max(found, 1), correct / max(expected, 1)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def first_piece_tags(logits, labels):
    """Per sentence, the argmax tag at each labelled position (each word's first piece)."""
    return [[TAGS[t] for t in lg.argmax(-1)[lb >= 0]] for lg, lb in zip(logits, labels)]


def test_float_export_is_verified_and_its_metadata_names_the_tags(tmp_path, tagger):
    directory, config, params = tagger
    model = Model(config, heads=("token_classifier",))

    def read(path):
        return load_examples(
            path, seq_len=SEQ, vocab_file=directory / "vocab.txt", task="token_classification",
            label_names=TAGS,
        )  # fmt: skip

    def jax_logits(examples):
        inputs = (jax.numpy.asarray(v) for v in examples.inputs().values())
        return np.asarray(model.apply({"params": params}, *inputs).token_logits)

    # Gold tags: the model's own for the first two sentences, others for the third, so
    # that the entity F1 is neither 0 nor 100.
    first = read(conll(tmp_path / "words.conll", SENTENCES))
    own = first_piece_tags(jax_logits(first), first.labels["labels"])
    gold = [*own[:2], [t for _, t in SENTENCES[2]]]
    dev = conll(
        tmp_path / "dev.conll", [list(zip([w for w, _ in s], g)) for s, g in zip(SENTENCES, gold)]
    )
    examples = read(dev)
    out = tmp_path / "tagger.tflite"
    report = export_tflite(
        load_for_export(directory), "token_classification", out,
        TFLiteOptions(seq_len=SEQ, latency_runs=0), verify_examples=examples,
    )  # fmt: skip
    assert report.max_abs_diff <= 1e-4 and report.agreement == 1.0
    flatbuffer = out.read_bytes()
    assert tflite.task_metadata(flatbuffer) == {
        "task": "token_classification",
        "kind": "tagging",
        "label_names": list(TAGS),
        "inputs": ["input_ids", "attention_mask", "token_type_ids"],
        "input_ranges": {
            "input_ids": [0, config.vocab_size],
            "attention_mask": [0, 2],
            "token_type_ids": [0, config.type_vocab_size],
        },
        "outputs": ["logits"],
        "seq_len": SEQ,
        "quantize": "none",
        "tag_position": "first WordPiece of each word",
    }
    # The interpreter still runs the file; its logits are the JAX model's at every position.
    got = run_file(flatbuffer, examples.inputs())["logits"]
    np.testing.assert_allclose(got, jax_logits(examples), atol=1e-4)
    # The reported metric: entity F1 of the file's tags at each word's first piece.
    expected = 100 * entity_f1(gold, first_piece_tags(got, examples.labels["labels"]))
    assert report.metric_name == "entity F1" and 0 < expected < 100
    assert report.metric_tflite == pytest.approx(expected)
    assert report.metric_jax == pytest.approx(expected)


def test_classification_eval_data_with_string_labels(tmp_path):
    directory, config, params = make_model_dir(
        tmp_path, "tinybert4_micro", heads=("classifier",), num_labels=3,
        label_names=("neg", "neu", "pos"),
    )  # fmt: skip
    dev = tmp_path / "dev.csv"
    dev.write_text('text,label\n"w5, w6",pos\nw7 w8,neg\nw9,neu\nw10,pos\n')
    out = tmp_path / "cls.tflite"
    code = cli.main(
        ["--checkpoint", str(directory), "--task", "classification", "--eval-data", str(dev),
         "--seq-len", str(SEQ), "--out", str(out), "--latency-runs", "0"]
    )  # fmt: skip
    assert code == 0
    meta = tflite.task_metadata(out.read_bytes())
    assert meta["kind"] == "classification" and meta["label_names"] == ["neg", "neu", "pos"]
    ex = load_examples(
        dev, seq_len=SEQ, vocab_file=directory / "vocab.txt", label_names=meta["label_names"]
    )
    np.testing.assert_array_equal(ex.labels["labels"], [2, 0, 1, 2])
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nw5,positive\n")
    with pytest.raises(ExportError, match=rf"{bad}:2: label 'positive' is not one of the model's"):
        load_examples(
            bad, seq_len=SEQ, vocab_file=directory / "vocab.txt", label_names=("neg", "neu", "pos")
        )
    assert cli.main(
        ["--checkpoint", str(directory), "--task", "classification", "--eval-data", str(bad),
         "--seq-len", str(SEQ), "--out", str(tmp_path / "x.tflite"), "--latency-runs", "0"]
    ) == 1  # fmt: skip
    assert not (tmp_path / "x.tflite").exists()


def test_transformers_directory_of_a_tagger(tmp_path, tagger, capsys):
    directory, config, params = tagger
    out = tmp_path / "hf"
    code = cli.main(
        ["--checkpoint", str(directory), "--task", "token_classification", "--format", "hf",
         "--out", str(out), "--seq-len", str(SEQ)]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    written = json.loads((out / "config.json").read_text())
    assert written["architectures"] == ["BertForTokenClassification"]
    assert written["id2label"] == {str(i): t for i, t in enumerate(TAGS)}
    model = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
    assert model.config.id2label == dict(enumerate(TAGS))
    ids = np.array([[2, 10, 11, 12, 3, 0]], np.int64)
    mask = (ids > 0).astype(np.int64)
    with torch.no_grad():
        got = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits
    ours = Model(config, heads=("token_classifier",)).apply(
        {"params": params}, ids.astype(np.int32), mask.astype(np.int32)
    )
    np.testing.assert_allclose(got.numpy(), np.asarray(ours.token_logits), atol=1e-4)
    back_config, back_heads, _ = hf.load_hf(out)
    assert back_heads == ("token_classifier",) and back_config.label_names == TAGS
