"""Settings the experiment configs share (as big_vision's `configs/proj/*/common.py`).

- `runlocal(config, ...)`: the one shrink behind every config's `runlocal`
  option: micro batches (16 x 64 tokens, 10 masked positions), a learning
  rate for few steps, and short logging / evaluation / checkpoint intervals.
- `mobilebert(strategy, arg)`: the MobileBERT distillation experiment behind
  `mobilebert_pkt.py`, `mobilebert_jkt.py` and `mobilebert_akt.py`, and
  `mobilebert_ablation(add)`, their sweep.

Config files import it as `from configs import common` (the `configs`
folder is a package of the repository, installed with `pip install -e .`).
"""

from __future__ import annotations

import ml_collections

from mbert_jax.distill.mobilebert.stages import default_distill_config
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.train.config import base_config, model_block, parse_arg
from mbert_jax.train.inputs import pretraining_data_config

RUNLOCAL_BATCH = 16
RUNLOCAL_SEQ_LEN = 64
RUNLOCAL_PREDICTIONS = 10


def runlocal(
    config: ml_collections.ConfigDict,
    *,
    learning_rate: float,
    log_every: int,
    eval_every: int,
    checkpoint_every: int,
    steps: int | None = None,
    eval_steps: int | None = None,
    predictions: int | None = RUNLOCAL_PREDICTIONS,
) -> ml_collections.ConfigDict:
    """Shrink a full-size config to a CPU smoke run, in place; returns it.

    Args:
      config: the experiment config (its `data` block a pretraining or task block).
      learning_rate: the peak rate for a few hundred micro steps.
      log_every, eval_every, checkpoint_every: the `config.train` intervals.
      steps: `config.train.steps` (None: leave it; staged recipes count per stage).
      eval_steps: held-out batches per evaluation (None: leave it).
      predictions: masked positions per pretraining row (None: leave it).
    """
    d = config.data
    d.global_batch_size = RUNLOCAL_BATCH
    d.max_seq_length = RUNLOCAL_SEQ_LEN
    if predictions is not None and "max_predictions_per_seq" in d:
        d.max_predictions_per_seq = predictions
    if "augment" in config:
        config.augment.max_seq_length = RUNLOCAL_SEQ_LEN
    config.optimizer.learning_rate = learning_rate
    t = config.train
    if steps is not None:
        t.steps = steps
    if eval_steps is not None:
        t.eval_steps = eval_steps
    t.log_every, t.eval_every, t.checkpoint_every = log_every, eval_every, checkpoint_every
    return config


# ------------------------------------------------------------------- MobileBERT
MOBILEBERT_OPTIONS = """\
    runlocal         micro models (teacher ibbert_large_micro, student
                     mobilebert_micro), batch 16 x 64 tokens, 40 steps per
                     layer stage and 200 PD steps: a CPU smoke run
    student=NAME     mobilebert (default), tiny (= mobilebert_tiny), or any variant
    student=fit      a MobileBERT shaped after the teacher, for a teacher that is
                     not an IB-BERT (a stock BERT such as all-MiniLM-L6-v2):
                     config.student.fit=True, resolved when the recipe starts
                     (distill/mobilebert/fit.py `fit_student`; `mbert-jax describe
                     --config FILE:student=fit,teacher=PATH` prints it); the
                     random teacher of an empty path is then a bert_base
    teacher=PATH     the teacher's model directory (config.teacher.path): an
                     IB-BERT, or with student=fit any BERT; empty: a
                     random teacher (tests and smoke runs only; logs a warning).
                     `--config.teacher.dtype=bfloat16` holds and runs it in bf16
    data=default|synthetic   the embedded corpus (or --config.data.* for real
                     data), or random tokens (tests)
    lower=frozen|reduced|same   lower blocks during PKT (paper / official TF1 / TF2 port)
    official         the official TF1 code's choices: lower=reduced with the
                     trained block at 3x (lower blocks 0.3x) the base rate, mean
                     and variance transfer, attention cross-entropy value, and
                     layer losses averaged over padding too
    layers=N         N blocks in both models (0: the variants' depth); quick tests
"""


def mobilebert(strategy: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The MobileBERT distillation config of `strategy` ("pkt", "jkt", "akt").

    The full-size paper setting (24 stages x 10k steps + 500k PD steps,
    batch 2048 x 512 tokens, LAMB at 1.5e-3, gradient clipping at 1.0),
    shrunk by `runlocal`. Options after the colon: see `MOBILEBERT_OPTIONS`.
    """
    arg = parse_arg(
        arg,
        runlocal=False,
        student="mobilebert",
        teacher="",
        data="default",
        lower="frozen",
        official=False,
        layers=0,
    )
    suffix = "_micro" if arg.runlocal else ""
    fit = arg.student == "fit"
    student = {"tiny": "mobilebert_tiny", "fit": "mobilebert"}.get(arg.student, arg.student)
    depth = {"num_layers": arg.layers} if arg.layers else {}
    config = base_config("distill_mobilebert")
    config.student = model_block(student + suffix, **depth)
    # True: the student takes the teacher's shape (fit.fit_student) when the recipe starts.
    config.student.fit = fit
    teacher = "bert_base" if fit else "ibbert_large"
    config.teacher = teacher_block(teacher + suffix, arg.teacher, **depth)

    d = config.distill = default_distill_config()
    d.strategy = strategy
    d.lower_layers = arg.lower
    if arg.official:
        d.lower_layers = "reduced"
        d.layer_lr_multiplier = 3.0
        d.lower_layer_lr_multiplier = 0.1
        d.mean_variance_transfer = True
        d.attention_form = "cross_entropy"
        d.official_padding = True

    config.data = pretraining_data_config(
        arg.data, global_batch_size=2048, max_seq_length=512, max_predictions_per_seq=80
    )

    config.optimizer.name = "lamb"
    config.optimizer.learning_rate = 1.5e-3
    config.optimizer.weight_decay = 0.01
    config.optimizer.clip_norm = 1.0
    config.train.log_every = 100
    config.train.eval_every = 10_000
    config.train.eval_steps = 20
    config.train.checkpoint_every = 5_000

    if arg.runlocal:
        runlocal(
            config,
            learning_rate=2e-3,
            log_every=10,
            eval_every=40,
            checkpoint_every=200,
            eval_steps=4,
        )
        config.optimizer.name = "adamw"
        # The micro student starts with near-zero queries and keys (NoNorm, std
        # 0.02 weights): their gradients are ~1e-8, and Adam's default eps of
        # 1e-6 would all but stop them, and with them attention transfer.
        config.optimizer.eps = 1e-10
        d.layer_steps = 40
        d.pd_steps = 200
        d.pd_schedule.warmup_steps = 20
    return config


def mobilebert_ablation(add) -> None:
    """The paper's comparison PKT vs JKT vs AKT, and PKT's lower-layer modes."""
    for strategy in ("pkt", "jkt", "akt"):
        add(name=strategy, **{"distill.strategy": strategy})
    for lower in ("reduced", "same"):
        add(name=f"pkt_{lower}", **{"distill.strategy": "pkt", "distill.lower_layers": lower})
