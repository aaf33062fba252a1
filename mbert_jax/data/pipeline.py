"""`build_pretraining_data`: from a data config to train and eval iterators.

The steps, each cached or cheap on a repeated run:

1. The tokenizer: `data.vocab_file`, or a WordPiece vocabulary learned from
   the corpus (cached under the cache dir, keyed by the corpus and the
   settings; `PretrainingData.save_vocab` copies it into the run).
2. The tokenized corpus (`tokenized.py`, cached and memory-mapped).
3. The held-out split: a fixed share of documents (by `split_seed`, not
   `seed`, so that runs with different seeds evaluate on the same text).
4. Segments, chunks and (with packing) rows for each split
   (`pretraining.py`, `packing.py`); the training plan follows `seed`, the
   eval plan and eval masks `split_seed`.
5. Iterators (`loader.py`): an endless shuffled training stream and finite
   eval passes, per host.

Batches (per host; B = global batch / process count, S = max_seq_length,
P = max_predictions_per_seq):

    input_ids             int32 [B, S]  masked tokens, 0-padded ([PAD])
    attention_mask        int32 [B, S]  1 on tokens, 0 at padding; with packing
                                        the 1-based piece id of each token
    token_type_ids        int32 [B, S]  0 for [CLS] A [SEP], 1 for B [SEP]
    position_ids          int32 [B, S]  arange(S); with packing, restarting per piece
    masked_lm_positions   int32 [B, P]
    masked_lm_ids         int32 [B, P]  the original tokens there
    masked_lm_weights   float32 [B, P]  1.0 real, 0.0 padding
    next_sentence_labels  int32 [B]     0 = B follows A, 1 = random B (only when nsp=True)
    valid               float32 [B]     1.0 real row, 0.0 padding row (last eval batch)

With `nsp=False` batches have no `next_sentence_labels`, so a trainer that
asks for an NSP loss fails loudly instead of learning from made-up labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from mbert_jax.data import config as config_lib
from mbert_jax.data import corpus, loader, packing, pretraining, tokenized
from mbert_jax.data.masking import Masker
from mbert_jax.data.report import InputReport
from mbert_jax.data.tokenizer import (
    VocabError,
    WordPieceTokenizer,
    check_same_vocab,
    load_tokenizer,
    train_wordpiece,
)

TRAIN_STREAM, EVAL_STREAM, PLAN_STREAM = 0, 1, 2
PLAN_VERSION = 1
STREAM_FIELDS = (
    "max_seq_length",
    "max_predictions_per_seq",
    "masked_lm_prob",
    "short_seq_prob",
    "nsp",
    "whole_word_mask",
    "packing",
    "eval_fraction",
    "eval_max_documents",
    "split_seed",
)
LEARNER_VERSION = 1


def batch_spec(c, *, with_valid: bool = True) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape without the batch axis, dtype) of every pretraining batch array."""
    S, P = c.max_seq_length, c.max_predictions_per_seq
    spec = {
        "input_ids": ((S,), np.int32),
        "attention_mask": ((S,), np.int32),
        "token_type_ids": ((S,), np.int32),
        "position_ids": ((S,), np.int32),
        "masked_lm_positions": ((P,), np.int32),
        "masked_lm_ids": ((P,), np.int32),
        "masked_lm_weights": ((P,), np.float32),
    }
    if c.nsp:
        spec["next_sentence_labels"] = ((), np.int32)
    if with_valid:
        spec["valid"] = ((), np.float32)
    return spec


def get_tokenizer(c, log=print) -> WordPieceTokenizer:
    """The tokenizer the config asks for: loaded, or learned from the corpus (cached)."""
    if c.vocab_file:
        return load_tokenizer(c.vocab_file, c.lowercase)
    lowercase = True if c.lowercase is None else bool(c.lowercase)
    parts = {
        "source": corpus.fingerprint(c),
        "vocab_size": c.train_vocab_size,
        "lowercase": lowercase,
        "min_frequency": c.train_vocab_min_frequency,
        "learner": LEARNER_VERSION,
    }
    directory = tokenized.resolve_cache_dir(c.cache_dir) / f"vocab-{tokenized.cache_key(parts)}"
    if not (directory / "vocab.txt").is_file():
        log(f"learning a {c.train_vocab_size}-token WordPiece vocabulary from the corpus")
        report = InputReport()
        docs = corpus.documents(c, report)
        try:
            tok = train_wordpiece(
                (line for doc in docs for line in doc),
                c.train_vocab_size,
                lowercase=lowercase,
                min_frequency=c.train_vocab_min_frequency,
            )
        except VocabError:
            corpus.check_text(report)  # the input's fault: say so in the input's terms
            raise
        corpus.check_text(report)

        def build(tmp: Path):
            tok.save(tmp)
            (tmp / "meta.json").write_text("{}\n")

        tokenized.write_atomic_dir(directory, build)
    return load_tokenizer(directory, lowercase)


def split_documents(num_docs: int, c) -> tuple[np.ndarray, np.ndarray]:
    """(train docs, eval docs): a seeded choice of held-out documents, each sorted."""
    n_eval = min(int(round(num_docs * c.eval_fraction)), c.eval_max_documents)
    if c.eval_fraction > 0:
        n_eval = max(n_eval, 2 if c.nsp else 1)
    if num_docs < 1:
        raise ValueError("the corpus has no documents; add text to data.corpus")
    if c.nsp and num_docs < 2:
        raise ValueError(
            f"the corpus has {num_docs} document(s): next-sentence prediction needs at least 2; "
            "add documents (separated by a blank line) or set data.nsp=False"
        )
    if num_docs - n_eval < (2 if c.nsp else 1):
        raise ValueError(
            f"the corpus has {num_docs} document(s): too few to hold out {n_eval} for "
            "evaluation and train on the rest; add text or set data.eval_fraction=0"
        )
    perm = np.random.default_rng([c.split_seed, 7]).permutation(num_docs)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


@dataclasses.dataclass
class PretrainingData:
    """Iterators and facts of a pretraining data config.

    Attributes:
      train: the endless training iterator of this host (checkpoint its
        `get_state()`).
      tokenizer: the tokenizer (`tokenizer.vocab_size` sizes the model's vocabulary).
      report: what was read, skipped and changed (printed at build time).
      train_examples: training rows per epoch.
      eval_examples: held-out rows (0 without a held-out split).
      config: the data config.
    """

    train: loader.DataIterator
    tokenizer: WordPieceTokenizer
    report: InputReport
    train_examples: int
    eval_examples: int
    config: object
    _eval_factory: object = None

    def eval_iterator(self) -> loader.DataIterator:
        """A fresh one-pass iterator over the held-out rows (padded; see `valid`)."""
        if self._eval_factory is None:
            raise ValueError("no held-out split: data.eval_fraction is 0")
        return self._eval_factory()

    @property
    def eval_steps(self) -> int:
        g = self.config.eval_global_batch_size or self.config.global_batch_size
        return -(-self.eval_examples // g)

    @property
    def steps_per_epoch(self) -> float:
        return self.train_examples / self.config.global_batch_size

    def batch_spec(self) -> dict:
        return batch_spec(self.config)

    @property
    def vocab_file(self) -> Path | None:
        """The vocab.txt in use (a learned one lives in the cache), if it is a file."""
        src = Path(self.tokenizer.source)
        path = src / "vocab.txt" if src.is_dir() else src
        return path if path.is_file() else None

    def save_vocab(self, directory: str | os.PathLike) -> Path:
        """Write the vocabulary (vocab.txt + tokenizer_config.json) into `directory`."""
        return self.tokenizer.save(directory)


def _segments(cache_dir, corp, m, report):
    def build():
        local = InputReport()
        seg = pretraining.make_segments(corp, m, local)
        return seg.arrays(), {"report": local.to_dict()}

    parts = {"corpus": corp.meta["key"], "max_tokens": m, "v": PLAN_VERSION}
    path, arrays, extra = tokenized.cached_arrays(cache_dir, "segments", parts, build)
    report.merge(InputReport.from_dict(extra["report"]))
    return path, pretraining.Segments.from_arrays(arrays)


def _plan(cache_dir, corp, segments, docs, c, tok, masker, *, seed, stream, report, name):
    """The examples of one split: chunks and rows planned once, cached, memory-mapped."""
    seg_dir, seg = segments
    m = c.max_seq_length - (3 if c.nsp else 2)

    def build():
        rng = np.random.default_rng([seed, PLAN_STREAM, stream])
        chunks = pretraining.plan_chunks(seg, docs, m, c.short_seq_prob, rng, overshoot=c.nsp)
        notes = []
        if c.packing:
            lengths = seg.ends[chunks.end - 1] - seg.starts[chunks.begin] + 2
            rows = packing.pack(lengths, c.max_seq_length, rng)
            fill = packing.fill_fraction(rows, lengths, c.max_seq_length)
            notes.append(
                f"{name}: {len(chunks):,} sequences packed into {len(rows):,} rows "
                f"({fill:.0%} of tokens real)"
            )
        else:
            rows = pretraining.Rows.one_per_row(len(chunks))
        return {**chunks.arrays(), **rows.arrays(), "docs": docs}, {"notes": notes}

    parts = {
        "segments": seg_dir.name,
        "docs": hashlib.sha256(np.ascontiguousarray(docs).tobytes()).hexdigest()[:16],
        "seed": seed,
        "stream": stream,
        "short_seq_prob": c.short_seq_prob,
        "nsp": c.nsp,
        "packing": c.packing,
        "max_seq_length": c.max_seq_length,
        "v": PLAN_VERSION,
    }
    plan_dir, plan, extra = tokenized.cached_arrays(cache_dir, "plan", parts, build)
    for line in extra["notes"]:
        report.add_info(line)
    rows = pretraining.Rows.from_arrays(plan, c.packing)
    report.count(f"{name} rows", len(rows))
    ex = pretraining.PretrainingExamples(
        corp,
        seg,
        pretraining.Chunks.from_arrays(plan),
        rows,
        plan["docs"],
        masker,
        cls_id=tok.cls_id,
        sep_id=tok.sep_id,
        pad_id=tok.pad_id,
        max_seq_length=c.max_seq_length,
        nsp=c.nsp,
        seed=seed,
        stream=stream,
    )
    ex.dirs = (str(seg_dir), str(plan_dir))
    return ex


def build_pretraining_data(
    c,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    log=print,
) -> PretrainingData:
    """Build the training iterator (and eval factory) of data config `c`.

    Args:
      c: the data config (`config.pretraining_data_defaults()`, possibly overridden).
      process_index, process_count: this host and the number of hosts;
        default `jax.process_index()` / `jax.process_count()`.
      log: where the input summary is printed.

    Returns:
      `PretrainingData`.
    """
    config_lib.validate(c)
    p, n = loader.resolve_processes(process_index, process_count)
    eval_g = c.eval_global_batch_size or c.global_batch_size
    loader.check_batch_size(c.global_batch_size, n)
    if c.eval_fraction > 0:
        loader.check_batch_size(eval_g, n, "eval_global_batch_size")
    tok = get_tokenizer(c, log)
    if c.teacher_vocab_file:
        check_same_vocab(c.teacher_vocab_file, tok)
    cache_dir = tokenized.resolve_cache_dir(c.cache_dir)
    corp = tokenized.load_or_build(
        cache_dir,
        {"corpus": corpus.fingerprint(c)},
        lambda r: corpus.documents(c, r),
        tok,
        check=corpus.check_read,
    )
    report = corp.report
    if corp.num_documents == 0:
        raise ValueError(f"{report.source}: no document with any text\n{report.summary()}")
    m = c.max_seq_length - (3 if c.nsp else 2)
    segments = _segments(cache_dir, corp, m, report)
    train_docs, eval_docs = split_documents(corp.num_documents, c)
    masker = Masker.for_tokenizer(
        tok, c.masked_lm_prob, c.max_predictions_per_seq, c.whole_word_mask
    )
    train_src = _plan(
        cache_dir,
        corp,
        segments,
        train_docs,
        c,
        tok,
        masker,
        seed=c.seed,
        stream=TRAIN_STREAM,
        name="train",
        report=report,
    )
    spec = batch_spec(c)
    options = dict(num_threads=c.num_threads, prefetch=c.prefetch, worker_count=c.worker_count)
    # What decides the stream: the content (not paths or mtimes, so a resumed
    # run may read a copied corpus) and the example settings.
    stream_parts = {
        "content": corp.content_hash,
        "settings": {k: c[k] for k in STREAM_FIELDS},
    }
    train = loader.make_iterator(
        train_src,
        spec,
        global_batch_size=c.global_batch_size,
        process_index=p,
        process_count=n,
        seed=c.seed,
        stream=TRAIN_STREAM,
        endless=True,
        fingerprint_parts=stream_parts,
        options=options,
    )
    eval_factory, eval_examples = None, 0
    if len(eval_docs):
        eval_src = _plan(
            cache_dir,
            corp,
            segments,
            eval_docs,
            c,
            tok,
            masker,
            seed=c.split_seed,
            stream=EVAL_STREAM,
            name="eval",
            report=report,
        )
        eval_examples = len(eval_src)

        def eval_factory():
            return loader.make_iterator(
                eval_src,
                spec,
                global_batch_size=eval_g,
                process_index=p,
                process_count=n,
                seed=c.split_seed,
                stream=EVAL_STREAM,
                endless=False,
                fingerprint_parts=stream_parts,
                options=options,
            )

    report.count("train documents", len(train_docs))
    report.count("eval documents", len(eval_docs))
    log(report.summary())
    return PretrainingData(train, tok, report, len(train_src), eval_examples, c, eval_factory)
