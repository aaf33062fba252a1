"""TinyBERT task-specific distillation: a general-distilled student learns a fine-tuned teacher.

Stage "intermediate": attention + hidden + embedding MSE (uniform layer map)
on the augmented task data; stage "prediction": soft cross-entropy against
the teacher's logits at temperature t = 1 (regression tasks: MSE). The
augmentation (`config.augment`, mbert_jax/distill/augment.py) replaces words
by the MLM teacher's top-K candidates (single-piece words) or K nearest
word vectors (multi-piece), p = 0.4, N = 20, K = 15 (paper defaults; the
official script uses N = 10..30 per task). Paper behaviour by default,
`official` for the official code's shared projection, loss reductions and
augmentation (`augment.official`: stop words skipped, sentence pair as MLM
input, duplicates dropped).

Full size (the official README: intermediate distillation for 10 epochs (20
for small tasks), then 3 epochs of prediction distillation at lr 3e-5;
batch 32, sequence 128 (64 for single sentences); set
`distill.intermediate_steps` / `prediction_steps` from the augmented data's
size):

    mbert-jax train --config configs/tinybert_task.py:task=sst2 --workdir $BUCKET/tinybert_sst2 \
        --config.teacher.path=$BUCKET/bert_sst2/model \
        --config.init_from=$BUCKET/tinybert4_general/model \
        --config.augment.mlm_teacher.path=$BUCKET/bert_base/model \
        --config.augment.word_vectors=/data/glove.6B.300d.txt \
        --config.data.data_dir=/data/glue/SST-2

CPU run on the embedded `stdlib` task (runlocal: micro models; random
teachers unless given; N = 2 variants of the first 100 rows):

    mbert-jax train --config configs/finetune.py:runlocal --workdir runs/bert_stdlib \
        --config.data.vocab_file=runs/ibbert_local/model/vocab.txt
    mbert-jax train --config configs/tinybert_task.py:runlocal --workdir runs/tinybert_stdlib \
        --config.teacher.path=runs/bert_stdlib/model

(add `--config.init_from=runs/tinybert_general/model` from
configs/tinybert_general.py:runlocal, and `--config.augment.mlm_teacher.path`
a pretrained micro BERT with an MLM head). About three minutes. Expected:
the intermediate losses fall, then the student's dev accuracy approaches
the teacher's; paper: TinyBERT4 GLUE test 77.0 (BERT-base 79.5).

Every task kind fine-tuning has: `task=squad_v1` (with
`--config.augment.enabled=False`: augmentation would move the answers), or
`task=custom` with `config.data.task_kind` classification, regression or
tagging and the teacher fine-tuned on the same files (docs/configs.md, "Task
distillation on every task kind").

`--config.teacher.dtype=bfloat16` holds and runs the frozen teacher in bf16
(mbert_jax/distill/teacher.py).
Options: `runlocal`, `task=NAME`, `student=tinybert4|tinybert6|...`,
`official`, `augment=1|0`. Sweep: the paper's ablation without each loss.
"""

from configs import common
from mbert_jax.data import config as data_config
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.distill.tinybert.augment import augment_config
from mbert_jax.train.config import base_config, model_block, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, task="", student="tinybert4", official=False, augment=True)
    micro = "_micro" if arg.runlocal else ""
    task = arg.task or ("stdlib" if arg.runlocal else "sst2")
    config = base_config("distill_tinybert")
    config.teacher = teacher_block("bert_base" + micro)
    config.student = model_block(arg.student + micro)
    config.init_from = ""  # a general-distilled student (WORKDIR/model of tinybert_general.py)
    config.distill = dict(
        mode="task",
        layer_map="uniform",
        loss_weights=dict(attention=1.0, hidden=1.0, embedding=1.0, prediction=1.0, hard_label=0.0),
        temperature=1.0,
        official_losses=arg.official,
        shared_projection=arg.official,
        projection_bias=arg.official,
        # "factorized": a fresh student's embeddings from the teacher's table (low rank).
        init_embeddings="random",
        # teacher layers (0-based) copied into a fresh student's, one per student layer
        # (needs the teacher's width); () leaves them random. Not with init_from.
        init_layers=(),
        intermediate_steps=20_000,
        prediction_steps=6_000,
        intermediate_learning_rate=5e-5,
        prediction_learning_rate=3e-5,
        # A directory: the teacher runs once over the task data and its outputs are stored
        # there, then every step reads them (mbert_jax/train/teacher_store.py); "": live.
        teacher_store="",
        teacher_store_shard_rows=0,  # rows per shard file (0: about 256 MB each)
    )
    config.augment = augment_config(
        enabled=arg.augment,
        mlm_teacher=teacher_block("bert_base" + micro),
        official=arg.official,
    )
    config.data = data_config.task_data_defaults(task)
    config.data.global_batch_size = 32
    config.data.max_seq_length = 128
    config.augment.max_seq_length = 128

    config.optimizer.schedule.warmup_fraction = 0.1
    config.train.log_every = 100
    config.train.eval_every = 2_000
    config.train.eval_steps = 0
    config.train.checkpoint_every = 2_000

    if arg.runlocal:
        # Evaluated once, at the end; each stage has its own rate (below).
        common.runlocal(
            config,
            learning_rate=config.optimizer.learning_rate,
            log_every=20,
            eval_every=10_000,
            checkpoint_every=60,
        )
        config.augment.n = 2
        config.augment.max_examples = 100  # a CPU-sized sample of the 1,452 rows
        config.distill.intermediate_steps = 60
        config.distill.prediction_steps = 60
        config.distill.intermediate_learning_rate = 1e-3
        config.distill.prediction_learning_rate = 1e-3
    return config


sweep_metrics = ("eval_accuracy",)  # the student's dev accuracy


def sweep(add):
    """TinyBERT's ablation (paper Table 6): without each loss, and without augmentation.

    Without the prediction loss the classifier learns from the hard labels instead.
    """
    add(name="all")
    for loss in ("attention", "hidden", "embedding"):
        add(name=f"without_{loss}", **{f"distill.loss_weights.{loss}": 0.0})
    add(
        name="without_prediction",
        **{"distill.loss_weights.prediction": 0.0, "distill.loss_weights.hard_label": 1.0},
    )
    add(name="without_augmentation", **{"augment.enabled": False})
