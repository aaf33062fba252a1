"""Vocabulary pruning: keep only the word-embedding rows of the tokens a data set uses.

A pretrained BERT's word table (30,522 x H for bert-base-uncased's
vocabulary) is most of a small student's parameters, and a task uses a
fraction of it: the real preset's `wordorder` and `stdlib` training splits
use about 6,000 token ids. `prune_vocabulary` keeps the special tokens and
every token that the full vocabulary produces on the given texts, in their
original order, and slices the rows of every vocabulary-sized parameter
(the word table; the MLM head's output bias and untied output columns)
into a smaller model directory with the reduced `vocab.txt`
(TextPruner's vocabulary pruning; Abdaoui et al. 2020, "Load What You
Need", for multilingual BERT).

Exactness: WordPiece splits a word by greedy longest match. If the full
vocabulary splits a word into kept pieces, the reduced vocabulary splits it
the same way (a longer matching piece in the reduced vocabulary would also
be in the full one, and longer), so on such text the pruned model computes
exactly what the unpruned one does. A word that needs a dropped piece is
split into other kept pieces where it can be, else becomes [UNK];
`Pruned.changed_rate` of held-out texts says how many are tokenized
differently, and `unknown_rate` how many of their tokens became [UNK].

    mbert-jax prune-vocab --model DIR --out DIR --task stdlib
    mbert-jax prune-vocab --model DIR --out DIR --texts train.csv --text-column text
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mbert_jax.data.tokenizer import UNK, WordPieceTokenizer, load_tokenizer
from mbert_jax.models import io

# Parameters with one row (or entry) per vocabulary token.
VOCAB_ROWS = (
    "encoder/embeddings/word_embeddings/embedding",
    "mlm/extra_output_weights",
    "mlm/output_bias",
)


@dataclasses.dataclass(frozen=True)
class Pruned:
    """What `prune_vocabulary` kept.

    Attributes:
      path: the written model directory.
      kept: the kept token ids of the original vocabulary, ascending.
      vocab_size: the original vocabulary's size.
      texts: how many texts decided the kept tokens.
      unknown_rate: the fraction of the tokens of `held_out` texts (if given)
        that the reduced vocabulary maps to [UNK] and the full one did not.
      changed_rate: the fraction of `held_out` texts the reduced vocabulary
        tokenizes differently from the full one ([UNK]s or other pieces).
    """

    path: Path
    kept: np.ndarray
    vocab_size: int
    texts: int
    unknown_rate: float | None = None
    changed_rate: float | None = None

    def summary(self) -> str:
        s = (
            f"{self.path}: vocabulary pruned to {len(self.kept):,} of {self.vocab_size:,} tokens "
            f"(those of {self.texts:,} texts)"
        )
        if self.unknown_rate is not None:
            s += (
                f"; held-out texts tokenized differently: {self.changed_rate:.2%}, their "
                f"tokens that became [UNK]: {self.unknown_rate:.2%}"
            )
        return s


def kept_ids(tokenizer: WordPieceTokenizer, texts: Sequence[str]) -> np.ndarray:
    """The special tokens' ids and every id the tokenizer produces on `texts`, ascending."""
    ids = set(tokenizer.special_ids)
    for row in tokenizer.encode(list(texts)):
        ids.update(int(i) for i in row)
    return np.array(sorted(ids), np.int64)


def held_out_changes(full: WordPieceTokenizer, reduced: WordPieceTokenizer, texts):
    """(unknown_rate, changed_rate) of `texts`: of the tokens `reduced` gives them, the fraction
    that is a new [UNK]; of the texts, the fraction whose tokens differ from `full`'s."""
    new_unk = total = changed = 0
    for text in texts:
        a, b = full.tokens(text), reduced.tokens(text)
        total += len(b)
        new_unk += max(0, b.count(UNK) - a.count(UNK))
        changed += a != b
    return (new_unk / total if total else 0.0), (changed / len(texts) if texts else 0.0)


def prune_vocabulary(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    texts: Sequence[str],
    held_out: Sequence[str] | None = None,
) -> Pruned:
    """Write `out_dir`: the model of `model_dir` with only the tokens of `texts`.

    Raises:
      ValueError: the model directory has no vocabulary, no texts, or a
        vocabulary whose size is not the model's.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    vocab = io.vocab_path(model_dir)
    if vocab is None:
        raise ValueError(f"{model_dir} has no {io.VOCAB_FILE}: its vocabulary cannot be pruned")
    if not texts:
        raise ValueError("no texts: give the training texts whose tokens the model keeps")
    config, heads, params = io.load_model(model_dir)
    full = load_tokenizer(model_dir)
    if full.vocab_size != config.vocab_size:
        raise ValueError(
            f"{model_dir}: {io.VOCAB_FILE} has {full.vocab_size} tokens but the model "
            f"{config.vocab_size}; the directory is inconsistent"
        )
    kept = kept_ids(full, texts)
    flat = io.flatten(params)
    for key in VOCAB_ROWS:
        if key in flat:
            flat[key] = flat[key][kept]
    reduced = WordPieceTokenizer(tuple(full.vocab[i] for i in kept), full.lowercase, str(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        path = reduced.save(tmp)
        io.save_model(
            out_dir,
            config.replace(vocab_size=len(kept)),
            heads,
            io.unflatten(flat),
            vocab_file=path,
        )
    unknown, changed = held_out_changes(full, reduced, held_out) if held_out else (None, None)
    return Pruned(out_dir, kept, full.vocab_size, len(texts), unknown, changed)


def task_texts(task: str, split: str, data_dir: str = "") -> list[str]:
    """Every text (both of a pair) of one split of a GLUE-layout task (GLUE, stdlib, wordorder)."""
    from mbert_jax.data import config as data_config
    from mbert_jax.data import tasks

    c = data_config.task_data_defaults(task)
    c.data_dir = data_dir
    out = []
    for e in tasks.read_examples(c, split):
        out.append(e.text_a)
        if e.text_b is not None:
            out.append(e.text_b)
    return out


def file_texts(path: str, columns: Sequence[str]) -> list[str]:
    """The texts of `columns` of a .csv/.tsv/.jsonl/.json file, or the lines of a .txt file."""
    from mbert_jax.data.report import InputReport
    from mbert_jax.data.tables import read_table

    if Path(path).suffix.lower() == ".txt":
        return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line]
    table = read_table(path, InputReport())
    for column in columns:
        table.require(column, "text_column")
    return [str(row[c]) for row in table.rows for c in columns if row.get(c) is not None]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mbert-jax prune-vocab", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model directory (WORKDIR/model of a run)")
    p.add_argument("--out", required=True, help="the pruned model directory to write")
    p.add_argument("--task", default="", help="keep the tokens of this task's train split")
    p.add_argument("--data-dir", default="", help="the task's TSV directory (GLUE)")
    p.add_argument("--texts", default="", help="or of this file (.csv/.tsv/.jsonl/.json/.txt)")
    p.add_argument("--text-column", default="text", help="the file's text column")
    p.add_argument("--text-pair-column", default="", help="a second text column (pairs)")
    p.add_argument("--held-out", default="", help="report changed tokens on this split of --task")
    args = p.parse_args(argv)
    try:
        if bool(args.task) == bool(args.texts):
            raise ValueError("give one of --task (a task's train split) and --texts FILE")
        if args.held_out and not args.task:
            raise ValueError("--held-out names a split of --task; give --task")
        if args.task:
            texts = task_texts(args.task, "train", args.data_dir)
        else:
            columns = [args.text_column] + (
                [args.text_pair_column] if args.text_pair_column else []
            )
            texts = file_texts(args.texts, columns)
        held = task_texts(args.task, args.held_out, args.data_dir) if args.held_out else None
        print(prune_vocabulary(args.model, args.out, texts, held).summary())
    except (ValueError, FileNotFoundError) as e:
        print(f"mbert-jax prune-vocab: {e}", file=sys.stderr)
        return 2
    return 0
