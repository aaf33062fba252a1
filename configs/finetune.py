"""Fine-tune a model directory on a downstream task (GLUE, SQuAD, the `stdlib` task, your own).

Makes the fine-tuned teachers of task distillation (TinyBERT task stage,
BERT-of-Theseus predecessor) and evaluates distilled students. The encoder
comes from `config.init_from` (WORKDIR/model of a pretraining or
distillation run), the head starts fresh; evaluation reports the task's
official metrics on the dev split.

Full size (BERT recipe: batch 32, lr 2e-5, 3 epochs, sequence 128):

    mbert-jax train --config configs/finetune.py:task=mnli --workdir $BUCKET/bert_mnli \
        --config.init_from=$BUCKET/bert_base/model --config.data.data_dir=/data/glue/MNLI

CPU smoke run on the embedded `stdlib` task (6 classes, chance 16.7%;
without init_from a random micro BERT is trained from scratch, and the task
needs a vocabulary: `data.vocab_file`, here the one the runlocal teacher run
of configs/pretrain_ibbert.py writes), about a minute:

    mbert-jax train --config configs/finetune.py:runlocal --workdir runs/bert_stdlib \
        --config.data.vocab_file=runs/ibbert_local/model/vocab.txt

Your own data (`task=custom`): CSV / TSV / JSON-lines files with a header
(or keys) naming the columns; `data.task_kind` is `classification` (any
number of classes; string or integer labels, ids in sorted order or the
order of `data.labels`), `regression` (float labels; Pearson / Spearman)
or `tagging` (CoNLL files or JSON lines of word and tag lists; entity-level
precision / recall / F1). A `datasets` dataset works too:
`--config.data.source=hf --config.data.hf_disk_path=DIR`. The label names
are saved with the model and go into exported files. For example, a
3-class CSV with sentence pairs, from a BERT model directory:

    mbert-jax train --config configs/finetune.py:task=custom --workdir runs/my_task \
        --config.init_from=runs/my_bert/model \
        --config.data.train_file=data/train.csv --config.data.eval_file=data/dev.csv \
        --config.data.text_column=premise --config.data.text_pair_column=hypothesis \
        --config.data.label_column=label

and NER on CoNLL-2003-style files (word ... tag per line, the tag last):

    mbert-jax train --config configs/finetune.py:task=custom --workdir runs/my_ner \
        --config.init_from=runs/my_bert/model --config.data.task_kind=tagging \
        --config.data.train_file=data/train.conll --config.data.eval_file=data/dev.conll

Options: `runlocal`, `task=NAME`, `variant=NAME` (the model when no
init_from is given). Expected: at runlocal size from a random micro BERT,
dev accuracy about 0.3-0.4 after 300 steps; BERT-base on MNLI about 84%.
"""

from configs import common
from mbert_jax.data import config as data_config
from mbert_jax.train.config import base_config, model_block, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, task="", variant="bert_base")
    task = arg.task or ("stdlib" if arg.runlocal else "mrpc")
    config = base_config("finetune")
    config.init_from = ""
    config.model = model_block(arg.variant + ("_micro" if arg.runlocal else ""))
    config.data = data_config.task_data_defaults(task)
    config.data.global_batch_size = 32
    config.data.max_seq_length = 128

    config.optimizer.learning_rate = 2e-5
    config.optimizer.schedule.warmup_fraction = 0.1
    config.train.steps = 10_000
    config.train.log_every = 50
    config.train.eval_every = 1_000
    config.train.eval_steps = 0  # the whole dev split (official metrics need every row)
    config.train.checkpoint_every = 1_000

    if arg.runlocal:
        common.runlocal(
            config,
            steps=300,
            learning_rate=1e-3,
            log_every=25,
            eval_every=150,
            checkpoint_every=150,
        )
    return config


sweep_metrics = ("eval_accuracy",)  # classification tasks; others: --metrics (e.g. eval_f1)


def sweep(add):
    """The BERT paper's fine-tuning grid."""
    for lr in (2e-5, 3e-5, 5e-5):
        for batch in (16, 32):
            add(**{"optimizer.learning_rate": lr, "data.global_batch_size": batch})
