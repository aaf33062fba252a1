"""GLUE readers on files in the published layouts, features, task batches, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from mbert_jax.data import config as config_lib
from mbert_jax.data import tasks
from mbert_jax.data.report import InputReport
from mbert_jax.data.tasks import glue
from mbert_jax.data.tokenizer import train_wordpiece

COLA = [
    "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.",
    "gj04\t0\t*\tThey drank the pub.",
    "bc01\t1\t\tThe sailors rode the breeze clear of the rocks.",
]
MNLI_TRAIN_HEAD = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
    "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
MNLI_DEV_HEAD = MNLI_TRAIN_HEAD.replace("label1\t", "label1\tlabel2\tlabel3\tlabel4\tlabel5\t")
STSB_HEAD = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
MRPC_HEAD = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"


def mnli_row(i, a, b, label, dev=False):
    labels = [label] * (5 if dev else 1)
    return "\t".join(
        [
            str(i),
            "31193",
            f"{i}n",
            "government",
            "( x )",
            "( y )",
            "(ROOT x)",
            "(ROOT y)",
            a,
            b,
            *labels,
            label,
        ]
    )


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cola_has_no_header(tmp_path):
    write(tmp_path / "train.tsv", COLA)
    report = InputReport()
    ex = glue.read_split(glue.get_task("CoLA"), tmp_path, "train", report)
    assert [e.label for e in ex] == [1, 0, 1]
    assert ex[1].text_a == "They drank the pub." and ex[1].text_b is None
    assert ex[0].guid == "train-1" and report.counts == {"train examples": 3}


def test_mnli_train_and_dev_widths_differ(tmp_path):
    write(
        tmp_path / "train.tsv",
        [MNLI_TRAIN_HEAD, mnli_row(0, "A man eats.", "Someone eats.", "entailment")],
    )
    write(
        tmp_path / "dev_matched.tsv",
        [
            MNLI_DEV_HEAD,
            mnli_row(0, "P.", "H.", "neutral", True),
            mnli_row(1, "P2.", "H2.", "contradiction", True),
        ],
    )
    task = glue.get_task("mnli")
    train = glue.read_split(task, tmp_path, "train", InputReport())
    dev = glue.read_split(task, tmp_path, "dev_matched", InputReport())
    assert (train[0].text_a, train[0].text_b, train[0].label) == ("A man eats.", "Someone eats.", 1)
    assert [e.label for e in dev] == [2, 0]  # BERT's order: contradiction, entailment, neutral
    # A train row in the dev file is one column short per missing label: an error.
    write(tmp_path / "dev_matched.tsv", [MNLI_DEV_HEAD, mnli_row(0, "P.", "H.", "neutral")])
    with pytest.raises(
        glue.TaskDataError, match=r"dev_matched.tsv:2: 12 tab-separated columns, expected 16"
    ):
        glue.read_split(task, tmp_path, "dev_matched", InputReport())


def test_stsb_is_regression_and_mrpc_is_a_pair(tmp_path):
    write(
        tmp_path / "train.tsv",
        [
            STSB_HEAD,
            "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
            "An air plane is taking off.\t5.000",
        ],
    )
    ex = glue.read_split(glue.get_task("sts-b"), tmp_path, "train", InputReport())
    assert ex[0].label == 5.0 and ex[0].text_b == "An air plane is taking off."
    write(
        tmp_path / "dev.tsv",
        [
            MRPC_HEAD,
            "1\t702876\t702977\tAmrozi accused his brother.\tReferring to him, Amrozi accused.",
        ],
    )
    ex = glue.read_split(glue.get_task("mrpc"), tmp_path, "dev", InputReport())
    assert (ex[0].label, ex[0].text_a) == (1, "Amrozi accused his brother.")


def test_bad_rows_error_or_are_skipped_and_counted(tmp_path):
    bad = COLA + ["gj04\t1\tonly three columns", "gj04\tmaybe\t\tA sentence."]
    write(tmp_path / "train.tsv", bad)
    task = glue.get_task("cola")
    with pytest.raises(
        glue.TaskDataError, match=r"train.tsv:4: 3 tab-separated columns, expected 4"
    ):
        glue.read_split(task, tmp_path, "train", InputReport())
    report = InputReport()
    ex = glue.read_split(task, tmp_path, "train", report, on_bad_line="skip")
    assert len(ex) == 3
    (reason,) = report.notes
    assert report.notes[reason] == 2 and report.where[reason][1].endswith("train.tsv:5")
    write(tmp_path / "train.tsv", COLA[:1] + ["gj04\tmaybe\t\tA sentence."])
    with pytest.raises(
        glue.TaskDataError, match=r"train.tsv:2: label 'maybe' is not one of \['0', '1'\]"
    ):
        glue.read_split(task, tmp_path, "train", InputReport())
    write(tmp_path / "train.tsv", [])
    with pytest.raises(glue.TaskDataError, match="no examples"):
        glue.read_split(task, tmp_path, "train", InputReport())
    with pytest.raises(glue.TaskDataError, match="does not exist"):
        glue.read_split(task, tmp_path, "dev", InputReport())
    (tmp_path / "train.tsv").write_bytes(COLA[0].encode() + b"\ngj04\t1\t\tcaf\xe9.\n")
    with pytest.raises(glue.TaskDataError, match=r"train.tsv:2: not valid UTF-8 \(byte 0xe9\)"):
        glue.read_split(task, tmp_path, "train", InputReport())


def test_features_and_longest_first_truncation():
    tok = train_wordpiece(["one two three four five six seven eight nine"], 60, min_frequency=1)
    examples = [
        glue.Example("x-1", "one two three four five six", "seven eight", 1),
        glue.Example("x-2", "nine", None, 0),
    ]
    report = InputReport()
    f = glue.featurize(examples, tok, 8, report)
    ids = lambda words: tok.encode([words])[0].tolist()
    cls, sep = tok.cls_id, tok.sep_id
    # Budget 5: pop from the longer side's end: a 6 -> 3 (b keeps 2).
    assert f.input_ids[0].tolist() == [cls, *ids("one two three"), sep, *ids("seven eight"), sep]
    assert f.input_ids[1].tolist() == [cls, *ids("nine"), sep, 0, 0, 0, 0, 0]
    assert f.lengths.tolist() == [8, 3] and f.len_a.tolist() == [5, 3]
    assert f.labels.tolist() == [1, 0]
    assert list(report.notes.values()) == [1]
    assert glue.truncate_pair_end([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])


def test_datasets_glue_labels_map_by_name(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
            "idx": datasets.Value("int32"),
        }
    )
    rows = {
        "premise": ["p0", "p1", "p2"],
        "hypothesis": ["h0", "h1", "h2"],
        "label": [0, 1, 2],
        "idx": [0, 1, 2],
    }
    dd = datasets.DatasetDict(
        {"validation_matched": datasets.Dataset.from_dict(rows, features=features)}
    )
    dd.save_to_disk(str(tmp_path / "mnli"))
    ex = glue.read_hf(
        glue.get_task("mnli"),
        datasets.load_from_disk(str(tmp_path / "mnli")),
        "dev_matched",
        InputReport(),
    )
    # HF: entailment 0, neutral 1, contradiction 2; BERT: contradiction, entailment, neutral.
    assert [e.label for e in ex] == [1, 2, 0]
    assert (ex[0].text_a, ex[0].text_b) == ("p0", "h0")


MRPC_ROWS = [
    ("1", "The cat sat on the mat.", "A cat was sitting on the mat."),
    ("0", "Stocks fell sharply today.", "The weather was pleasant."),
    ("1", "He bought a new car.", "He purchased a new automobile."),
    ("0", "The meeting was cancelled.", "Birds migrate in winter."),
    ("1", "She reads every night.", "Every night she reads."),
]


def mrpc_dir(tmp_path, n_dev=5):
    d = tmp_path / "MRPC"
    d.mkdir()
    rows = [f"{q}\t{i}\t{i + 100}\t{a}\t{b}" for i, (q, a, b) in enumerate(MRPC_ROWS)]
    write(d / "train.tsv", [MRPC_HEAD, *rows])
    write(d / "dev.tsv", [MRPC_HEAD, *rows[:n_dev]])
    return d


def task_config(tmp_path, d, task="mrpc"):
    c = config_lib.task_data_defaults(task)
    c.data_dir = str(d)
    c.cache_dir = str(tmp_path / "cache")
    c.max_seq_length = 24
    c.global_batch_size = 2
    c.num_threads = 0
    return c


def toy_tokenizer():
    return train_wordpiece([t for _, a, b in MRPC_ROWS for t in (a, b)], 150, min_frequency=1)


def test_task_batches_and_evaluation(tmp_path):
    c = task_config(tmp_path, mrpc_dir(tmp_path))
    tok = toy_tokenizer()
    data = tasks.build_task_data(
        c, tokenizer=tok, process_index=0, process_count=1, log=lambda s: None
    )
    assert (data.num_labels, data.is_regression, data.metric_names) == (
        2,
        False,
        ("accuracy", "f1"),
    )
    batch = next(data.train)
    assert set(batch) == set(tasks.task_batch_spec(c, False))
    assert batch["labels"].dtype == np.int32 and batch["input_ids"].shape == (2, 24)
    n = batch["attention_mask"].sum(1)
    assert np.all(batch["input_ids"][np.arange(2), n - 1] == tok.sep_id)
    eval_batches = list(data.eval_iterator())
    assert len(eval_batches) == 3 and eval_batches[-1]["valid"].tolist() == [1.0, 0.0]
    labels = np.array([int(q) for q, _, _ in MRPC_ROWS])
    ev = data.evaluator()
    for b in eval_batches:
        logits = np.eye(2)[labels[b["example_index"]]]  # perfect predictions
        logits[b["valid"] == 0] = [0, 100]  # padding rows must not count
        ev.add(b, logits)
    assert ev.result() == {"accuracy": 1.0, "f1": 1.0}
    partial = data.evaluator()
    partial.add(eval_batches[0], np.zeros((2, 2)))
    with pytest.raises(ValueError, match="predictions for 2 of 5 rows"):
        partial.result()
    with pytest.raises(ValueError, match="evaluated twice"):
        partial.add(eval_batches[0], np.zeros((2, 2)))


def test_task_eval_is_the_same_over_two_hosts(tmp_path):
    c = task_config(tmp_path, mrpc_dir(tmp_path))
    tok = toy_tokenizer()
    one = tasks.build_task_data(
        c, tokenizer=tok, process_index=0, process_count=1, log=lambda s: None
    )
    hosts = [
        tasks.build_task_data(
            c, tokenizer=tok, process_index=p, process_count=2, log=lambda s: None
        )
        for p in range(2)
    ]
    for t, full in enumerate(one.eval_iterator()):
        parts = [list(h.eval_iterator())[t] for h in hosts]
        for k in full:
            np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), full[k])
    a, b = next(one.train), [next(h.train) for h in hosts]
    np.testing.assert_array_equal(a["input_ids"], np.concatenate([x["input_ids"] for x in b]))


def test_regression_task_and_missing_vocab(tmp_path):
    d = tmp_path / "STS-B"
    d.mkdir()
    rows = [
        f"{i}\tg\tf\ty\t{i}\tn\tn\tSentence number {i}.\tAnother one {i}.\t{i * 1.25}"
        for i in range(4)
    ]
    write(d / "train.tsv", [STSB_HEAD, *rows])
    write(d / "dev.tsv", [STSB_HEAD, *rows])
    c = task_config(tmp_path, d, "stsb")
    tok = train_wordpiece([r for r in rows], 150, min_frequency=1)
    data = tasks.build_task_data(
        c, tokenizer=tok, process_index=0, process_count=1, log=lambda s: None
    )
    assert data.is_regression and data.num_labels == 1
    ev = data.evaluator()
    for b in data.eval_iterator():
        ev.add(b, (b["labels"] * 2 + 1)[:, None])  # a linear function: correlations 1
    res = ev.result()
    assert res["pearson"] == pytest.approx(1.0) and res["spearman"] == pytest.approx(1.0)
    with pytest.raises(config_lib.DataConfigError, match="data.vocab_file"):
        tasks.build_task_data(c, process_index=0, process_count=1)


def test_task_from_a_saved_datasets_glue(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "sentence1": datasets.Value("string"),
            "sentence2": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]),
            "idx": datasets.Value("int32"),
        }
    )
    rows = {
        "sentence1": [a for _, a, _ in MRPC_ROWS],
        "sentence2": [b for _, _, b in MRPC_ROWS],
        "label": [int(q) for q, _, _ in MRPC_ROWS],
        "idx": list(range(5)),
    }
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "validation": ds}).save_to_disk(str(tmp_path / "glue_mrpc"))
    c = task_config(tmp_path, "")
    c.source, c.hf_disk_path = "hf", str(tmp_path / "glue_mrpc")
    data = tasks.build_task_data(
        c, tokenizer=toy_tokenizer(), process_index=0, process_count=1, log=lambda s: None
    )
    from_tsv = tasks.build_task_data(
        task_config(tmp_path, mrpc_dir(tmp_path)),
        tokenizer=toy_tokenizer(),
        process_index=0,
        process_count=1,
        log=lambda s: None,
    )
    a, b = data._eval["dev"][1], from_tsv._eval["dev"][1]
    for k in ("input_ids", "labels", "lengths", "len_a"):
        np.testing.assert_array_equal(a[k], b[k])
