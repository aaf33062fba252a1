"""The data layer: corpora, WordPiece, pretraining examples, task readers, metrics.

Entry points (see docs/data.md):

- `pretraining_data_defaults()` /
  `build_pretraining_data(config.data, process_index=..., process_count=...)`
  for pretraining and distillation batches;
- `task_data_defaults(task)` / `build_task_data(config.data, ...)` for GLUE,
  SQuAD, the corpus tasks (`stdlib`, `wordorder`) and the user's own data
  (`custom`: classification, regression or tagging from CSV / TSV / JSON lines /
  CoNLL files or `datasets`), with `TaskData.evaluator()` for the official metrics;
- `load_tokenizer`, `train_wordpiece`, `check_same_vocab`, `check_model_vocab`.
"""

from mbert_jax.data.config import DataConfigError, pretraining_data_defaults, task_data_defaults
from mbert_jax.data.loader import DataIterator
from mbert_jax.data.pipeline import PretrainingData, batch_spec, build_pretraining_data
from mbert_jax.data.report import InputReport
from mbert_jax.data.tasks import Evaluator, TaskData, build_task_data, task_batch_spec
from mbert_jax.data.tokenizer import (
    VocabError,
    WordPieceTokenizer,
    check_model_vocab,
    check_same_vocab,
    load_tokenizer,
    train_wordpiece,
)

__all__ = [
    "DataConfigError",
    "DataIterator",
    "Evaluator",
    "InputReport",
    "PretrainingData",
    "TaskData",
    "VocabError",
    "WordPieceTokenizer",
    "batch_spec",
    "build_pretraining_data",
    "build_task_data",
    "check_model_vocab",
    "check_same_vocab",
    "load_tokenizer",
    "pretraining_data_defaults",
    "task_batch_spec",
    "task_data_defaults",
    "train_wordpiece",
]
