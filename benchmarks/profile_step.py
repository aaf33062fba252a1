"""Where the time of one training step goes, by XLA op, on this CPU.

Builds the same MLM + NSP step as `train_throughput.py`, runs it under
`jax.profiler` with XLA:CPU's per-thunk trace events
(`--xla_cpu_enable_xprof_traceme`, set here) and joins every event with its
HLO instruction, so each op is attributed to the forward pass, the backward
pass (`transpose(jvp(...))` in its op name) or the optimizer update, and
to matmuls (XLA dots and library fusions) or the rest.

    python benchmarks/profile_step.py --model mobilebert --batch 8 --seq 128

Thunks can run concurrently, so the sum of their times may exceed the step's
wall time; the split is what to look at.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"
).strip()

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
from train_throughput import ours_pretraining_step

from mbert_jax import host_memory

RUNTIME = ("ThunkExecutor", "$", "Pjit", "Slinky", "Common", "Parse", "Allocate")


def hlo_ops(text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (result shape, op_name metadata)} of a compiled module."""
    ops = {}
    for line in text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"", line)
        if m:
            ops[m.group(1)] = (m.group(2), m.group(3))
    return ops


def phase(op_name: str) -> str:
    if "transpose(jvp(" in op_name:
        return "backward"
    return "forward" if "jvp(" in op_name else "optimizer/other"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilebert")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"))
    args = p.parse_args()

    host_memory.keep_freed_memory(default=True)  # as train_throughput.py
    run, _ = ours_pretraining_step(
        args.model, args.batch, args.seq, args.predictions, args.precision
    )
    ops = hlo_ops(run.lower().compile().as_text())
    for _ in range(3):
        run()
    trace_dir = tempfile.mkdtemp(prefix="profile_step_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(args.steps):
        run()
    jax.profiler.stop_trace()
    path = sorted(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events

    split, top = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith(RUNTIME) or name not in ops:
            continue
        ms = e.get("dur", 0) / 1000 / args.steps
        shape, op_name = ops[name]
        kind = "matmul" if name.startswith(("dot", "ynn_fusion", "xnn_fusion")) else "other ops"
        split[(phase(op_name), kind)] += ms
        where = re.sub(r"layers_\d+", "layers_N", re.sub(r"ffn_\d+", "ffn_i", op_name))
        where = where.removeprefix("jit(step)/")
        top[(phase(op_name), re.sub(r"\.\d+$", "", name), shape, where[-90:])] += ms

    total = sum(split.values())
    print(f"{args.model}, batch {args.batch} x {args.seq}: thunk time per step {total:.0f} ms")
    print("\n| phase | ops | ms / step | share |\n|---|---|---|---|")
    for (ph, kind), ms in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"| {ph} | {kind} | {ms:.1f} | {100 * ms / total:.1f}% |")
    print(f"\nTop {args.top} non-matmul ops (summed over layers):\n")
    print("| ms / step | phase | XLA op | shape | source |\n|---|---|---|---|---|")
    rest = [(ms, k) for k, ms in top.items() if not k[1].startswith(("dot", "ynn", "xnn"))]
    for ms, (ph, op, shape, where) in sorted(rest, reverse=True)[: args.top]:
        print(f"| {ms:.1f} | {ph} | {op} | `{shape}` | {where} |")


if __name__ == "__main__":
    main()
