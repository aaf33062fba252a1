"""BERT pretraining examples: static chunks, sentence pairs drawn per epoch.

Follows google-research/bert `create_pretraining_data.py`, rearranged for
random access (so that any host can build any example of any epoch alone):

1. Segments: the corpus lines. A line longer than `max_num_tokens` is cut
   into near-equal pieces that fit (counted in the report), so no text is
   lost to truncation and no example is one oversized line.
2. Chunks (static, from `plan_seed`): each document is cut into runs of
   segments. As in BERT, a target length is drawn per chunk (`max_num_tokens`,
   or with probability `short_seq_prob` a uniform length in
   [2, max_num_tokens]) and segments accumulate until it is reached. With NSP
   the last segment may overshoot (BERT; the pair is truncated later);
   without NSP a chunk stops before overshooting, so MLM-only examples lose
   nothing.
3. Examples (per epoch, from `example_rng(seed, epoch, index)`): with NSP a
   chunk of two or more segments is split at a random point into A and the
   actual next B (label 0), or, half the time and always for a one-segment
   chunk, A is followed by a random B taken from a random other document of
   the same split, starting at a random segment, long enough to fill the
   target (label 1). `truncate_seq_pair` then trims the longer side from a
   random end until the pair fits. Without NSP the chunk is one segment.
   Unlike BERT's static generator, the unused tail of a chunk whose B is
   random is not put back; it is used in the epochs where the chunk is split
   differently.

`[CLS] A [SEP] B [SEP]` gets token types 0...0 1...1; masking is
`masking.Masker`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from mbert_jax.data.masking import Masker, thread_example_rng
from mbert_jax.data.report import InputReport
from mbert_jax.data.tokenized import TokenizedCorpus, load_arrays


@dataclasses.dataclass(frozen=True, eq=False)
class Segments:
    """Token spans of the corpus lines, long lines cut into pieces.

    Attributes:
      starts, ends: int64 [num_segments] token offsets.
      doc_offsets: int64 [num_docs + 1]: document d is segments
        doc_offsets[d]:doc_offsets[d + 1].
      lengths: int64 [num_segments] (derived).
    """

    starts: np.ndarray
    ends: np.ndarray
    doc_offsets: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "lengths", self.ends - self.starts)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"starts": self.starts, "ends": self.ends, "doc_offsets": self.doc_offsets}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Segments:
        return cls(a["starts"], a["ends"], a["doc_offsets"])


def make_segments(corpus: TokenizedCorpus, max_tokens: int, report: InputReport) -> Segments:
    """Cut every line longer than `max_tokens` into ceil(len / max_tokens) near-equal pieces."""
    offsets = np.asarray(corpus.line_offsets)
    lens = np.diff(offsets)
    pieces = np.maximum(1, -(-lens // max_tokens))
    long = pieces > 1
    if long.any():
        report.note(
            f"lines longer than {max_tokens} tokens split into pieces that fit",
            n=int(long.sum()),
        )
    line = np.repeat(np.arange(len(lens)), pieces)
    first = np.cumsum(pieces) - pieces  # first segment of each line
    within = np.arange(len(line)) - first[line]
    n, k = lens[line], pieces[line]
    starts = offsets[line] + within * n // k
    ends = offsets[line] + (within + 1) * n // k
    seg_of_line = np.append(first, len(line))
    return Segments(starts, ends, seg_of_line[np.asarray(corpus.doc_offsets)])


@dataclasses.dataclass(frozen=True, eq=False)
class Chunks:
    """Runs of consecutive segments of one document; the units of examples.

    Attributes:
      doc: int64 [n] document of each chunk.
      begin, end: int64 [n] segment range.
      target: int64 [n] the drawn target length (tokens).
    """

    doc: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.doc)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"chunk_{f.name}": getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Chunks:
        return cls(*(a[f"chunk_{f.name}"] for f in dataclasses.fields(cls)))


def plan_chunks(
    segments: Segments,
    docs: np.ndarray,
    max_num_tokens: int,
    short_seq_prob: float,
    rng: np.random.Generator,
    *,
    overshoot: bool,
) -> Chunks:
    """Cut documents `docs` into chunks (step 2 of the module docstring)."""
    cum = np.concatenate([[0], np.cumsum(segments.lengths)])
    out = ([], [], [], [])
    for d in docs:
        pos, stop = int(segments.doc_offsets[d]), int(segments.doc_offsets[d + 1])
        while pos < stop:
            target = max_num_tokens
            if rng.random() < short_seq_prob:
                target = int(rng.integers(2, max_num_tokens + 1))
            goal = cum[pos] + target
            if overshoot:  # first end whose length reaches the target
                end = int(np.searchsorted(cum, goal, side="left"))
            else:  # last end whose length stays within it
                end = int(np.searchsorted(cum, goal, side="right")) - 1
            end = min(max(end, pos + 1), stop)
            for lst, v in zip(out, (d, pos, end, target)):
                lst.append(v)
            pos = end
    return Chunks(*(np.asarray(x, np.int64) for x in out))


@dataclasses.dataclass(frozen=True, eq=False)
class Rows:
    """Rows of examples: row r holds chunks `chunks[offsets[r]:offsets[r + 1]]`.

    Attributes:
      offsets: int64 [rows + 1].
      chunks: int64 chunk ids.
      packed: whether rows may hold several chunks (packing).
    """

    offsets: np.ndarray
    chunks: np.ndarray
    packed: bool = False

    @classmethod
    def one_per_row(cls, num_chunks: int) -> Rows:
        return cls(np.arange(num_chunks + 1, dtype=np.int64), np.arange(num_chunks, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"row_offsets": self.offsets, "row_chunks": self.chunks}

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray], packed: bool) -> Rows:
        return cls(a["row_offsets"], a["row_chunks"], packed)


def truncate_pair(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
    """Lengths after BERT's `truncate_seq_pair` (trim the longer side, B on ties)."""
    excess = len_a + len_b - max_tokens
    if excess <= 0:
        return len_a, len_b
    if len_a > len_b:
        r = min(excess, len_a - len_b)
        len_a, excess = len_a - r, excess - r
    elif len_b > len_a:
        r = min(excess, len_b - len_a)
        len_b, excess = len_b - r, excess - r
    return len_a - excess // 2, len_b - (excess - excess // 2)


class PretrainingExamples:
    """Builds example `index` of `epoch` on demand (random access).

    Args:
      corpus: the tokenized corpus.
      segments: its segments.
      chunks: the chunk plan of this split.
      rows: which chunks make each row (one per row unless packing).
      docs: the documents of this split (random B's come from them).
      masker: the masking rule.
      special ids, lengths and flags as in the data config.
    """

    def __init__(
        self,
        corpus: TokenizedCorpus,
        segments: Segments,
        chunks: Chunks,
        rows: Rows,
        docs: np.ndarray,
        masker: Masker,
        *,
        cls_id: int,
        sep_id: int,
        pad_id: int,
        max_seq_length: int,
        nsp: bool,
        seed: int,
        stream: int,
    ):
        if nsp and len(docs) < 2:
            raise ValueError(
                f"next-sentence prediction needs at least 2 documents in a split, this one has "
                f"{len(docs)}; add text, lower data.eval_fraction, or set data.nsp=False"
            )
        self.corpus, self.segments, self.chunks, self.docs = corpus, segments, chunks, docs
        self.rows = rows
        self.packing = rows.packed
        self.masker = masker
        self.cls_id, self.sep_id, self.pad_id = cls_id, sep_id, pad_id
        self.max_seq_length, self.nsp, self.seed, self.stream = max_seq_length, nsp, seed, stream
        self.max_num_tokens = max_seq_length - (3 if nsp else 2)
        self._arange = np.arange(max_seq_length, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.rows)

    # Worker processes get the cache directories, not the arrays, when the
    # plan lives in the cache (`dirs` = (segments dir, plan dir)).
    dirs: tuple[str, str] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.dirs is not None:
            for k in ("segments", "chunks", "rows", "docs"):
                state.pop(k)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.dirs is not None:
            seg, plan = (load_arrays(Path(d)) for d in self.dirs)
            self.segments = Segments.from_arrays(seg)
            self.chunks = Chunks.from_arrays(plan)
            self.rows = Rows.from_arrays(plan, self.packing)
            self.docs = plan["docs"]

    def _tokens(self, seg_begin: int, seg_end: int) -> np.ndarray:
        s = self.segments
        if seg_end <= seg_begin:
            return np.zeros(0, np.int32)
        # Segments of one document are contiguous in the token array.
        return np.asarray(self.corpus.tokens[s.starts[seg_begin] : s.ends[seg_end - 1]], np.int32)

    def _pair(self, c: int, rng: np.random.Generator):
        ch, seg = self.chunks, self.segments
        begin, end, target = int(ch.begin[c]), int(ch.end[c]), int(ch.target[c])
        n = end - begin
        a_end = begin + (int(rng.integers(1, n)) if n >= 2 else 1)
        a = self._tokens(begin, a_end)
        if n == 1 or rng.random() < 0.5:
            label = 1
            doc = int(ch.doc[c])
            for _ in range(10):  # as BERT: retry a few times for a different document
                other = int(self.docs[rng.integers(len(self.docs))])
                if other != doc:
                    break
            lo, hi = int(seg.doc_offsets[other]), int(seg.doc_offsets[other + 1])
            start = int(rng.integers(lo, hi))
            want = target - len(a)
            lens = seg.lengths[start : min(hi, start + max(want, 1))]  # segments are >= 1 token
            stop = start + min(
                int(np.searchsorted(np.cumsum(lens), want, side="left")) + 1, hi - start
            )
            b = self._tokens(start, stop)
        else:
            label = 0
            b = self._tokens(a_end, end)
        la, lb = truncate_pair(len(a), len(b), self.max_num_tokens)
        front_a = int(rng.binomial(len(a) - la, 0.5))
        front_b = int(rng.binomial(len(b) - lb, 0.5))
        return a[front_a : front_a + la], b[front_b : front_b + lb], label

    def write_into(self, out: dict[str, np.ndarray], b: int, index: int, epoch: int) -> None:
        """Fill slot `b` of the batch arrays `out` with example `index` of `epoch`."""
        rng = thread_example_rng(self.seed, epoch, index, self.stream)
        S = self.max_seq_length
        if self.nsp:
            a, bb, label = self._pair(int(self.rows.chunks[self.rows.offsets[index]]), rng)
            ids = np.concatenate([[self.cls_id], a, [self.sep_id], bb, [self.sep_id]]).astype(
                np.int32
            )
            n = len(ids)
            out["token_type_ids"][b, :n] = 0
            out["token_type_ids"][b, len(a) + 2 : n] = 1
            out["attention_mask"][b, :n] = 1
            out["position_ids"][b] = self._arange
            out["next_sentence_labels"][b] = label
        else:
            pieces = []
            pos = 0
            lo, hi = int(self.rows.offsets[index]), int(self.rows.offsets[index + 1])
            for piece, c in enumerate(self.rows.chunks[lo:hi], 1):
                toks = self._tokens(int(self.chunks.begin[c]), int(self.chunks.end[c]))
                toks = toks[: self.max_num_tokens]  # never cut: chunks fit without NSP
                seq = np.concatenate([[self.cls_id], toks, [self.sep_id]])
                k = len(seq)
                out["attention_mask"][b, pos : pos + k] = piece
                out["position_ids"][b, pos : pos + k] = self._arange[:k]
                pieces.append(seq)
                pos += k
            ids = np.concatenate(pieces).astype(np.int32)
            n = len(ids)
            out["token_type_ids"][b, :n] = 0
            if not self.packing:
                out["position_ids"][b] = self._arange
        assert n <= S, (n, S)
        masked, positions, labels = self.masker.apply(ids, rng)
        out["input_ids"][b, :n] = masked
        out["input_ids"][b, n:] = self.pad_id
        k = len(positions)
        out["masked_lm_positions"][b, :k] = positions
        out["masked_lm_ids"][b, :k] = labels
        out["masked_lm_weights"][b, :k] = 1.0
