"""`task="custom"`: the user's own files and datasets, their labels, features, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mbert_jax.data import DataConfigError, build_task_data, task_data_defaults
from mbert_jax.data.report import InputReport
from mbert_jax.data.tables import read_table
from mbert_jax.data.tasks.glue import TaskDataError
from mbert_jax.data.tokenizer import train_wordpiece

WORDS = (
    "the a good bad film movie plot was is great awful fine okay he said no yes peter anna "
    "paris berlin lives in visited john smith eu rejects german call to boycott british lamb"
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_wordpiece([WORDS], 150, min_frequency=1)


def config(tmp_path, train, dev, **fields):
    c = task_data_defaults("custom")
    c.train_file, c.eval_file = str(train), str(dev)
    c.cache_dir = str(tmp_path / "cache")
    c.max_seq_length = 16
    c.global_batch_size = 2
    c.num_threads = 0
    for k, v in fields.items():
        c[k] = v
    return c


def build(c, tokenizer):
    return build_task_data(
        c, process_index=0, process_count=1, tokenizer=tokenizer, log=lambda s: None
    )


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def decode_row(tokenizer, ids):
    return [tokenizer.vocab[i] for i in ids if i != tokenizer.pad_id]


def cache_entries(tmp_path):
    d = tmp_path / "cache"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# ---------------------------------------------------------------- readers
def test_csv_quoting_bom_blank_lines_and_tsv_without_quoting(tmp_path):
    csv_file = write(
        tmp_path / "t.csv",
        '\ufefftext,label\n"good, great",pos\n\n"he said ""no""",neg\n"multi\nline",neg\n',
    )
    t = read_table(csv_file, InputReport())
    assert t.columns == ("text", "label")
    assert [r["text"] for r in t.rows] == ["good, great", 'he said "no"', "multi\nline"]
    assert t.where == [f"{csv_file}:2", f"{csv_file}:4", f"{csv_file}:5"]
    tsv_file = write(tmp_path / "t.tsv", 'text\tlabel\n"quoted" start\tpos\r\n')
    assert read_table(tsv_file, InputReport()).rows == [{"text": '"quoted" start', "label": "pos"}]


def test_json_lines_and_json_array(tmp_path):
    lines = write(
        tmp_path / "t.jsonl", '{"text": "good", "label": 1}\n\n{"text": "bad", "label": 0}\n'
    )
    t = read_table(lines, InputReport())
    assert t.rows[1] == {"text": "bad", "label": 0} and t.where[1] == f"{lines}:3"
    array = write(
        tmp_path / "t.json", json.dumps([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    )
    assert [r["label"] for r in read_table(array, InputReport()).rows] == ["x", "y"]


def test_string_labels_sorted_pairs_and_evaluation(tmp_path, tokenizer):
    train = write(
        tmp_path / "train.csv",
        "premise,hypothesis,label\ngood film,great plot,pos\nbad film,awful,neg\nfine,okay,neu\n"
        "a plot,the movie,neg\n",
    )
    dev = write(
        tmp_path / "dev.csv", "premise,hypothesis,label\ngood,great,pos\nbad,fine,neu\nthe,a,neg\n"
    )
    c = config(tmp_path, train, dev, text_column="premise", text_pair_column="hypothesis")
    td = build(c, tokenizer)
    assert td.kind == "classification" and td.task == "custom"
    assert td.label_names == ("neg", "neu", "pos") and td.num_labels == 3
    assert td.metric_names == ("accuracy", "f1_macro")
    batches = list(td.eval_iterator())
    rows = [(b, i) for b in batches for i in range(len(b["valid"])) if b["valid"][i]]
    assert [int(b["labels"][i]) for b, i in rows] == [2, 1, 0]
    b, i = rows[0]
    # [CLS] good [SEP] great [SEP]: segment 1 from "great" on, attention on the 5 tokens.
    assert decode_row(tokenizer, b["input_ids"][i]) == ["[CLS]", "good", "[SEP]", "great", "[SEP]"]
    assert b["token_type_ids"][i].tolist()[:6] == [0, 0, 0, 1, 1, 0]
    assert b["attention_mask"][i].sum() == 5
    ev = td.evaluator()
    for b in batches:  # predict class 2, 1, 2 for the three rows
        logits = np.zeros((len(b["valid"]), 3), np.float32)
        for k, idx in enumerate(b["example_index"]):
            logits[k, [2, 1, 2][idx] if b["valid"][k] else 0] = 1.0
        ev.add(b, logits)
    # Gold 2, 1, 0: accuracy 2/3; F1: neg 0 (tp 0), neu 1, pos 2/3 (tp 1, fp 1).
    assert ev.result() == pytest.approx({"accuracy": 2 / 3, "f1_macro": (0 + 1 + 2 / 3) / 3})
    with pytest.raises(ValueError, match="evaluated twice"):
        ev.add(batches[0], np.zeros((2, 3), np.float32))


def test_numeric_labels_sort_numerically_and_explicit_order(tmp_path, tokenizer):
    train = write(
        tmp_path / "train.jsonl",
        "".join(f'{{"text": "a", "label": {v}}}\n' for v in (10, 2, 2.0, 1)),
    )
    dev = write(tmp_path / "dev.jsonl", '{"text": "a", "label": "10"}\n')
    td = build(config(tmp_path, train, dev), tokenizer)
    assert td.label_names == ("1", "2", "10")  # 2 and 2.0 are one class; 10 after 2
    assert int(next(iter(td.eval_iterator()))["labels"][0]) == 2
    td = build(config(tmp_path, train, dev, labels="10,2,1,7"), tokenizer)
    assert td.label_names == ("10", "2", "1", "7") and td.num_labels == 4


def test_regression(tmp_path, tokenizer):
    train = write(tmp_path / "train.tsv", "text\tscore\ngood\t4.5\nbad\t0.5\n")
    dev = write(tmp_path / "dev.tsv", "text\tscore\nfine\t2.25\n")
    td = build(
        config(tmp_path, train, dev, task_kind="regression", label_column="score"), tokenizer
    )
    assert td.kind == "regression" and td.is_regression and td.num_labels == 1
    assert td.label_names is None and td.metric_names == ("pearson", "spearman")
    b = next(iter(td.eval_iterator()))
    assert b["labels"].dtype == np.float32 and b["labels"][0] == 2.25


def test_datasets_with_class_labels(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    feats = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    ds = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"sentence": ["good", "bad"], "label": [1, 0]}, feats),
        validation=datasets.Dataset.from_dict({"sentence": ["great"], "label": [1]}, feats),
    )
    ds.save_to_disk(str(tmp_path / "ds"))
    c = config(
        tmp_path, "", "", source="hf", hf_disk_path=str(tmp_path / "ds"), text_column="sentence"
    )
    td = build(c, tokenizer)
    assert td.label_names == ("neg", "pos")  # the ClassLabel order, not sorted by count
    assert int(next(iter(td.eval_iterator()))["labels"][0]) == 1


# ---------------------------------------------------------------- tagging
CONLL_TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def test_conll_reading_tag_order_and_first_piece_labels(tmp_path, tokenizer):
    train = write(tmp_path / "train.conll", CONLL_TRAIN)
    dev = write(tmp_path / "dev.txt", "Peter X X B-PER\nlives X X O\nin X X O\nParis X X B-LOC\n")
    with pytest.raises(TaskDataError, match=rf"{dev}:4: dev label 'B-LOC' does not occur"):
        build(config(tmp_path, train, dev, task_kind="tagging"), tokenizer)
    labels = "O,B-LOC,B-MISC,B-ORG,B-PER,I-PER"
    td = build(config(tmp_path, train, dev, task_kind="tagging", labels=labels), tokenizer)
    assert td.kind == "tagging" and td.label_names == tuple(labels.split(","))
    assert td.metric_names == ("precision", "recall", "f1", "accuracy")
    td = build(config(tmp_path, train, train, task_kind="tagging"), tokenizer)
    # O first, then by type, B- before I-.
    assert td.label_names == ("O", "B-MISC", "B-ORG", "B-PER", "I-PER")
    b = next(iter(td.eval_iterator()))
    assert b["labels"].shape == (2, 16) and b["labels"].dtype == np.int32
    for row in range(2):
        pieces = decode_row(tokenizer, b["input_ids"][row])
        tags = [td.label_names[t] if t >= 0 else None for t in b["labels"][row][: len(pieces)]]
        first = [t for p, t in zip(pieces, tags) if t is not None]
        # Labelled exactly at [CLS]-free, non-## pieces: each word's first piece.
        assert [p for p, t in zip(pieces, tags) if t is not None] == [
            p for p in pieces if not p.startswith("##") and p not in ("[CLS]", "[SEP]")
        ]
        words = (
            ["B-ORG", "O", "B-MISC", "O"] if b["example_index"][row] == 0 else ["B-PER", "I-PER"]
        )
        assert first == words


def test_tagging_evaluator_scores_every_word_and_cut_words_are_O(tmp_path, tokenizer):
    words = " ".join(["peter"] + ["the"] * 20 + ["anna"])
    rows = [{"tokens": words.split(), "tags": ["B-PER"] + ["O"] * 20 + ["B-PER"]}]
    train = write(tmp_path / "t.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    c = config(tmp_path, train, train, task_kind="tagging")
    td = build(c, tokenizer)
    # 14 pieces fit between [CLS] and [SEP]; 8 words are cut, in each split (the same file).
    assert td.report.notes["words cut off by max_seq_length (predicted O, scored)"] == 2 * 8
    ev = td.evaluator()
    for b in td.eval_iterator():
        logits = np.zeros((*b["labels"].shape, 2), np.float32)
        logits[..., td.label_names.index("B-PER")] = 1.0  # B-PER everywhere the model sees
        ev.add(b, logits)
    # Seen: words 0-13, all predicted B-PER; 14-21 cut off, predicted O. Gold entities:
    # word 0 and word 21 (cut off). Predicted: 14 single-word entities, 1 correct.
    got = ev.result()
    assert got["precision"] == pytest.approx(1 / 14) and got["recall"] == pytest.approx(1 / 2)
    assert got["accuracy"] == pytest.approx((1 + 7) / 22)  # word 0, and cut words 14-20


def test_words_without_pieces_become_unk(tmp_path, tokenizer):
    row = {"tokens": ["peter", "\u200b", "paris"], "tags": ["B-PER", "O", "B-LOC"]}
    train = write(tmp_path / "t.jsonl", json.dumps(row) + "\n")
    td = build(config(tmp_path, train, train, task_kind="tagging"), tokenizer)
    b = next(iter(td.eval_iterator()))
    assert decode_row(tokenizer, b["input_ids"][0]) == ["[CLS]", "peter", "[UNK]", "paris", "[SEP]"]
    assert (b["labels"][0][1:4] >= 0).all()


def test_tagging_from_datasets_keeps_the_class_label_order(tmp_path, tokenizer):
    datasets = pytest.importorskip("datasets")
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    feats = datasets.Features(
        {
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names)),
        }
    )
    rows = {"tokens": [["peter", "smith", "visited", "paris"]], "ner_tags": [[1, 2, 0, 3]]}
    split = datasets.Dataset.from_dict(rows, feats)
    datasets.DatasetDict(train=split, validation=split).save_to_disk(str(tmp_path / "ds"))
    c = config(
        tmp_path, "", "", source="hf", hf_disk_path=str(tmp_path / "ds"), task_kind="tagging"
    )
    with pytest.raises(
        TaskDataError,
        match=r"no column 'tags' \(data.tags_column\); columns found: \['tokens', 'ner_tags'\]",
    ):
        build(c, tokenizer)
    c.tags_column = "ner_tags"
    td = build(c, tokenizer)
    assert td.label_names == tuple(names)
    assert next(iter(td.eval_iterator()))["labels"][0][1:5].tolist() == [1, 2, 0, 3]


def test_non_bio_tags_report_accuracy_only(tmp_path, tokenizer):
    train = write(tmp_path / "pos.conll", "the DT\nfilm NN\n\ngood JJ\n")
    td = build(config(tmp_path, train, train, task_kind="tagging"), tokenizer)
    assert td.label_names == ("DT", "JJ", "NN") and td.metric_names == ("accuracy",)


# ---------------------------------------------------------------- bad input
BAD = {
    "missing column": (
        "train.csv",
        "sentence,label\ngood,pos\n",
        "dev.csv",
        "sentence,label\nbad,neg\n",
        {},
        r"no column 'text' \(data.text_column\); columns found: \['sentence', 'label'\]",
    ),
    "dev label unseen": (
        "train.csv",
        "text,label\ngood,pos\nbad,neg\n",
        "dev.csv",
        "text,label\nfine,pos\nokay,neutral\n",
        {},
        r"dev.csv:3: dev label 'neutral' does not occur in the training data .*\['neg', 'pos'\]",
    ),
    "empty split": (
        "train.csv",
        "text,label\ngood,pos\nbad,neg\n",
        "dev.csv",
        "text,label\n",
        {},
        r"dev.csv: the dev split has no examples",
    ),
    "mixed label types": (
        "train.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": "pos"}\n',
        "dev.jsonl",
        '{"text": "a", "label": 1}\n',
        {},
        r"mixes label types: numbers \(e.g. '1' at .*train.jsonl:1\); strings \(e.g. 'pos' at "
        r".*train.jsonl:2\)",
    ),
    "non-number in a regression column": (
        "train.csv",
        "text,label\ngood,4.5\nbad,high\n",
        "dev.csv",
        "text,label\nfine,1\n",
        {"task_kind": "regression"},
        r"train.csv:3: regression label 'high' in column 'label' is not a finite number",
    ),
    "fractional class label": (
        "train.csv",
        "text,label\ngood,0.5\nbad,1\n",
        "dev.csv",
        "text,label\nfine,1\n",
        {},
        r"train.csv:2: label 0.5 is not a class id.*task_kind='regression'",
    ),
    "wrong field count": (
        "train.tsv",
        "text\tlabel\ngood\tpos\tx\n",
        "dev.tsv",
        "text\tlabel\nbad\tneg\n",
        {},
        r"train.tsv:2: 3 tab-separated fields, the header has 2",
    ),
    "malformed conll line": (
        "train.conll",
        "EU B-ORG\nrejects O\n\nPeter\n",
        "dev.conll",
        "EU B-ORG\n",
        {"task_kind": "tagging"},
        r"train.conll:4: 1 column; a CoNLL line is 'word ... tag'",
    ),
    "inconsistent conll columns": (
        "train.conll",
        "EU NNP B-ORG\nNew York NNP B-LOC\n",
        "dev.conll",
        "EU NNP B-ORG\n",
        {"task_kind": "tagging"},
        r"train.conll:2: 4 columns, but the file's first word line \(.*train.conll:1\) has 3",
    ),
    "one class only": (
        "train.csv",
        "text,label\ngood,pos\n",
        "dev.csv",
        "text,label\nfine,pos\n",
        {},
        r"only the label \['pos'\]; a classifier needs at least two classes",
    ),
    "bad json line": (
        "train.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n',
        "dev.jsonl",
        '{"text": "a", "label": 1}\n',
        {},
        r"train.jsonl:2: not valid JSON",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_error_and_caches_nothing(case, tmp_path, tokenizer):
    train_name, train_text, dev_name, dev_text, fields, message = BAD[case]
    train = write(tmp_path / train_name, train_text)
    dev = write(tmp_path / dev_name, dev_text)
    with pytest.raises(TaskDataError, match=message) as e:
        build(config(tmp_path, train, dev, **fields), tokenizer)
    assert "\n" not in str(e.value)
    assert cache_entries(tmp_path) == []  # no entry, no temporary directory


def test_skip_bad_lines_counts_them(tmp_path, tokenizer):
    train = write(tmp_path / "train.tsv", "text\tlabel\ngood\tpos\tx\nbad\tneg\nfine\tpos\n")
    c = config(tmp_path, train, train, on_bad_line="skip")
    td = build(c, tokenizer)
    assert td.report.notes["malformed rows skipped"] == 2  # once per split read
    assert td.eval_size() == 2
    conll_file = write(tmp_path / "t.conll", "EU B-ORG\nrejects\n\nPeter B-PER\nsaid O\n")
    c = config(tmp_path, conll_file, conll_file, task_kind="tagging", on_bad_line="skip")
    td = build(c, tokenizer)
    assert td.report.notes["sentences with a malformed line skipped"] == 2
    assert td.report.where["sentences with a malformed line skipped"][0] == f"{conll_file}:1"
    assert td.eval_size() == 1 and td.label_names == ("O", "B-PER")


def test_config_errors_name_the_field(tmp_path, tokenizer):
    c = config(tmp_path, "", "")
    with pytest.raises(DataConfigError, match="data.train_file"):
        build(c, tokenizer)
    c = config(tmp_path, tmp_path / "a.xlsx", tmp_path / "b.csv")
    with pytest.raises(DataConfigError, match=r"data.train_file: .*one of .csv, .tsv"):
        build(c, tokenizer)
    c = config(tmp_path, tmp_path / "a.csv", tmp_path / "b.csv", task_kind="ner")
    with pytest.raises(DataConfigError, match="data.task_kind"):
        build(c, tokenizer)
    train = write(tmp_path / "t.csv", "text,label\na,1\nb,2\n")
    with pytest.raises(DataConfigError, match="data.labels"):
        build(config(tmp_path, train, train, labels="a,,b"), tokenizer)
    with pytest.raises(TaskDataError, match=r"label '2' is not one of data.labels \['1', '3'\]"):
        build(config(tmp_path, train, train, labels="1,3"), tokenizer)
    assert cache_entries(tmp_path) == []


def test_cached_run_keeps_labels_and_a_changed_file_is_a_new_entry(tmp_path, tokenizer):
    train = write(tmp_path / "train.csv", "text,label\ngood,pos\nbad,neg\n")
    first = build(config(tmp_path, train, train), tokenizer)
    (entry,) = cache_entries(tmp_path)
    again = build(config(tmp_path, train, train), tokenizer)  # from the cache
    assert cache_entries(tmp_path) == [entry]
    assert again.label_names == first.label_names == ("neg", "pos")
    assert again.report.counts == first.report.counts
    write(train, "text,label\nchanged,x\nagain,y\n")
    assert build(config(tmp_path, train, train), tokenizer).label_names == ("x", "y")
    assert len(cache_entries(tmp_path)) == 2
