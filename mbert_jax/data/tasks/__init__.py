"""Downstream tasks: readers, features, the built-in corpus tasks, metrics, `build_task_data`.

- `build.py`: `build_task_data` (the entry point, re-exported here),
  `TaskData`, `Evaluator`, `task_batch_spec`;
- `glue.py`: GLUE's TSV files and `datasets`, sentence(-pair) features;
- `squad.py`: SQuAD v1.1 / v2.0 reading, windows and post-processing;
- `conll.py`: token classification (tagging): CoNLL files, JSON lines, features;
- `custom.py`: `task="custom"`, the user's own data: read both splits, fix
  the labels, featurize, cache;
- `label_ids.py`: the user's labels and their ids (class and tag order,
  regression scores), table rows into examples;
- `corpus.py`: the tasks built from the embedded corpus (`stdlib`,
  `wordorder`); the pretraining corpus reader is `mbert_jax/data/corpus.py`;
- `metrics.py`: the official metrics of GLUE, SQuAD and tagging.
"""

from mbert_jax.data.tasks.build import (
    TASK_NAMES,
    Evaluator,
    TaskData,
    build_task_data,
    glue_task,
    read_examples,
    task_batch_spec,
)

__all__ = [
    "TASK_NAMES",
    "Evaluator",
    "TaskData",
    "build_task_data",
    "glue_task",
    "read_examples",
    "task_batch_spec",
]
