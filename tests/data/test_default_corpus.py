"""The embedded stdlib-documentation corpus and the `stdlib` task built from it."""

from __future__ import annotations

import collections
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mbert_jax.data import config as config_lib
from mbert_jax.data import corpus_task, default_corpus, glue, pipeline, tasks
from mbert_jax.data.report import InputReport

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
    c = config_lib.get_config()
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
    dev = glue.read_split(corpus_task.TASK, d, "dev", report)
    assert [(e.text_a, corpus_task.PACKAGES[e.label]) for e in dev] == built["dev"]

    c = config_lib.get_task_config("stdlib")
    c.cache_dir = str(tmp_path / "cache")
    c.num_threads = 0
    pre = config_lib.get_config()
    pre.cache_dir = c.cache_dir
    tok = pipeline.get_tokenizer(pre, log=lambda s: None)
    data = tasks.build_task_data(
        c, tokenizer=tok, process_index=0, process_count=1, log=lambda s: None
    )
    assert data.num_labels == 6 and data.eval_size() == len(built["dev"])
