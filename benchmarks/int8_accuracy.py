"""Accuracy, size and latency of a fine-tuned classifier's TFLite files, float against int8.

    python benchmarks/int8_accuracy.py --model runs/real/teacher_stdlib/model \\
        --task stdlib --seq-len 64 --out benchmarks/results/int8_teacher.json \\
        --variant float:none --variant int8:int8

Each `--variant NAME:QUANTIZE[:JSON]` is one export (`JSON`: further
`TFLiteOptions` fields, e.g. `'{"int8_float_ops": []}'`), calibrated as the
real preset does (the first `--num-calibration` rows of the corpus task's
train split) and verified on the whole dev split: dev accuracy of the JAX
model and of the file with its standard error, argmax agreement, file size
and median batch-1 latency on one thread (`--latency-runs` runs after a
warm-up). Each finished variant is written to `--out` at once (a killed run
keeps them; a rerun skips them).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export
from mbert_jax.quickstart.exports import task_examples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a model directory")
    p.add_argument("--task", required=True, help="a corpus task (stdlib, wordorder)")
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--num-calibration", type=int, default=100)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--variant", action="append", required=True, help="NAME:QUANTIZE[:JSON]")
    p.add_argument("--out", required=True, help="results JSON (one entry per variant)")
    p.add_argument("--keep", help="directory to keep the .tflite files in")
    args = p.parse_args()

    model_dir = Path(args.model)
    out = Path(args.out)
    done = json.loads(out.read_text()) if out.is_file() else {}
    dev = task_examples(model_dir, args.task, args.seq_len, "dev")
    calibration = task_examples(model_dir, args.task, args.seq_len, "train", args.num_calibration)
    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="int8_accuracy_"))
    keep.mkdir(parents=True, exist_ok=True)
    for spec in args.variant:
        name, quantize, *extra = spec.split(":", 2)
        if name in done:
            print(f"{name}: already in {out}", flush=True)
            continue
        fields = json.loads(extra[0]) if extra else {}
        options = TFLiteOptions(
            quantize=quantize,
            seq_len=args.seq_len,
            threads=(1,),
            latency_runs=args.latency_runs,
            **fields,
        )
        print(f"== {name}: quantize={quantize} {fields}", flush=True)
        report = export_tflite(
            load_for_export(model_dir),
            "classification",
            keep / f"{name}.tflite",
            options,
            calibration=calibration if quantize == "int8" else None,
            verify_examples=dev,
            verify_source=f"{args.task} dev split",
        )
        print("\n".join(report.lines()), flush=True)
        n = report.num_examples
        acc = report.metric_tflite / 100.0
        done[name] = {
            "quantize": quantize,
            "options": fields,
            "dev_rows": n,
            "accuracy_jax": report.metric_jax / 100.0,
            "accuracy_tflite": acc,
            "stderr": math.sqrt(acc * (1 - acc) / n),
            "agreement": report.agreement,
            "size_bytes": report.size_bytes,
            "latency_ms_1thread": report.latency_ms.get(1),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
