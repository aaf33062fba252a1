"""`mbert-jax quickstart`: the MobileBERT recipe end to end, at micro size, on this CPU.

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

import argparse
import json
import sys
import time
from pathlib import Path

import ml_collections

from mbert_jax.models import io
from mbert_jax.train.cli import load_config_module, setup_compilation_cache, setup_logging

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = ("teacher", "distilled", "scratch")


def _configs_dir() -> Path:
    if not (CONFIGS / "quickstart.py").is_file():
        raise SystemExit(
            f"the experiment configs are not at {CONFIGS}; run the quickstart from a clone "
            "of the repository installed with `pip install -e .`"
        )
    return CONFIGS


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    module, _ = load_config_module(str(_configs_dir() / f"{name}.py"))
    return ml_collections.ConfigDict(module.get_config(arg).to_dict())


def finished(run_dir: Path) -> bool:
    return io.is_model_dir(run_dir / "model") and (run_dir / "results.json").is_file()


def _pretraining_data(config, q, vocab_file: str = "") -> None:
    d = config.data
    d.global_batch_size = q.global_batch_size
    d.max_seq_length = q.max_seq_length
    d.max_predictions_per_seq = q.max_predictions_per_seq
    d.seed = q.seed
    if vocab_file:
        d.vocab_file = vocab_file


def _train(name: str, config, run_dir: Path) -> None:
    from mbert_jax.train.cli import run_config

    if finished(run_dir):
        print(f"== {name}: done ({run_dir}), skipped", flush=True)
        return
    print(f"== {name}: training in {run_dir}", flush=True)
    start = time.monotonic()
    config.lock()
    result = run_config(config, str(run_dir))
    if result.preempted:
        raise SystemExit("preempted; run the same command again to resume")
    print(f"== {name}: finished in {time.monotonic() - start:.0f}s", flush=True)


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
        if name not in results:
            results[name] = evaluate_pretraining(workdir / name / "model", data_cfg)
            path.write_text(json.dumps(results, indent=2) + "\n")
    return results


def run(workdir: Path, q) -> Path:
    """All phases; returns the report's path."""
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    teacher_dir = workdir / "teacher"
    _train("teacher pretraining (micro IB-BERT)", teacher_config(q), teacher_dir)
    distill = distill_config(q, teacher_dir)
    _train("progressive transfer + PD (micro MobileBERT)", distill, workdir / "distilled")
    layers = io.load_model(workdir / "distilled" / "model")[0].num_layers
    steps = student_steps(q, layers)
    scratch = scratch_config(q, teacher_dir, steps)
    _train(f"student from scratch ({steps} steps)", scratch, workdir / "scratch")
    for name in MODELS:
        _train(
            f"fine-tuning {name} on stdlib",
            finetune_config(q, workdir / name / "model"),
            workdir / f"finetune_{name}",
        )
    mlm = held_out_mlm(q, workdir, teacher_dir)
    from mbert_jax import quickstart_report as report_lib

    exports = report_lib.export_all(workdir, q)
    path = report_lib.write_report(workdir, q, mlm, exports)
    print(path.read_text())
    print(f"quickstart finished in {time.monotonic() - start:.0f}s; report: {path}")
    return path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="mbert-jax quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="where every phase writes (resumable)")
    p.add_argument(
        "--config", default="", help="quickstart options after configs/quickstart.py, e.g. 'tiny'"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a quickstart setting, e.g. --set teacher_steps=600",
    )
    args = p.parse_args(argv)
    setup_logging()
    setup_compilation_cache()
    q = load_config("quickstart", args.config or None)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in q:
            raise SystemExit(f"unknown quickstart setting {key!r}; settings: {sorted(q)}")
        q[key] = type(q[key])(value) if not isinstance(q[key], tuple) else tuple(value.split(","))
    run(Path(args.workdir), q)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
