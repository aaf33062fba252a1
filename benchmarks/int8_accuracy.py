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

The latency printed by each export is taken right after it, so other work
on the machine moves it; `--rounds R` then times every variant's file (and
each `--time-also NAME=FILE`, e.g. a file exported by an older version)
round-robin, R rounds of `--latency-runs` runs each, so that background load
hits them alike, and records the median of all runs per file
(`latency_ms_round_robin`).
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
    p.add_argument("--rounds", type=int, default=0, help="round-robin timing rounds (0: none)")
    p.add_argument("--time-also", action="append", default=[], help="NAME=FILE to time too")
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
    if args.rounds > 0:
        files = {
            spec.split(":", 1)[0]: keep / f"{spec.split(':', 1)[0]}.tflite" for spec in args.variant
        }
        files.update(dict(item.split("=", 1) for item in args.time_also))
        for name, ms in round_robin(files, args.seq_len, args.rounds, args.latency_runs).items():
            done.setdefault(name, {"file": str(files[name])})["latency_ms_round_robin"] = ms
            print(f"{name}: median {ms:.2f} ms (round-robin, 1 thread)", flush=True)
        out.write_text(json.dumps(done, indent=2) + "\n")
    print(f"wrote {out}")


def round_robin(files: dict, seq_len: int, rounds: int, runs: int) -> dict[str, float]:
    """Median batch-1 latency (ms, 1 thread) of each file, timed in turns."""
    import time

    import numpy as np

    from mbert_jax.export.verify import interpreter

    runners = {}
    for name, path in files.items():
        runner = interpreter(Path(path).read_bytes(), 1).get_signature_runner()
        names = list(runner.get_input_details())
        feed = {k: np.ones((1, seq_len), np.int32) for k in names}
        runner(**feed)
        runners[name] = (runner, feed)
    times: dict[str, list[float]] = {name: [] for name in files}
    for r in range(rounds):
        for name, (runner, feed) in runners.items():
            for _ in range(runs):
                t = time.perf_counter()
                runner(**feed)
                times[name].append(time.perf_counter() - t)
        print(f"  timing round {r + 1}/{rounds}", flush=True)
    return {name: 1000.0 * float(np.median(v)) for name, v in times.items()}


if __name__ == "__main__":
    main()
