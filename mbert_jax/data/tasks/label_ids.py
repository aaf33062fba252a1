"""`task="custom"`: the user's own labelled data, read into GLUE-style examples.

`data.task_kind` says what the label column holds:

- `classification`: class labels, any number of classes. Labels may be
  strings or integers (JSON numbers, or CSV fields that read as integers;
  `1.0` counts as 1). Their ids follow a fixed order: the sorted distinct
  labels of the training split, numbers in numeric order (`2` before `10`),
  strings in code-point order (`neg`, `neu`, `pos`); or exactly the order
  of `data.labels="neg,neu,pos"`, which may also name classes that have no
  training example. A `datasets` `ClassLabel` column keeps its own names
  and order. The names become `TaskData.label_names`, are saved with the
  fine-tuned model (`ModelConfig.label_names`) and written into exported
  files.
- `regression`: one float per example (the STS-B head and metrics).
- `tagging`: see `conll.py` (the tag set follows the same rules, with BIO
  tags ordered `O` first, then by entity type, B- before I-).

Bad input is an error naming the file and line (or the config field) and
the fix: a missing column (listing the columns found), an empty split, an
empty label, labels that mix numbers and strings, a fractional class label,
a regression label that is not a finite number, or a dev label that the
training split never has (the model would have no output for it).
"""

from __future__ import annotations

import math
import re

from mbert_jax.data.config import DataConfigError
from mbert_jax.data.report import InputReport
from mbert_jax.data.tables import Table
from mbert_jax.data.tasks.glue import Example, TaskDataError
from mbert_jax.data.tasks.metrics import ENTITY_PREFIXES, is_entity_scheme, split_tag

KINDS = ("classification", "regression", "tagging")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TYPE_NAMES = {"number": "numbers", "string": "strings", "bool": "booleans"}


def label_key(value, where: str) -> tuple[str, object]:
    """The canonical class of a label value: ("number", 3), ("string", "pos") or ("bool", True).

    Raises:
      TaskDataError: an empty label, or a number with a fractional part.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise TaskDataError(f"{where}: empty label; every example needs one")
    if isinstance(value, bool):
        return "bool", value
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.match(text):
            return "string", text
        value = float(text)
    if isinstance(value, int | float):
        if not math.isfinite(value) or float(value) != int(value):
            raise TaskDataError(
                f"{where}: label {value!r} is not a class id; class labels are integers or "
                "names (for scores set data.task_kind='regression')"
            )
        return "number", int(value)
    raise TaskDataError(f"{where}: label {value!r} is a {type(value).__name__}, not a class")


def key_name(key: tuple[str, object]) -> str:
    kind, value = key
    return ("true" if value else "false") if kind == "bool" else str(value)


def _bio_order(name: str) -> tuple:
    prefix, kind = split_tag(name)
    return (name != "O", kind, ENTITY_PREFIXES.index(prefix) if prefix in ENTITY_PREFIXES else 9)


def infer_names(
    keys: list[tuple[str, object]], where: list[str], column: str, *, tagging: bool = False
) -> tuple[str, ...]:
    """The class names of the training labels, in the module docstring's order.

    Raises:
      TaskDataError: the labels mix numbers, strings or booleans.
    """
    first: dict[str, tuple[str, str]] = {}
    for k, w in zip(keys, where):
        first.setdefault(k[0], (key_name(k), w))
    if len(first) > 1:
        mixed = "; ".join(f"{_TYPE_NAMES[t]} (e.g. {n!r} at {w})" for t, (n, w) in first.items())
        raise TaskDataError(
            f"column {column!r} mixes label types: {mixed}. Make them one type, or give every "
            "class in order with data.labels='a,b,c' (then labels are compared as text)"
        )
    distinct = sorted(set(keys), key=lambda k: k[1])
    names = tuple(key_name(k) for k in distinct)
    if tagging and is_entity_scheme(names):
        names = tuple(sorted(names, key=_bio_order))
    return names


def explicit_names(text: str) -> tuple[str, ...] | None:
    """`data.labels` as a tuple of names (None when empty)."""
    if not text.strip():
        return None
    names = tuple(n.strip() for n in text.split(","))
    if any(not n for n in names) or len(set(names)) != len(names):
        raise DataConfigError(
            f"data.labels={text!r}: give distinct, non-empty class names separated by commas"
        )
    return names


def to_ids(
    keys: list[tuple[str, object]],
    where: list[str],
    names: tuple[str, ...],
    *,
    split: str,
    train_source: str = "",
    given_by: str | None = None,
) -> list[int]:
    """Class ids of `keys` under `names`.

    Args:
      keys, where: the labels (`label_key`) and their locations.
      names: the class names, by id.
      split: the split's name, for messages.
      train_source: where `names` were found (when they come from the training split).
      given_by: what gave `names` when not the training split ("data.labels",
        "the model's label_names").

    Raises:
      TaskDataError: a label that is not one of `names`, naming where it is and the fix.
    """
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for k, w in zip(keys, where):
        name = key_name(k)
        if name not in index:
            if given_by:
                raise TaskDataError(
                    f"{w}: label {name!r} is not one of {given_by} {list(names)}; fix the row"
                    + (" or add the class there" if given_by == "data.labels" else "")
                )
            raise TaskDataError(
                f"{w}: {split} label {name!r} does not occur in the training data "
                f"({train_source}), which has {list(names)}; the model would have no output "
                "for it. Fix the label, add training examples of it, or list every class "
                "with data.labels='...'"
            )
        ids.append(index[name])
    return ids


def _text(row: dict, column: str, field: str, where: str) -> str:
    if column not in row:
        raise TaskDataError(f"{where}: no {column!r} (data.{field}); the row has {list(row)}")
    value = row[column]
    if not isinstance(value, str):
        raise TaskDataError(
            f"{where}: {column!r} (data.{field}) is a {type(value).__name__}, not text"
        )
    return value


def score(value, where: str, column: str) -> float:
    """A regression label as a float (a number, or text that reads as one)."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TaskDataError(
            f"{where}: regression label {value!r} in column {column!r} is not a finite number "
            "(data.task_kind='regression')"
        )
    return float(value)


def read_examples(
    table: Table, c, split: str, report: InputReport
) -> tuple[list[Example], list, list[str]]:
    """Examples of a classification / regression table, before labels become ids.

    Returns:
      (examples whose `label` is the raw key, the label keys (floats for
      regression), the location of each example).

    Raises:
      TaskDataError: a missing column, an empty split, a bad row (unless
        `c.on_bad_line="skip"`).
    """
    table.require(c.text_column, "text_column")
    if c.text_pair_column:
        table.require(c.text_pair_column, "text_pair_column")
    table.require(c.label_column, "label_column")
    names = table.names(c.label_column)
    regression = c.task_kind == "regression"
    examples, keys, where = [], [], []
    for row, w in zip(table.rows, table.where):
        try:
            a = _text(row, c.text_column, "text_column", w)
            b = (
                _text(row, c.text_pair_column, "text_pair_column", w)
                if c.text_pair_column
                else None
            )
            if c.label_column not in row:
                raise TaskDataError(
                    f"{w}: no {c.label_column!r} (data.label_column); the row has {list(row)}"
                )
            raw = row[c.label_column]
            if regression:
                key = score(raw, w, c.label_column)
            elif names is not None and isinstance(raw, int) and not isinstance(raw, bool):
                if not 0 <= raw < len(names):
                    raise TaskDataError(f"{w}: class id {raw} is outside the ClassLabel {names}")
                key = ("string", names[raw])
            else:
                key = label_key(raw, w)
        except TaskDataError:
            if c.on_bad_line != "skip":
                raise
            report.note("malformed rows skipped", w)
            continue
        examples.append(Example(w, a, b, None))
        keys.append(key)
        where.append(w)
    if not examples:
        raise TaskDataError(
            f"{table.source}: the {split} split has no examples; it needs at least one labelled row"
        )
    report.count(f"{split} examples", len(examples))
    return examples, keys, where
