"""TFLite export of a preset's fine-tuned classifiers, verified on their task's dev split.

`export_all` writes WORKDIR/export/<name>_<quantize>.tflite for every
(name, model directory, corpus task) and keeps each one's verification
(size, largest difference from JAX, agreement, dev accuracy of both, median
latency on one thread) in WORKDIR/export/exports.json; a file already there
is not exported again unless its model or settings changed (records.py).
`time_side_by_side` then times each task's files of
one mode round-robin, for latency ratios that background load does not skew.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mbert_jax.models import io
from mbert_jax.quickstart import records


def corpus_rows(task: str, split: str) -> list[tuple[str, str]]:
    """The (text, label) rows of a corpus task's split."""
    from mbert_jax.data.tasks import corpus as corpus_task

    return corpus_task.build_examples(task)[split]


def task_examples(model_dir: Path, task: str, seq_len: int, split: str, limit: int | None = None):
    """A corpus task's examples of `split`, tokenized with the model's vocabulary."""
    from mbert_jax.data.tasks import corpus as corpus_task
    from mbert_jax.export.data import tokenize

    rows = corpus_rows(task, split)[:limit]
    labels = corpus_task.get(task).task.labels
    ex = tokenize([(text,) for text, _ in rows], model_dir / io.VOCAB_FILE, seq_len)
    ex.labels["labels"] = np.array([labels.index(label) for _, label in rows], np.int32)
    return ex


def dev_accuracy(model_dir: Path, task: str, seq_len: int, batch: int = 64) -> tuple[float, int]:
    """(accuracy, rows) of a classifier model directory on a corpus task's whole dev split."""
    import jax

    from mbert_jax.models import Model

    ex = task_examples(model_dir, task, seq_len, "dev")
    config, heads, params = io.load_model(model_dir)
    model = Model(config, heads)
    logits = jax.jit(lambda p, i, m, t: model.apply({"params": p}, i, m, t).logits)
    n = len(ex)
    pad = -n % batch  # whole batches: one compilation
    arrays = [np.pad(a, ((0, pad), (0, 0))) for a in (ex.input_ids, ex.attention_mask)]
    types = np.pad(ex.token_type_ids, ((0, pad), (0, 0)))
    predictions = [
        np.asarray(
            logits(params, arrays[0][i : i + batch], arrays[1][i : i + batch], types[i : i + batch])
        ).argmax(-1)
        for i in range(0, n + pad, batch)
    ]
    correct = np.concatenate(predictions)[:n] == ex.labels["labels"]
    return float(correct.mean()), n


def export_all(
    workdir: Path, q, entries: list[tuple[str, Path, str]], seq_len_of=None
) -> dict[str, dict]:
    """Export each (name, model_dir, task) in each of `q.export_quantize`; their reports.

    `seq_len_of(task)` is the exported input length (default `q.export_seq_len`).
    """
    from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export

    out_dir = workdir / "export"
    out_dir.mkdir(exist_ok=True)
    summary_path = out_dir / "exports.json"
    done = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    on_change = records.check_on_change(q.get("on_change", "stop"))
    for name, model_dir, task in entries:
        seq_len = seq_len_of(task) if seq_len_of else q.export_seq_len
        for quantize in q.export_quantize:
            key = f"{name}/{quantize}"
            path = out_dir / f"{name}_{quantize}.tflite"
            made_from = records.record(
                {
                    "model": str(model_dir),
                    "task": task,
                    "quantize": quantize,
                    "seq_len": seq_len,
                    "num_calibration": q.num_calibration,
                    "dev_rows": q.get("export_dev_rows") or 0,
                },
                workdir,
            )
            if key in done and path.is_file():
                if "made_from" not in done[key]:
                    print(f"== {path.name}: its source was not recorded (an older mbert_jax)")
                    continue
                changes = records.differences(done[key]["made_from"], made_from)
                if not changes:
                    continue
                if on_change == "stop":
                    hint = "the file is exported again"
                    raise SystemExit(records.stale_message(str(path), changes, hint))
                print(f"== {path.name}: made with {records.summary(changes)}; exporting it again")
            print(f"== export {name} ({quantize}) -> {path}", flush=True)
            calibration = (
                task_examples(model_dir, task, seq_len, "train", q.num_calibration)
                if quantize == "int8"
                else None
            )
            report = export_tflite(
                load_for_export(model_dir),
                "classification",
                path,
                TFLiteOptions(quantize=quantize, seq_len=seq_len, threads=(1,)),
                calibration=calibration,
                verify_examples=task_examples(
                    model_dir, task, seq_len, "dev", q.get("export_dev_rows") or None
                ),
                verify_source=f"{task} dev split",
            )
            print("\n".join(report.lines()), flush=True)
            done[key] = {
                "path": str(path),
                "size_bytes": report.size_bytes,
                "max_abs_diff": report.max_abs_diff,
                "agreement": report.agreement,
                "accuracy_jax": report.metric_jax,
                "accuracy_tflite": report.metric_tflite,
                "latency_ms": report.latency_ms.get(1),
                "made_from": made_from,
            }
            summary_path.write_text(json.dumps(done, indent=2) + "\n")
    return done


def time_side_by_side(
    workdir: Path, q, entries: list[tuple[str, Path, str]], done: dict, seq_len_of
) -> dict[str, dict]:
    """Each task's files of each mode timed round-robin (`verify.round_robin_ms`: batch 1, one
    thread, `q.latency_runs` runs each): their medians become `latency_ms` in `done` and
    WORKDIR/export/exports.json, the export's own timing (one file after another, while
    other files were exported) is kept as `latency_ms_alone`. Run every time (seconds)."""
    from mbert_jax.export.verify import round_robin_ms

    runs = int(q.get("latency_runs", 60))
    groups: dict[tuple[str, str], list[str]] = {}
    for name, _, task in entries:
        for quantize in q.export_quantize:
            groups.setdefault((task, quantize), []).append(f"{name}/{quantize}")
    for (task, quantize), keys in groups.items():
        print(f"== latency of the {task} {quantize} files, side by side ({runs} runs)", flush=True)
        files = {key: Path(done[key]["path"]).read_bytes() for key in keys}
        times = round_robin_ms(files, seq_len_of(task), 1, runs)
        for key in keys:
            done[key].setdefault("latency_ms_alone", done[key]["latency_ms"])
            done[key]["latency_ms"] = float(np.median(times[key]))
            done[key]["latency_runs"] = runs
    path = workdir / "export" / "exports.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(done, indent=2) + "\n")
    tmp.replace(path)
    return done
