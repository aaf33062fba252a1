"""Data configs: `pretraining_data_defaults()` and `task_data_defaults(task)`.

The first is the data block of pretraining and distillation, the second that
of a downstream task (GLUE, SQuAD, the corpus tasks, the user's own data).

Experiment configs embed one as `config.data` and may override any field.
`pipeline.build_pretraining_data(config.data, ...)` and
`tasks.build_task_data(config.data, ...)` read them; `validate` /
`validate_task` name the field and the fix for every bad value.

The defaults run out of the box offline: the embedded stdlib-documentation
corpus, a 2,048-token WordPiece vocabulary learned from it (the micro model
variants have `vocab_size=2048`), BERT's example settings (128 tokens, 20
predictions, 15% masking, 10% short sequences, NSP on).
"""

from __future__ import annotations

import os

import ml_collections

from mbert_jax.data import corpus

TASK_SOURCES = ("tsv", "hf", "json", "corpus", "files")
TASK_KINDS = ("classification", "regression", "tagging")


def _host_fields(c: ml_collections.ConfigDict) -> None:
    c.cache_dir = ""  # empty: $MBERT_JAX_CACHE/data or ~/.cache/mbert_jax/data
    c.num_threads = 2  # grain prefetch threads (0: build batches in the training thread)
    c.prefetch = 4  # batches built ahead of the training step
    c.worker_count = 0  # grain worker processes (0: threads only)


def pretraining_data_defaults() -> ml_collections.ConfigDict:
    """Defaults of the pretraining / distillation data config."""
    c = ml_collections.ConfigDict()
    # Source (see corpus.py): "default" | "text" | "hf" | "tfds".
    c.source = "default"
    c.text_files = ""  # comma-separated globs (source="text"); .gz/.bz2/.xz read as such
    c.hf_path = ""  # datasets.load_dataset path: a builder ("json", "text") or a hub name
    c.hf_name = ""  # its config name
    c.hf_data_files = ""  # comma-separated data_files for builders such as "json"
    c.hf_disk_path = ""  # a datasets.save_to_disk directory (takes precedence over hf_path)
    c.hf_split = "train"
    c.tfds_name = ""  # e.g. "wikipedia/20230601.en"; read from tfds_data_dir, never downloaded
    c.tfds_split = "train"
    c.tfds_data_dir = ""
    c.text_field = "text"  # the text column (hf) or feature (tfds); one document per row
    c.sentence_split = True  # cut lines into sentences (NSP needs several segments per document)
    c.on_bad_utf8 = "skip"  # "skip" (counted), "error" (names file:line), "replace" (U+FFFD)
    # Tokenizer: a BERT vocab.txt or transformers tokenizer directory, or learn one.
    c.vocab_file = ""  # empty: learn a WordPiece vocabulary from the corpus (cached)
    c.lowercase = None  # None: as the vocabulary requires (tokenizer_config.json, else inferred)
    c.train_vocab_size = 2048
    c.train_vocab_min_frequency = 2
    # Distillation: the teacher's vocab.txt (or tokenizer directory). When set,
    # building the data checks that it equals the data's vocabulary, since a
    # distillation batch gives both models the same input_ids.
    c.teacher_vocab_file = ""
    # Examples (google-research/bert create_pretraining_data.py semantics).
    c.max_seq_length = 128
    c.max_predictions_per_seq = 20
    c.masked_lm_prob = 0.15
    c.short_seq_prob = 0.1
    c.nsp = True  # sentence pairs and next_sentence_labels; False: one segment per example
    c.whole_word_mask = False
    c.packing = False  # pack short sequences into rows (requires nsp=False)
    # Order, batches and the held-out split.
    c.global_batch_size = 256  # over all hosts; each host gets global_batch_size / process_count
    c.eval_global_batch_size = 0  # 0: global_batch_size
    c.seed = 0  # shuffling, chunking, pairs and masks of the training stream
    c.eval_fraction = 0.05  # share of documents held out for evaluation (0: none)
    c.eval_max_documents = 1000  # at most this many held-out documents
    c.split_seed = 0  # which documents are held out, and the fixed eval masks
    _host_fields(c)
    return c


def task_data_defaults(task: str = "mrpc") -> ml_collections.ConfigDict:
    """Defaults of a downstream-task data config (GLUE, SQuAD, the corpus tasks).

    Args:
      task: a GLUE task (`cola`, `sst2`, `mrpc`, `stsb`, `qqp`, `mnli`, `qnli`,
        `rte`, `wnli`), `squad_v1`, `squad_v2`, a corpus task (`stdlib`,
        `wordorder`; see `tasks.TASK_NAMES`), or `custom`: the user's own files
        or dataset (`task_kind`, the columns and `labels` below; see `tasks/label_ids.py`
        and `tasks/conll.py`).
    """
    # Imported here: the tasks package imports this module.
    from mbert_jax.data.tasks import corpus as corpus_task

    c = ml_collections.ConfigDict()
    c.task = task
    # "tsv": GLUE files (data_dir/train.tsv, dev.tsv, ...); "json": SQuAD files;
    # "hf": a datasets dataset; "corpus": a corpus task, built on first use;
    # "files": the custom task's train_file / eval_file (format from the suffix).
    if task in corpus_task.TASKS:
        c.source = "corpus"
    elif task == "custom":
        c.source = "files"
    else:
        c.source = "json" if task.startswith("squad") else "tsv"
    c.data_dir = ""  # the task's directory (tsv, corpus) or SQuAD json directory
    # SQuAD: default data_dir/train-v1.1.json (train-v2.0.json) and dev-v1.1.json (dev-v2.0.json).
    # custom: the training and the labelled dev file (.csv, .tsv, .jsonl/.json; tagging: CoNLL).
    c.train_file = ""
    c.eval_file = ""
    c.hf_path = ""  # e.g. "nyu-mll/glue" (hub cache) or a builder ("csv", "json")
    c.hf_name = ""  # empty: the task's usual config name
    c.hf_disk_path = ""  # a DatasetDict.save_to_disk directory
    c.hf_data_files = ""  # custom + hf_path: "train=a.csv,validation=b.csv"
    c.train_split = "train"
    c.eval_split = ""  # empty: the task's dev split (MNLI: dev_matched; custom hf: validation)
    # The custom task (task="custom"): what the label column holds and where the columns are.
    c.task_kind = "classification"  # "classification" | "regression" | "tagging"
    c.text_column = "text"
    c.text_pair_column = ""  # set: sentence pairs [CLS] text [SEP] pair [SEP]
    c.label_column = "label"
    c.labels = ""  # classes (tags) in id order, "neg,neu,pos"; empty: the sorted train labels
    c.tokens_column = "tokens"  # tagging, JSON lines / datasets: the list of words
    c.tags_column = "tags"  # tagging, JSON lines / datasets: the list of tags
    c.conll_tag_column = -1  # tagging, CoNLL files: the tag's column (-1: the last)
    c.on_bad_line = "error"  # a malformed row / line: "error" (names file:line) or "skip" (counted)
    c.vocab_file = ""  # required: normally the pretrained model directory's vocab.txt
    c.lowercase = None
    c.max_seq_length = 128
    # SQuAD featurization and post-processing (BERT run_squad.py defaults).
    c.doc_stride = 128
    c.max_query_length = 64
    c.max_answer_length = 30
    c.n_best_size = 20
    c.null_score_diff_threshold = 0.0
    c.global_batch_size = 32
    c.eval_global_batch_size = 0
    # Padding (docs/data.md): 0 pads every batch to max_seq_length; m > 0 pads a batch
    # only to its longest row, rounded up to a multiple of m (one compile per length).
    c.pad_to_multiple = 0
    # 0: plain shuffle; K: rows of similar length batched together, sorted within
    # windows of K global batches of each epoch's shuffle, and eval splits sorted by
    # length (use with pad_to_multiple).
    c.group_by_length = 0
    c.seed = 0
    _host_fields(c)
    return c


class DataConfigError(ValueError):
    """An invalid data config value; the message names the field."""


def _check(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise DataConfigError(f"data.{field}: {msg}")


def _check_host_fields(c) -> None:
    for f in ("num_threads", "prefetch", "worker_count", "seed"):
        _check(isinstance(c[f], int) and c[f] >= 0, f, f"must be an integer >= 0, got {c[f]!r}")
    _check(
        c.global_batch_size >= 1, "global_batch_size", f"must be >= 1, got {c.global_batch_size}"
    )
    _check(c.eval_global_batch_size >= 0, "eval_global_batch_size", "must be >= 0 (0: global)")


def validate(c) -> None:
    """Check a pretraining data config (see `pretraining_data_defaults`)."""
    corpus.check_source(c)
    _check_host_fields(c)
    _check(c.max_seq_length >= 8, "max_seq_length", f"must be >= 8, got {c.max_seq_length}")
    _check(
        1 <= c.max_predictions_per_seq <= c.max_seq_length,
        "max_predictions_per_seq",
        f"must be in [1, max_seq_length], got {c.max_predictions_per_seq}",
    )
    _check(0 < c.masked_lm_prob < 1, "masked_lm_prob", f"must be in (0, 1), got {c.masked_lm_prob}")
    _check(
        0 <= c.short_seq_prob <= 1, "short_seq_prob", f"must be in [0, 1], got {c.short_seq_prob}"
    )
    _check(0 <= c.eval_fraction < 1, "eval_fraction", f"must be in [0, 1), got {c.eval_fraction}")
    _check(c.train_vocab_size >= 16, "train_vocab_size", f"must be >= 16, got {c.train_vocab_size}")
    _check(
        not (c.packing and c.nsp),
        "packing",
        "packing needs nsp=False: one next_sentence_label per row cannot describe several "
        "packed pairs. Set data.nsp=False (MLM-only objectives such as DistilBERT's) or "
        "data.packing=False",
    )


def validate_task(c) -> None:
    """Check a downstream-task data config (see `task_data_defaults`)."""
    _check_host_fields(c)
    _check(c.source in TASK_SOURCES, "source", f"must be one of {TASK_SOURCES}, got {c.source!r}")
    _check(c.on_bad_line in ("error", "skip"), "on_bad_line", "must be 'error' or 'skip'")
    _check(c.max_seq_length >= 8, "max_seq_length", f"must be >= 8, got {c.max_seq_length}")
    for f in ("pad_to_multiple", "group_by_length"):
        v = c.get(f, 0)
        _check(isinstance(v, int) and v >= 0, f, f"must be an integer >= 0, got {v!r}")
    if c.task == "custom":
        _validate_custom(c)
    if c.task.startswith("squad"):
        _check(
            c.max_query_length + 4 < c.max_seq_length,
            "max_query_length",
            f"({c.max_query_length}) leaves no room for the context in max_seq_length "
            f"({c.max_seq_length})",
        )
        _check(c.doc_stride >= 1, "doc_stride", "must be >= 1")


def _validate_custom(c) -> None:
    _check(
        c.task_kind in TASK_KINDS, "task_kind", f"must be one of {TASK_KINDS}, got {c.task_kind!r}"
    )
    _check(
        c.source in ("files", "hf"),
        "source",
        f"the custom task reads 'files' (train_file, eval_file) or 'hf' (a datasets dataset), "
        f"got {c.source!r}",
    )
    # Which files or dataset are read is checked when the data is built (as for
    # GLUE's data_dir), so that the defaults validate.
    if c.source == "files" and c.task_kind != "tagging":
        from mbert_jax.data.tables import TABLE_SUFFIXES

        for field in ("train_file", "eval_file"):
            suffix = os.path.splitext(c[field])[1].lower()
            _check(
                not c[field] or suffix in TABLE_SUFFIXES,
                field,
                f"{c[field]!r}: the format comes from the suffix, one of "
                f"{', '.join(TABLE_SUFFIXES)} (CoNLL files need task_kind='tagging')",
            )
    if c.task_kind == "tagging":
        for field in ("tokens_column", "tags_column"):
            _check(bool(c[field]), field, "must name a column")
        _check(
            isinstance(c.conll_tag_column, int) and c.conll_tag_column != 0,
            "conll_tag_column",
            "must be a column index other than 0 (the word); -1 is the last column",
        )
    else:
        for field in ("text_column", "label_column"):
            _check(bool(c[field]), field, "must name a column")
