"""Building `task="custom"` features: read both splits, fix the labels, featurize, cache.

Both splits are read, checked and featurized inside one cache build, so
the label set is decided by the training split before the dev split is
mapped, a bad dev file fails the whole build, and the cache entry (both
splits, the label names, the input report) appears only when everything
succeeded: a failing build leaves no entry (`tokenized.cached_arrays`
writes to a temporary directory that is renamed into place).

Sources: `data.source="files"` reads `data.train_file` and
`data.eval_file` (the format from each name, see `data/tables.py`
and `conll.py`); `data.source="hf"` reads the `data.train_split` and
`data.eval_split` (default "validation") splits of `data.hf_disk_path`
(`datasets.load_from_disk`) or `datasets.load_dataset(data.hf_path,
data.hf_name, data_files=...)` with `data.hf_data_files` as
`split=path,split=path` (a bare path is the train split).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from mbert_jax.data import tables, tokenized
from mbert_jax.data.config import DataConfigError
from mbert_jax.data.report import InputReport
from mbert_jax.data.tasks import conll, glue, label_ids
from mbert_jax.data.tasks.glue import TaskDataError
from mbert_jax.data.tasks.metrics import is_entity_scheme
from mbert_jax.data.tokenizer import WordPieceTokenizer

FEATURES_VERSION = 1
SPLITS = ("train", "dev")
JSON_SUFFIXES = (".json", ".jsonl")
TAGGING_METRICS = ("precision", "recall", "f1", "accuracy")


def _files_key(paths: list[Path]) -> list:
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def parse_data_files(text: str) -> dict[str, list[str]]:
    """`data.hf_data_files` ("train=a.csv,validation=b.csv"; a bare path: train)."""
    out: dict[str, list[str]] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        split, eq, path = item.partition("=")
        split, path = (split.strip(), path.strip()) if eq else ("train", split)
        out.setdefault(split, []).append(os.path.expanduser(path))
    return out


def read_file(c, path: Path, report: InputReport):
    """Rows (a Table) or, for tagging, sentences of one file."""
    if c.task_kind != "tagging":
        return tables.read_table(path, report, on_bad_line=c.on_bad_line)
    if path.suffix.lower() in JSON_SUFFIXES:
        table = tables.read_table(path, report, on_bad_line=c.on_bad_line)
        return conll.read_tagged_table(
            table, c.tokens_column, c.tags_column, report, c.on_bad_line
        ), None
    return conll.read_conll(
        path, report, tag_column=c.conll_tag_column, on_bad_line=c.on_bad_line
    ), None


def sources(c) -> tuple[dict, dict]:
    """({split: read(report)}, the part of the cache key that identifies the input)."""
    if c.source == "files":
        fields = {"train": "train_file", "dev": "eval_file"}
        for field in fields.values():
            if not c[field]:
                raise DataConfigError(
                    f"data.{field}: the custom task needs a labelled train_file and eval_file "
                    "(.csv, .tsv, .jsonl or .json; tagging: CoNLL files or .jsonl)"
                )
        paths = {s: Path(c[f]).expanduser() for s, f in fields.items()}
        for split, path in paths.items():
            if not path.is_file():
                raise TaskDataError(f"data.{fields[split]}: {path} does not exist")
        read = {s: (lambda report, p=p: read_file(c, p, report)) for s, p in paths.items()}
        return read, {"files": _files_key(list(paths.values()))}
    import datasets

    if not (c.hf_disk_path or c.hf_path):
        raise DataConfigError(
            "data.hf_disk_path: source='hf' needs hf_disk_path (a DatasetDict.save_to_disk "
            "directory) or hf_path (a datasets builder or hub name in the cache)"
        )
    if c.hf_disk_path:
        ds = datasets.load_from_disk(os.path.expanduser(c.hf_disk_path))
        name = c.hf_disk_path
    else:
        files = parse_data_files(c.hf_data_files) or None
        ds = datasets.load_dataset(c.hf_path, c.hf_name or None, data_files=files)
        name = c.hf_path
    wanted = {"train": c.train_split, "dev": c.eval_split or "validation"}
    if not isinstance(ds, datasets.DatasetDict):
        raise TaskDataError(
            f"{name} is one Dataset, not a DatasetDict with {sorted(set(wanted.values()))} splits"
        )
    for split, hf_split in wanted.items():
        if hf_split not in ds:
            field = "train_split" if split == "train" else "eval_split"
            raise TaskDataError(f"data.{field}={hf_split!r}: {name} has splits {sorted(ds)}")

    def read(report, split):
        table = tables.table_from_dataset(ds[wanted[split]], f"{name}[{wanted[split]}]")
        if c.task_kind != "tagging":
            return table
        sents = conll.read_tagged_table(
            table, c.tokens_column, c.tags_column, report, c.on_bad_line
        )
        return sents, table.names(c.tags_column)

    key = {"hf": name, "splits": wanted}
    key["fingerprints"] = {s: getattr(ds[h], "_fingerprint", None) for s, h in wanted.items()}
    return {s: (lambda report, s=s: read(report, s)) for s in SPLITS}, key


def _names(keys, where, given, explicit, column, *, tagging=False) -> tuple[str, ...]:
    names = explicit or given or label_ids.infer_names(keys, where, column, tagging=tagging)
    if len(names) < 2:
        raise TaskDataError(
            f"column {column!r}: the training data has only the label {list(names)}; a "
            "classifier needs at least two classes (declare them with data.labels='a,b')"
        )
    return names


def _tagging(c, read, tokenizer, report):
    explicit = label_ids.explicit_names(c.labels)
    sents, given = {}, None
    for split in SPLITS:
        sents[split], names = read[split](report)
        given = given or (names if split == "train" else None)
        if not sents[split]:
            raise TaskDataError(
                f"the {split} split ({'data.train_file' if split == 'train' else 'data.eval_file'}"
                ") has no sentences; it needs at least one tagged sentence"
            )
        report.count(f"{split} sentences", len(sents[split]))
        report.count(f"{split} words", sum(len(e.words) for e in sents[split]))
    keys = {}
    where = {}
    for split in SPLITS:
        keys[split], where[split] = [], []
        for e in sents[split]:
            for k, t in enumerate(e.tags):
                w = e.locate(k)
                keys[split].append(label_ids.label_key(t, w))
                where[split].append(w)
    column = "tag" if sents["train"][0].line is not None else c.tags_column
    names = _names(keys["train"], where["train"], given, explicit, column, tagging=True)
    train_source = sents["train"][0].path
    out = {}
    for split in SPLITS:
        ids = label_ids.to_ids(
            keys[split],
            where[split],
            names,
            split=split,
            train_source=train_source,
            given_by="data.labels" if explicit else None,
        )
        per_sentence, k = [], 0
        for e in sents[split]:
            per_sentence.append(ids[k : k + len(e.words)])
            k += len(e.words)
        f = conll.featurize_tags(sents[split], per_sentence, tokenizer, c.max_seq_length, report)
        out[split] = vars(f)
    entity = is_entity_scheme(names)
    if not entity:
        report.add_info("tags are not BIO / IOBES: entity-level metrics are not reported")
    facts = dict(
        num_labels=len(names),
        is_regression=False,
        label_names=list(names),
        metric_names=list(TAGGING_METRICS if entity else ("accuracy",)),
    )
    return out, facts


def _sequences(c, read, tokenizer, report):
    regression = c.task_kind == "regression"
    explicit = label_ids.explicit_names(c.labels)
    if regression and explicit:
        raise DataConfigError("data.labels: a regression task has no classes; leave it empty")
    data = {}
    for split in SPLITS:
        table = read[split](report)
        data[split] = (table, *label_ids.read_examples(table, c, split, report))
    names = None
    if not regression:
        table, _, keys, where = data["train"]
        names = _names(keys, where, table.names(c.label_column), explicit, c.label_column)
    out = {}
    for split, (_, examples, keys, where) in data.items():
        if regression:
            labels = keys
        else:
            labels = label_ids.to_ids(
                keys,
                where,
                names,
                split=split,
                train_source=data["train"][0].source,
                given_by="data.labels" if explicit else None,
            )
        examples = [glue.Example(e.guid, e.text_a, e.text_b, y) for e, y in zip(examples, labels)]
        f = glue.featurize(examples, tokenizer, c.max_seq_length, report, regression=regression)
        out[split] = vars(f)
    facts = dict(
        num_labels=1 if regression else len(names),
        is_regression=regression,
        label_names=None if regression else list(names),
        metric_names=list(("pearson", "spearman") if regression else ("accuracy", "f1_macro")),
    )
    return out, facts


def source_parts(c) -> dict:
    """The part of a custom task's cache keys that its files and column settings make."""
    _, source_key = sources(c)
    return {
        "custom": source_key,
        "kind": c.task_kind,
        "columns": [c.text_column, c.text_pair_column, c.label_column],
        "tagging": [c.tokens_column, c.tags_column, c.conll_tag_column],
        "labels": c.labels,
        "on_bad_line": c.on_bad_line,
    }


def prepare(
    c, tokenizer: WordPieceTokenizer, cache_dir: Path
) -> tuple[dict[str, dict], dict[str, str], dict, InputReport]:
    """The cached features of both splits.

    Returns:
      ({split: arrays (memory-mapped, with "_dir")}, {split: content hash},
      facts for `TaskData` (num_labels, is_regression, label_names,
      metric_names), the input report of the build).

    Raises:
      TaskDataError / DataConfigError: bad input (see `label_ids.py`, `conll.py`);
        nothing is cached then.
    """
    read, _ = sources(c)
    parts = {
        **source_parts(c),
        "tokenizer": tokenizer.fingerprint,
        "S": c.max_seq_length,
        "v": FEATURES_VERSION,
    }

    def run():
        report = InputReport()
        build = _tagging if c.task_kind == "tagging" else _sequences
        splits, facts = build(c, read, tokenizer, report)
        content = {}
        for split, arrays in splits.items():
            h = hashlib.sha256()
            for k in sorted(arrays):
                h.update(np.ascontiguousarray(arrays[k]).tobytes())
            content[split] = h.hexdigest()[:16]
        flat = {f"{s}/{k}": v for s, arrays in splits.items() for k, v in arrays.items()}
        return flat, {"report": report.to_dict(), "content": content, "facts": facts}

    path, _, extra = tokenized.cached_arrays(cache_dir, "task", parts, run)
    arrays = {
        s: {**tokenized.load_arrays(path / s), "_dir": str(path / s)} for s in extra["content"]
    }
    facts = dict(extra["facts"])
    facts["label_names"] = None if facts["label_names"] is None else tuple(facts["label_names"])
    facts["metric_names"] = tuple(facts["metric_names"])
    return arrays, extra["content"], facts, InputReport.from_dict(extra["report"])
