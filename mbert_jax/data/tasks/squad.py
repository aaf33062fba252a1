"""SQuAD v1.1 / v2.0: reading, featurization and post-processing.

Follows BERT's `run_squad.py`, using the tokenizer's character offsets in
place of its whitespace-token bookkeeping:

- Features: `[CLS] question [SEP] context window [SEP]`, the question cut to
  `max_query_length` tokens, the context split into windows of the remaining
  length that start `doc_stride` tokens apart. The answer's token span comes
  from its character span; a window that does not contain it whole, or an
  unanswerable question, points at [CLS] (position 0).
- Post-processing: per question, over all its windows, the `n_best_size`
  best start and end logits form candidate spans inside the context, end
  after start, at most `max_answer_length` tokens, starting at a token that
  has its maximal context in that window; the best span's text is the
  original context between its character offsets. With v2.0 the answer is
  empty when the null score (the smallest `start[0] + end[0]` over windows)
  beats the best span by more than `null_score_diff_threshold`.

Bad input: unreadable JSON or a missing field is an error naming the file
(and the article/paragraph/question). A training answer whose
`answer_start` does not match its text is skipped and counted; evaluation
keeps every question (the metric reads the answer texts only).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from mbert_jax.data.report import InputReport, read_utf8
from mbert_jax.data.tasks.glue import TaskDataError
from mbert_jax.data.tokenizer import WordPieceTokenizer


@dataclasses.dataclass(frozen=True)
class SquadExample:
    """One question. `answers` are (text, character start) pairs."""

    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]
    is_impossible: bool = False


def read_squad(
    path: str | os.PathLike, report: InputReport, *, training: bool
) -> tuple[list[SquadExample], str]:
    """Read a SQuAD JSON file.

    Returns:
      (examples, version) with version "1.1" or "2.0" (from the file's
      `version` field, else "2.0" when any question has `is_impossible`).
    """
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"SQuAD file {path} does not exist")
    try:
        data = json.loads(read_utf8(path, TaskDataError))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise TaskDataError(f"{path}: a SQuAD file is {{'version': ..., 'data': [articles]}}")
    examples = []
    any_impossible = False
    for a, article in enumerate(data["data"]):
        for p, para in enumerate(article.get("paragraphs", [])):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            if "context" not in para or "qas" not in para:
                raise TaskDataError(f"{where} lacks 'context' or 'qas'")
            context = para["context"]
            for qa in para["qas"]:
                if "id" not in qa or "question" not in qa:
                    raise TaskDataError(f"{where} has a question without 'id' or 'question'")
                impossible = bool(qa.get("is_impossible", False))
                any_impossible |= impossible
                answers = []
                for ans in qa.get("answers", []):
                    text, start = ans.get("text"), ans.get("answer_start")
                    if not isinstance(text, str) or not isinstance(start, int):
                        raise TaskDataError(f"{where} question {qa['id']}: malformed answer {ans}")
                    if training and context[start : start + len(text)] != text:
                        report.note(
                            "training answers whose answer_start does not match the text skipped",
                            f"{path} question {qa['id']}",
                        )
                        continue
                    answers.append((text, start))
                if training and not impossible and not answers:
                    report.note("training questions without a usable answer skipped", qa["id"])
                    continue
                examples.append(
                    SquadExample(qa["id"], qa["question"], context, tuple(answers), impossible)
                )
    version = str(data.get("version", "")).lstrip("v") or ("2.0" if any_impossible else "1.1")
    report.count("questions", len(examples))
    return examples, version


@dataclasses.dataclass
class SquadFeatures:
    """Windows of all questions.

    Attributes:
      input_ids: int32 [F, S]; `lengths`, `len_a` (tokens of `[CLS] q [SEP]`): int32 [F].
      start_positions, end_positions: int32 [F] (0: no answer in the window).
      example_index: int32 [F] the question each window belongs to.
      offsets: int32 [F, S, 2] character span of each context token (-1 elsewhere).
      max_context: bool [F, S] whether the window is the token's best context.
    """

    input_ids: np.ndarray
    lengths: np.ndarray
    len_a: np.ndarray
    start_positions: np.ndarray
    end_positions: np.ndarray
    example_index: np.ndarray
    offsets: np.ndarray
    max_context: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def doc_spans(num_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, length) of BERT's sliding windows over `num_tokens` context tokens."""
    spans, start = [], 0
    while True:
        length = min(num_tokens - start, window)
        spans.append((start, length))
        if start + length >= num_tokens:
            return spans
        start += min(length, stride)


def max_context_mask(spans: list[tuple[int, int]], i: int) -> np.ndarray:
    """For span i, whether each of its tokens has its maximal context there (BERT)."""
    start, length = spans[i]
    out = np.zeros(length, bool)
    for k in range(length):
        pos = start + k
        best, best_score = None, None
        for j, (s, n) in enumerate(spans):
            if not s <= pos < s + n:
                continue
            score = min(pos - s, s + n - 1 - pos) + 0.01 * n
            if best_score is None or score > best_score:
                best, best_score = j, score
        out[k] = best == i
    return out


def featurize(
    examples: list[SquadExample],
    tokenizer: WordPieceTokenizer,
    *,
    max_seq_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> SquadFeatures:
    """All windows of all questions (see the module docstring)."""
    S = max_seq_length
    questions = tokenizer.encode([e.question for e in examples])
    contexts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    unique = list(dict.fromkeys(e.context for e in examples))
    for ctx, enc in zip(unique, tokenizer.encode_with_offsets(unique)):
        contexts[ctx] = enc
    rows = []
    for ei, (ex, q) in enumerate(zip(examples, questions)):
        q = q[:max_query_length]
        ids, offs = contexts[ex.context]
        tok_start = tok_end = -1
        if ex.answers and not ex.is_impossible:
            text, start = ex.answers[0]
            end = start + len(text)
            inside = np.flatnonzero((offs[:, 1] > start) & (offs[:, 0] < end))
            if len(inside):
                tok_start, tok_end = int(inside[0]), int(inside[-1])
        spans = doc_spans(len(ids), S - len(q) - 3, doc_stride)
        for si, (s, n) in enumerate(spans):
            seq = np.concatenate(
                [[tokenizer.cls_id], q, [tokenizer.sep_id], ids[s : s + n], [tokenizer.sep_id]]
            )
            base = len(q) + 2
            off = np.full((S, 2), -1, np.int32)
            off[base : base + n] = offs[s : s + n]
            mc = np.zeros(S, bool)
            mc[base : base + n] = max_context_mask(spans, si)
            sp = ep = 0
            if tok_start >= s and tok_end < s + n and tok_start >= 0:
                sp, ep = tok_start - s + base, tok_end - s + base
            rows.append((seq, base, sp, ep, ei, off, mc))
    F = len(rows)
    input_ids = np.zeros((F, S), np.int32)
    for f, r in enumerate(rows):
        input_ids[f, : len(r[0])] = r[0]
    return SquadFeatures(
        input_ids=input_ids,
        lengths=np.array([len(r[0]) for r in rows], np.int32),
        len_a=np.array([r[1] for r in rows], np.int32),
        start_positions=np.array([r[2] for r in rows], np.int32),
        end_positions=np.array([r[3] for r in rows], np.int32),
        example_index=np.array([r[4] for r in rows], np.int32),
        offsets=np.stack([r[5] for r in rows]) if rows else np.zeros((0, S, 2), np.int32),
        max_context=np.stack([r[6] for r in rows]) if rows else np.zeros((0, S), bool),
    )


def postprocess(
    examples: list[SquadExample],
    features: SquadFeatures,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    version: str = "1.1",
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """Answer texts from the logits of every window (see the module docstring).

    Args:
      examples, features: as read and featurized.
      start_logits, end_logits: float [F, S], row f for window f.

    Returns:
      question id -> answer text ("" for no answer).
    """
    v2 = version.startswith("2")
    by_example: dict[int, list[int]] = {}
    for f, e in enumerate(features.example_index):
        by_example.setdefault(int(e), []).append(f)
    preds = {}
    for ei, ex in enumerate(examples):
        best, best_span, null = -np.inf, None, np.inf
        for f in by_example.get(ei, []):
            st, en = np.asarray(start_logits[f]), np.asarray(end_logits[f])
            null = min(null, float(st[0] + en[0]))
            off, mc = features.offsets[f], features.max_context[f]
            starts = np.argsort(-st, kind="stable")[:n_best_size]
            ends = np.argsort(-en, kind="stable")[:n_best_size]
            for s in starts:
                if off[s, 0] < 0 or not mc[s]:
                    continue
                for e in ends:
                    if off[e, 0] < 0 or e < s or e - s + 1 > max_answer_length:
                        continue
                    score = float(st[s] + en[e])
                    if score > best:
                        best, best_span = score, (int(off[s, 0]), int(off[e, 1]))
        if best_span is None or (v2 and null - best > null_score_diff_threshold):
            preds[ex.qid] = ""
        else:
            preds[ex.qid] = ex.context[best_span[0] : best_span[1]]
    return preds


def gold_answers(examples: list[SquadExample]) -> dict[str, list[str]]:
    """question id -> gold texts (empty for unanswerable), for `metrics.squad_scores`."""
    return {e.qid: [] if e.is_impossible else [t for t, _ in e.answers] for e in examples}
