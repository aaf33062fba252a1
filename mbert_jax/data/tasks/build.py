"""`build_task_data`: downstream-task iterators and their evaluation.

One entry point for GLUE, SQuAD, the corpus tasks (`stdlib`, `wordorder`) and
the user's own data (`task="custom"`: classification, regression or tagging
from CSV / TSV / JSON lines / CoNLL files or `datasets`). Examples are read
(`glue.py`, `squad.py`, `label_ids.py`, `conll.py`), featurized once and cached under the cache dir
(keyed by the files, the tokenizer and the settings), then served by the
same loader as pretraining: an endless shuffled training stream and finite
padded eval passes, sharded over hosts, checkpointable.

Batches (per host):

    input_ids, attention_mask, token_type_ids, position_ids   int32 [B, S]
    labels            int32 [B] class id (-1 for test rows), float32 [B] for regression,
                      int32 [B, S] for tagging: the tag id at each word's first
                      WordPiece, -1 at other pieces, [CLS], [SEP] and padding
    start_positions, end_positions   int32 [B] (SQuAD, instead of labels)
    example_index     int32 [B] row of the split (GLUE) / window (SQuAD: feature_index)
    valid           float32 [B] 1.0 real row, 0.0 padding (the last eval batch)

`TaskData.kind` ("classification", "regression", "tagging", "qa") tells
recipes which head, loss and outputs a task needs.

`Evaluator` turns model outputs back into the official metrics (tagging:
entity-level precision / recall / F1 and word accuracy over every word of
the split, conlleval's semantics, see `metrics.entities`); it checks
that every example of the split was seen exactly once, so an eval loop that
drops or repeats rows fails instead of reporting a wrong number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from mbert_jax.data import config as config_lib
from mbert_jax.data import loader, tokenized
from mbert_jax.data.report import InputReport
from mbert_jax.data.tasks import conll, corpus, custom, glue, metrics, squad
from mbert_jax.data.tokenizer import WordPieceTokenizer, load_tokenizer

SQUAD_FILES = {
    "1.1": ("train-v1.1.json", "dev-v1.1.json"),
    "2.0": ("train-v2.0.json", "dev-v2.0.json"),
}
TASK_NAMES = (*sorted(glue.TASKS), *corpus.TASKS, "squad_v1", "squad_v2", "custom")
FEATURES_VERSION = 1


def is_squad(task: str) -> bool:
    return task.startswith("squad")


class ArraySource:
    """Featurized rows (GLUE pairs or SQuAD windows) for `loader`.

    Pickles as its cache directory (worker processes map the arrays again).
    """

    def __init__(self, arrays: dict, squad_mode: bool):
        self.a = arrays
        self.squad = squad_mode

    def __getstate__(self):
        return {"dir": self.a["_dir"], "squad": self.squad}

    def __setstate__(self, state):
        arrays = tokenized.load_arrays(Path(state["dir"]))
        self.__init__({**arrays, "_dir": state["dir"]}, state["squad"])

    def __len__(self) -> int:
        return len(self.a["input_ids"])

    @property
    def lengths(self) -> np.ndarray:
        return self.a["lengths"]

    def write_into(self, out, b, index, epoch):
        a = self.a
        n, la = int(a["lengths"][index]), int(a["len_a"][index])
        S = out["input_ids"].shape[1]
        out["input_ids"][b] = a["input_ids"][index]
        out["attention_mask"][b, :n] = 1
        out["token_type_ids"][b, la:n] = 1
        out["position_ids"][b] = np.arange(S)
        if self.squad:
            out["start_positions"][b] = a["start_positions"][index]
            out["end_positions"][b] = a["end_positions"][index]
            out["feature_index"][b] = index
        else:
            out["labels"][b] = a["labels"][index]
            out["example_index"][b] = index


def is_tagging(c) -> bool:
    return c.task == "custom" and c.task_kind == "tagging"


def task_batch_spec(c, regression: bool) -> dict:
    """name -> (shape without batch, dtype) of the task's batches (see the module docstring)."""
    S = c.max_seq_length
    spec = {
        k: ((S,), np.int32)
        for k in ("input_ids", "attention_mask", "token_type_ids", "position_ids")
    }
    if is_squad(c.task):
        spec.update(
            start_positions=((), np.int32),
            end_positions=((), np.int32),
            feature_index=((), np.int32),
        )
    elif is_tagging(c):
        spec.update(labels=((S,), np.int32), example_index=((), np.int32))
    else:
        spec.update(
            labels=((), np.float32 if regression else np.int32), example_index=((), np.int32)
        )
    spec["valid"] = ((), np.float32)
    return spec


@dataclasses.dataclass
class Evaluator:
    """Collects the predictions of one eval pass; `result()` gives the metrics.

    Call `add` with each batch and the model's outputs for it (on several
    hosts, gather the batch's index field and the outputs across hosts first,
    or give each host's evaluator all rows).
    """

    data: TaskData
    split: str
    _seen: dict = dataclasses.field(default_factory=dict)

    def add(self, batch: dict, logits=None, *, start_logits=None, end_logits=None) -> None:
        """Record a batch's outputs: `logits` [B, num_labels] (tagging: [B, S, num_labels]),
        or SQuAD's `start_logits` / `end_logits` [B, S]."""
        valid = np.asarray(batch["valid"]) > 0
        if self.data.squad:
            idx = np.asarray(batch["feature_index"])[valid]
            st, en = np.asarray(start_logits)[valid], np.asarray(end_logits)[valid]
            for i, s, e in zip(idx, st, en):
                self._put(int(i), (s, e))
        else:
            out = np.asarray(logits)[valid]
            if self.data.kind == "tagging":
                out = out.argmax(-1).astype(np.int32)  # [B, S]: the tag at every position
            idx = np.asarray(batch["example_index"])[valid]
            for i, o in zip(idx, out):
                self._put(int(i), o)

    def _put(self, i: int, value) -> None:
        if i in self._seen:
            raise ValueError(f"{self.split}: row {i} was evaluated twice")
        self._seen[i] = value

    def _check_complete(self, n: int) -> None:
        if len(self._seen) != n:
            raise ValueError(
                f"{self.data.task} {self.split}: predictions for {len(self._seen)} of {n} rows; "
                "an eval pass must cover every row exactly once (gather across hosts, keep "
                "padded rows out with batch['valid'])"
            )

    def predictions(self):
        """Class ids / scores per example (GLUE), question id -> text (SQuAD), or
        per sentence the predicted tag name of every word (tagging)."""
        examples, arrays = self.data._eval[self.split]
        self._check_complete(len(arrays["input_ids"]))
        if self.data.squad:
            F = len(arrays["input_ids"])
            S = arrays["input_ids"].shape[1]
            st, en = np.zeros((F, S), np.float32), np.zeros((F, S), np.float32)
            for i, (s, e) in self._seen.items():  # a batch may be padded to less than S
                st[i, : len(s)], en[i, : len(e)] = s, e
            c = self.data.config
            return squad.postprocess(
                examples,
                squad.SquadFeatures(**{k: arrays[k] for k in _SQUAD_KEYS}),
                st,
                en,
                version=self.data.squad_version,
                n_best_size=c.n_best_size,
                max_answer_length=c.max_answer_length,
                null_score_diff_threshold=c.null_score_diff_threshold,
            )
        if self.data.kind == "tagging":
            out = np.zeros(arrays["input_ids"].shape, np.int32)
            for i, tags in self._seen.items():  # a batch may be padded to less than S
                out[i, : len(tags)] = tags
            return conll.word_tags(out, arrays, self.data.label_names)[1]
        out = np.stack([self._seen[i] for i in range(len(self._seen))])
        return out.reshape(-1) if self.data.is_regression else out.argmax(-1)

    def result(self) -> dict[str, float]:
        """The task's official metrics on this split."""
        examples, arrays = self.data._eval[self.split]
        preds = self.predictions()
        if self.data.kind == "tagging":
            gold, _ = conll.word_tags(None, arrays, self.data.label_names)
            scores = metrics.tagging_scores(gold, preds)
            return {k: scores[k] for k in self.data.metric_names}
        if self.data.squad:
            return metrics.squad_scores(
                squad.gold_answers(examples), preds, version=self.data.squad_version
            )
        labels = arrays["labels"]
        if self.data.is_regression:
            if np.isnan(labels).any():
                raise ValueError(f"{self.split} has no labels (a test split); use predictions()")
        elif (labels < 0).any():
            raise ValueError(f"{self.split} has no labels (a test split); use predictions()")
        return metrics.classification_metrics(self.data.metric_names, preds, labels)


_SQUAD_KEYS = tuple(f.name for f in dataclasses.fields(squad.SquadFeatures))


@dataclasses.dataclass
class TaskData:
    """Iterators and evaluation of a downstream task.

    Attributes:
      task: the task name; num_labels / is_regression / label_names size the head.
      kind: "classification", "regression", "tagging" (a token-classification
        head; `labels` [B, S], -1 where no tag) or "qa" (span heads).
      train: the endless training iterator (checkpoint its `get_state()`).
      eval_splits: names accepted by `eval_iterator` / `evaluator`.
    """

    task: str
    config: object
    tokenizer: WordPieceTokenizer
    report: InputReport
    train: loader.DataIterator
    num_labels: int
    is_regression: bool
    label_names: tuple[str, ...] | None
    metric_names: tuple[str, ...]
    squad_version: str = ""
    kind: str = "classification"
    _eval: dict = dataclasses.field(default_factory=dict)
    _make_eval: object = None

    @property
    def squad(self) -> bool:
        return bool(self.squad_version)

    @property
    def eval_splits(self) -> list[str]:
        return list(self._eval)

    def eval_size(self, split: str | None = None) -> int:
        return len(self._eval[split or self.eval_splits[0]][1]["input_ids"])

    def eval_iterator(self, split: str | None = None) -> loader.DataIterator:
        """A fresh one-pass iterator over a split (default: the task's dev split)."""
        return self._make_eval(split or self.eval_splits[0])

    def evaluator(self, split: str | None = None) -> Evaluator:
        split = split or self.eval_splits[0]
        if split not in self._eval:
            raise ValueError(f"no eval split {split!r}; have {self.eval_splits}")
        return Evaluator(self, split)


def _cached_arrays(cache_dir: Path, parts: dict, build, report: InputReport):
    """(arrays, content hash): `build(report)`'s arrays, cached with the build's report."""

    def run():
        local = InputReport()
        arrays = build(local)
        content = hashlib.sha256()
        for k in sorted(arrays):
            content.update(np.ascontiguousarray(arrays[k]).tobytes())
        return arrays, {"report": local.to_dict(), "content": content.hexdigest()[:16]}

    path, arrays, extra = tokenized.cached_arrays(cache_dir, "task", parts, run)
    report.merge(InputReport.from_dict(extra["report"]))
    arrays["_dir"] = str(path)
    return arrays, extra["content"]


def _files_key(paths: list[Path]) -> list:
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]


def _glue_reader(c, task: glue.GlueTask):
    if c.source == "hf":
        import datasets

        if c.hf_disk_path:
            ds = datasets.load_from_disk(os.path.expanduser(c.hf_disk_path))
        else:
            ds = datasets.load_dataset(c.hf_path or "nyu-mll/glue", c.hf_name or task.hf_name)
        key = {"hf": c.hf_disk_path or c.hf_path, "name": c.hf_name or task.hf_name}
        key["fingerprints"] = {k: getattr(v, "_fingerprint", None) for k, v in ds.items()}
        return (lambda split, report: glue.read_hf(task, ds, split, report)), key
    if c.source == "corpus":
        if task.name not in corpus.TASKS:
            raise config_lib.DataConfigError(
                f"data.source='corpus' builds the corpus tasks ({', '.join(corpus.TASKS)}); "
                f"{task.name} is read with source 'tsv' or 'hf'"
            )
        data_dir = (
            Path(c.data_dir)
            if c.data_dir
            else corpus.task_dir(tokenized.resolve_cache_dir(c.cache_dir), task.name)
        )
    elif c.source == "tsv":
        if not c.data_dir:
            raise config_lib.DataConfigError(
                f"data.data_dir: the directory of the {task.name} TSV files"
            )
        data_dir = Path(os.path.expanduser(c.data_dir))
    else:
        raise config_lib.DataConfigError(f"data.source={c.source!r} does not serve {task.name}")
    files = sorted(
        data_dir / lay.file for lay in task.splits.values() if (data_dir / lay.file).exists()
    )
    key = {"dir": str(data_dir.resolve()), "files": _files_key(files), "on_bad_line": c.on_bad_line}
    return (
        lambda split, report: glue.read_split(task, data_dir, split, report, c.on_bad_line)
    ), key


def glue_task(name: str) -> glue.GlueTask:
    """The layout of a task read as GLUE TSV: a GLUE task or a corpus task."""
    return corpus.TASKS[name].task if name in corpus.TASKS else glue.get_task(name)


def read_examples(c, split: str, report: InputReport | None = None) -> list[glue.Example]:
    """The examples of one split of a GLUE-layout task (GLUE or corpus), as training reads them.

    Args:
      c: the task data config (`config.task_data_defaults()`); SQuAD is not served.
      split: a split of the task (`train`, `dev`, MNLI's `dev_matched`, ...).
      report: where skipped rows are counted (default: a fresh report).
    """
    config_lib.validate_task(c)
    if is_squad(c.task):
        raise config_lib.DataConfigError(f"data.task={c.task!r}: read SQuAD with squad.read_squad")
    read, _ = _glue_reader(c, glue_task(c.task))
    return read(split, report or InputReport())


def build_task_data(
    c,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    tokenizer: WordPieceTokenizer | None = None,
    eval_splits: tuple[str, ...] | None = None,
    log=print,
) -> TaskData:
    """Build the iterators of task data config `c` (`config.task_data_defaults()`).

    Args:
      c: the task data config.
      process_index, process_count: this host and the number of hosts.
      tokenizer: use this tokenizer instead of loading `c.vocab_file`.
      eval_splits: splits to prepare for evaluation (default: the task's dev
        split(s); MNLI: dev_matched and dev_mismatched).
      log: where the input summary is printed.
    """
    config_lib.validate_task(c)
    p, n = loader.resolve_processes(process_index, process_count)
    if tokenizer is None:
        if not c.vocab_file:
            raise config_lib.DataConfigError(
                "data.vocab_file: the task's vocabulary (normally the pretrained model "
                "directory's vocab.txt); it must be the one the model was trained with"
            )
        tokenizer = load_tokenizer(c.vocab_file, c.lowercase)
    cache_dir = tokenized.resolve_cache_dir(c.cache_dir)
    report = InputReport(source=f"task {c.task}")
    if is_squad(c.task):
        return _build_squad(c, tokenizer, report, cache_dir, p, n, log)
    if c.task == "custom":
        return _build_custom(c, tokenizer, report, cache_dir, p, n, log)
    task = glue_task(c.task)
    read, source_key = _glue_reader(c, task)
    if eval_splits is None:
        eval_splits = ("dev_matched", "dev_mismatched") if task.name == "mnli" else ("dev",)
    if c.eval_split:
        eval_splits = (c.eval_split,)
    base = {
        "task": task.name,
        "source": source_key,
        "tokenizer": tokenizer.fingerprint,
        "S": c.max_seq_length,
        "v": FEATURES_VERSION,
    }

    def arrays(split):
        def build(rep):
            examples = read(split, rep)
            f = glue.featurize(
                examples, tokenizer, c.max_seq_length, rep, regression=task.is_regression
            )
            return dataclasses.asdict(f)

        return _cached_arrays(cache_dir, {**base, "split": split}, build, report)

    spec = task_batch_spec(c, task.is_regression)
    train_arrays, train_key = arrays(c.train_split)
    evals = {s: (None, arrays(s)[0]) for s in eval_splits}
    return _finish(
        c,
        task.name,
        tokenizer,
        report,
        (train_arrays, train_key),
        evals,
        spec,
        p,
        n,
        log,
        num_labels=task.num_labels,
        is_regression=task.is_regression,
        label_names=task.labels,
        metric_names=metrics.GLUE_METRICS.get(task.name, ("accuracy",)),
        squad_version="",
        kind="regression" if task.is_regression else "classification",
    )


def _build_squad(c, tokenizer, report, cache_dir, p, n, log) -> TaskData:
    version = "2.0" if c.task == "squad_v2" else "1.1"
    train_name, dev_name = SQUAD_FILES[version]
    data_dir = Path(os.path.expanduser(c.data_dir or "."))
    train_file = Path(os.path.expanduser(c.train_file)) if c.train_file else data_dir / train_name
    eval_file = Path(os.path.expanduser(c.eval_file)) if c.eval_file else data_dir / dev_name
    settings = {
        "S": c.max_seq_length,
        "stride": c.doc_stride,
        "q": c.max_query_length,
        "tok": tokenizer.fingerprint,
        "v": FEATURES_VERSION,
    }
    out = {}
    for name, path, training in (("train", train_file, True), ("dev", eval_file, False)):
        examples, file_version = squad.read_squad(path, report, training=training)
        if file_version[0] != version[0]:
            report.note(f"{path.name} says version {file_version}, read as {version} for {c.task}")

        def build(rep, examples=examples):
            f = squad.featurize(
                examples,
                tokenizer,
                max_seq_length=c.max_seq_length,
                doc_stride=c.doc_stride,
                max_query_length=c.max_query_length,
            )
            return dataclasses.asdict(f)

        key = {"squad": name, "file": _files_key([path]), **settings}
        out[name] = (examples, *_cached_arrays(cache_dir, key, build, InputReport()))
    out["dev"] = out["dev"][:2]
    spec = task_batch_spec(c, False)
    return _finish(
        c,
        c.task,
        tokenizer,
        report,
        out["train"][1:],
        {"dev": out["dev"]},
        spec,
        p,
        n,
        log,
        num_labels=2,
        is_regression=False,
        label_names=None,
        metric_names=("exact", "f1"),
        squad_version=version,
        kind="qa",
    )


def _build_custom(c, tokenizer, report, cache_dir, p, n, log) -> TaskData:
    arrays, content, facts, built = custom.prepare(c, tokenizer, cache_dir)
    report.merge(built)
    spec = task_batch_spec(c, facts["is_regression"])
    train, evals = (arrays["train"], content["train"]), {"dev": (None, arrays["dev"])}
    args = (c, "custom", tokenizer, report, train, evals, spec, p, n, log)
    return _finish(*args, squad_version="", kind=c.task_kind, **facts)


def _finish(c, name, tokenizer, report, train, evals, spec, p, n, log, **facts) -> TaskData:
    train_arrays, train_key = train
    squad_mode = bool(facts["squad_version"])
    options = dict(num_threads=c.num_threads, prefetch=c.prefetch, worker_count=c.worker_count)
    eval_g = c.eval_global_batch_size or c.global_batch_size
    loader.check_batch_size(eval_g, n, "eval_global_batch_size")
    fp = {"task": name, "train": train_key}
    padding = dict(pad_multiple=c.get("pad_to_multiple", 0), group=c.get("group_by_length", 0))
    train_it = loader.make_iterator(
        ArraySource(train_arrays, squad_mode),
        spec,
        global_batch_size=c.global_batch_size,
        process_index=p,
        process_count=n,
        seed=c.seed,
        stream=0,
        endless=True,
        fingerprint_parts=fp,
        options=options,
        **padding,
    )

    def make_eval(split):
        if split not in evals:
            raise ValueError(f"no eval split {split!r}; have {list(evals)}")
        return loader.make_iterator(
            ArraySource(evals[split][1], squad_mode),
            spec,
            global_batch_size=eval_g,
            process_index=p,
            process_count=n,
            seed=0,
            stream=1,
            endless=False,
            fingerprint_parts={**fp, "split": split},
            options=options,
            **padding,
        )

    report.count("train rows", len(train_arrays["input_ids"]))
    log(report.summary())
    return TaskData(
        name, c, tokenizer, report, train_it, _eval=evals, _make_eval=make_eval, **facts
    )
