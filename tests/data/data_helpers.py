"""Helpers shared by the data-layer tests: toy corpora, vocabularies, masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mbert_jax.data.masking import Masker

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Hand-written documents: enough sentences for NSP, several short documents.
TEXT_DOCS = [
    [
        "The quick brown fox jumps over the lazy dog.",
        "It was not the first time the fox had done this.",
        "The dog, for its part, did not seem to mind at all.",
        "Later that day the two animals rested under an old oak tree.",
    ],
    [
        "A module is a file containing Python definitions and statements.",
        "The file name is the module name with the suffix added.",
        "Within a module, the module's name is available as a global variable.",
    ],
    [
        "Errors should never pass silently.",
        "Unless explicitly silenced.",
    ],
    [
        "Simple is better than complex.",
        "Complex is better than complicated.",
        "Flat is better than nested.",
        "Sparse is better than dense.",
        "Readability counts.",
    ],
    ["Special cases are not special enough to break the rules."],
]


def write_text_corpus(directory: Path, docs=TEXT_DOCS, repeat: int = 1) -> Path:
    """One file: one sentence per line, a blank line between documents."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "corpus.txt"
    with open(path, "w", encoding="utf-8") as f:
        for r in range(repeat):
            for d in docs:
                f.write("\n".join(f"{s} ({r})" if repeat > 1 else s for s in d) + "\n\n")
    return path


def write_vocab(path: Path, tokens) -> Path:
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


def write_tokenized(directory: Path, docs: list[list[list[int]]]) -> Path:
    """A `TokenizedCorpus` entry written by hand (independent of the module's writer)."""
    directory.mkdir(parents=True, exist_ok=True)
    flat = [t for d in docs for line in d for t in line]
    np.asarray(flat, np.int32).tofile(directory / "tokens.bin")
    line_lens = [len(line) for d in docs for line in d]
    np.save(
        directory / "line_offsets.npy", np.concatenate([[0], np.cumsum(line_lens)]).astype(np.int64)
    )
    doc_lens = [len(d) for d in docs]
    np.save(
        directory / "doc_offsets.npy", np.concatenate([[0], np.cumsum(doc_lens)]).astype(np.int64)
    )
    meta = {"key": {}, "dtype": "int32", "report": {"source": "test"}}
    (directory / "meta.json").write_text(json.dumps(meta))
    return directory


# ------------------------------------------------------------- synthetic token corpora
V = 4000
CLS, SEP, PAD, MASK = 2, 3, 0, 4


def token(doc, line):
    """Every token of a line encodes (doc, line), so pairs can be checked."""
    return 1000 + doc * 100 + line


def synthetic_docs(num_docs=8, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(num_docs):
        lines = rng.integers(2, 12, rng.integers(1, 15))
        docs.append([[token(d, i)] * int(n) for i, n in enumerate(lines)])
    return docs


def masker(**kw):
    special = np.zeros(V, bool)
    special[[0, 1, 2, 3, 4]] = True
    return Masker(4, special, np.zeros(V, bool), np.arange(5, V, dtype=np.int32), **kw)


def original_ids(row):
    """The input ids with the masked positions restored."""
    ids = row["input_ids"].copy()
    w = row["masked_lm_weights"] > 0
    ids[row["masked_lm_positions"][w]] = row["masked_lm_ids"][w]
    return ids
