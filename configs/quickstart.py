"""The quickstart: the whole MobileBERT recipe at micro size on the embedded corpus.

    mbert-jax quickstart --workdir runs/quickstart

runs, on a 2-core CPU, offline, in about 15 minutes: teacher pretraining
(micro IB-BERT, MLM + NSP), progressive knowledge transfer into a micro
MobileBERT (one stage per layer) then pre-training distillation, the same
student from scratch for the same number of steps, fine-tuning of all three
on the `stdlib` task, TFLite export (float and int8) with verification, and
WORKDIR/report.md. Every phase resumes from its checkpoint when the command
is run again; finished phases are skipped.

Options: `--config tiny` (a few steps of everything: the end-to-end test).
Any field below can be changed: `--set distill_stage_steps=100`.
"""

import ml_collections

from mbert_jax.train.config import parse_arg


def get_config(arg=None):
    arg = parse_arg(arg, tiny=False, real=False)
    if arg.real:
        return real_config(arg.tiny)
    c = ml_collections.ConfigDict()
    c.preset = "micro"
    c.seed = 0
    # Pretraining data shared by every phase (the embedded corpus, its learned vocabulary).
    c.global_batch_size = 32
    c.max_seq_length = 64
    c.max_predictions_per_seq = 10
    c.teacher_steps = 1200
    c.teacher_learning_rate = 2e-3
    c.distill_stage_steps = 100  # per layer stage of progressive transfer (4 layers)
    c.pd_steps = 400  # pre-training distillation
    c.distill_learning_rate = 2e-3
    c.scratch_learning_rate = 2e-3
    c.finetune_steps = 300
    c.finetune_learning_rate = 3e-3
    c.finetune_batch_size = 32
    c.export_quantize = ("none", "int8")
    c.export_seq_len = 64
    c.num_calibration = 100
    c.log_every = 50
    c.on_change = "stop"  # a phase made with other settings: "stop" or "redo" (records.py)
    if arg.tiny:
        # The teacher must learn more than token frequencies (held-out MLM
        # accuracy ~0.1), or there is nothing to distill: 400 steps at batch 32.
        c.teacher_steps = 400
        c.distill_stage_steps = 25
        c.pd_steps = 100
        c.finetune_steps = 30
        c.finetune_batch_size = 16
        c.num_calibration = 8
        c.log_every = 10
    return c


def real_config(tiny: bool = False):
    """The real preset (mbert_jax/quickstart/real.py): a real teacher, two tasks, two students."""
    c = ml_collections.ConfigDict()
    c.preset = "real"
    c.seed = 0
    c.teacher = ""  # a transformers or model directory; empty: all-MiniLM-L6-v2 (PyPI package)
    c.tasks = ("stdlib", "wordorder")
    c.task_seq_len = ml_collections.ConfigDict({"stdlib": 64, "wordorder": 48})
    c.batch_size = 32
    # Task batches padded to their longest row (a multiple of this), rows grouped by
    # length in windows of this many batches: median lengths are 22 (stdlib) and 19
    # (wordorder) tokens, so most batches need half the width or less (docs/data.md).
    c.pad_to_multiple = 16
    c.group_by_length = 8
    # float32: on this project's 2-core AVX2 CPU bf16 matmuls run at ~0.6x the f32 rate
    # (BENCHMARKS.md); "bfloat16" on CPUs with AVX512-BF16 / AMX and on accelerators.
    c.matmul_dtype = ""
    # 1. the teacher fine-tuned on each task
    c.teacher_steps = ml_collections.ConfigDict({"stdlib": 180, "wordorder": 240})
    c.teacher_learning_rate = 1e-4
    # 2. students. MobileBERT: fitted to the teacher, progressive transfer on the embedded
    # corpus, then task distillation from the fine-tuned teacher.
    c.general_seq_len = 64
    c.general_learning_rate = 1e-3
    c.mobilebert_stage_steps = 30  # per layer stage of progressive transfer
    # TinyBERT: the fine-tuned teacher's blocks kept (every 2nd of 6), then task distillation.
    c.tinybert_layers = (0, 2, 4)
    # and this fraction of each kept block's FFN neurons removed first, the least important
    # on the task's training batches (configs/prune.py; BENCHMARKS.md: 0.25 gives 2.35x lower
    # latency than the teacher where the three whole blocks give 1.95x, side by side).
    c.tinybert_neurons = 0.25
    c.intermediate_steps = 60
    # TinyBERT: 600 prediction steps at 2e-4, not 180 at 1e-4: 0.764 against 0.714 on
    # wordorder, still rising (BENCHMARKS.md "Toward 95% and 2x on wordorder").
    c.prediction_steps = ml_collections.ConfigDict({"mobilebert": 180, "tinybert": 600})
    c.task_learning_rate = ml_collections.ConfigDict({"mobilebert": 1e-3, "tinybert": 2e-4})
    # Students' vocabularies pruned to the tokens of their task's training split
    # (mbert_jax/prune/vocabulary.py): the word table is most of a small student.
    c.prune_vocabulary = True
    # 3. scratch students: as many steps as their distilled twins, all on the task
    c.scratch_learning_rate = 1e-3
    # 5. export
    c.export_quantize = ("none", "int8")
    c.num_calibration = 100
    c.export_dev_rows = 0  # verify exported files on this many dev rows (0: all)
    c.latency_runs = 60  # timed runs of each file, a task's files round-robin
    c.log_every = 30
    # A rerun in the same workdir reuses a phase only if it was made with the same settings
    # and inputs; otherwise "stop" says what changed, "redo" moves the phase's directory
    # aside (<phase>.old-N) and runs it again, and then what uses it (quickstart/records.py).
    c.on_change = "stop"
    if tiny:
        c.tasks = ("wordorder",)
        c.teacher_steps.wordorder = 20
        c.mobilebert_stage_steps = 3
        c.intermediate_steps = 5
        c.prediction_steps.mobilebert = c.prediction_steps.tinybert = 10
        c.num_calibration = 8
        c.export_dev_rows = 200
        c.latency_runs = 5
        c.log_every = 5
    return c
