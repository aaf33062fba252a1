"""GLUE tasks: readers for the published TSV files and `datasets`, and features.

TSV layouts are those of the GLUE distribution (as read by BERT's
`run_classifier.py`): tab-separated, no quoting, UTF-8. CoLA's train/dev
files have no header (source, label, original mark, sentence); every other
file has one and its width is the expected column count of the file (MNLI's
train has 12 columns, its dev files 16). Test files have their own layouts
and no labels. A row with the wrong column count, or a label that is not one
of the task's labels, is an error naming the file and line (with
`on_bad_line='skip'` such rows are skipped and counted in the report).

From `datasets`, the `glue` configurations (`nyu-mll/glue`) are read with
their column names; label ids are mapped through the ClassLabel names where
the task's labels are names (MNLI's order differs from BERT's).

Features follow `run_classifier.py`: `[CLS] a [SEP] (b [SEP])`, the longer
text trimmed from its end until the pair fits (counted in the report).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mbert_jax.data.report import InputReport, read_utf8
from mbert_jax.data.tokenizer import WordPieceTokenizer


class TaskDataError(ValueError):
    """A malformed task file; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Columns of one TSV file (negative indices count from the end)."""

    file: str
    header: bool
    text_a: int
    text_b: int | None
    label: int | None  # None: no labels (test)
    columns: int | None = None  # None: the header's width


@dataclasses.dataclass(frozen=True)
class GlueTask:
    name: str
    labels: tuple[str, ...] | None  # None: regression
    splits: dict[str, Layout]
    hf_name: str
    hf_columns: tuple[str, str | None]
    hf_splits: dict[str, str]

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def dev_split(self) -> str:
        return "dev_matched" if "dev_matched" in self.splits else "dev"


def _pair_task(name, labels, train, dev, test, hf_columns, hf_name=None, extra=None):
    splits = {"train": train, "dev": dev, "test": test, **(extra or {})}
    hf_splits = {"train": "train", "dev": "validation", "test": "test"}
    return GlueTask(name, labels, splits, hf_name or name, hf_columns, hf_splits)


_INDEX_AB = Layout("", True, 1, 2, -1)
BINARY = ("0", "1")
ENTAIL = ("entailment", "not_entailment")

TASKS: dict[str, GlueTask] = {
    "cola": _pair_task(
        "cola",
        BINARY,
        Layout("train.tsv", False, 3, None, 1, columns=4),
        Layout("dev.tsv", False, 3, None, 1, columns=4),
        Layout("test.tsv", True, 1, None, None),
        ("sentence", None),
    ),
    "sst2": _pair_task(
        "sst2",
        BINARY,
        Layout("train.tsv", True, 0, None, 1),
        Layout("dev.tsv", True, 0, None, 1),
        Layout("test.tsv", True, 1, None, None),
        ("sentence", None),
    ),
    "mrpc": _pair_task(
        "mrpc",
        BINARY,
        Layout("train.tsv", True, 3, 4, 0),
        Layout("dev.tsv", True, 3, 4, 0),
        Layout("test.tsv", True, 3, 4, None),
        ("sentence1", "sentence2"),
    ),
    "stsb": _pair_task(
        "stsb",
        None,
        Layout("train.tsv", True, 7, 8, 9),
        Layout("dev.tsv", True, 7, 8, 9),
        Layout("test.tsv", True, 7, 8, None),
        ("sentence1", "sentence2"),
    ),
    "qqp": _pair_task(
        "qqp",
        BINARY,
        Layout("train.tsv", True, 3, 4, 5),
        Layout("dev.tsv", True, 3, 4, 5),
        Layout("test.tsv", True, 1, 2, None),
        ("question1", "question2"),
    ),
    "qnli": _pair_task(
        "qnli",
        ENTAIL,
        dataclasses.replace(_INDEX_AB, file="train.tsv"),
        dataclasses.replace(_INDEX_AB, file="dev.tsv"),
        Layout("test.tsv", True, 1, 2, None),
        ("question", "sentence"),
    ),
    "rte": _pair_task(
        "rte",
        ENTAIL,
        dataclasses.replace(_INDEX_AB, file="train.tsv"),
        dataclasses.replace(_INDEX_AB, file="dev.tsv"),
        Layout("test.tsv", True, 1, 2, None),
        ("sentence1", "sentence2"),
    ),
    "wnli": _pair_task(
        "wnli",
        BINARY,
        dataclasses.replace(_INDEX_AB, file="train.tsv"),
        dataclasses.replace(_INDEX_AB, file="dev.tsv"),
        Layout("test.tsv", True, 1, 2, None),
        ("sentence1", "sentence2"),
    ),
}
TASKS["mnli"] = GlueTask(
    "mnli",
    ("contradiction", "entailment", "neutral"),
    {
        "train": Layout("train.tsv", True, 8, 9, -1),
        "dev_matched": Layout("dev_matched.tsv", True, 8, 9, -1),
        "dev_mismatched": Layout("dev_mismatched.tsv", True, 8, 9, -1),
        "test_matched": Layout("test_matched.tsv", True, 8, 9, None),
        "test_mismatched": Layout("test_mismatched.tsv", True, 8, 9, None),
    },
    "mnli",
    ("premise", "hypothesis"),
    {
        "train": "train",
        "dev_matched": "validation_matched",
        "dev_mismatched": "validation_mismatched",
        "test_matched": "test_matched",
        "test_mismatched": "test_mismatched",
    },
)


@dataclasses.dataclass(frozen=True)
class Example:
    """One sentence (pair) with its label (None for test examples).

    `label` is a class index (int) or a score (float, regression).
    """

    guid: str
    text_a: str
    text_b: str | None
    label: int | float | None


def get_task(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; valid: {', '.join(sorted(TASKS))}")
    return TASKS[key]


def _parse_label(task: GlueTask, value: str, where: str) -> int | float:
    if task.is_regression:
        try:
            return float(value)
        except ValueError:
            raise TaskDataError(f"{where}: label {value!r} is not a number") from None
    if value not in task.labels:
        raise TaskDataError(f"{where}: label {value!r} is not one of {list(task.labels)}")
    return task.labels.index(value)


def read_tsv(
    task: GlueTask,
    path: str | os.PathLike,
    layout: Layout,
    report: InputReport,
    *,
    on_bad_line: str = "error",
    split: str = "",
) -> list[Example]:
    """Read one GLUE TSV file in `layout`.

    Raises:
      TaskDataError: a missing or non-UTF-8 file, a wrong column count or a
        bad label (naming file and line), unless `on_bad_line='skip'`.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(
            f"{task.name}: {path} does not exist; data_dir must hold the GLUE files "
            f"({', '.join(sorted({lay.file for lay in task.splits.values()}))})"
        )
    lines = read_utf8(path, TaskDataError).split("\n")
    while lines and not lines[-1].strip():
        lines.pop()  # the final newline (and trailing blank lines)
    if not lines or (layout.header and len(lines) == 1):
        raise TaskDataError(f"{path}: the file has no examples")
    width = layout.columns
    start = 0
    if layout.header:
        width = len(lines[0].rstrip("\r").split("\t"))
        start = 1
    examples = []
    for lineno, line in enumerate(lines[start:], start + 1):
        fields = line.rstrip("\r").split("\t")
        where = f"{path}:{lineno}"
        try:
            if len(fields) != width:
                raise TaskDataError(
                    f"{where}: {len(fields)} tab-separated columns, expected {width} "
                    f"({task.name} {split or layout.file} layout)"
                )
            label = (
                None if layout.label is None else _parse_label(task, fields[layout.label], where)
            )
        except TaskDataError:
            if on_bad_line != "skip":
                raise
            report.note(f"{task.name} rows with a wrong column count or label skipped", where)
            continue
        b = None if layout.text_b is None else fields[layout.text_b]
        examples.append(Example(f"{split}-{lineno}", fields[layout.text_a], b, label))
    report.count(f"{split or 'rows'} examples", len(examples))
    return examples


def read_split(
    task: GlueTask,
    data_dir: str | os.PathLike,
    split: str,
    report: InputReport,
    on_bad_line="error",
) -> list[Example]:
    if split not in task.splits:
        raise ValueError(f"{task.name} has no split {split!r}; splits: {sorted(task.splits)}")
    layout = task.splits[split]
    return read_tsv(
        task, Path(data_dir) / layout.file, layout, report, on_bad_line=on_bad_line, split=split
    )


def read_hf(task: GlueTask, dataset, split: str, report: InputReport) -> list[Example]:
    """Examples of split `split` (our name: train/dev/...) of a `datasets` GLUE DatasetDict."""
    hf_split = task.hf_splits.get(split, split)
    if hf_split not in dataset:
        raise ValueError(f"the dataset has no split {hf_split!r} (has {sorted(dataset)})")
    ds = dataset[hf_split]
    col_a, col_b = task.hf_columns
    missing = [c for c in (col_a, col_b, "label") if c and c not in ds.column_names]
    if missing:
        raise TaskDataError(
            f"{task.name} [{hf_split}] lacks columns {missing}; has {ds.column_names}"
        )
    names = getattr(ds.features["label"], "names", None)
    examples = []
    for i, row in enumerate(ds):
        raw = row["label"]
        if raw is None or (not task.is_regression and raw < 0):
            label = None  # test split
        elif task.is_regression:
            label = float(raw)
        elif task.labels == BINARY or names is None:
            label = int(raw)
        else:
            label = task.labels.index(names[raw])
        b = row[col_b] if col_b else None
        examples.append(Example(f"{split}-{i}", row[col_a], b, label))
    report.count(f"{split} examples", len(examples))
    return examples


def truncate_pair_end(a: list, b: list, max_tokens: int) -> tuple[list, list]:
    """BERT run_classifier's `_truncate_seq_pair`: pop from the longer list's end."""
    a, b = list(a), list(b)
    while len(a) + len(b) > max_tokens:
        (a if len(a) > len(b) else b).pop()
    return a, b


@dataclasses.dataclass
class PairFeatures:
    """Tokenized examples: `input_ids` [N, S] (0-padded), `lengths` [N],
    `len_a` [N] (tokens of `[CLS] a [SEP]`), `labels` [N]."""

    input_ids: np.ndarray
    lengths: np.ndarray
    len_a: np.ndarray
    labels: np.ndarray


def featurize(
    examples: list[Example],
    tokenizer: WordPieceTokenizer,
    max_seq_length: int,
    report: InputReport,
    *,
    regression: bool = False,
) -> PairFeatures:
    """`[CLS] a [SEP] b [SEP]` ids for each example (see the module docstring)."""
    n = len(examples)
    enc_a = tokenizer.encode([e.text_a for e in examples])
    has_b = [e.text_b is not None for e in examples]
    enc_b_list = tokenizer.encode([e.text_b for e in examples if e.text_b is not None])
    it = iter(enc_b_list)
    enc_b = [next(it) if hb else np.zeros(0, np.int32) for hb in has_b]
    ids = np.zeros((n, max_seq_length), np.int32)
    lengths = np.zeros(n, np.int32)
    len_a = np.zeros(n, np.int32)
    truncated = 0
    for i, (a, b) in enumerate(zip(enc_a, enc_b)):
        budget = max_seq_length - (3 if has_b[i] else 2)
        ta, tb = truncate_pair_end(a.tolist(), b.tolist(), budget)
        truncated += (len(ta) + len(tb)) < (len(a) + len(b))
        seq = [tokenizer.cls_id, *ta, tokenizer.sep_id]
        len_a[i] = len(seq)
        if has_b[i]:
            seq += [*tb, tokenizer.sep_id]
        ids[i, : len(seq)] = seq
        lengths[i] = len(seq)
    if truncated:
        report.note(f"examples truncated to max_seq_length={max_seq_length}", n=truncated)
    dtype = np.float32 if regression else np.int32
    fill = np.nan if regression else -1
    labels = np.array([fill if e.label is None else e.label for e in examples], dtype)
    return PairFeatures(ids, lengths, len_a, labels)
