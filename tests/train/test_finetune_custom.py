"""Fine-tuning on the user's own files, one run per new task kind, through the trainer.

Each run starts from a model directory ("my own BERT": a random micro BERT
with its vocabulary) and a file written here, at runlocal size. The
official metrics the run reports (results.json) are then recomputed from the
saved model alone: the dev file tokenized by transformers' `BertTokenizerFast`
(not the data layer), the model run with `Model.apply`, the metrics computed
here in numpy / scipy (entity F1 with an IOB2 chunker written here).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import transformers
from scipy import stats

from mbert_jax.data.tokenizer import train_wordpiece
from mbert_jax.models import Model, io, variants
from mbert_jax.models.model import init_params
from mbert_jax.train.cli import apply_overrides, load_config_module, run_config

SEQ = 32
TOPICS = {
    "sports": "goal match team score coach league",
    "music": "song guitar band album drum concert",
    "food": "bread soup cheese apple dinner bake",
    "tech": "code laptop server chip cloud robot",
}
FILLER = ["the", "a", "very", "new", "old", "some"]
PER, LOC = ["peter", "anna", "john", "maria"], ["paris", "berlin", "rome"]
OTHER = ["went", "to", "saw", "and", "in", "a", "visit", "with"]
GOOD, BAD = ["great", "fine", "lovely"], ["awful", "dull", "poor"]


def _all_words():
    words = [*FILLER, *PER, *LOC, *OTHER, *GOOD, *BAD]
    return words + [w for t in TOPICS.values() for w in t.split()]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A random tinybert4_micro model directory with a vocabulary of the test's words."""
    root = tmp_path_factory.mktemp("bert")
    tok = train_wordpiece([" ".join(_all_words())], 200, min_frequency=1)
    vocab = tok.save(root / "vocab")
    cfg = variants.get("tinybert4_micro", vocab_size=tok.vocab_size)
    params = init_params(Model(cfg, heads=()), jax.random.PRNGKey(0))
    return io.save_model(root / "model", cfg, (), params, vocab)


def finetune(tmp_path, bert, steps=40, **data):
    module, arg = load_config_module("configs/finetune.py:runlocal,task=custom")
    overrides = {
        "init_from": str(bert),
        "data.cache_dir": str(tmp_path / "cache"),
        "data.max_seq_length": SEQ,
        "train.steps": steps,
        "train.eval_every": steps,
        "train.checkpoint_every": steps,
        "train.log_every": steps,
    }
    overrides.update({f"data.{k}": v for k, v in data.items()})
    config = apply_overrides(module.get_config(arg), overrides)
    workdir = tmp_path / "run"
    run_config(config, str(workdir))
    return json.loads((workdir / "results.json").read_text())["eval"], workdir / "model"


def predict(model_dir, encodings):
    """The saved model's outputs on transformers-tokenized inputs."""
    config, heads, params = io.load_model(model_dir)
    enc = {k: np.asarray(encodings[k], np.int32) for k in ("input_ids", "attention_mask")}
    types = np.asarray(encodings["token_type_ids"], np.int32)
    model = Model(config, heads)
    out = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t))(
        params, enc["input_ids"], enc["attention_mask"], types
    )
    return config, heads, out


def hf_tokenizer(model_dir):
    tok = transformers.BertTokenizerFast.from_pretrained(str(model_dir), do_lower_case=True)
    assert len(tok) == io.load_config(model_dir)[0].vocab_size  # it read vocab.txt
    return tok


def write_csv(path, header, rows):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- multi-class, CSV
def topic_rows(rng, n):
    rows = []
    for _ in range(n):
        label = rng.choice(list(TOPICS))
        words = [*rng.choice(TOPICS[label].split(), 3), *rng.choice(FILLER, 2)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


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
def score_rows(rng, n):
    rows = []
    for _ in range(n):
        k = int(rng.integers(0, 5))
        words = [*rng.choice(GOOD, k), *rng.choice(BAD, 4 - k)]
        rng.shuffle(words)
        rows.append((" ".join(words), f"{k * 1.25:.2f}"))
    return rows


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
def pair_rows(rng, n):
    rows = []
    topics = ["sports", "food"]
    for _ in range(n):
        a, b = rng.choice(topics), rng.choice(topics)
        rows.append(
            {
                "first": " ".join(rng.choice(TOPICS[a].split(), 3)),
                "second": " ".join(rng.choice(TOPICS[b].split(), 3)),
                "label": "same" if a == b else "different",
            }
        )
    return rows


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
def tagged_sentence(rng):
    words, tags = [], []
    for _ in range(int(rng.integers(3, 8))):
        r = rng.random()
        if r < 0.2:
            words += [rng.choice(PER), rng.choice(PER)]
            tags += ["B-PER", "I-PER"]
        elif r < 0.35:
            words.append(rng.choice(LOC))
            tags.append("B-LOC")
        else:
            words.append(rng.choice(OTHER))
            tags.append("O")
    return words, tags


def write_conll(path, sentences):
    with open(path, "w") as f:
        f.write("-DOCSTART- -X- O\n\n")
        for words, tags in sentences:
            f.write("".join(f"{w} NN {t}\n" for w, t in zip(words, tags)) + "\n")
    return path


def iob2_entities(tags):
    """(type, start, end) of IOB2 tags; an I- that does not continue an entity opens one."""
    out, current = set(), None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, kind = tag.partition("-")
        if current is not None and (prefix != "I" or kind != current[0]):
            out.add((current[0], current[1], i - 1))
            current = None
        if prefix == "B" or (prefix == "I" and current is None):
            current = (kind, i)
    return out


@pytest.mark.slow
def test_conll_tagging(tmp_path, bert):
    rng = np.random.default_rng(3)
    train = write_conll(tmp_path / "train.conll", [tagged_sentence(rng) for _ in range(200)])
    dev_sentences = [tagged_sentence(rng) for _ in range(40)]
    dev = write_conll(tmp_path / "dev.conll", dev_sentences)
    results, model_dir = finetune(
        tmp_path, bert, steps=60, train_file=str(train), eval_file=str(dev), task_kind="tagging"
    )
    enc = hf_tokenizer(model_dir)(
        [w for w, _ in dev_sentences],
        is_split_into_words=True,
        padding="max_length",
        max_length=SEQ,
    )
    config, heads, out = predict(model_dir, enc)
    assert heads == ("token_classifier",)
    assert config.label_names == ("O", "B-LOC", "B-PER", "I-PER")
    logits = np.asarray(out.token_logits)
    found = expected = correct = right = words = 0
    for i, (ws, gold) in enumerate(dev_sentences):
        word_ids = enc.word_ids(i)
        pred = ["O"] * len(ws)
        for pos, w in enumerate(word_ids):
            if w is not None and (pos == 0 or word_ids[pos - 1] != w):
                pred[w] = config.label_names[int(logits[i, pos].argmax())]
        g, p = iob2_entities(gold), iob2_entities(pred)
        found, expected, correct = found + len(p), expected + len(g), correct + len(g & p)
        right += sum(a == b for a, b in zip(gold, pred))
        words += len(ws)
    precision, recall = correct / found, correct / expected
    assert results["precision"] == pytest.approx(precision, abs=1e-9)
    assert results["recall"] == pytest.approx(recall, abs=1e-9)
    assert results["f1"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-9)
    assert results["accuracy"] == pytest.approx(right / words, abs=1e-9)
    assert results["f1"] > 0.3  # predicting O everywhere scores 0
