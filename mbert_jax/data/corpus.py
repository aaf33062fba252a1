"""Pretraining text sources: documents as lists of sentences.

A document is a list of non-empty lines (sentences, or paragraphs cut into
sentences when `sentence_split` is on). Four sources, chosen by
`config.source`:

- `default`: the embedded stdlib-documentation corpus (`default_corpus.py`).
- `text`: local plain-text files matched by globs (`config.text_files`,
  comma-separated), optionally gzip/bzip2/xz compressed (by suffix).
  Documents are separated by blank lines and never span files; one sentence
  or paragraph per line, as in BERT's `create_pretraining_data.py`.
- `hf`: a Hugging Face `datasets` dataset, from `load_from_disk`
  (`config.hf_disk_path`) or `load_dataset` (`config.hf_path`, e.g. `json`
  with `hf_data_files`, or a hub name served from the local cache when
  offline); each row's `config.text_field` is a document, its newlines
  separate lines.
- `tfds`: a TensorFlow Datasets dataset by name from a local
  `config.tfds_data_dir` (never downloaded here); rows as for `hf`.

Bad input: a glob matching nothing, a directory, or an undecompressable file
is an error naming it. Empty files, empty rows and non-UTF-8 lines are
skipped and counted in the `InputReport` (with `on_bad_utf8='error'` a
non-UTF-8 line is an error naming the file and line instead; `'replace'`
keeps it with U+FFFD).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import lzma
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from mbert_jax.data import default_corpus, text
from mbert_jax.data.report import InputReport

SOURCES = ("default", "text", "hf", "tfds")
BAD_UTF8_POLICIES = ("skip", "error", "replace")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open}


class CorpusError(ValueError):
    """Unusable input text; the message names the file (and line) and the fix."""


def split_list(value: str | Sequence[str]) -> list[str]:
    """A config value that is a comma-separated string or a sequence -> list of items."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def expand_globs(patterns: str | Sequence[str]) -> list[Path]:
    """Files matched by the globs, in pattern order, each pattern's matches sorted.

    Raises:
      CorpusError: no pattern given, a pattern matching no file, or a directory.
    """
    patterns = split_list(patterns)
    if not patterns:
        raise CorpusError(
            "data.text_files is empty; give one or more file globs, e.g. 'corpus/*.txt'"
        )
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            raise CorpusError(f"data.text_files: {pattern!r} matches no file")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                raise CorpusError(
                    f"data.text_files: {m} is a directory; use a glob of files such as '{m}/*.txt'"
                )
            if p not in files:
                files.append(p)
    return files


def open_binary(path: Path):
    opener = _OPENERS.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")


def _decode(raw: bytes, where: str, policy: str, report: InputReport) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if policy == "error":
            raise CorpusError(
                f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start}); "
                "re-encode the file as UTF-8, or set data.on_bad_utf8='skip' (drop such lines, "
                "counted) or 'replace' (keep them with U+FFFD)"
            ) from None
        if policy == "skip":
            report.note("non-UTF-8 lines skipped", where)
            return None
        report.note("non-UTF-8 lines kept with U+FFFD replacements", where)
        return raw.decode("utf-8", errors="replace")


def _lines(line: str, sentence_split: bool) -> list[str]:
    return text.split_sentences(line) if sentence_split else [text.normalize_whitespace(line)]


def read_text_files(
    paths: Sequence[Path],
    report: InputReport,
    *,
    sentence_split: bool = True,
    on_bad_utf8: str = "skip",
) -> Iterator[list[str]]:
    """Documents of plain-text files (blank lines separate documents)."""
    for path in paths:
        report.count("files")
        doc: list[str] = []
        nonblank = 0
        try:
            with open_binary(path) as f:
                for lineno, raw in enumerate(f, 1):
                    line = _decode(raw, f"{path}:{lineno}", on_bad_utf8, report)
                    if line is None:
                        continue
                    if lineno == 1:
                        line = line.lstrip("\ufeff")
                    if not line.strip():
                        if doc:
                            yield doc
                            doc = []
                        continue
                    nonblank += 1
                    doc.extend(_lines(line, sentence_split))
        except (OSError, EOFError, lzma.LZMAError) as e:
            raise CorpusError(
                f"{path}: cannot read ({e}); is the file complete and its suffix right?"
            ) from None
        if doc:
            yield doc
        report.count("lines", nonblank)
        if nonblank == 0:
            report.note("empty files skipped", str(path))


def _rows_to_documents(
    texts: Iterator[tuple[str, object]], report: InputReport, sentence_split: bool, policy: str
) -> Iterator[list[str]]:
    for where, value in texts:
        if isinstance(value, bytes):
            value = _decode(value, where, policy, report)
        if not isinstance(value, str):
            report.note("rows without text skipped", where)
            continue
        doc = [
            s for line in value.split("\n") if line.strip() for s in _lines(line, sentence_split)
        ]
        if not doc:
            report.note("empty rows skipped", where)
            continue
        report.count("rows")
        yield doc


def load_hf_dataset(config):
    """The `datasets.Dataset` that `config` (the data config) names."""
    import datasets

    if config.hf_disk_path:
        ds = datasets.load_from_disk(os.path.expanduser(config.hf_disk_path))
        if isinstance(ds, datasets.DatasetDict):
            if config.hf_split not in ds:
                raise CorpusError(
                    f"data.hf_split={config.hf_split!r} is not in {config.hf_disk_path} "
                    f"(splits: {sorted(ds)})"
                )
            ds = ds[config.hf_split]
    elif config.hf_path:
        data_files = split_list(config.hf_data_files) or None
        ds = datasets.load_dataset(
            config.hf_path, config.hf_name or None, data_files=data_files, split=config.hf_split
        )
    else:
        raise CorpusError("data.source='hf' needs data.hf_disk_path or data.hf_path")
    if config.text_field not in ds.column_names:
        raise CorpusError(
            f"the dataset has no column data.text_field={config.text_field!r}; its columns are "
            f"{ds.column_names}"
        )
    return ds


def _hf_texts(config) -> Iterator[tuple[str, object]]:
    ds = load_hf_dataset(config).select_columns([config.text_field])
    name = config.hf_disk_path or config.hf_path
    i = 0
    for batch in ds.iter(batch_size=1000):
        for value in batch[config.text_field]:
            yield f"{name}[{config.hf_split}] row {i}", value
            i += 1


def _tfds_texts(config) -> Iterator[tuple[str, object]]:
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(config.tfds_data_dir) if config.tfds_data_dir else None
    try:
        ds = tfds.load(config.tfds_name, split=config.tfds_split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for "not prepared"
        raise CorpusError(
            f"cannot open TFDS dataset {config.tfds_name!r} split {config.tfds_split!r} in "
            f"data_dir={data_dir}: {e}. Prepare it first (tfds build, with network) and point "
            "data.tfds_data_dir at it"
        ) from e
    for i, ex in enumerate(tfds.as_numpy(ds)):
        if config.text_field not in ex:
            raise CorpusError(
                f"TFDS {config.tfds_name} rows have no feature {config.text_field!r}; features: "
                f"{sorted(ex)}; set data.text_field"
            )
        yield f"{config.tfds_name}[{config.tfds_split}] row {i}", ex[config.text_field]


def source_name(config) -> str:
    return {
        "default": f"default corpus ({default_corpus.SOURCE})",
        "text": f"text files {config.text_files}",
        "hf": f"datasets {config.hf_disk_path or config.hf_path} [{config.hf_split}]",
        "tfds": f"tfds {config.tfds_name} [{config.tfds_split}]",
    }[config.source]


def check_source(config) -> None:
    if config.source not in SOURCES:
        raise CorpusError(f"data.source={config.source!r}; valid sources: {', '.join(SOURCES)}")
    if config.on_bad_utf8 not in BAD_UTF8_POLICIES:
        raise CorpusError(
            f"data.on_bad_utf8={config.on_bad_utf8!r}; valid: {', '.join(BAD_UTF8_POLICIES)}"
        )
    if config.source == "tfds" and not config.tfds_name:
        raise CorpusError("data.source='tfds' needs data.tfds_name")


def documents(config, report: InputReport) -> Iterator[list[str]]:
    """The documents of the source that `config` (the data config) names."""
    check_source(config)
    report.source = source_name(config)
    if config.source == "default":
        for doc in default_corpus.documents():
            report.count("documents read")
            yield list(doc.sentences)
    elif config.source == "text":
        yield from read_text_files(
            expand_globs(config.text_files),
            report,
            sentence_split=config.sentence_split,
            on_bad_utf8=config.on_bad_utf8,
        )
    elif config.source == "hf":
        yield from _rows_to_documents(
            _hf_texts(config), report, config.sentence_split, config.on_bad_utf8
        )
    else:
        yield from _rows_to_documents(
            _tfds_texts(config), report, config.sentence_split, config.on_bad_utf8
        )


def check_text(report: InputReport) -> None:
    """Refuse what was read when nothing is text, or when most lines are not text.

    A file of binary data read with `on_bad_utf8='skip'` keeps only the odd
    line that happens to decode: more lines skipped than kept means the input
    is not text.
    """
    skipped = report.notes.get("non-UTF-8 lines skipped", 0)
    kept = sum(report.counts.get(k, 0) for k in ("lines", "rows", "documents read"))
    where = ", ".join(report.where.get("non-UTF-8 lines skipped", []))
    if skipped > kept:
        raise CorpusError(
            f"{report.source}: {skipped:,} of {skipped + kept:,} lines are not valid UTF-8 "
            f"(first: {where}); is it a text file? Re-encode it as UTF-8, or set "
            "data.on_bad_utf8='replace' to keep such lines"
        )
    if kept == 0:
        _refuse_empty(report)


def check_read(report: InputReport) -> None:
    """`check_text`, and refuse a corpus without any token once it is tokenized.

    Called before the tokenized cache entry is written, so a refused corpus
    leaves nothing cached.
    """
    check_text(report)
    if report.counts.get("tokens", 0) == 0:
        _refuse_empty(report)


# What to change when a source gave no text, by the start of its `source_name`.
_EMPTY_FIX = {
    "text files": "give files with text in data.text_files",
    "datasets": "check data.hf_split and data.text_field",
    "tfds": "check data.tfds_split and data.text_field",
}


def _refuse_empty(report: InputReport):
    summary = "; ".join(line.strip() for line in report.summary().splitlines())
    fix = next((f for k, f in _EMPTY_FIX.items() if report.source.startswith(k)), None)
    fix = fix or "give data.source a source with text"
    raise CorpusError(f"no text to train on ({summary}); {fix}")


def fingerprint(config) -> dict:
    """What identifies the source's content, cheaply (for cache keys)."""
    check_source(config)
    out: dict = {"source": config.source, "sentence_split": bool(config.sentence_split)}
    if config.source == "default":
        out["corpus"] = default_corpus.fingerprint()
        return out
    out["on_bad_utf8"] = config.on_bad_utf8
    if config.source == "text":
        out["files"] = [
            [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
            for p in expand_globs(config.text_files)
        ]
    elif config.source == "hf":
        ds = load_hf_dataset(config)
        out.update(
            path=config.hf_disk_path or config.hf_path,
            name=config.hf_name,
            split=config.hf_split,
            field=config.text_field,
            fingerprint=getattr(ds, "_fingerprint", None),
            rows=len(ds),
        )
    else:
        data_dir = Path(os.path.expanduser(config.tfds_data_dir or "~/tensorflow_datasets"))
        prepared = data_dir / config.tfds_name.split(":")[0]
        out.update(
            name=config.tfds_name,
            split=config.tfds_split,
            data_dir=str(data_dir),
            field=config.text_field,
            files=sorted(
                [str(p.relative_to(data_dir)), p.stat().st_size]
                for p in prepared.rglob("*")
                if p.is_file()
            ),
        )
    return out
