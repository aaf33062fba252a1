"""`stdlib`: a small downstream task built from the embedded corpus.

"Which standard-library package does this passage document?" A passage is
one sentence of a docstring (merged with the next while it has fewer than
8 words) from one of six packages that every CPython 3.x carries:
`asyncio`, `email`, `http`, `logging`, `unittest`, `xml`. It is a 6-way
classification in the GLUE TSV layout of SST-2 (`sentence<TAB>label` with a
header), so the GLUE reader, featurizer and metrics serve it unchanged.

Deterministic: the corpus is (see `default_corpus`). Repeated passages
are kept once (and dropped when two packages share them); the split assigns
whole documents (a module's or a class's docstrings) to train or dev, so
no document has passages on both sides, about 15% of each package's
passages going to dev; then each side is balanced by keeping the same
number of passages of every package (a fixed-seed choice), so chance is
1/6. Learnable from vocabulary and topic, yet not trivial: many passages
are generic ("Return the number of items.") and the package name itself
rarely appears.

Source and licence as for the corpus: Python documentation, PSF License
Agreement.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from mbert_jax.data import default_corpus
from mbert_jax.data.glue import GlueTask, Layout

PACKAGES = ("asyncio", "email", "http", "logging", "unittest", "xml")
MIN_WORDS = 8
DEV_SHARE = 0.15
TASK_VERSION = 1

TASK = GlueTask(
    "stdlib",
    PACKAGES,
    {
        "train": Layout("train.tsv", True, 0, None, 1),
        "dev": Layout("dev.tsv", True, 0, None, 1),
    },
    "stdlib",
    ("sentence", None),
    {"train": "train", "dev": "validation"},
)


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


def build_examples(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """{"train": [(passage, package)], "dev": [...]}: balanced, deterministic."""
    rng = np.random.default_rng([seed, TASK_VERSION])
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
        dev, train = [], []
        for i in rng.permutation(len(docs)):
            (dev if len(dev) < DEV_SHARE * total else train).extend(docs[i])
        split["train"][pkg], split["dev"][pkg] = train, dev
    out = {}
    for name, groups in split.items():
        n = min(len(v) for v in groups.values())
        rows = []
        for pkg in PACKAGES:
            chosen = sorted(rng.choice(len(groups[pkg]), n, replace=False))
            rows.extend((groups[pkg][i], pkg) for i in chosen)
        out[name] = [rows[i] for i in rng.permutation(len(rows))]
    return out


def write_task(directory: str | os.PathLike, seed: int = 0) -> Path:
    """Write `train.tsv` and `dev.tsv` into `directory` (GLUE SST-2 layout)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for split, rows in build_examples(seed).items():
        tmp = d / f".{split}.tsv.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("sentence\tlabel\n")
            f.writelines(f"{text}\t{label}\n" for text, label in rows)
        os.replace(tmp, d / f"{split}.tsv")
    return d


def task_dir(cache_dir: Path, seed: int = 0) -> Path:
    """The task's files under the cache (written on first use, keyed by the corpus)."""
    d = cache_dir / f"stdlib-task-v{TASK_VERSION}-{default_corpus.fingerprint()}-{seed}"
    if not (d / "dev.tsv").is_file():
        write_task(d, seed)
    return d
