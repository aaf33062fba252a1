"""The micro preset: the MobileBERT recipe end to end, at micro size, on this CPU.

Phases (each in its own sub-directory of the workdir, each resumable):

    teacher            pretrain a micro IB-BERT (MLM + NSP) on the embedded corpus
    distilled          progressive knowledge transfer into a micro MobileBERT, then PD
    scratch            the same student from scratch, same number of student steps
    finetune_<model>   each of the three on the `stdlib` task (6-way classification)
    eval.json          held-out MLM accuracy and perplexity of the three
    export/            the fine-tuned models as TFLite (float, int8), verified
    report.md          the table, and plots of every stage's loss and the layer losses

The phase settings are `configs/quickstart.py` (`:tiny` for the test); the
phases themselves run the same configs a user would (`configs/pretrain_ibbert.py`,
`configs/mobilebert_pkt.py`, `configs/finetune.py`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mbert_jax.models import io
from mbert_jax.quickstart import records
from mbert_jax.quickstart.phases import load_config, train

MODELS = ("teacher", "distilled", "scratch")


def _pretraining_data(config, q, vocab_file: str = "") -> None:
    d = config.data
    d.global_batch_size = q.global_batch_size
    d.max_seq_length = q.max_seq_length
    d.max_predictions_per_seq = q.max_predictions_per_seq
    d.seed = q.seed
    if vocab_file:
        d.vocab_file = vocab_file


def teacher_config(q):
    c = load_config("pretrain_ibbert", "runlocal")
    _pretraining_data(c, q)
    c.train.steps = q.teacher_steps
    c.train.log_every = q.log_every
    c.train.eval_every = q.teacher_steps
    c.train.checkpoint_every = max(q.teacher_steps // 4, 1)
    c.train.seed = q.seed
    c.optimizer.learning_rate = q.teacher_learning_rate
    return c


def distill_config(q, teacher_dir: Path):
    c = load_config("mobilebert_pkt", f"runlocal,teacher={teacher_dir / 'model'}")
    _pretraining_data(c, q, str(teacher_dir / "model" / io.VOCAB_FILE))
    c.distill.layer_steps = q.distill_stage_steps
    c.distill.pd_steps = q.pd_steps
    c.distill.pd_schedule.warmup_steps = max(q.pd_steps // 10, 1)
    c.optimizer.learning_rate = q.distill_learning_rate
    c.train.log_every = min(q.log_every, q.distill_stage_steps)
    c.train.eval_every = 0  # held-out evaluation once, at the end
    c.train.checkpoint_every = max(q.pd_steps // 2, 1)
    c.train.seed = q.seed
    return c


def student_steps(q, layers: int) -> int:
    return layers * q.distill_stage_steps + q.pd_steps


def scratch_config(q, teacher_dir: Path, steps: int):
    c = load_config("pretrain_ibbert", "runlocal,variant=mobilebert")
    _pretraining_data(c, q, str(teacher_dir / "model" / io.VOCAB_FILE))
    c.train.steps = steps
    c.train.log_every = q.log_every
    c.train.eval_every = steps
    c.train.checkpoint_every = max(steps // 4, 1)
    c.train.seed = q.seed
    c.optimizer.learning_rate = q.scratch_learning_rate
    return c


def finetune_config(q, model_dir: Path):
    c = load_config("finetune", "runlocal")
    c.init_from = str(model_dir)
    c.data.global_batch_size = q.finetune_batch_size
    c.data.max_seq_length = q.max_seq_length
    c.train.steps = q.finetune_steps
    c.train.log_every = q.log_every
    c.train.eval_every = q.finetune_steps
    c.train.checkpoint_every = q.finetune_steps
    c.train.seed = q.seed
    c.optimizer.learning_rate = q.finetune_learning_rate
    return c


def held_out_mlm(q, workdir: Path, teacher_dir: Path) -> dict[str, dict[str, float]]:
    """Held-out MLM accuracy / perplexity of the three pretrained models, on the same batches."""
    from mbert_jax.train.evaluate import evaluate_pretraining

    path = workdir / "eval.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    data_cfg = teacher_config(q).data
    data_cfg.vocab_file = str(teacher_dir / "model" / io.VOCAB_FILE)
    for name in MODELS:
        model = workdir / name / "model"
        made_from = records.record({"model": str(model), "data": data_cfg.to_dict()}, workdir)
        old = results.get(name)
        # evaluated again when its model or data changed (a legacy entry has no record)
        if old is None or records.differences(old.get("made_from", made_from), made_from):
            results[name] = {**evaluate_pretraining(model, data_cfg), "made_from": made_from}
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=2) + "\n")
            tmp.replace(path)
    return results


def run(workdir: Path, q) -> Path:
    """All phases; returns the report's path."""
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    teacher_dir = workdir / "teacher"
    train("teacher pretraining (micro IB-BERT)", teacher_config(q), teacher_dir, q.on_change)
    distill = distill_config(q, teacher_dir)
    train(
        "progressive transfer + PD (micro MobileBERT)", distill, workdir / "distilled", q.on_change
    )
    layers = io.load_model(workdir / "distilled" / "model")[0].num_layers
    steps = student_steps(q, layers)
    scratch = scratch_config(q, teacher_dir, steps)
    train(f"student from scratch ({steps} steps)", scratch, workdir / "scratch", q.on_change)
    for name in MODELS:
        train(
            f"fine-tuning {name} on stdlib",
            finetune_config(q, workdir / name / "model"),
            workdir / f"finetune_{name}",
            q.on_change,
        )
    mlm = held_out_mlm(q, workdir, teacher_dir)
    from mbert_jax.quickstart import micro_report as report_lib

    exports = report_lib.export_all(workdir, q)
    path = report_lib.write_report(workdir, q, mlm, exports)
    print(path.read_text())
    print(f"quickstart finished in {time.monotonic() - start:.0f}s; report: {path}")
    return path
