"""Downstream tasks built from the embedded corpus: `stdlib` and `wordorder`.

Both are written in the GLUE TSV layout of SST-2 (`sentence<TAB>label` with
a header, `train.tsv` and `dev.tsv`), so the GLUE reader, featurizer and
metrics serve them unchanged. Both are deterministic: the corpus is (see
`default_corpus`), and every choice comes from a generator seeded with
(seed, the task's version). The cache directory of a task is keyed by its
name, version, the corpus fingerprint and the seed, so a changed rule
(bump the version) or another Python never reads stale files. Both split
by document (a module's or a class's docstrings): no document has text on
both sides, and no text is on both sides (repeated text is kept once).

`stdlib`: "which standard-library package does this passage document?" A
passage is one sentence of a docstring (merged with the next while it has
fewer than 8 words) from one of six packages that every CPython 3.x
carries: `asyncio`, `email`, `http`, `logging`, `unittest`, `xml`; 6
classes. Repeated passages are kept once (and dropped when two packages
share them); about 15% of each package's passages go to dev; then each side
is balanced by keeping the same number of passages of every package (a
fixed-seed choice), so chance is 1/6. Learnable from vocabulary and topic:
many passages are generic ("Return the number of items.") and the package
name itself rarely appears, yet keywords decide most of it (a bag-of-words
naive Bayes reaches 0.76 on dev, the fine-tuned all-MiniLM-L6-v2 0.72-0.74),
so it cannot show what context adds.

`wordorder`: "is this sentence as written, or were two adjacent words
swapped?" Binary (`original`, `swapped`). The two classes have the same
bag of words by construction, so any bag-of-words model is at chance (0.5)
while a model that reads word order is not (all-MiniLM-L6-v2 fine-tuned
for 240 steps of 32 sentences: 0.82 on dev). Of the tasks measured for this
(issue 15), same-document next-sentence pairs left both naive Bayes and the
fine-tuned MiniLM at chance (the corpus's sentences barely depend on their
neighbours), so they cannot separate the two either. The rules and why:

- Sentences: every unique corpus sentence (first occurrence kept, so
  repeated text cannot cross the split) of 8 to 24 words and at most 150
  characters. Eight words leave context on both sides of a swap; the upper
  limits keep 99.6% of sentences within 46 WordPiece tokens of the
  bert-base-uncased vocabulary (a 48-token sequence holds them) and keep
  the long argument-list sentences out. About 13,200 sentences qualify
  with CPython 3.11.
- One swap: two adjacent words exchanged, at a position drawn uniformly
  from the eligible ones. Eligible: both are plain words (letters only, so
  punctuation, numbers and code identifiers never move and the change is
  purely one of word order; a moved comma would be a cue of its own), they
  differ ignoring case (else nothing changes for an uncased vocabulary),
  and neither is the sentence's first word (the first with a letter, so
  not a bullet's "-"; moving it would leave a capitalized word inside the
  sentence, a cue that is not about order for a cased vocabulary).
  Sentences without an eligible pair are left out. One swap is the
  smallest change that keeps the bag of words (more swaps would make the
  task easier, and MiniLM already learns this one quickly).
- One version per sentence: a sentence appears either as written or
  swapped, never both, so dev rows are independent and the standard error
  sqrt(p(1 - p) / n) holds; the label carries no information about the
  sentence's words, so a bag-of-words model is at chance in expectation.
  Exactly half of each split (a fixed-seed choice) is swapped (an odd
  sentence out is dropped), so chance is exactly 0.5.
- Rows: documents in a fixed-seed order go to dev until it holds at least
  2,000 sentences, then exactly 2,000 of them are kept (standard error
  <= 0.011); every sentence of the other documents is a training row
  (about 11,000), of which a short fine-tuning run sees only a part.

Source and licence as for the corpus: Python documentation, PSF License
Agreement.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mbert_jax.data import default_corpus
from mbert_jax.data.tasks.glue import GlueTask, Layout

Rows = dict[str, list[tuple[str, str]]]  # {"train": [(text, label)], "dev": [...]}


@dataclasses.dataclass(frozen=True)
class CorpusTask:
    """A task built from the corpus: its layout, version and builder."""

    task: GlueTask
    version: int  # bump when a rule of `build` changes
    build: Callable[[int], Rows]  # seed -> rows


def _sst2_layout(name: str, labels: tuple[str, ...]) -> GlueTask:
    splits = {
        "train": Layout("train.tsv", True, 0, None, 1),
        "dev": Layout("dev.tsv", True, 0, None, 1),
    }
    return GlueTask(
        name, labels, splits, name, ("sentence", None), {"train": "train", "dev": "validation"}
    )


def split_documents(rng: np.random.Generator, docs: list[list], dev_size: float):
    """(train, dev): whole documents, in a random order, to dev until it holds `dev_size` items."""
    dev, train = [], []
    for i in rng.permutation(len(docs)):
        (dev if len(dev) < dev_size else train).extend(docs[i])
    return train, dev


# ---------------------------------------------------------------------- stdlib
PACKAGES = ("asyncio", "email", "http", "logging", "unittest", "xml")
MIN_WORDS = 8
DEV_SHARE = 0.15


def passages(sentences: tuple[str, ...]) -> list[str]:
    """Sentences, each merged with its followers until it has MIN_WORDS words."""
    out, cur = [], []
    for s in sentences:
        cur.append(s)
        if sum(len(x.split()) for x in cur) >= MIN_WORDS:
            out.append(" ".join(cur))
            cur = []
    if cur and out:
        out[-1] = out[-1] + " " + " ".join(cur)
    elif cur:
        out.append(" ".join(cur))
    return [p.replace("\t", " ") for p in out]


def _build_stdlib(seed: int) -> Rows:
    rng = np.random.default_rng([seed, TASKS["stdlib"].version])
    docs = [(d.package, passages(d.sentences)) for d in default_corpus.documents()]
    docs = [(pkg, ps) for pkg, ps in docs if pkg in PACKAGES]
    # Docstrings repeat (inherited or copied text): keep each passage once, and
    # drop a passage found in two packages (its label would be ambiguous).
    labels: dict[str, set[str]] = defaultdict(set)
    for pkg, ps in docs:
        for t in ps:
            labels[t].add(pkg)
    seen: set[str] = set()
    by_package: dict[str, list[list[str]]] = defaultdict(list)
    for pkg, ps in docs:
        keep = [t for t in ps if len(labels[t]) == 1 and t not in seen]
        seen.update(keep)
        if keep:
            by_package[pkg].append(keep)
    missing = [p for p in PACKAGES if not by_package[p]]
    if missing:
        raise ValueError(
            f"this Python's standard library lacks docstrings of {missing}; the stdlib task "
            "needs all of " + ", ".join(PACKAGES)
        )
    split: dict[str, dict[str, list[str]]] = {"train": {}, "dev": {}}
    for pkg in PACKAGES:
        docs = by_package[pkg]
        total = sum(len(d) for d in docs)
        split["train"][pkg], split["dev"][pkg] = split_documents(rng, docs, DEV_SHARE * total)
    out = {}
    for name, groups in split.items():
        n = min(len(v) for v in groups.values())
        rows = []
        for pkg in PACKAGES:
            chosen = sorted(rng.choice(len(groups[pkg]), n, replace=False))
            rows.extend((groups[pkg][i], pkg) for i in chosen)
        out[name] = [rows[i] for i in rng.permutation(len(rows))]
    return out


# ------------------------------------------------------------------- wordorder
ORDER_LABELS = ("original", "swapped")
ORDER_MIN_WORDS, ORDER_MAX_WORDS, ORDER_MAX_CHARS = 8, 24, 150
ORDER_DEV_ROWS = 2000
_PLAIN_WORD = re.compile(r"[A-Za-z]+")


def swap_positions(words: list[str]) -> list[int]:
    """Positions i where words i and i + 1 may be swapped (see the module docstring)."""
    # The first word (the first with a letter: "- If ...") keeps its place.
    first = next((i for i, w in enumerate(words) if re.search("[A-Za-z]", w)), len(words))
    return [
        i
        for i in range(first + 1, len(words) - 1)
        if _PLAIN_WORD.fullmatch(words[i])
        and _PLAIN_WORD.fullmatch(words[i + 1])
        and words[i].lower() != words[i + 1].lower()
    ]


def swap_words(sentence: str, position: int) -> str:
    """`sentence` with its words `position` and `position + 1` exchanged."""
    w = sentence.split(" ")
    w[position], w[position + 1] = w[position + 1], w[position]
    return " ".join(w)


def order_sentences(sentences: tuple[str, ...], seen: set[str]) -> list[str]:
    """The sentences of one document that the wordorder task uses (not in `seen`; adds them)."""
    keep = []
    for s in sentences:
        words = s.split(" ")
        if (
            s not in seen
            and ORDER_MIN_WORDS <= len(words) <= ORDER_MAX_WORDS
            and len(s) <= ORDER_MAX_CHARS
            and swap_positions(words)
        ):
            keep.append(s)
        seen.add(s)
    return keep


def _build_wordorder(seed: int) -> Rows:
    rng = np.random.default_rng([seed, TASKS["wordorder"].version])
    seen: set[str] = set()  # corpus sentences are whitespace-normalized: split(" ") is exact
    docs = [order_sentences(d.sentences, seen) for d in default_corpus.documents()]
    train, dev = split_documents(rng, [d for d in docs if d], ORDER_DEV_ROWS)
    if len(dev) < ORDER_DEV_ROWS or len(train) < ORDER_DEV_ROWS:
        raise ValueError(
            f"this Python's corpus has {len(train) + len(dev)} sentences for the wordorder "
            f"task; it needs at least {2 * ORDER_DEV_ROWS}"
        )
    dev = [dev[i] for i in sorted(rng.choice(len(dev), ORDER_DEV_ROWS, replace=False))]
    out = {}
    for name, sentences in (("train", train), ("dev", dev)):
        order = rng.permutation(len(sentences) // 2 * 2)
        half = len(order) // 2
        rows = []
        for k, i in enumerate(order):
            s = sentences[i]
            if k < half:
                rows.append((s, ORDER_LABELS[0]))
            else:
                positions = swap_positions(s.split(" "))
                rows.append(
                    (swap_words(s, positions[rng.integers(len(positions))]), ORDER_LABELS[1])
                )
        out[name] = [rows[i] for i in rng.permutation(len(rows))]
    return out


# ------------------------------------------------------------- files and cache
TASKS: dict[str, CorpusTask] = {
    "stdlib": CorpusTask(_sst2_layout("stdlib", PACKAGES), 1, _build_stdlib),
    "wordorder": CorpusTask(_sst2_layout("wordorder", ORDER_LABELS), 1, _build_wordorder),
}


def get(task: str) -> CorpusTask:
    """The corpus task named `task` (`stdlib`, `wordorder`)."""
    if task not in TASKS:
        raise ValueError(f"unknown corpus task {task!r}; valid: {', '.join(TASKS)}")
    return TASKS[task]


def build_examples(task: str = "stdlib", seed: int = 0) -> Rows:
    """{"train": [(text, label)], "dev": [...]} of a corpus task: balanced, deterministic."""
    return get(task).build(seed)


def write_task(directory: str | os.PathLike, task: str = "stdlib", seed: int = 0) -> Path:
    """Write the task's `train.tsv` and `dev.tsv` into `directory` (GLUE SST-2 layout).

    Each file is written under a temporary name and renamed, dev last, so a
    directory with `dev.tsv` is complete.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in build_examples(task, seed).items():
        tmp = d / f".{split}.tsv.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in rows)
        os.replace(tmp, d / f"{split}.tsv")
    return d


def task_dir(cache_dir: Path, task: str = "stdlib", seed: int = 0) -> Path:
    """The task's files under the cache (written on first use, keyed by the corpus)."""
    version = get(task).version
    d = cache_dir / f"{task}-task-v{version}-{default_corpus.fingerprint()}-{seed}"
    if not (d / "dev.tsv").is_file():
        write_task(d, task, seed)
    return d
