"""The downstream-task data of the task-distillation recipes (TinyBERT task, BERT-of-Theseus).

`TaskSetup` builds the task's batches with the teacher's vocabulary (the
teacher is fine-tuned, so its model directory holds the vocab.txt the task
must be tokenized with) and keeps what the trainer needs for the task's
official metrics: `data.evaluator`, `num_labels`, `regression`. The teacher
itself is loaded by `teacher.py`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import ml_collections

from mbert_jax.models import io, resolve

log = logging.getLogger(__name__)


class TaskSetup:
    """Task batches, vocabulary and official evaluation for a task-distillation recipe.

    The vocabulary is `config.data.vocab_file`, else the teacher directory's
    vocab.txt, else (random teachers only) the vocabulary learned from the
    embedded corpus, so that smoke runs need no files.

    Args:
      data_config: `config.data` (a task block: GLUE TSV files or the stdlib task).
      teacher_path: `config.teacher.path` (empty: a random teacher).
      prepare: optional `prepare(tokenizer) -> directory` giving the task's
        files to read instead (e.g. the augmented training set).

    Raises:
      ValueError: the teacher directory has no vocab.txt, or the task is SQuAD or tagging.
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
            tokenizer = pipeline.get_tokenizer(data_config_lib.get_config())
        self.tokenizer = tokenizer
        src = Path(tokenizer.source)
        self.vocab = src / "vocab.txt" if src.is_dir() else src
        c = data_config
        if prepare is not None:  # e.g. augmentation: a directory with the task's files
            c = ml_collections.ConfigDict(data_config.to_dict())
            c.data_dir = str(prepare(tokenizer))
        self.data = build_task_data(
            c,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            tokenizer=tokenizer,
        )
        if self.data.squad:
            raise ValueError(
                f"config.data.task={c.task}: this recipe distils sequence classification and "
                "regression (GLUE, stdlib); SQuAD is not supported"
            )
        if self.data.kind == "tagging":
            raise ValueError(
                "config.data.task_kind='tagging': this recipe distils sequence classification "
                "and regression; token classification is not supported yet (fine-tune the "
                "tagger with configs/finetune.py)"
            )
        self.num_labels = self.data.num_labels
        self.regression = self.data.is_regression
