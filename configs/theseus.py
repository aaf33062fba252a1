"""BERT-of-Theseus: compress a fine-tuned 12-layer BERT into 6 layers by module replacing.

The predecessor (a fine-tuned model directory, e.g. WORKDIR/model of
configs/finetune.py) is cut into 6 modules of 2 layers; each batch replaces
each module by its 1-layer successor with probability p(t) = min(1,
0.0006 t + 0.3) (the paper's linear curriculum; `schedule=constant` gives a
constant p = 0.5 then 1). Only the successor layers train; embeddings,
pooler and classifier are the predecessor's, frozen. When p reaches 1 the
successor alone is fine-tuned. Successor layers start as copies of
predecessor layers 0..5 (official run_glue.py; see
mbert_jax/distill/theseus.py for the other choices).

Full size (paper: batch 32, lr 2e-5, sequence 128, on one GPU per task):

    mbert-jax train --config configs/theseus.py:task=mnli --workdir $BUCKET/theseus_mnli \
        --config.teacher.path=$BUCKET/bert_mnli/model --config.data.data_dir=/data/glue/MNLI

CPU smoke run on the embedded `stdlib` task with a micro predecessor (6
layers -> 3 modules of 2; random unless `--config.teacher.path` names a
fine-tuned one, e.g. runs/bert_stdlib/model from configs/finetune.py:runlocal),
about two minutes:

    mbert-jax train --config configs/theseus.py:runlocal --workdir runs/theseus_local

Any task kind fine-tuning has (`task=squad_v1`, or `task=custom` with
`config.data.task_kind` classification, regression or tagging): the
predecessor is the model fine-tuned on it, whose head the successor shares.

`--config.teacher.dtype=bfloat16` holds and runs the frozen teacher in bf16
(mbert_jax/distill/teacher.py).
Options: `runlocal`, `task=NAME`, `schedule=linear|constant`.
Expected: the successor's dev metric close to the predecessor's (paper: the
6-layer successor keeps more than 98% of BERT-base's GLUE score).

Sweep (`mbert-jax sweep`): the linear curriculum against constant rates. At
runlocal size with `--seeds 3`, all four are within noise of each other and
of the predecessor (BENCHMARKS.md, "Ablation sweeps at micro scale").
"""

from configs import common
from mbert_jax.data import config as data_config
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.train.config import base_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, task="", schedule="linear")
    task = arg.task or ("stdlib" if arg.runlocal else "mrpc")
    config = base_config("distill_theseus")
    config.teacher = teacher_block("bert_base" + ("_micro" if arg.runlocal else ""))
    config.theseus = dict(
        num_modules=3 if arg.runlocal else 6,
        init_layers="first",
        schedule=arg.schedule,
        k=0.0006,
        b=0.3,
        rate=0.5,  # the constant schedule's p
        replace_steps=0,  # linear: 0 = until p reaches 1; constant: required
        successor_steps=5_000,
        train_all_in_successor_stage=False,
        successor_overrides={},
    )
    if arg.schedule == "constant":
        config.theseus.replace_steps = 10_000
    config.data = data_config.task_data_defaults(task)
    config.data.global_batch_size = 32
    config.data.max_seq_length = 128

    config.optimizer.learning_rate = 2e-5
    config.optimizer.schedule.kind = "constant"
    config.optimizer.schedule.warmup_steps = 0
    config.optimizer.schedule.warmup_fraction = 0.0
    config.train.log_every = 50
    config.train.eval_every = 1_000
    config.train.eval_steps = 0
    config.train.checkpoint_every = 1_000

    if arg.runlocal:
        # Evaluated once, at the end.
        common.runlocal(
            config, learning_rate=5e-4, log_every=10, eval_every=10_000, checkpoint_every=50
        )
        config.theseus.k = 0.02  # p reaches 1 after 35 steps
        config.theseus.successor_steps = 30
        if arg.schedule == "constant":
            config.theseus.replace_steps = 35
    return config


sweep_metrics = ("eval_accuracy",)  # the successor's dev accuracy


def sweep(add, arg=None):
    """The paper's replacement-rate study: the linear curriculum vs constant rates.

    The constant runs replace for as many steps as `schedule=constant` gives
    (10,000; 35 at `runlocal`, where the linear curriculum ends after 35).
    """
    constant = get_config(f"{arg},schedule=constant" if arg else "schedule=constant")
    add(name="linear")
    for rate in (0.5, 0.7, 0.9):
        add(
            name=f"constant_{rate}",
            **{
                "theseus.schedule": "constant",
                "theseus.rate": rate,
                "theseus.replace_steps": constant.theseus.replace_steps,
            },
        )
