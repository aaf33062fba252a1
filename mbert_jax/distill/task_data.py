"""The downstream-task data and teacher of the task-distillation recipes (TinyBERT task,
BERT-of-Theseus), for every task kind the fine-tuning supports.

`TaskSetup` builds the task's batches with the teacher's vocabulary (the
teacher is fine-tuned, so its model directory holds the vocab.txt the task
must be tokenized with) and keeps what the recipes need to stay
kind-agnostic: `kind` (the `TaskData.kind`: classification, regression,
tagging, qa), `head` (the model head of that kind, `train.forward.TASK_KINDS`),
`data.evaluator` (the task's official metrics, the same as fine-tuning's),
`num_labels`, `label_names`. `TaskSetup.load_teacher` loads the teacher
(`teacher.py`) with that head and checks that it was fine-tuned on this
task: the same head, label count and label order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.models import io, resolve
from mbert_jax.train.forward import task_kind

log = logging.getLogger(__name__)


class TaskSetup:
    """Task batches, vocabulary, kind and official evaluation for a task-distillation recipe.

    The vocabulary is `config.data.vocab_file`, else the teacher directory's
    vocab.txt, else (random teachers only) the vocabulary learned from the
    embedded corpus, so that smoke runs need no files.

    Args:
      data_config: `config.data` (a task block: GLUE, a corpus task, SQuAD, or
        `task="custom"` of any `task_kind`).
      teacher_path: `config.teacher.path` (empty: a random teacher).
      prepare: optional `prepare(data_config, tokenizer) -> data config` giving
        the task data to read instead (e.g. with the augmented training set).

    Raises:
      ValueError: the teacher directory has no vocab.txt.
    """

    def __init__(self, data_config, teacher_path: str = "", prepare=None):
        from mbert_jax.data import build_task_data, load_tokenizer, pipeline
        from mbert_jax.data import config as data_config_lib

        vocab = data_config.vocab_file or (
            str(io.vocab_path(resolve.model_dir(teacher_path, "config.teacher.path")) or "")
            if teacher_path
            else ""
        )
        if vocab:
            tokenizer = load_tokenizer(vocab, data_config.lowercase)
        elif teacher_path:
            raise ValueError(
                f"{teacher_path} has no vocab.txt; set config.data.vocab_file to the teacher's"
            )
        else:
            log.warning("no vocabulary given: using the one learned from the embedded corpus")
            tokenizer = pipeline.get_tokenizer(data_config_lib.pretraining_data_defaults())
        self.tokenizer = tokenizer
        src = Path(tokenizer.source)
        self.vocab = src / "vocab.txt" if src.is_dir() else src
        c = data_config if prepare is None else prepare(data_config, tokenizer)
        self.data = build_task_data(
            c,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            tokenizer=tokenizer,
        )
        self.kind = self.data.kind
        self.head = task_kind(self.kind).head
        self.num_labels = self.data.num_labels
        self.regression = self.data.is_regression
        self.label_names = self.data.label_names

    def load_teacher(self, block, what: str = "teacher") -> teacher_lib.Teacher:
        """The fine-tuned teacher of `block` with this task's head, checked against the task.

        Raises:
          ValueError: (naming `config.<what>.path`) the directory lacks the
            kind's head, or was fine-tuned with another label count or order.
        """
        where = f"config.{what}.path={block.get('path')}"
        heads = teacher_lib.stored_heads(block, what)
        if heads is not None and self.head not in heads:
            raise ValueError(
                f"{where} has heads {list(heads)}, but task kind {self.kind!r} "
                f"(config.data.task={self.data.task}) distils the {self.head!r} head: give "
                "a teacher fine-tuned on this task (WORKDIR/model of configs/finetune.py "
                "with the same config.data)"
            )
        spec = teacher_lib.load_teacher(
            block,
            heads=(self.head,),
            what=what,
            vocab_size=self.tokenizer.vocab_size,
            num_labels=self.num_labels,
        )
        cfg = spec.config
        if self.kind != "qa" and cfg.num_labels != self.num_labels:
            raise ValueError(
                f"{where} has {cfg.num_labels} outputs but the task has {self.num_labels} "
                f"labels; fine-tune the {what} on this task first"
            )
        names = tuple(cfg.label_names) if cfg.label_names is not None else None
        want = tuple(self.label_names) if self.label_names is not None else None
        if names is not None and want is not None and names != want:
            raise ValueError(
                f"{where} was fine-tuned with the labels {list(names)} but config.data gives "
                f"{list(want)}: its outputs would mean other classes. Use the data it was "
                "fine-tuned on, or fix the order with config.data.labels"
            )
        return spec
