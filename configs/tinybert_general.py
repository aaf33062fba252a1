"""TinyBERT general distillation: a 4-layer student from a pre-trained BERT-base.

Attention (pre-softmax scores) + hidden (through W_h) + embedding (through
W_e) MSE, uniform layer map g(m) = 3m for 12 -> 4 layers, no prediction loss,
on pretraining text (paper: English Wikipedia, sequence 128). Paper defaults;
`official` switches to the official code's single shared projection with
bias and its loss reductions (see mbert_jax/distill/tinybert.py).

Full size (pod; the teacher is a pre-trained, not fine-tuned, BERT-base
model directory, e.g. converted from transformers):

    mbert-jax train --config configs/tinybert_general.py --workdir $BUCKET/tinybert4_general \
        --config.teacher.path=$BUCKET/bert_base/model \
        --config.data.source=hf --config.data.hf_disk_path=/data/wikipedia \
        --config.mesh.fsdp=8

CPU smoke run (micro student and teacher; the teacher is random unless
given, e.g. `--config.teacher.path=runs/bert_local/model` from
`configs/pretrain_ibbert.py:runlocal,variant=bert_base`), about a minute:

    mbert-jax train --config configs/tinybert_general.py:runlocal --workdir runs/tinybert_general

`--config.teacher.dtype=bfloat16` holds and runs the frozen teacher in bf16
(mbert_jax/distill/teacher.py).
Options: `runlocal`, `student=tinybert4|tinybert6|albert_base|...`,
`data=default|synthetic`, `official`. Expected: every loss falls steadily
(at runlocal size the hidden loss roughly halves in 200 steps); the paper's
TinyBERT4 after task distillation reaches GLUE test 77.0.

Sweep (`mbert-jax sweep`): the paper's ablation without each loss. With
`--seeds 3 --finetune configs/finetune.py:runlocal` at runlocal size, the
full loss has the highest mean fine-tuned accuracy, but within noise of each
ablation (BENCHMARKS.md, "Ablation sweeps at micro scale").
"""

from configs import common
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.train.config import base_config, model_block, parse_arg
from mbert_jax.train.inputs import pretraining_data_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, student="tinybert4", data="default", official=False)
    micro = "_micro" if arg.runlocal else ""
    config = base_config("distill_tinybert")
    config.teacher = teacher_block("bert_base" + micro)
    config.student = model_block(arg.student + micro)
    config.init_from = ""
    config.distill = dict(
        mode="general",
        layer_map="uniform",
        loss_weights=dict(attention=1.0, hidden=1.0, embedding=1.0),
        official_losses=arg.official,
        shared_projection=arg.official,
        projection_bias=arg.official,
        # "factorized": a fresh student's embeddings from the teacher's table (low rank).
        init_embeddings="random",
        # teacher layers (0-based) copied into the student's, one per student layer
        # (DistilBERT's initialization; needs the teacher's width); () leaves them random.
        init_layers=(),
    )

    # NSP pairs are not used by the layer-wise losses.
    config.data = pretraining_data_config(
        arg.data, nsp=False, global_batch_size=256, max_seq_length=128
    )

    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule.warmup_fraction = 0.1
    config.train.steps = 400_000
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 5_000

    if arg.runlocal:
        common.runlocal(
            config,
            steps=200,
            learning_rate=1e-3,
            log_every=20,
            eval_every=100,
            eval_steps=5,
            checkpoint_every=100,
            predictions=None,  # no MLM loss: the masking stays as at full size
        )
    return config


sweep_metrics = ("eval_hidden", "eval_attention")  # layer losses: a task metric needs --finetune


def sweep(add):
    """TinyBERT's ablation (paper Table 6): drop one layer-wise loss at a time."""
    add(name="all")
    for loss in ("attention", "hidden", "embedding"):
        add(name=f"without_{loss}", **{f"distill.loss_weights.{loss}": 0.0})
