"""Pretrain the IB-BERT teacher with MLM + NSP: step 1 of the MobileBERT recipe.

Full size (TPU/GPU pod; paper settings: 24 layers, B = 512, inverted bottleneck
1024, batch 2048 x 512 tokens, LAMB, lr 1.5e-3 with warm-up, 500k steps), with
the corpus from `datasets` and FSDP over 16 devices per data-parallel group:

    mbert-jax train --config configs/pretrain_ibbert.py --workdir $BUCKET/ibbert \
        --config.data.source=hf --config.data.hf_disk_path=/data/wiki_books \
        --config.data.vocab_file=/data/uncased_L-24_H-1024_A-16/vocab.txt \
        --config.mesh.fsdp=16

CPU smoke run on the embedded corpus (about 2 minutes on 2 cores):

    mbert-jax train --config configs/pretrain_ibbert.py:runlocal --workdir runs/ibbert_local

Options (after the colon): `runlocal` (micro model, short run), `variant=NAME`
(another model of the zoo, e.g. bert_base), `data=default|synthetic`.
Expected (measured): at runlocal size, in 300 steps, the MLM loss falls from
about 7.4 (first log) to 6.1 held out, and the held-out MLM accuracy rises
from 0 to about 0.06 (frequent tokens; about 0.09 on the last training
batches); NSP accuracy stays near chance (0.55-0.6): 300 micro steps are too
few to learn it.
"""

from configs import common
from mbert_jax.train.config import base_config, model_block, parse_arg
from mbert_jax.train.inputs import pretraining_data_config


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, variant="ibbert_large", data="default")
    config = base_config("pretrain")
    config.model = model_block(arg.variant + ("_micro" if arg.runlocal else ""))

    config.data = pretraining_data_config(
        arg.data, global_batch_size=2048, max_seq_length=512, max_predictions_per_seq=80
    )

    config.optimizer.name = "lamb"
    config.optimizer.learning_rate = 1.5e-3
    config.optimizer.weight_decay = 0.01
    config.optimizer.schedule.warmup_steps = 10_000
    config.train.steps = 500_000
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.checkpoint_every = 5_000

    if arg.runlocal:
        common.runlocal(
            config,
            steps=300,
            learning_rate=2e-3,
            log_every=25,
            eval_every=100,
            eval_steps=5,
            checkpoint_every=100,
        )
        config.optimizer.name = "adamw"
        config.optimizer.schedule.warmup_steps = 30
    return config


sweep_metrics = ("eval_mlm_accuracy",)


def sweep(add):
    """Teacher learning rate."""
    for lr in (1e-3, 2e-3, 4e-3):
        add(**{"optimizer.learning_rate": lr})
