"""Small labelled task files, a "my own BERT" directory, runs and independent metrics.

Shared by the fine-tuning tests of the user's own data
(tests/train/test_finetune_custom.py), the task-distillation tests
(tests/distill/test_task_distill.py) and the pruning tests of every kind
(tests/prune/test_recipe_kinds.py): the files are written here (CSV with
string labels, regression CSV, sentence pairs in JSON lines, CoNLL tagging,
SQuAD v1.1 JSON), the runs go through the same entry point as the command
line, and the metrics of a saved model are recomputed from the model
directory alone: the dev data tokenized by transformers' `BertTokenizerFast`
(not the data layer), the model run with `Model.apply`, the metrics
computed here in numpy / scipy.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import jax
import numpy as np
import pytest
import transformers
from scipy import stats

from mbert_jax.data.tokenizer import train_wordpiece
from mbert_jax.models import Model, io, variants
from mbert_jax.models.model import init_params
from mbert_jax.train.cli import run_config
from mbert_jax.train.config import apply_overrides, load_config_module

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
QUESTION = ["who", "where", "did", "go", "?", "."]


def all_words():
    words = [*FILLER, *PER, *LOC, *OTHER, *GOOD, *BAD, *QUESTION]
    return words + [w for t in TOPICS.values() for w in t.split()]


def make_bert(root, variant="tinybert4_micro", heads=(), **overrides):
    """A random `variant` model directory with a vocabulary of the test's words."""
    tok = train_wordpiece([" ".join(all_words())], 200, min_frequency=1)
    vocab = tok.save(root / "vocab")
    cfg = variants.get(variant, vocab_size=tok.vocab_size, **overrides)
    params = init_params(Model(cfg, heads=heads), jax.random.PRNGKey(0))
    return io.save_model(root / "model", cfg, heads, params, vocab)


def topic_task_and_classifier(root, num_layers):
    """A topic task (96 train, 32 dev rows of CSV) and a random micro BERT classifier of its
    labels: `num_layers` blocks, no dropout, the classifier scaled up so that its logits
    are far from uniform (a distilling student has something to fit). -> (model dir, train,
    dev)."""
    rng = np.random.default_rng(0)
    train = write_csv(root / "train.csv", "text,label", topic_rows(rng, 96))
    dev = write_csv(root / "dev.csv", "text,label", topic_rows(rng, 32))
    labels = tuple(sorted(TOPICS))
    bert = make_bert(
        root,
        "bert_base_micro",
        heads=("classifier",),
        num_layers=num_layers,
        num_labels=len(labels),
        label_names=labels,
    )
    cfg, heads, params = io.load_model(bert)
    cfg = cfg.replace(hidden_dropout=0.0, attention_dropout=0.0)
    params["classifier"]["dense"]["kernel"] = params["classifier"]["dense"]["kernel"] * 50.0
    return io.save_model(root / "teacher", cfg, heads, params, io.vocab_path(bert)), train, dev


def run(config_spec, workdir, overrides):
    """Train `configs/...py:arg` with `overrides` (dotted keys); (results' eval, model dir)."""
    module, arg = load_config_module(config_spec)
    config = apply_overrides(module.get_config(arg), overrides)
    run_config(config, str(workdir))
    return json.loads((workdir / "results.json").read_text())["eval"], workdir / "model"


def finetune(tmp_path, bert, steps=40, **data):
    """configs/finetune.py:runlocal,task=custom from `bert` on `data.*` fields."""
    task = data.pop("task", "custom")
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
    return run(f"configs/finetune.py:runlocal,task={task}", tmp_path / "run", overrides)


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


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
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


def macro_f1(pred, gold):
    f1 = []
    for c in np.union1d(pred, gold):
        tp = np.sum((pred == c) & (gold == c))
        f1.append(2 * tp / (np.sum(pred == c) + np.sum(gold == c)))
    return float(np.mean(f1))


def classification_metrics(model_dir, texts, labels, pairs=None):
    """accuracy and f1_macro of a saved classifier on (text[, pair], label name) rows."""
    tok = hf_tokenizer(model_dir)
    args = (texts,) if pairs is None else (texts, pairs)
    enc = tok(*args, padding="max_length", max_length=SEQ, truncation=True)
    config, heads, out = predict(model_dir, enc)
    assert heads == ("classifier",)
    pred = np.asarray(out.logits).argmax(-1)
    gold = np.array([config.label_names.index(label) for label in labels])
    return config, {"accuracy": float(np.mean(pred == gold)), "f1_macro": macro_f1(pred, gold)}


# ---------------------------------------------------------------- regression, CSV
def score_rows(rng, n):
    rows = []
    for _ in range(n):
        k = int(rng.integers(0, 5))
        words = [*rng.choice(GOOD, k), *rng.choice(BAD, 4 - k)]
        rng.shuffle(words)
        rows.append((" ".join(words), f"{k * 1.25:.2f}"))
    return rows


def regression_metrics(model_dir, texts, scores):
    enc = hf_tokenizer(model_dir)(texts, padding="max_length", max_length=SEQ)
    config, heads, out = predict(model_dir, enc)
    assert heads == ("classifier",) and config.num_labels == 1
    pred = np.asarray(out.logits)[:, 0]
    gold = np.asarray(scores, np.float64)
    return config, {
        "pearson": float(stats.pearsonr(pred, gold)[0]),
        "spearman": float(stats.spearmanr(pred, gold)[0]),
    }


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


def tagging_metrics(model_dir, sentences):
    """Entity precision / recall / F1 and word accuracy of a saved tagger, each word
    tagged at its first piece."""
    enc = hf_tokenizer(model_dir)(
        [w for w, _ in sentences], is_split_into_words=True, padding="max_length", max_length=SEQ
    )
    config, heads, out = predict(model_dir, enc)
    assert heads == ("token_classifier",)
    logits = np.asarray(out.token_logits)
    found = expected = correct = right = words = 0
    for i, (ws, gold) in enumerate(sentences):
        word_ids = enc.word_ids(i)
        pred = ["O"] * len(ws)
        for pos, w in enumerate(word_ids):
            if w is not None and (pos == 0 or word_ids[pos - 1] != w):
                pred[w] = config.label_names[int(logits[i, pos].argmax())]
        g, p = iob2_entities(gold), iob2_entities(pred)
        found, expected, correct = found + len(p), expected + len(g), correct + len(g & p)
        right += sum(a == b for a, b in zip(gold, pred))
        words += len(ws)
    precision = correct / found if found else 0.0
    recall = correct / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return config, {"precision": precision, "recall": recall, "f1": f1, "accuracy": right / words}


# ---------------------------------------------------------------- SQuAD v1.1
def squad_examples(rng, n):
    """(id, question, context, answer) with the answer a word of the context."""
    out = []
    for i in range(n):
        who, other = rng.choice(PER, 2, replace=False)
        where = rng.choice(LOC)
        context = f"{who} went to {where} and {other} saw rome ."
        if rng.random() < 0.5:
            out.append((f"q{i}", f"who went to {where} ?", context, str(who)))
        else:
            out.append((f"q{i}", f"where did {who} go ?", context, str(where)))
    return out


def write_squad(path, examples):
    paragraphs = [
        {
            "context": c,
            "qas": [
                {"id": qid, "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}
            ],
        }
        for qid, q, c, a in examples
    ]
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}
    path.write_text(json.dumps(data))
    return path


def _normalize(s):
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def squad_metrics(model_dir, examples, max_answer_length=30):
    """SQuAD v1.1 exact match and F1 (percentages) of a saved span model: the best
    start <= end pair of context tokens, mapped back by the tokenizer's offsets."""
    tok = hf_tokenizer(model_dir)
    enc = tok(
        [q for _, q, _, _ in examples],
        [c for _, _, c, _ in examples],
        padding="max_length",
        max_length=SEQ,
        return_offsets_mapping=True,
    )
    config, heads, out = predict(model_dir, enc)
    assert heads == ("qa",)
    start, end = np.asarray(out.start_logits), np.asarray(out.end_logits)
    em, f1 = [], []
    for i, (_, _, context, answer) in enumerate(examples):
        ctx = [k for k, s in enumerate(enc.sequence_ids(i)) if s == 1]
        assert ctx and enc.sequence_ids(i)[ctx[-1] + 1] is None  # one window, nothing cut
        best, span = -np.inf, None
        for s in ctx:
            for e in ctx:
                if s <= e < s + max_answer_length and start[i, s] + end[i, e] > best:
                    best, span = start[i, s] + end[i, e], (s, e)
        offsets = enc["offset_mapping"][i]
        text = context[offsets[span[0]][0] : offsets[span[1]][1]]
        p, g = _normalize(text).split(), _normalize(answer).split()
        em.append(float(p == g))
        same = sum((Counter(p) & Counter(g)).values())
        f1.append(0.0 if same == 0 else 2 * same / (len(p) + len(g)))
    return config, {"exact": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


# ------------------------------------------ every task kind, with a fine-tuned teacher
KINDS = ("multiclass", "regression", "pairs", "tagging", "squad")


def write_task(kind, d, rng):
    """(config arg `task=...`, `data.*` fields, metrics of a model directory on the dev split)."""
    n_train, n_dev = 64, 24
    if kind == "multiclass":
        rows, dev = topic_rows(rng, n_train), topic_rows(rng, n_dev)
        fields = dict(
            train_file=str(write_csv(d / "train.csv", "text,topic", rows)),
            eval_file=str(write_csv(d / "dev.csv", "text,topic", dev)),
            label_column="topic",
        )
        texts, labels = [t for t, _ in dev], [y for _, y in dev]
        return "custom", fields, lambda m: classification_metrics(m, texts, labels)
    if kind == "regression":
        rows, dev = score_rows(rng, n_train), score_rows(rng, n_dev)
        fields = dict(
            train_file=str(write_csv(d / "train.csv", "review,score", rows)),
            eval_file=str(write_csv(d / "dev.csv", "review,score", dev)),
            task_kind="regression",
            text_column="review",
            label_column="score",
        )
        texts, scores = [t for t, _ in dev], [float(y) for _, y in dev]
        return "custom", fields, lambda m: regression_metrics(m, texts, scores)
    if kind == "pairs":
        rows, dev = pair_rows(rng, n_train), pair_rows(rng, n_dev)
        fields = dict(
            train_file=str(write_jsonl(d / "train.jsonl", rows)),
            eval_file=str(write_jsonl(d / "dev.jsonl", dev)),
            text_column="first",
            text_pair_column="second",
        )
        first, second, labels = ([r[k] for r in dev] for k in ("first", "second", "label"))
        return "custom", fields, lambda m: classification_metrics(m, first, labels, second)
    if kind == "tagging":
        rows = [tagged_sentence(rng) for _ in range(n_train)]
        dev = [tagged_sentence(rng) for _ in range(n_dev)]
        fields = dict(
            train_file=str(write_conll(d / "train.conll", rows)),
            eval_file=str(write_conll(d / "dev.conll", dev)),
            task_kind="tagging",
        )
        return "custom", fields, lambda m: tagging_metrics(m, dev)
    rows, dev = squad_examples(rng, n_train), squad_examples(rng, n_dev)
    fields = dict(
        train_file=str(write_squad(d / "train.json", rows)),
        eval_file=str(write_squad(d / "dev.json", dev)),
        max_query_length=12,
        n_best_size=SEQ,  # every position: the same search as squad_metrics'
    )
    return "squad_v1", fields, lambda m: squad_metrics(m, dev)


class Tasks:
    """Each kind's files and fine-tuned teacher, made on first use."""

    def __init__(self, root):
        self.root = root
        self.bert = make_bert(root / "bert", "bert_base_micro", heads=("mlm",))
        self._made = {}

    def __call__(self, kind):
        if kind not in self._made:
            d = self.root / kind
            d.mkdir()
            task, fields, metrics = write_task(kind, d, np.random.default_rng(KINDS.index(kind)))
            data = {f"data.{k}": v for k, v in fields.items()}
            data["data.cache_dir"] = str(self.root / "cache")
            data["data.max_seq_length"] = SEQ
            steps = {"train.log_every": 100, "train.checkpoint_every": 100}
            overrides = {"init_from": str(self.bert), "train.steps": 30, **data, **steps}
            overrides["train.eval_every"] = 30
            results, teacher = run(f"configs/finetune.py:runlocal,task={task}", d / "ft", overrides)
            for name, value in metrics(teacher)[1].items():
                assert results[name] == pytest.approx(value, abs=1e-5), name
            self._made[kind] = task, data, metrics, teacher
        return self._made[kind]
