"""The embedded stdlib-documentation corpus and the tasks built from it (`stdlib`, `wordorder`)."""

from __future__ import annotations

import collections
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbert_jax.data import config as config_lib
from mbert_jax.data import default_corpus, pipeline, tasks
from mbert_jax.data.report import InputReport
from mbert_jax.data.tasks import corpus as corpus_task
from mbert_jax.data.tasks import glue

DOCSTRING = """Summary line of the function.

    A longer paragraph explains what the function does. It spans two
    lines and has two sentences.

    Arguments
    ---------
    x, y -- numbers

    >>> f(1, 2)
    3
    >>> f(2, 2)
    4

    Raises ValueError when the numbers are not finite, e.g. nan.
    """


def test_docstrings_become_prose_sentences():
    assert default_corpus.prose_sentences(DOCSTRING) == [
        "Summary line of the function.",
        "A longer paragraph explains what the function does.",
        "It spans two lines and has two sentences.",
        "Raises ValueError when the numbers are not finite, e.g. nan.",
    ]


def test_a_module_gives_one_document_plus_one_per_class():
    path = default_corpus.stdlib_dir() / "json" / "decoder.py"
    docs = default_corpus._module_documents(path, collections.Counter())
    names = [d.name for d in docs]
    assert names[0] == "json.decoder" and "json.decoder.JSONDecoder" in names
    assert all(d.package == "json" for d in docs)
    decoder = docs[names.index("json.decoder.JSONDecoder")]
    assert any("JSON" in s for s in decoder.sentences)


def test_source_files_are_sorted_and_skip_tests():
    files = default_corpus.source_files()
    root = default_corpus.stdlib_dir()
    rel = [p.relative_to(root).as_posix() for p in files]
    assert rel == sorted(rel) and len(rel) > 300
    assert not any(part in ("test", "tests", "site-packages") for r in rel for part in r.split("/"))
    assert default_corpus.fingerprint() == default_corpus.fingerprint()


def corpus_hash() -> str:
    h = hashlib.sha256()
    for d in default_corpus.documents():
        h.update(d.name.encode() + b"\0" + "\n".join(d.sentences).encode() + b"\0")
    return h.hexdigest()


@pytest.mark.slow
def test_corpus_is_large_clean_and_deterministic():
    docs = default_corpus.documents()
    stats = default_corpus.build_stats()
    assert stats["characters"] > 1_500_000 and stats["documents"] > 1500
    for d in docs:
        assert d.sentences
        for s in d.sentences:
            assert s and s == s.strip() and "\n" not in s and "\t" not in s
    code = "from test_default_corpus import corpus_hash; print(corpus_hash())"
    here = str(Path(__file__).parent)
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=here
    )
    assert other.stdout.strip() == corpus_hash()


@pytest.mark.slow
def test_default_source_end_to_end(tmp_path):
    c = config_lib.pretraining_data_defaults()
    c.cache_dir = str(tmp_path)
    c.global_batch_size = 16
    c.num_threads = 0
    logs = []
    data = pipeline.build_pretraining_data(c, process_index=0, process_count=1, log=logs.append)
    assert data.tokenizer.vocab_size == 2048 and data.train_examples > 3000
    batch = next(data.train)
    assert batch["input_ids"].shape == (16, 128) and batch["input_ids"].max() < 2048
    assert "default corpus" in logs[-1] and "PSF" in logs[-1]
    unk = np.mean(batch["input_ids"][batch["attention_mask"] > 0] == data.tokenizer.unk_id)
    assert unk < 0.01


@pytest.mark.slow
def test_stdlib_task_is_balanced_split_by_document_and_readable(tmp_path):
    built = corpus_task.build_examples()
    assert built == corpus_task.build_examples()  # deterministic
    for split in ("train", "dev"):
        counts = collections.Counter(label for _, label in built[split])
        assert set(counts) == set(corpus_task.PACKAGES) and len(set(counts.values())) == 1
    assert len(built["train"]) > 1000 and len(built["dev"]) > 200
    assert not {t for t, _ in built["train"]} & {t for t, _ in built["dev"]}
    d = corpus_task.write_task(tmp_path / "stdlib")
    report = InputReport()
    dev = glue.read_split(corpus_task.get("stdlib").task, d, "dev", report)
    assert [(e.text_a, corpus_task.PACKAGES[e.label]) for e in dev] == built["dev"]

    c = config_lib.task_data_defaults("stdlib")
    c.cache_dir = str(tmp_path / "cache")
    c.num_threads = 0
    pre = config_lib.pretraining_data_defaults()
    pre.cache_dir = c.cache_dir
    tok = pipeline.get_tokenizer(pre, log=lambda s: None)
    data = tasks.build_task_data(
        c, tokenizer=tok, process_index=0, process_count=1, log=lambda s: None
    )
    assert data.num_labels == 6 and data.eval_size() == len(built["dev"])


def test_wordorder_swaps_two_adjacent_plain_words_after_the_first():
    sentence = "- If the value, x is None then the The list of 2 items"
    words = sentence.split(" ")
    # Pairs at 4 "x is", 5 "is None", 6 "None then", 7 "then the", 9 "The list",
    # 10 "list of"; not 1 (the first word "If"), 2-3 (the comma), 8 ("the The",
    # equal ignoring case), 11-12 (the number).
    assert corpus_task.swap_positions(words) == [4, 5, 6, 7, 9, 10]
    assert corpus_task.swap_positions(["Return", "it", "now."]) == []  # the period stays
    assert corpus_task.swap_words("a b c d", 1) == "a c b d"


@pytest.mark.slow
def test_wordorder_task_keeps_the_bag_of_words_and_splits_by_document(tmp_path):
    built = corpus_task.build_examples("wordorder")
    assert built == corpus_task.build_examples("wordorder")  # deterministic
    assert built["dev"] != corpus_task.build_examples("wordorder", seed=1)["dev"]
    document = {}  # sentence -> the first document that has it
    for d in default_corpus.documents():
        for s in d.sentences:
            document.setdefault(s, d.name)
    sources = {}
    for split, rows in built.items():
        counts = collections.Counter(label for _, label in rows)
        assert counts["original"] == counts["swapped"] == len(rows) // 2
        sources[split] = []
        for text, label in rows:
            w = text.split(" ")
            if label == "original":
                assert text in document
                sources[split].append(text)
                continue
            assert text not in document
            # Exactly one adjacent exchange of two different plain words, not the
            # first word, gives back a corpus sentence: the bag of words is equal.
            back = []
            for i in range(len(w) - 1):
                u = w[:i] + [w[i + 1], w[i]] + w[i + 2 :]
                if " ".join(u) in document:
                    back.append((i, " ".join(u)))
            assert len(back) == 1, text
            i, source = back[0]
            assert i >= 1 and w[i].isalpha() and w[i + 1].isalpha()
            assert w[i].lower() != w[i + 1].lower() and w[i].isascii() and w[i + 1].isascii()
            assert sorted(w) == sorted(source.split(" "))
            sources[split].append(source)
        assert len(set(sources[split])) == len(rows)  # each sentence once, in one version
        assert all(8 <= len(s.split(" ")) <= 24 and len(s) <= 150 for s in sources[split])
    assert len(built["dev"]) == 2000 and len(built["train"]) > 8000
    train_docs = {document[s] for s in sources["train"]}
    assert not train_docs & {document[s] for s in sources["dev"]}

    c = config_lib.task_data_defaults("wordorder")
    c.cache_dir = str(tmp_path)
    dev = tasks.read_examples(c, "dev")
    assert [(e.text_a, ("original", "swapped")[e.label]) for e in dev] == built["dev"]
    assert len(list(tmp_path.glob("wordorder-task-v1-*/train.tsv"))) == 1
