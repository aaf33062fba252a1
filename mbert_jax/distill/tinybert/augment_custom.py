"""TinyBERT's augmentation of the user's own data (`config.data.task="custom"`).

The training split is read as fine-tuning reads it (`data/tasks/custom.py`:
CSV / TSV / JSON lines / CoNLL files or a `datasets` dataset, every row
checked with the same errors, naming the original file and line), then
written as one JSON-lines file: each original row, then its variants.

- classification, regression, pairs: each text column (`data.text_column`,
  and `data.text_pair_column` for pairs) gets N variants with the other
  columns, the label included, unchanged (as the GLUE augmentation writes
  both sides of a pair).
- tagging: word replacement that keeps every word's tag. A sentence is
  augmented as its list of words, each replaced word by one whole word
  (`Augmenter.augment_words`), so the number of words and each word's tag
  are unchanged, and only words tagged "O" are replaced: the words of an
  entity are kept, so its span and tags stay right. The featurization then
  puts the tags at the first piece of each new word, as for any sentence.
  (The distillation loss follows the teacher's outputs on the new sentence
  anyway; only `hard_label` reads the kept tags.) A tag set without "O"
  (e.g. POS tags) cannot be augmented this way: an error says so.
- SQuAD is refused (`augment.check_augmentable`): replaced words move the
  answers' character spans.

The dev split is not augmented: the dev file is read as it was (a `datasets`
dev split is written beside the training file). `ClassLabel` ids are
written as their names and the names' order kept with `data.labels`, so the
augmented data has the label ids the teacher was fine-tuned with. The
result is cached under the data cache directory, keyed by the input and
every setting (`augmented_config`); `mbert-jax augment --task custom`
writes it to a directory of your choice.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import ml_collections

from mbert_jax.data.config import DataConfigError
from mbert_jax.data.report import InputReport
from mbert_jax.data.tasks import custom, label_ids
from mbert_jax.data.tasks.glue import TaskDataError
from mbert_jax.data.tokenizer import WordPieceTokenizer
from mbert_jax.distill.tinybert.augment_words import Augmenter

log = logging.getLogger(__name__)

TRAIN_FILE, DEV_FILE = "train.jsonl", "dev.jsonl"
KEPT_TAG = "O"  # tagging: only words with this tag are replaced


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")


def _label_names(value, names):
    """A `ClassLabel` id as its name (other values as they are)."""
    if names is not None and isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else value
    return value


def _sequence_rows(table, c, augmenter, *, split, n, p, seed, max_examples, augment=True):
    """Rows of a classification / regression table, each followed by its variants."""
    report = InputReport()
    examples, _, where = label_ids.read_examples(table, c, split, report)  # checks every row
    ok = {w: e for w, e in zip(where, examples)}
    names = table.names(c.label_column)
    rows = [{**r, c.label_column: _label_names(r.get(c.label_column), names)} for r in table.rows]
    if not augment:
        return rows, names
    columns = [c.text_column] + ([c.text_pair_column] if c.text_pair_column else [])
    picked = [i for i, w in enumerate(table.where) if w in ok]
    if max_examples > 0:
        picked = picked[:max_examples]
    variants = {}
    for k, column in enumerate(columns):
        texts = [ok[table.where[i]].text_a if k == 0 else ok[table.where[i]].text_b for i in picked]
        keys = [(i, k) for i in picked]
        variants[column] = augmenter.augment(texts, n=n, p=p, seed=seed, keys=keys)
    out, at = [], {i: j for j, i in enumerate(picked)}
    for i, row in enumerate(rows):
        out.append(row)
        if i not in at:
            continue
        for column in columns:
            out.extend({**row, column: v} for v in variants[column][at[i]])
    return out, names


def _tagged_rows(sentences, c, augmenter, *, split, n, p, seed, max_examples, augment=True):
    """Sentences as {tokens, tags} rows, each followed by its variants."""
    if not sentences:
        raise TaskDataError(f"the {split} split has no sentences; it needs at least one")
    for e in sentences:  # the tag checks of fine-tuning, located in the original file
        for k, t in enumerate(e.tags):
            label_ids.label_key(t, e.locate(k))
    rows = [{c.tokens_column: list(e.words), c.tags_column: list(e.tags)} for e in sentences]
    if not augment:
        return rows
    if not any(t == KEPT_TAG for e in sentences for t in e.tags):
        raise ValueError(
            f"config.augment.enabled=True: tagging augmentation replaces only words tagged "
            f"{KEPT_TAG!r} (entities keep their words and tags), and the training tags of "
            f"{sentences[0].where} have no {KEPT_TAG!r}; set --config.augment.enabled=False"
        )
    picked = sentences[:max_examples] if max_examples > 0 else sentences
    keep = [[t != KEPT_TAG for t in e.tags] for e in picked]
    variants = augmenter.augment_words(
        [list(e.words) for e in picked],
        n=n,
        p=p,
        seed=seed,
        keys=[(i,) for i in range(len(picked))],
        keep=keep,
    )
    out = []
    for i, row in enumerate(rows):
        out.append(row)
        if i < len(picked):
            out.extend({**row, c.tokens_column: v} for v in variants[i])
    return out


def augment_custom_files(
    c, dst: Path, augmenter: Augmenter, *, n: int, p: float, seed: int, max_examples: int = 0
) -> tuple[int, dict]:
    """Write `dst/train.jsonl` (augmented) and, for a `datasets` source, `dst/dev.jsonl`.

    Args:
      c: the custom task's data config (`config.data`).
      dst: the output directory.
      augmenter: the word replacer; n, p, seed: its settings.
      max_examples: give variants only to the first rows (sentences) when > 0.

    Returns:
      (training rows written, the `config.data` fields that read the result:
      `source`, `train_file`, `eval_file`, `labels`).

    Raises:
      TaskDataError / DataConfigError: bad input, as fine-tuning reports it.
      ValueError: a tag set without "O" (tagging).
    """
    if c.source == "files":  # the dev file is read as it is
        if not c.train_file:
            raise DataConfigError("data.train_file: the custom task's training file to augment")
        path = Path(c.train_file).expanduser()
        if not path.is_file():
            raise TaskDataError(f"data.train_file: {path} does not exist")
        read = {"train": lambda report: custom.read_file(c, path, report)}
    else:
        read, _ = custom.sources(c)
    settings = dict(n=n, p=p, seed=seed, max_examples=max_examples)
    dst.mkdir(parents=True, exist_ok=True)
    fields = {"source": "files", "train_file": str(dst / TRAIN_FILE), "eval_file": c.eval_file}
    for split in read:
        report, augment = InputReport(), split == "train"
        if c.task_kind == "tagging":
            sentences, names = read[split](report)
            rows = _tagged_rows(sentences, c, augmenter, split=split, augment=augment, **settings)
        else:
            table = read[split](report)
            rows, names = _sequence_rows(
                table, c, augmenter, split=split, augment=augment, **settings
            )
        if names is not None and not c.labels:  # keep the ClassLabel order
            fields["labels"] = ",".join(names)
        written = dst / (TRAIN_FILE if split == "train" else DEV_FILE)
        _write_jsonl(written, rows)
        if split == "train":
            count = len(rows)
        else:
            fields["eval_file"] = str(written)
    return count, fields


def augmented_config(data_config, augment_cfg, tokenizer: WordPieceTokenizer):
    """`data_config` (task="custom") reading its augmented training set (built once, cached)."""
    from mbert_jax.data import tokenized
    from mbert_jax.distill.tinybert import augment

    c = data_config
    parts = {
        **custom.source_parts(c),
        **augment.cache_parts(augment_cfg, tokenizer),
    }
    cache = tokenized.resolve_cache_dir(c.cache_dir)
    directory = cache / f"augment-custom-{tokenized.cache_key(parts)}"
    if not (directory / "meta.json").is_file():

        def build(tmp: Path):
            augmenter = augment.build_augmenter(augment_cfg, tokenizer)
            rows, fields = augment_custom_files(
                c,
                tmp,
                augmenter,
                n=augment_cfg.n,
                p=augment_cfg.p,
                seed=augment_cfg.seed,
                max_examples=augment_cfg.max_examples,
            )
            meta = {**parts, "rows": rows, "labels": fields.get("labels", "")}
            (tmp / "meta.json").write_text(json.dumps(meta, default=str) + "\n")
            log.info("augmented the custom task: %d training rows in %s", rows, directory)

        tokenized.write_atomic_dir(directory, build)
    meta = json.loads((directory / "meta.json").read_text())
    out = ml_collections.ConfigDict(c.to_dict())
    out.source = "files"
    out.train_file = str(directory / TRAIN_FILE)
    if (directory / DEV_FILE).is_file():  # a datasets dev split, written beside it
        out.eval_file = str(directory / DEV_FILE)
    if meta["labels"]:
        out.labels = meta["labels"]
    return out
