"""A bag-of-words baseline: multinomial naive Bayes, in numpy.

What a classifier that sees only which words a text contains (not their
order, not their context) reaches on a task: the row beside the BERTs that
shows what they add. On the corpus tasks (dev accuracy, CPython 3.11):
`stdlib` 0.76, above the fine-tuned all-MiniLM-L6-v2 (keywords decide it);
`wordorder` 0.49, chance (0.5) in expectation, since both classes have the
same bag of words by construction.

Words are the lower-cased runs of letters, digits and underscores
(`get_config` is one word) of a row's text, both texts of a pair task
together. The vocabulary is the training split's words; a dev word outside
it is ignored. Multinomial naive Bayes with Laplace (add-one) smoothing:
P(w | c) = (n(w, c) + 1) / (n(c) + |V|), where n(w, c) counts word w in
the training rows of class c and n(c) all their words; the prior P(c) is
the share of class c among the training rows; a row's class maximizes
log P(c) + sum over its words of log P(w | c). No setting is tuned, so the
dev split stays unseen.

    mbert-jax baseline stdlib
    mbert-jax baseline sst2 --data-dir glue/SST-2
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence

import numpy as np

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """The lower-cased words of `text`."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Bags:
    """Word counts of `n` texts, sparse: text `rows[k]` holds word `cols[k]` `counts[k]` times."""

    n: int
    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray


class Vocabulary:
    """Word ids of the words of some texts, in order of first appearance."""

    def __init__(self, texts: Sequence[str]):
        self.ids: dict[str, int] = {}
        for t in texts:
            for w in words(t):
                self.ids.setdefault(w, len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def bags(self, texts: Sequence[str]) -> Bags:
        """The texts' counts of known words (unknown words are left out)."""
        rows, cols = [], []
        for r, t in enumerate(texts):
            for w in words(t):
                if w in self.ids:
                    rows.append(r)
                    cols.append(self.ids[w])
        pairs = np.array([rows, cols], np.int64).reshape(2, -1)
        (rows, cols), counts = np.unique(pairs, axis=1, return_counts=True)
        return Bags(len(texts), rows, cols, counts.astype(np.float64))


@dataclasses.dataclass
class NaiveBayes:
    """Multinomial naive Bayes with add-`alpha` smoothing (see the module docstring).

    Attributes:
      log_prior: [C] log P(c).
      log_likelihood: [C, V] log P(w | c).
    """

    log_prior: np.ndarray
    log_likelihood: np.ndarray

    @classmethod
    def fit(
        cls, bags: Bags, labels: np.ndarray, num_classes: int, vocab_size: int, alpha: float = 1.0
    ):
        """Count the words of each class in the training rows `bags` (class ids `labels`)."""
        labels = np.asarray(labels)
        counts = np.zeros((num_classes, vocab_size))
        np.add.at(counts, (labels[bags.rows], bags.cols), bags.counts)
        smoothed = counts + alpha
        log_likelihood = np.log(smoothed) - np.log(smoothed.sum(1, keepdims=True))
        prior = np.bincount(labels, minlength=num_classes) / len(labels)
        with np.errstate(divide="ignore"):  # a class without rows is never predicted
            return cls(np.log(prior), log_likelihood)

    def log_joint(self, bags: Bags) -> np.ndarray:
        """[n, C] log P(c) + log P(words | c)."""
        out = np.tile(self.log_prior, (bags.n, 1))
        np.add.at(out, bags.rows, bags.counts[:, None] * self.log_likelihood[:, bags.cols].T)
        return out

    def predict_proba(self, bags: Bags) -> np.ndarray:
        """[n, C] P(c | words)."""
        j = self.log_joint(bags)
        p = np.exp(j - j.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    def predict(self, bags: Bags) -> np.ndarray:
        return self.log_joint(bags).argmax(1)


@dataclasses.dataclass(frozen=True)
class Result:
    """Dev accuracy of a baseline, with its standard error sqrt(p (1 - p) / n)."""

    task: str
    accuracy: float
    stderr: float
    train_rows: int
    dev_rows: int

    def summary(self) -> str:
        return (
            f"{self.task}: bag-of-words naive Bayes dev accuracy {self.accuracy:.4f} "
            f"+- {self.stderr:.4f} ({self.dev_rows:,} dev rows, {self.train_rows:,} training rows)"
        )


def accuracy_with_stderr(predictions: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, its binomial standard error sqrt(p (1 - p) / n))."""
    p = float(np.mean(np.asarray(predictions) == np.asarray(labels)))
    return p, (p * (1 - p) / len(labels)) ** 0.5


def score(
    task: str,
    train: tuple[Sequence[str], np.ndarray],
    dev: tuple[Sequence[str], np.ndarray],
    num_classes: int,
) -> Result:
    """Fit naive Bayes on `train` = (texts, class ids) and score it on `dev`."""
    vocab = Vocabulary(train[0])
    nb = NaiveBayes.fit(vocab.bags(train[0]), train[1], num_classes, len(vocab))
    acc, se = accuracy_with_stderr(nb.predict(vocab.bags(dev[0])), dev[1])
    return Result(task, acc, se, len(train[0]), len(dev[0]))


def _texts_and_labels(examples, where: str) -> tuple[list[str], np.ndarray]:
    labels = [e.label for e in examples]
    if not labels or any(not isinstance(y, (int, np.integer)) for y in labels):
        raise ValueError(
            f"{where}: the baseline needs class labels on every row (not a test split)"
        )
    texts = [e.text_a if e.text_b is None else f"{e.text_a} {e.text_b}" for e in examples]
    return texts, np.array(labels)


def evaluate(c) -> Result:
    """Naive Bayes trained on the train split of task data config `c`, scored on its dev split.

    Args:
      c: a task data config (`data.task_data_defaults(task)`, with `data_dir`
        for GLUE files); any classification task the data layer reads as
        GLUE TSV (GLUE, `stdlib`, `wordorder`). `c.eval_split` picks the
        scored split (default: the task's dev split).
    """
    from mbert_jax.data import tasks

    task = tasks.glue_task(c.task)
    if task.is_regression:
        raise ValueError(f"data.task={c.task!r} is a regression task; the baseline classifies")
    split = c.eval_split or task.dev_split
    train = _texts_and_labels(tasks.read_examples(c, c.train_split), f"{c.task} {c.train_split}")
    dev = _texts_and_labels(tasks.read_examples(c, split), f"{c.task} {split}")
    return score(c.task, train, dev, task.num_labels)


def main(argv: list[str] | None = None) -> int:
    from mbert_jax.data import config as data_config

    parser = argparse.ArgumentParser(prog="mbert-jax baseline", description=__doc__)
    parser.add_argument("task", help="a GLUE classification task, stdlib or wordorder")
    parser.add_argument("--data-dir", default="", help="the task's TSV directory (GLUE)")
    parser.add_argument("--source", default="", help="data.source (default: the task's)")
    parser.add_argument("--eval-split", default="", help="default: the task's dev split")
    args = parser.parse_args(argv)
    c = data_config.task_data_defaults(args.task)
    c.data_dir, c.eval_split = args.data_dir, args.eval_split
    c.source = args.source or c.source
    try:
        print(evaluate(c).summary())
    except ValueError as e:  # DataConfigError and malformed files: one line naming the fix
        print(f"mbert-jax baseline: {e}", file=sys.stderr)
        return 2
    return 0
