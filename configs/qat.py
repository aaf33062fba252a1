"""Quantization-aware training of a fine-tuned model: fake-quant int8 dense layers, tracked ranges.

From a fine-tuned model directory (`config.init_from`, WORKDIR/model of
configs/finetune.py), the same model with `ModelConfig.fake_quant` on: every
dense layer's input is fake-quantized to 8 bits over a range tracked by a
moving average (decay `qat.decay`, MobileBERT's 0.999), its kernel
symmetrically per output channel, as the int8 TFLite file quantizes them.
The ranges start from the observed ranges of `qat.calibration_batches`
training batches. Training distils the float model's predictions
(`qat.kd_weight`) and, optionally, the labels (`qat.ce_weight`);
WORKDIR/model is the QAT model, ranges included (mbert_jax/quant/recipe.py).

Full size (a BERT-base fine-tuned on SST-2):

    mbert-jax train --config configs/qat.py:task=sst2 --workdir $BUCKET/bert_sst2_qat \
        --config.init_from=$BUCKET/bert_sst2/model --config.data.data_dir=/data/glue/SST-2

CPU smoke run on the embedded `stdlib` task, after the fine-tuning run of
configs/finetune.py:runlocal (runs/bert_stdlib):

    mbert-jax train --config configs/qat.py:runlocal --workdir runs/bert_stdlib_qat \
        --config.init_from=runs/bert_stdlib/model

`--config.train.steps=0` evaluates the fake-quantized model with its
calibrated ranges, before any training.

Measured at runlocal size (the micro BERT of finetune.py:runlocal, 6 blocks,
fine-tuned 300 steps, weak: chance is 0.167; 372 dev rows, one seed, CPU):
76 ranges (each dense layer's input and output) calibrated on 4 batches;
dev accuracy 0.328 float, 0.331 calibrated before training (agreement with
the float model's predictions 0.979), 0.320 after the 100 QAT steps
(agreement 0.936). The micro model has little to recover and its
near-uniform predictions flip easily: a smoke test of the chain. The real
teacher: BENCHMARKS.md, "Quantization-aware training of the real teacher".

Options: `runlocal`, `task=NAME`.

Sweep (`mbert-jax sweep`): the ranges' moving-average decay, 0.99 / 0.999.
"""

from configs import common
from mbert_jax.data import config as data_config
from mbert_jax.train.config import base_config, parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, task="")
    task = arg.task or ("stdlib" if arg.runlocal else "sst2")
    config = base_config("qat")
    config.init_from = ""
    config.qat = dict(
        decay=0.999,  # moving average of the activation ranges (MobileBERT)
        calibration_batches=16,  # initial ranges: the mean observed over these batches
        kd_weight=1.0,  # the float model's predictions (the task kind's prediction loss)
        temperature=1.0,
        ce_weight=0.0,  # hard-label loss
    )
    config.data = data_config.task_data_defaults(task)
    config.data.global_batch_size = 32
    config.data.max_seq_length = 128

    config.optimizer.learning_rate = 1e-5
    config.optimizer.schedule.warmup_fraction = 0.1
    config.train.steps = 2_000
    config.train.log_every = 50
    config.train.eval_every = 1_000
    config.train.eval_steps = 0  # the whole dev split
    config.train.checkpoint_every = 1_000

    if arg.runlocal:
        common.runlocal(
            config,
            steps=100,
            learning_rate=5e-5,
            log_every=25,
            eval_every=100,
            checkpoint_every=100,
        )
        config.qat.calibration_batches = 4
    return config


sweep_metrics = ("eval_accuracy",)


def sweep(add):
    """The ranges' moving-average decay."""
    for decay in (0.99, 0.999):
        add(name=f"decay_{decay}", **{"qat.decay": decay})
