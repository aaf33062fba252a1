"""Pruned models against the unpruned one: dev accuracy, parameters, TFLite size and latency.

    python benchmarks/prune_latency.py --out benchmarks/results/prune_stdlib.md \
        unpruned=/work/runs/real/teacher_stdlib pruned_50=/work/runs/prune3/oneshot ...

Each `LABEL=WORKDIR` is a finished run (configs/prune.py, or the fine-tuning run
of the unpruned model, listed first: the reference): its dev accuracy is the
final evaluation in WORKDIR/results.json, its model WORKDIR/model. Every model
is exported to a float32 TFLite classification model (sequence `--seq-len`,
batch 1; the exporter's verification against the JAX model on synthetic
inputs) and run by LiteRT's interpreter (XNNPACK, `--threads`) on one input
without padding; the models are timed round-robin (so background load hits
them alike), `--runs` times after warm-up. The table gives the median and the
interquartile range of the latency, the speed-up of the medians against the
reference, the file size, and the accuracy with its binomial standard error
(sqrt(p (1 - p) / n) over the n dev examples). `--plot` writes accuracy
against TFLite size.

Targets (issue 16, 50% of heads and FFN neurons): accuracy >= 97% of the
unpruned model's, TFLite latency >= 1.6x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export
from mbert_jax.export.verify import round_robin_ms
from mbert_jax.models import io


def read_run(workdir: Path) -> dict:
    results = json.loads((workdir / "results.json").read_text())
    return results["eval"]


def dev_size(workdir: Path) -> int | None:
    """The dev split's example count, from the run's config (the task's loader)."""
    config = workdir / "config.json"
    if not config.is_file():
        return None
    import ml_collections

    from mbert_jax.distill.task_data import TaskSetup

    data = ml_collections.ConfigDict(json.loads(config.read_text())["data"])
    setup = TaskSetup(data, str(workdir / "model"))
    return int(sum(np.sum(b["valid"]) for b in setup.data.eval_iterator()))


def describe(config) -> str:
    heads = [config.heads_at(i) for i in range(config.num_layers)]
    widths = [config.intermediate_size_at(i) for i in range(config.num_layers)]
    h = str(heads[0]) if len(set(heads)) == 1 else "/".join(map(str, heads))
    w = str(widths[0]) if len(set(widths)) == 1 else "/".join(map(str, widths))
    return f"{config.num_layers} x ({h} heads, FFN {w})"


def render(rows, args, command, n_dev) -> str:
    ref = rows[0]
    lines = [
        "# Structured pruning on the real teacher: accuracy, size, TFLite latency (issue 16)",
        "",
        f"Command: `{command}`",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; CPU: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared with "
        f"other jobs; load average {os.getloadavg()[0]:.1f} at the start); float32 TFLite, "
        f"sequence {args.seq_len}, batch 1, {args.threads} thread(s), {args.runs} runs "
        "round-robin.",
        "",
        "| model | structure | parameters | dev accuracy (± s.e.) | of unpruned | TFLite MB "
        "| median ms (IQR) | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = r["accuracy"]
        se = np.sqrt(acc * (1 - acc) / n_dev) if n_dev else float("nan")
        t = np.asarray(r["times"])
        q1, med, q3 = np.percentile(t, [25, 50, 75])
        ref_med = np.median(ref["times"])
        share = r["params"] / ref["params"]
        lines.append(
            f"| {r['label']} | {r['structure']} | {r['params']:,} ({share:.0%})"
            f" | {acc:.4f} ± {se:.4f} | {acc / ref['accuracy']:.1%} | {r['size'] / 1e6:.1f} | "
            f"{med:.2f} ({q1:.2f}-{q3:.2f}) | {ref_med / med:.2f}x |"
        )
    lines += [
        "",
        f"Dev split: {n_dev} examples (one example = {100 / n_dev:.2f} points)." if n_dev else "",
        "",
    ]
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["size"] / 1e6 for r in rows], [r["accuracy"] for r in rows], "o")
    for r in rows:
        ax.annotate(r["label"], (r["size"] / 1e6, r["accuracy"]), fontsize=7)
    ax.axhline(0.97 * rows[0]["accuracy"], ls="--", lw=0.8, color="gray")
    ax.set_xlabel("float32 TFLite size (MB)")
    ax.set_ylabel("dev accuracy")
    ax.set_title("Pruned all-MiniLM-L6-v2 on stdlib")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs_", nargs="+", metavar="LABEL=WORKDIR", help="the reference first")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/prune_stdlib.md")
    p.add_argument("--plot", default="", help="a .png of accuracy against TFLite size")
    args = p.parse_args(argv)
    command = "python benchmarks/prune_latency.py " + " ".join(argv or sys.argv[1:])
    runs = []
    for spec in args.runs_:
        label, sep, workdir = spec.partition("=")
        if not sep:
            p.error(f"{spec!r}: LABEL=WORKDIR")
        runs.append((label, Path(workdir)))
    n_dev = dev_size(runs[0][1])
    rows, files = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, workdir in runs:
            loaded = load_for_export(workdir / "model")
            path = Path(tmp) / f"{label}.tflite"
            t = time.time()
            options = TFLiteOptions(seq_len=args.seq_len, num_verify=8, latency_runs=0)
            report = export_tflite(loaded, "classification", path, options)
            print(f"  {label}: exported in {time.time() - t:.0f}s ({report.agreement})", flush=True)
            files[label] = path
            params = int(sum(np.size(x) for x in io.flatten(loaded.params).values()))
            rows.append(
                {
                    "label": label,
                    "structure": describe(loaded.config),
                    "params": params,
                    "accuracy": float(read_run(workdir)["accuracy"]),
                    "size": path.stat().st_size,
                }
            )
        # The files timed in turns (export.verify.round_robin_ms), so load hits them alike.
        flatbuffers = {label: path.read_bytes() for label, path in files.items()}
        times = round_robin_ms(flatbuffers, args.seq_len, args.threads, args.runs)
    for r in rows:
        r["times"] = times[r["label"]]
    text = render(rows, args, command, n_dev)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    raw = out.with_suffix(".json")
    raw.write_text(json.dumps(rows, indent=1) + "\n")
    if args.plot:
        plot(rows, Path(args.plot))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
