"""Post-training int8 vs quantization-aware int8 of one fine-tuned classifier, on a corpus task.

    python benchmarks/qat_export.py --float runs/real/teacher_stdlib/model \
        --qat runs/teacher_stdlib_qat/model --task stdlib --seq-len 64 \
        --out benchmarks/results/qat_export.md

`--float` is the fine-tuned model, `--qat` the same model after `configs/qat.py`
(WORKDIR/model). Exported for classification at `--seq-len`, each file
verified on the task's whole dev split and timed at batch 1, 1 thread:

- float: the float model, `--quantize none`;
- PTQ int8: the float model, `--quantize int8`, calibrated by the converter
  on the first `--num-calibration` training rows;
- QAT int8: the QAT model, `--quantize int8`, its trained ranges written
  into the file (`mbert_jax/export/qat_ranges.py`);
- QAT JAX: the fake-quant model itself (what the QAT int8 file should compute).

Accuracy with its standard error over the dev rows (binomial), agreement of
each file's predictions with its JAX reference (the float model for the float
and PTQ files, the fake-quant model for the QAT file).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np

from mbert_jax.export import graph
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export, params_for_task
from mbert_jax.quickstart.exports import task_examples


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--float", dest="float_dir", required=True)
    ap.add_argument("--qat", required=True)
    ap.add_argument("--task", default="stdlib")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--num-calibration", type=int, default=100)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    float_dir, qat_dir = Path(a.float_dir), Path(a.qat)
    cal = task_examples(float_dir, a.task, a.seq_len, "train", a.num_calibration)
    dev = task_examples(float_dir, a.task, a.seq_len, "dev")
    n = len(dev)
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="qat_export_"))
    for name, model_dir, quantize in (
        ("float", float_dir, "none"),
        ("PTQ int8", float_dir, "int8"),
        ("QAT int8", qat_dir, "int8"),
    ):
        report = export_tflite(
            load_for_export(model_dir),
            "classification",
            tmp / f"{name.replace(' ', '_')}.tflite",
            TFLiteOptions(quantize=quantize, seq_len=a.seq_len, threads=(1,)),
            calibration=cal if quantize == "int8" else None,
            verify_examples=dev,
            verify_source=f"{a.task} dev split",
        )
        print("\n".join(report.lines()), flush=True)
        acc = report.metric_tflite / 100
        rows.append((name, acc, report.agreement, report.size_bytes / 1e6, report.latency_ms[1]))
        if name == "QAT int8":
            jax_acc = report.metric_jax / 100
    loaded = load_for_export(qat_dir)
    heads, params = params_for_task(loaded, "classification")
    qat = {k: loaded.qat_params[k] for k in params}
    logits = graph.reference_outputs(
        loaded.qat_config, heads, qat, "classification", dev.inputs(), "mean"
    )["logits"]
    assert abs(float(np.mean(logits.argmax(-1) == dev.labels["labels"])) - jax_acc) < 1e-9
    lines = [
        f"{a.task} dev split, {n} rows; sequence length {a.seq_len}; batch 1, 1 thread",
        "",
        "| model | dev accuracy | agreement with its JAX reference | size MB | median ms |",
        "|---|---|---|---|---|",
    ]
    for name, acc, agree, size, ms in rows:
        lines.append(
            f"| {name} | {acc:.4f} ± {stderr(acc, n):.4f} | {agree:.4f} | {size:.2f} | {ms:.2f} |"
        )
    lines.append(f"| QAT JAX (fake quant) | {jax_acc:.4f} ± {stderr(jax_acc, n):.4f} | — | — | — |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
