"""MiniLM / MiniLMv2 self-attention (relation) distillation into a 6-layer, 384-wide student.

One teacher layer (`distill.teacher_layer`, -1 = the last) teaches the
student's last layer on pretraining text (mbert_jax/distill/minilm.py):
MiniLMv2 (default) with the Q-Q, K-K and V-V relations over
`distill.relation_heads` relation heads (head counts and widths free), or
MiniLM (`variant=minilm`) with the attention distributions and the value
relation (equal head counts). The student is saved as WORKDIR/model for
fine-tuning.

Full size (pod; a pre-trained, not fine-tuned, BERT-base teacher, e.g. a
transformers directory):

    mbert-jax train --config configs/minilm.py --workdir $BUCKET/minilm_l6_h384 \
        --config.teacher.path=$BUCKET/bert-base-uncased \
        --config.data.source=hf --config.data.hf_disk_path=/data/wikipedia \
        --config.mesh.fsdp=8

For a large teacher (bert_large, 24 layers) distil an upper-middle layer,
e.g. `--config.distill.teacher_layer=-4`; the MiniLMv2 paper compares the
layers (the sweep below does so too).

CPU smoke run (teacher bert_base_micro: 64 wide, 4 heads of 16; student
minilm6_micro: 48 wide, 6 heads of 8; R = 4 relation heads; random teacher
unless `teacher=PATH`, e.g. runs/bert_local/model of
`configs/pretrain_ibbert.py:runlocal,variant=bert_base`):

    mbert-jax train --config configs/minilm.py:runlocal,teacher=runs/bert_local/model \
        --workdir runs/minilm_local

Measured (2 shared CPU cores; teacher runs/bert_local/model of
`pretrain_ibbert.py:runlocal,variant=bert_base`, embedded corpus; about 40 s
wall each without a compile cache): MiniLMv2 (R = 4) takes the held-out
relation loss (qq + kk + vv, the whole held-out split) from 0.112 at step 0
to 0.0017 after 200 steps; `variant=minilm` (the student with the
teacher's 4 heads) takes attention + value from 0.048 to 0.0009. With a
random teacher the relations are near uniform and the losses start ~1e-3
(they still fall, by about 2x).

Options: `runlocal`, `variant=minilmv2|minilm`, `student=NAME` (any variant;
default minilm6), `teacher=PATH` (config.teacher.path), `data=default|synthetic`.
`--config.teacher.dtype=bfloat16` holds and runs the frozen teacher in bf16.
Expected: every relation loss falls steadily; the published MiniLM L6xH384
reaches MNLI 83.3, SST-2 91.5 after fine-tuning (unilm README).

Sweep (`mbert-jax sweep`): relation heads, and the teacher layer.
"""

from configs import common
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.train.config import base_config, model_block, parse_arg
from mbert_jax.train.inputs import pretraining_data_config


def get_config(arg=None):
    arg = parse_arg(
        arg, runlocal=False, variant="minilmv2", student="minilm6", teacher="", data="default"
    )
    micro = "_micro" if arg.runlocal else ""
    config = base_config("distill_minilm")
    config.teacher = teacher_block("bert_base" + micro, arg.teacher)
    student = {}
    if arg.variant == "minilm" and arg.runlocal:  # MiniLM needs the micro teacher's 4 heads
        student["num_heads"] = 4
    config.student = model_block(arg.student + micro, **student)
    config.distill = dict(
        variant=arg.variant,
        teacher_layer=-1,
        # MiniLMv2: R divides both widths (768 and 384 at full size, 64 and 48 at runlocal).
        relation_heads=4 if arg.runlocal else 12,
        loss_weights=dict(attention=1.0, value=1.0, qq=1.0, kk=1.0, vv=1.0),
    )

    # No NSP and no MLM loss: the recipe restores the masked tokens.
    config.data = pretraining_data_config(
        arg.data, nsp=False, global_batch_size=256, max_seq_length=128
    )

    config.optimizer.learning_rate = 1e-4
    config.optimizer.weight_decay = 0.01
    config.optimizer.schedule.warmup_fraction = 0.01
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
            predictions=None,
        )
    return config


# The weighted relation losses on held-out text: a task metric needs --finetune.
sweep_metrics = ("eval_relation:min",)


def sweep(add, arg=None):
    """MiniLMv2: the number of relation heads, then the teacher layer below the last.

    The default run (R = 4 at runlocal, 12 at full size) distils the last
    layer, so it is the baseline of both comparisons. The held-out relation
    loss compares layers; across R the relations differ, so compare those
    runs after fine-tuning (`mbert-jax sweep --finetune`).
    """
    runlocal = "runlocal" in (arg or "")
    for heads in (2, 4, 8) if runlocal else (6, 12, 24, 48):
        add(name=f"relation_heads_{heads}", **{"distill.relation_heads": heads})
    for layer in (-2, -3):
        add(name=f"teacher_layer_{layer}", **{"distill.teacher_layer": layer})
