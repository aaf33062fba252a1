"""The official metrics of GLUE, SQuAD and tagging (NER), in numpy.

GLUE metrics are fractions in [0, 1] (as sklearn and scipy return them):
accuracy, binary F1 of the positive class, macro F1 (the unweighted mean of
each class's F1 over the classes that occur in labels or predictions, as
sklearn's `average="macro"`), Matthews correlation (CoLA),
Pearson and Spearman correlation (STS-B; Spearman on average ranks, as
scipy). Tagging metrics are fractions too: entity-level micro precision,
recall and F1 with the semantics of CoNLL's `conlleval` (see `entities`),
and accuracy over every word. SQuAD metrics are percentages, as the official evaluation scripts
print them: exact match and token F1 after the official answer
normalization (lower-case, drop punctuation and the articles a/an/the,
collapse whitespace), maximized over the gold answers; SQuAD v2.0 also
reports them over answerable (`HasAns_`) and unanswerable (`NoAns_`)
questions, where an unanswerable question is right exactly when the
prediction is empty.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

import numpy as np


def accuracy(predictions, labels) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    return float(np.mean(p == y)) if len(y) else 0.0


def f1_binary(predictions, labels, positive: int = 1) -> float:
    """F1 of class `positive` (0.0 when it is neither predicted nor present)."""
    p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp = float(np.sum(p & y))
    denom = float(np.sum(p) + np.sum(y))
    return 2 * tp / denom if denom else 0.0


def f1_macro(predictions, labels) -> float:
    """The mean F1 of every class that occurs in `labels` or `predictions` (sklearn's macro)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(p, y)
    return float(np.mean([f1_binary(p, y, c) for c in classes])) if len(classes) else 0.0


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation for any number of classes (0.0 when undefined)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes = np.union1d(p, y)
    c = np.zeros((len(classes), len(classes)), np.float64)
    np.add.at(c, (np.searchsorted(classes, y), np.searchsorted(classes, p)), 1)
    t_k, p_k = c.sum(axis=1), c.sum(axis=0)
    n, correct = c.sum(), np.trace(c)
    cov_yp = correct * n - t_k @ p_k
    cov_pp = n * n - p_k @ p_k
    cov_yy = n * n - t_k @ t_k
    denom = np.sqrt(cov_pp * cov_yy)
    return float(cov_yp / denom) if denom else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc @ xc) * (yc @ yc))
    return float(xc @ yc / denom) if denom else 0.0


def rank_average(x) -> np.ndarray:
    """1-based ranks, ties given the average of their ranks."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x, y) -> float:
    return pearson(rank_average(x), rank_average(y))


# ------------------------------------------------------------------------- GLUE
GLUE_METRICS: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_corrcoef",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"),
    "qqp": ("accuracy", "f1"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
_FNS = {
    "accuracy": accuracy,
    "f1": f1_binary,
    "f1_macro": f1_macro,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def classification_metrics(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """The named metrics of `predictions` against `labels` (class ids or scores)."""
    return {n: _FNS[n](predictions, labels) for n in names}


# ---------------------------------------------------------------------- tagging
# Tags are "O" or PREFIX-TYPE with PREFIX one of B (begin), I (inside), E
# (end), S (single): BIO (IOB1 and IOB2) and IOBES.
ENTITY_PREFIXES = ("B", "I", "E", "S")


def split_tag(tag: str) -> tuple[str, str]:
    """(prefix, type): "B-PER" -> ("B", "PER"), "O" -> ("O", ""), "NN" -> ("NN", "")."""
    prefix, _, kind = tag.partition("-")
    return prefix, kind


def is_entity_scheme(tags) -> bool:
    """Whether every tag is "O" or B-/I-/E-/S-TYPE (entity metrics make sense)."""
    return all(t == "O" or (split_tag(t)[0] in ENTITY_PREFIXES and split_tag(t)[1]) for t in tags)


def _ends(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    # conlleval's endOfChunk, with seqeval's S (single) rules.
    return (
        prev in ("E", "S")
        or (prev in ("B", "I") and tag in ("B", "S", "O"))
        or (prev not in ("O", ".") and prev_type != kind)
    )


def _starts(prev: str, tag: str, prev_type: str, kind: str) -> bool:
    # conlleval's startOfChunk, with seqeval's S (single) rules.
    return (
        tag in ("B", "S")
        or (prev in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != kind)
    )


def entities(tags) -> list[tuple[str, int, int]]:
    """The entities of one sentence's tags: (type, first word, last word), as conlleval finds them.

    An entity starts at B-X or S-X, and also at an I-X (or E-X) that does
    not continue an entity of type X: after O, after an entity of another
    type, or after E-/S- (so a stray I-X without a B-X begins a new entity,
    exactly as in conlleval; IOB1 files, which begin entities with I-, read
    correctly). It ends before O, B-, S-, or a tag of another type, and
    after E- / S-. For BIO tags this is conlleval's chunking exactly.
    """
    out = []
    prev, prev_type, start = "O", "", None
    for i, tag in enumerate([*tags, "O"]):  # the sentinel closes the last entity
        prefix, kind = split_tag(tag)
        if start is not None and _ends(prev, prefix, prev_type, kind):
            out.append((prev_type, start, i - 1))
            start = None
        if _starts(prev, prefix, prev_type, kind):
            start = i
        prev, prev_type = prefix, kind
    return out


def tagging_scores(gold, predicted) -> dict[str, float]:
    """Entity-level micro precision / recall / F1 and word accuracy over sentences.

    Args:
      gold, predicted: per sentence, the tag of every word (strings), the same lengths.

    Returns:
      `precision`, `recall`, `f1` (an entity counts as found only when its
      type, first and last word all match a gold entity; 0 when undefined)
      and `accuracy` (words whose tag is right, O included), as fractions.
    """
    found = correct = expected = words = right = 0
    for g, p in zip(gold, predicted, strict=True):
        if len(g) != len(p):
            raise ValueError(f"a sentence has {len(g)} gold tags but {len(p)} predicted")
        ge, pe = set(entities(g)), set(entities(p))
        expected, found, correct = expected + len(ge), found + len(pe), correct + len(ge & pe)
        words += len(g)
        right += sum(a == b for a, b in zip(g, p))
    precision = correct / found if found else 0.0
    recall = correct / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "accuracy": right / words if words else 0.0,
    }


# ------------------------------------------------------------------------ SQuAD
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """The official SQuAD normalization."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str, *, v2: bool = True) -> float:
    """Token F1 of one prediction against one gold answer.

    With `v2` (the v2.0 script) an empty side scores 1 if both are empty, else
    0; the v1.1 script has no such case (an empty answer never overlaps).
    """
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if v2 and (not p or not g):
        return float(p == g)
    common = collections.Counter(p) & collections.Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    gold_answers: Mapping[str, Sequence[str]],
    predictions: Mapping[str, str],
    *,
    version: str = "2.0",
) -> dict[str, float]:
    """The official SQuAD evaluation.

    Args:
      gold_answers: question id -> its gold answer texts (empty for an
        unanswerable v2.0 question).
      predictions: question id -> predicted text ("" = no answer). A
        question without a prediction scores 0 (as in the v1.1 script).
      version: "1.1" or "2.0".

    Returns:
      `exact`, `f1` (percentages) and `total`; for v2.0 also `HasAns_exact`,
      `HasAns_f1`, `HasAns_total`, `NoAns_exact`, `NoAns_f1`, `NoAns_total`
      (for the groups that occur).
    """
    v2 = version.startswith("2")
    em, f1, has = {}, {}, {}
    for qid, golds in gold_answers.items():
        has[qid] = bool(golds)
        golds = [a for a in golds if normalize_answer(a)] if v2 else list(golds)
        if not golds:
            golds = [""]
        if qid not in predictions:
            em[qid] = f1[qid] = 0.0
            continue
        pred = predictions[qid]
        em[qid] = max(exact_match(pred, g) for g in golds)
        f1[qid] = max(token_f1(pred, g, v2=v2) for g in golds)

    def mean(values):
        values = list(values)
        return 100.0 * sum(values) / len(values) if values else 0.0

    out = {"exact": mean(em.values()), "f1": mean(f1.values()), "total": len(em)}
    if v2:
        for name, keep in (("HasAns", True), ("NoAns", False)):
            ids = [q for q in em if has[q] == keep]
            if ids:
                out[f"{name}_exact"] = mean(em[q] for q in ids)
                out[f"{name}_f1"] = mean(f1[q] for q in ids)
                out[f"{name}_total"] = len(ids)
    return out
