"""Token classification (tagging, e.g. NER): CoNLL files, JSON lines, features.

Input, for `data.task_kind="tagging"`:

- CoNLL-style files (any name not ending in `.json` / `.jsonl`): one word
  per line, whitespace-separated columns, the word in the first column and
  the tag in `data.conll_tag_column` (default -1, the last; CoNLL-2003's
  `word POS chunk NER` lines need nothing else), a blank line between
  sentences, `-DOCSTART-` lines skipped. Every word line of a file must
  have the same number of columns: a line with another count (a word with
  a space in it, a missing tag) is an error naming file:line.
- JSON lines (or a `datasets` split) with a list of words
  (`data.tokens_column`, default `tokens`) and a list of tags of the same
  length (`data.tags_column`, default `tags`; strings, or ids with
  `ClassLabel` names as in the hub's conll2003).

Tags are mapped to ids like class labels (`label_ids.py`): the distinct
training tags, "O" first and then by entity type with B- before I- when
the tags follow BIO / IOBES, or `data.labels` in its order. A dev tag
that training never has is an error naming file:line.

Features: `[CLS] word pieces [SEP]`. Each word is split into WordPiece
pieces; its first piece carries the word's tag and the other pieces,
[CLS], [SEP] and padding carry the label -1 (ignored by the loss and the
metrics). A word that the tokenizer turns into nothing (control characters
only) becomes one [UNK], so that every word has a position. Sentences
longer than `max_seq_length - 2` pieces are cut there; the words cut off
are counted in the report and predicted "O" by the evaluator, which scores
every word of the split (so its figures are those of conlleval on the
whole file).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from mbert_jax.data.report import InputReport, read_utf8
from mbert_jax.data.tables import Table
from mbert_jax.data.tasks.glue import TaskDataError
from mbert_jax.data.tokenizer import WordPieceTokenizer

IGNORE = -1  # the label of positions that are not a word's first piece
DOCSTART = "-DOCSTART-"


@dataclasses.dataclass(frozen=True)
class TaggedExample:
    """One sentence: its words and their tags (as read: strings, or ids / keys).

    `line` is the file line of the first word (CoNLL: word k is on line + k);
    `where` locates the sentence for messages.
    """

    where: str
    words: tuple[str, ...]
    tags: tuple
    line: int | None = None
    path: str = ""

    def locate(self, k: int) -> str:
        """Where word k is (`file:line` for CoNLL)."""
        return f"{self.path}:{self.line + k}" if self.line is not None else f"{self.where} word {k}"


def read_conll(
    path: str | os.PathLike,
    report: InputReport,
    *,
    tag_column: int = -1,
    on_bad_line: str = "error",
) -> list[TaggedExample]:
    """Read a CoNLL-style file (see the module docstring).

    Raises:
      TaskDataError: a missing or non-UTF-8 file, a line with too few or an
        inconsistent number of columns (file:line; with `on_bad_line="skip"`
        its sentence is skipped and counted).
    """
    path = Path(os.path.expanduser(path))
    if not path.is_file():
        raise TaskDataError(f"{path} does not exist")
    lines = read_utf8(path, TaskDataError).removeprefix("\ufeff").split("\n")
    examples: list[TaggedExample] = []
    width = first_line = None
    words: list[str] = []
    tags: list[str] = []
    start, bad = 0, False

    def close():
        nonlocal words, tags, bad
        if words and not bad:
            examples.append(
                TaggedExample(f"{path}:{start}", tuple(words), tuple(tags), start, str(path))
            )
        elif bad:
            report.note("sentences with a malformed line skipped", f"{path}:{start}")
        words, tags, bad = [], [], False

    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == DOCSTART:
            close()
            continue
        if not words and not bad:
            start = lineno
        where = f"{path}:{lineno}"
        problem = None
        if len(fields) < 2:
            problem = (
                f"{len(fields)} column; a CoNLL line is 'word ... tag' (whitespace-separated), "
                "with a blank line between sentences"
            )
        elif width is not None and len(fields) != width:
            problem = (
                f"{len(fields)} columns, but the file's first word line ({path}:{first_line}) "
                f"has {width}; a word may not contain spaces"
            )
        elif not -len(fields) <= tag_column < len(fields) or tag_column in (0, -len(fields)):
            problem = (
                f"data.conll_tag_column={tag_column} is not a tag column of this "
                f"{len(fields)}-column line (column 0 is the word)"
            )
        if problem is not None:
            if on_bad_line != "skip":
                raise TaskDataError(f"{where}: {problem}")
            bad = True
            continue
        if width is None:
            width, first_line = len(fields), lineno
        words.append(fields[0])
        tags.append(fields[tag_column])
    close()
    return examples


def read_tagged_table(
    table: Table, tokens_column: str, tags_column: str, report: InputReport, on_bad_line: str
) -> list[TaggedExample]:
    """Sentences of a JSON-lines / `datasets` table with word and tag lists.

    ClassLabel tag ids become their names.
    """
    table.require(tokens_column, "tokens_column")
    table.require(tags_column, "tags_column")
    names = table.names(tags_column)
    out = []
    for row, w in zip(table.rows, table.where):
        words, tags = row.get(tokens_column), row.get(tags_column)
        try:
            if not isinstance(words, list | tuple) or not all(isinstance(x, str) for x in words):
                raise TaskDataError(
                    f"{w}: {tokens_column!r} (data.tokens_column) must be a list of words"
                )
            if not isinstance(tags, list | tuple) or len(tags) != len(words):
                n = len(tags) if isinstance(tags, list | tuple) else type(tags).__name__
                raise TaskDataError(
                    f"{w}: {tags_column!r} (data.tags_column) must be a list of one tag per "
                    f"word ({len(words)} words, got {n})"
                )
            if names is not None:
                tags = [names[t] if isinstance(t, int) and 0 <= t < len(names) else t for t in tags]
        except TaskDataError:
            if on_bad_line != "skip":
                raise
            report.note("malformed rows skipped", w)
            continue
        if words:
            out.append(TaggedExample(w, tuple(words), tuple(tags), path=table.source))
        else:
            report.note("rows without words skipped", w)
    return out


@dataclasses.dataclass
class TagFeatures:
    """Tokenized sentences.

    Attributes:
      input_ids: int32 [N, S]; `lengths`, `len_a` (= lengths: one segment): int32 [N].
      labels: int32 [N, S] the tag id at each word's first piece, IGNORE elsewhere.
      word_index: int32 [N, S] which word of the sentence a labelled position is (-1 elsewhere).
      word_tags: int32 [W] the gold tag id of every word of every sentence, cut-off words too.
      word_offsets: int64 [N + 1] sentence i's words are word_tags[offsets[i]:offsets[i + 1]].
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    len_a: np.ndarray
    labels: np.ndarray
    word_index: np.ndarray
    word_tags: np.ndarray
    word_offsets: np.ndarray


def word_pieces(
    examples: list[TaggedExample], tokenizer: WordPieceTokenizer, report: InputReport
) -> list[list[list[int]]]:
    """Per sentence, per word, its WordPiece ids (an empty word: [UNK])."""
    encs = tokenizer.backend.encode_batch(
        [list(e.words) for e in examples], is_pretokenized=True, add_special_tokens=False
    )
    out = []
    for ex, enc in zip(examples, encs):
        pieces: list[list[int]] = [[] for _ in ex.words]
        for tid, w in zip(enc.ids, enc.word_ids):
            pieces[w].append(tid)
        for k, p in enumerate(pieces):
            if not p:
                p.append(tokenizer.unk_id)
                report.note("words without any WordPiece token, fed as [UNK]", ex.locate(k))
        out.append(pieces)
    return out


def featurize_tags(
    examples: list[TaggedExample],
    tag_ids: list[list[int]],
    tokenizer: WordPieceTokenizer,
    max_seq_length: int,
    report: InputReport,
) -> TagFeatures:
    """Features of tagged sentences (see the module docstring)."""
    n, S = len(examples), max_seq_length
    ids = np.zeros((n, S), np.int32)
    labels = np.full((n, S), IGNORE, np.int32)
    word_index = np.full((n, S), -1, np.int32)
    lengths = np.zeros(n, np.int32)
    cut_sentences = cut_words = 0
    for i, (pieces, tags) in enumerate(zip(word_pieces(examples, tokenizer, report), tag_ids)):
        seq = [tokenizer.cls_id]
        for k, (p, tag) in enumerate(zip(pieces, tags)):
            room = S - 1 - len(seq)
            if room <= 0:
                cut_words += len(pieces) - k
                break
            labels[i, len(seq)] = tag
            word_index[i, len(seq)] = k
            seq.extend(p[:room])
        cut_sentences += sum(map(len, pieces)) > S - 2
        seq.append(tokenizer.sep_id)
        ids[i, : len(seq)] = seq
        lengths[i] = len(seq)
    if cut_sentences:
        report.note(f"sentences cut to max_seq_length={S}", n=cut_sentences)
    if cut_words:
        report.note("words cut off by max_seq_length (predicted O, scored)", n=cut_words)
    offsets = np.zeros(n + 1, np.int64)
    offsets[1:] = np.cumsum([len(t) for t in tag_ids])
    flat = np.asarray([t for tags in tag_ids for t in tags], np.int32)
    return TagFeatures(ids, lengths, lengths.copy(), labels, word_index, flat, offsets)


def word_tags(
    predicted: np.ndarray | None, arrays: dict, names: tuple[str, ...]
) -> tuple[list[list[str]], list[list[str]] | None]:
    """Per sentence, the gold tag of every word and (with `predicted`) the predicted one.

    Args:
      predicted: int [N, S] the predicted tag id at every position (None: gold only).
      arrays: the split's features (`TagFeatures` fields).
      names: the tag names, by id.

    Returns:
      (gold, predicted) tag names, one list per sentence with one tag per
      word; a word cut off by `max_seq_length` is predicted "O".
    """
    offsets, flat = np.asarray(arrays["word_offsets"]), np.asarray(arrays["word_tags"])
    gold = [[names[t] for t in flat[offsets[i] : offsets[i + 1]]] for i in range(len(offsets) - 1)]
    if predicted is None:
        return gold, None
    word_index = np.asarray(arrays["word_index"])
    pred = []
    for i, g in enumerate(gold):
        row = ["O"] * len(g)
        at = np.flatnonzero(word_index[i] >= 0)
        for pos, k in zip(at, word_index[i][at]):
            row[k] = names[int(predicted[i, pos])]
        pred.append(row)
    return gold, pred
