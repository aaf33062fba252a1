"""DistilBERT: a 6-layer student distilled from a pre-trained BERT-base.

Loss 5 * T^2 * KL(teacher || student, T = 2) + 2 * MLM + 1 * cosine(last
hidden states), dynamic masking (15%, 80/10/10), no NSP, sequences packed.
The student (no token types, no pooler) starts from the teacher's
embeddings, MLM head and layers 0, 2, 4, 7, 9, 11 (for the micro teacher
of 6 layers: 0, 2, 5). Defaults are the official code's where the paper is
silent (KL over every real token); see mbert_jax/distill/distilbert.py.

Full size (pod; paper: 8 x V100 for about 90 hours on Toronto Books +
Wikipedia, batches of up to 4K examples by gradient accumulation, lr 5e-4;
here 4,096 sequences of 512 tokens per step):

    mbert-jax train --config configs/distilbert.py --workdir $BUCKET/distilbert \
        --config.teacher.path=$BUCKET/bert_base/model \
        --config.data.source=hf --config.data.hf_disk_path=/data/wiki_books \
        --config.mesh.fsdp=8

CPU smoke run (micro models, random teacher unless `--config.teacher.path`
names a pretrained one with an MLM head), about a minute:

    mbert-jax train --config configs/distilbert.py:runlocal --workdir runs/distilbert_local

`--config.teacher.dtype=bfloat16` holds and runs the frozen teacher in bf16
(mbert_jax/distill/teacher.py).
Options: `runlocal`, `data=default|synthetic`, `kl=all|masked`.
Expected: the KL and cosine terms fall within the first 100 steps (the
student starts close to the teacher); paper: GLUE dev 77.0 vs BERT-base 79.5.

Sweep (`mbert-jax sweep`): without each term of the triple loss, and random
initialization. With `--seeds 3 --finetune configs/finetune.py:runlocal` at
runlocal size, dropping the MLM term and random initialization cost the
most; dropping KL or cosine is within noise (BENCHMARKS.md, "Ablation sweeps
at micro scale").
"""

from configs import common
from mbert_jax.distill.distilbert import BERT_BASE_LAYERS
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.losses import (
    DISTILBERT_COSINE_WEIGHT,
    DISTILBERT_KL_WEIGHT,
    DISTILBERT_MLM_WEIGHT,
    DISTILBERT_TEMPERATURE,
)
from mbert_jax.train.config import base_config, model_block, parse_arg
from mbert_jax.train.inputs import pretraining_data_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, data="default", kl="all")
    micro = "_micro" if arg.runlocal else ""
    config = base_config("distill_distilbert")
    config.teacher = teacher_block("bert_base" + micro)
    config.student = model_block("distilbert6" + micro)
    config.distill = dict(
        init_layers=(0, 2, 5) if arg.runlocal else BERT_BASE_LAYERS,
        fold_token_type=True,
        temperature=DISTILBERT_TEMPERATURE,
        kl_positions=arg.kl,
        loss_weights=dict(
            kl=DISTILBERT_KL_WEIGHT, mlm=DISTILBERT_MLM_WEIGHT, cosine=DISTILBERT_COSINE_WEIGHT
        ),
    )

    config.data = pretraining_data_config(
        arg.data, nsp=False, global_batch_size=4096, max_seq_length=512, max_predictions_per_seq=80
    )
    if arg.data == "default":
        config.data.packing = True  # synthetic batches are unpacked rows

    config.optimizer.learning_rate = 5e-4
    config.optimizer.eps = 1e-6
    config.optimizer.weight_decay = 0.0
    config.optimizer.clip_norm = 5.0
    config.optimizer.schedule.warmup_fraction = 0.05
    config.train.steps = 100_000
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
        )
    return config


sweep_metrics = ("eval_mlm_accuracy",)  # the student's held-out masked-token accuracy


def sweep(add):
    """The paper's ablation (Table 4): without each term of the triple loss."""
    add(name="triple_loss")
    for term in ("kl", "mlm", "cosine"):
        add(name=f"without_{term}", **{f"distill.loss_weights.{term}": 0.0})
    add(name="random_init", **{"distill.init_layers": ()})
