"""Evaluate a model directory: held-out MLM accuracy / perplexity, or a task's dev metrics.

    mbert-jax train --config configs/evaluate.py --workdir runs/eval_student \
        --config.init_from=runs/mobilebert_pkt_local/model

    mbert-jax train --config configs/evaluate.py:task=stdlib --workdir runs/eval_task \
        --config.init_from=runs/bert_stdlib/model

Options: `task=NAME` (a GLUE task, squad_v1/v2, stdlib or wordorder; default: pretraining
data, the embedded corpus with the model's vocab.txt). Writes
WORKDIR/results.json; takes seconds at micro size.
"""

from mbert_jax.data import config as data_config
from mbert_jax.train.config import base_config, model_block, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, task="")
    config = base_config("evaluate")
    config.init_from = ""
    config.model = model_block("bert_base")  # unused: the model directory has its config
    config.train.eval_steps = 0  # the whole held-out split
    if arg.task:
        config.data = data_config.task_data_defaults(arg.task)
        config.data.global_batch_size = 32
    else:
        config.data = data_config.pretraining_data_defaults()
        config.data.global_batch_size = 32
        config.data.max_seq_length = 64
        config.data.max_predictions_per_seq = 10
    return config
