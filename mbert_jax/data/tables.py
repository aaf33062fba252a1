"""The user's own labelled files as tables: CSV, TSV, JSON lines, or a `datasets` split.

A `Table` is a list of rows (column name -> value) with the location of
each row (`file:line`, or `dataset[split] row i`) for error messages. The
format follows the file name's suffix:

- `.csv`: comma-separated with a header row, RFC 4180 quoting (as written
  by pandas, spreadsheets and the `csv` module: a field holding commas,
  quotes or line breaks is quoted, `""` is a quote inside it). A leading
  UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped.
- `.tsv`: tab-separated with a header row and no quoting (the IANA
  text/tab-separated-values rule, and GLUE's): a field is everything
  between two tabs, quotes included.
- `.jsonl` / `.json`: one JSON object per line (blank lines skipped), or a
  file holding one JSON array of objects (pandas `orient="records"`).

Values are kept as read: strings from CSV / TSV, JSON types from JSON, and
the dataset's values (with its `features`, e.g. `ClassLabel` names) from
`datasets`. Rows with the wrong number of fields, lines that are not a JSON
object, or non-UTF-8 bytes are errors naming the file and line; with
`on_bad_line="skip"` a malformed row is skipped and counted in the report.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from pathlib import Path

from mbert_jax.data.report import InputReport, read_utf8
from mbert_jax.data.tasks.glue import TaskDataError

TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclasses.dataclass
class Table:
    """Rows of one split.

    Attributes:
      source: the file (or `dataset[split]`) the rows come from.
      columns: the column names (the header; for JSON the keys, in order of appearance).
      rows: one dict per row.
      where: the location of each row (`file:line`).
      features: `datasets` features of the columns (None for files).
    """

    source: str
    columns: tuple[str, ...]
    rows: list[dict]
    where: list[str]
    features: dict | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def require(self, column: str, field: str) -> None:
        """Raise `TaskDataError` naming `field` and the columns found when `column` is absent."""
        if column not in self.columns:
            raise TaskDataError(
                f"{self.source}: no column {column!r} (data.{field}); columns found: "
                f"{list(self.columns)}. Set data.{field} to the right one"
            )

    def names(self, column: str) -> tuple[str, ...] | None:
        """The `ClassLabel` names of a dataset column (or of its list items), else None."""
        if not self.features or column not in self.features:
            return None
        f = self.features[column]
        f = getattr(f, "feature", f)  # Sequence(ClassLabel) / List(ClassLabel)
        names = getattr(f, "names", None)
        return tuple(names) if names else None


def _bad(report: InputReport, on_bad_line: str, where: str, message: str) -> None:
    if on_bad_line != "skip":
        raise TaskDataError(f"{where}: {message}")
    report.note("malformed rows skipped", where)


def _read_delimited(path: Path, text: str, report, on_bad_line) -> Table:
    tsv = path.suffix == ".tsv"
    if tsv:
        records = ((i, line.rstrip("\r").split("\t")) for i, line in enumerate(text.split("\n"), 1))
    else:
        reader = csv.reader(io.StringIO(text, newline=""))

        def csv_records():
            end = 0
            try:
                for fields in reader:
                    start, end = end + 1, reader.line_num
                    yield start, fields
            except csv.Error as e:
                raise TaskDataError(
                    f"{path}:{reader.line_num}: not valid CSV ({e}); check the quoting"
                ) from None

        records = csv_records()
    header, rows, where = None, [], []
    for lineno, fields in records:
        if not fields or (len(fields) == 1 and not fields[0].strip()):
            continue  # blank line
        loc = f"{path}:{lineno}"
        if header is None:
            header = [f.strip() for f in fields]
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise TaskDataError(f"{loc}: the header repeats the column(s) {repeated}")
            continue
        if len(fields) != len(header):
            sep = "tab" if tsv else "comma"
            _bad(
                report,
                on_bad_line,
                loc,
                f"{len(fields)} {sep}-separated fields, the header has {len(header)}",
            )
            continue
        rows.append(dict(zip(header, fields)))
        where.append(loc)
    if header is None:
        raise TaskDataError(f"{path}: the file is empty; it needs a header row and examples")
    return Table(str(path), tuple(header), rows, where)


def _read_json(path: Path, text: str, report, on_bad_line) -> Table:
    rows, where, columns = [], [], {}
    if text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        located = [(f"{path} item {i}", item) for i, item in enumerate(items)]
    else:
        located = []
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            loc = f"{path}:{lineno}"
            try:
                located.append((loc, json.loads(line)))
            except json.JSONDecodeError as e:
                _bad(report, on_bad_line, loc, f"not valid JSON ({e.msg}); one object per line")
    for loc, item in located:
        if not isinstance(item, dict):
            _bad(report, on_bad_line, loc, f"a {type(item).__name__}, not a JSON object")
            continue
        columns.update(dict.fromkeys(item))
        rows.append(item)
        where.append(loc)
    return Table(str(path), tuple(columns), rows, where)


def read_table(
    path: str | os.PathLike, report: InputReport, *, on_bad_line: str = "error"
) -> Table:
    """Read a `.csv`, `.tsv`, `.jsonl` or `.json` file (see the module docstring).

    Raises:
      TaskDataError: a missing or non-UTF-8 file, an unknown suffix, a
        malformed row (naming file:line, unless `on_bad_line="skip"`).
    """
    path = Path(os.path.expanduser(path))
    if not path.is_file():
        raise TaskDataError(f"{path} does not exist")
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise TaskDataError(
            f"{path}: unknown format {path.suffix!r}; the file name must end in one of "
            f"{', '.join(TABLE_SUFFIXES)}"
        )
    text = read_utf8(path, TaskDataError).removeprefix("\ufeff")
    if path.suffix.lower() in (".csv", ".tsv"):
        path = path.with_suffix(path.suffix.lower())
        return _read_delimited(path, text, report, on_bad_line)
    return _read_json(path, text, report, on_bad_line)


def table_from_dataset(dataset, name: str) -> Table:
    """A `datasets.Dataset` (one split) as a table; `name` locates its rows in messages."""
    columns = tuple(dataset.column_names)
    rows = list(dataset)
    return Table(
        name, columns, rows, [f"{name} row {i}" for i in range(len(rows))], dict(dataset.features)
    )
