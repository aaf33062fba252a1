"""Calibration and evaluation examples for export, self-contained.

Sources, chosen by file name (and the task):

- `*.npz`: already tokenized, arrays `input_ids`, `attention_mask` and
  optionally `token_type_ids` of shape [n, seq_len], and optional labels
  (`labels` for classification, [n, seq_len] with -1 at unlabelled
  positions for token_classification, `start_positions` / `end_positions`
  for qa). The sequence length must be the export's.
- `*.csv`, `*.tsv`, `*.jsonl`, `*.json`: a table read as in training
  (`mbert_jax.data.tables`); the text columns (one, or two for sentence
  pairs) and the optional label column are named on the command line or
  found by their usual names. Labels are class names mapped by the model's
  `label_names` (the order it was fine-tuned with), or integer class ids
  for a model without names, or scores for a regression model.
- token_classification: CoNLL-style files (a word and its tag per line),
  or JSON lines with word and tag lists (`--text-columns` names the words
  column, default `tokens`; `--label-column` the tags, default `tags`),
  read as in training (`mbert_jax.data.tasks.conll`). Each word's tag (by the
  model's `label_names`) labels its first piece; the other positions get -1.
- anything else: plain text, one example per line (pretraining text).

Text is tokenized with the model directory's `vocab.txt` by the `tokenizers`
library's `BertWordPieceTokenizer` ([CLS] a [SEP] (b [SEP]), truncated and
padded to the sequence length). Lower-casing follows the vocabulary: an
uncased vocabulary has (virtually) no upper-case tokens. The data layer's
file readers are shared; its tokenizer, configs and cache are not used, so
that export runs on a model directory alone.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mbert_jax.export.graph import INPUT_NAMES
from mbert_jax.export.tflite import ExportError
from mbert_jax.models.config import ModelConfig

TEXT_COLUMNS = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("sentence",),
    ("text",),
)
LABEL_FIELDS = ("labels", "start_positions", "end_positions")


@dataclasses.dataclass
class Examples:
    """Tokenized examples, [n, seq_len] int32 each, with optional labels."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    def inputs(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in INPUT_NAMES}

    def take(self, start: int, stop: int) -> Examples:
        return Examples(
            *(getattr(self, k)[start:stop] for k in INPUT_NAMES),
            labels={k: v[start:stop] for k, v in self.labels.items()},
        )


def check_examples(examples: Examples, config: ModelConfig, seq_len: int, what: str) -> Examples:
    """Raise `ExportError` for an empty set, a wrong sequence length or out-of-range ids."""
    if len(examples) == 0:
        raise ExportError(f"the {what} set is empty; give a file with at least one example")
    for k in INPUT_NAMES:
        a = getattr(examples, k)
        if a.ndim != 2 or a.shape != examples.input_ids.shape:
            raise ExportError(f"{what} {k} has shape {a.shape}; expected [n, {seq_len}]")
    if examples.seq_len != seq_len:
        raise ExportError(
            f"the {what} set has sequence length {examples.seq_len} but the export uses "
            f"--seq-len {seq_len}; re-tokenize it or change --seq-len"
        )
    hi = int(examples.input_ids.max())
    if int(examples.input_ids.min()) < 0 or hi >= config.vocab_size:
        raise ExportError(
            f"the {what} set has token ids up to {hi}, outside the model's vocabulary "
            f"of {config.vocab_size}; it was tokenized with another vocabulary"
        )
    types = config.type_vocab_size  # 0: the model has none and ignores them
    low, high = int(examples.token_type_ids.min()), int(examples.token_type_ids.max())
    if types and (low < 0 or high >= types):
        raise ExportError(
            f"the {what} set has token type ids from {low} to {high}, outside the model's "
            f"{types} token type(s) [0, {types}); token_type_ids are 0 (first segment) or 1 "
            "(second)"
        )
    return examples


def _tokenizer(vocab_file: str | os.PathLike, seq_len: int):
    from tokenizers import BertWordPieceTokenizer

    tokens = Path(vocab_file).read_text(encoding="utf-8").splitlines()
    cased = any(t != t.lower() for t in tokens if not (t.startswith("[") and t.endswith("]")))
    tok = BertWordPieceTokenizer(str(vocab_file), lowercase=not cased, strip_accents=not cased)
    tok.enable_truncation(max_length=seq_len)
    pad_id = tokens.index("[PAD]") if "[PAD]" in tokens else 0
    tok.enable_padding(length=seq_len, pad_id=pad_id, pad_token="[PAD]")
    return tok


def tokenize(texts: list[tuple[str, ...]], vocab_file: str | os.PathLike, seq_len: int) -> Examples:
    """Tokenize single texts or (a, b) pairs to [n, seq_len] arrays."""
    tok = _tokenizer(vocab_file, seq_len)
    encs = [tok.encode(*t) for t in texts]
    arr = lambda f: np.asarray([getattr(e, f) for e in encs], np.int32).reshape(len(encs), seq_len)
    return Examples(arr("ids"), arr("attention_mask"), arr("type_ids"))


def _label_ids(values, where, label_names, regression: bool, column: str) -> np.ndarray:
    """Class ids (by the model's names, else integers) or scores of a label column."""
    from mbert_jax.data.tasks import label_ids
    from mbert_jax.data.tasks.glue import TaskDataError

    try:
        if regression:
            return np.asarray(
                [label_ids.score(v, w, column) for v, w in zip(values, where)], np.float32
            )
        keys = [label_ids.label_key(v, w) for v, w in zip(values, where)]
        if label_names is None:
            bad = next(((k, w) for k, w in zip(keys, where) if k[0] != "number"), None)
            if bad is not None:
                raise TaskDataError(
                    f"{bad[1]}: label {label_ids.key_name(bad[0])!r} is a name, but the model has "
                    "no label_names to map it; labels must be integer class ids"
                )
            return np.asarray([k[1] for k in keys], np.int32)
        ids = label_ids.to_ids(
            keys, where, tuple(label_names), split="eval", given_by="the model's label_names"
        )
        return np.asarray(ids, np.int32)
    except TaskDataError as e:
        raise ExportError(str(e)) from None


def _read_table(path, text_columns, label_column, label_names, regression):
    from mbert_jax.data.report import InputReport
    from mbert_jax.data.tables import read_table
    from mbert_jax.data.tasks.glue import TaskDataError

    try:
        table = read_table(path, InputReport())
    except TaskDataError as e:
        raise ExportError(str(e)) from None
    header = list(table.columns)
    if text_columns is None:
        text_columns = next((c for c in TEXT_COLUMNS if all(x in header for x in c)), None)
        if text_columns is None:
            raise ExportError(
                f"{path}: cannot tell the text columns from the header {header}; "
                "name them with --text-columns"
            )
    missing = [c for c in text_columns if c not in header]
    if missing:
        raise ExportError(f"{path}: columns {missing} are not in the header {header}")
    texts = [tuple(str(r.get(c, "")) for c in text_columns) for r in table.rows]
    if label_column is None and "label" in header:
        label_column = "label"
    labels = None
    if label_column is not None:
        if label_column not in header:
            raise ExportError(f"{path}: label column {label_column!r} is not in {header}")
        values = [r.get(label_column) for r in table.rows]
        labels = _label_ids(values, table.where, label_names, regression, label_column)
    return texts, labels


def _read_tagged(path: Path, text_columns, label_column, tag_column: int):
    from mbert_jax.data.report import InputReport
    from mbert_jax.data.tables import read_table
    from mbert_jax.data.tasks import conll
    from mbert_jax.data.tasks.glue import TaskDataError

    try:
        if path.suffix.lower() in (".json", ".jsonl"):
            words = text_columns[0] if text_columns else "tokens"
            table = read_table(path, InputReport())
            return conll.read_tagged_table(
                table, words, label_column or "tags", InputReport(), "error"
            )
        return conll.read_conll(path, InputReport(), tag_column=tag_column)
    except TaskDataError as e:
        raise ExportError(str(e)) from None


def tokenize_tagged(
    sentences, label_names, vocab_file: str | os.PathLike, seq_len: int
) -> Examples:
    """Tokenize tagged sentences: each word's tag id at its first piece, -1 elsewhere."""
    from mbert_jax.data.tasks import label_ids
    from mbert_jax.data.tasks.glue import TaskDataError

    tok = _tokenizer(vocab_file, seq_len)
    encs = tok.encode_batch([list(s.words) for s in sentences], is_pretokenized=True)
    labels = np.full((len(sentences), seq_len), -1, np.int32)
    for i, (s, enc) in enumerate(zip(sentences, encs)):
        where = [s.locate(k) for k in range(len(s.words))]
        try:
            keys = [label_ids.label_key(t, w) for t, w in zip(s.tags, where)]
            if label_names is None:
                raise TaskDataError(
                    f"{s.where}: the model has no label names (ModelConfig.label_names) to map "
                    "tags to its outputs; export a model fine-tuned on tagged data"
                )
            ids = label_ids.to_ids(
                keys, where, tuple(label_names), split="eval", given_by="the model's label_names"
            )
        except TaskDataError as e:
            raise ExportError(str(e)) from None
        previous = None
        for p, w in enumerate(enc.word_ids):
            if w is not None and w != previous:
                labels[i, p] = ids[w]
            previous = w
    arr = lambda f: np.asarray([getattr(e, f) for e in encs], np.int32).reshape(-1, seq_len)
    return Examples(arr("ids"), arr("attention_mask"), arr("type_ids"), {"labels": labels})


def load_examples(
    path: str | os.PathLike,
    *,
    seq_len: int,
    vocab_file: str | os.PathLike | None,
    limit: int | None = None,
    text_columns: tuple[str, ...] | None = None,
    label_column: str | None = None,
    task: str = "classification",
    label_names: tuple[str, ...] | None = None,
    regression: bool = False,
    conll_tag_column: int = -1,
) -> Examples:
    """Read examples from an .npz, a table, a CoNLL or a text file (see the module docstring).

    Args:
      path: the file.
      seq_len: the export's sequence length.
      vocab_file: the vocab.txt to tokenize text with.
      limit: at most this many examples.
      text_columns, label_column: the table's columns (None: the usual names).
      task: the export task (token_classification reads tagged sentences).
      label_names: the model's label names, which map class and tag names to ids.
      regression: the labels are scores (a one-output regression head).
      conll_tag_column: the tag's column in a CoNLL file.

    Raises:
      ExportError: for a missing file, a text file without a vocabulary, bad
        columns, a label the model does not know (naming file:line).
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"data file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path) as z:
            if "input_ids" not in z:
                raise ExportError(f"{path} has no 'input_ids' array (it has {list(z)})")
            ids = np.asarray(z["input_ids"], np.int32)
            if ids.ndim != 2:
                raise ExportError(f"{path}: input_ids must be [n, seq_len], got {ids.shape}")
            mask = np.asarray(z["attention_mask"], np.int32) if "attention_mask" in z else None
            types = np.asarray(z["token_type_ids"], np.int32) if "token_type_ids" in z else None
            labels = {k: np.asarray(z[k], np.int32) for k in LABEL_FIELDS if k in z}
        ex = Examples(
            ids,
            (ids != 0).astype(np.int32) if mask is None else mask,
            np.zeros_like(ids) if types is None else types,
            labels,
        )
        return ex if limit is None else ex.take(0, limit)
    if vocab_file is None:
        raise ExportError(
            f"{path} is text and the model directory has no vocab.txt; pass --vocab FILE "
            "or give pre-tokenized .npz data"
        )
    if task == "token_classification":
        sentences = _read_tagged(path, text_columns, label_column, conll_tag_column)[:limit]
        if not sentences:
            return Examples(*(np.zeros((0, seq_len), np.int32) for _ in INPUT_NAMES))
        return tokenize_tagged(sentences, label_names, vocab_file, seq_len)
    if path.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"):
        texts, labels = _read_table(path, text_columns, label_column, label_names, regression)
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        texts, labels = [(line,) for line in lines if line.strip()], None
    if limit is not None:
        texts = texts[:limit]
        labels = None if labels is None else labels[:limit]
    if not texts:
        return Examples(*(np.zeros((0, seq_len), np.int32) for _ in INPUT_NAMES))
    ex = tokenize(texts, vocab_file, seq_len)
    if labels is not None:
        ex.labels["labels"] = labels
    return ex


def synthetic_examples(config: ModelConfig, seq_len: int, n: int, seed: int = 0) -> Examples:
    """Random token ids with random padding (lengths in [seq_len / 4, seq_len]) and two segments.

    Used for verification when no data is given: it checks the conversion,
    not the task metric.
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, config.vocab_size, (n, seq_len)).astype(np.int32)
    lengths = rng.integers(max(1, seq_len // 4), seq_len + 1, n)
    mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
    ids = ids * mask
    split = lengths // 2
    types = ((np.arange(seq_len)[None, :] >= split[:, None]) & (mask > 0)).astype(np.int32)
    if config.type_vocab_size < 2:
        types = np.zeros_like(types)
    return Examples(ids, mask, types)
