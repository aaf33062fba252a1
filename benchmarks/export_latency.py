"""Latency and size of exported students vs transformers' PyTorch model, on this CPU.

    python benchmarks/export_latency.py --out benchmarks/results/export_latency.md

For MobileBERT, MobileBERT-TINY and TinyBERT4 at full size (random weights:
latency and size do not depend on the values), the classification export at
sequence length 128, batch 1, in float32, fp16, dynamic-range int8 and full
int8 (attention core in float, the default), run by LiteRT's interpreter with
its default XNNPACK delegate; against transformers' `*ForSequenceClassification`
with the same weights (written by `models.hf.save_hf`) in eager PyTorch under
`torch.no_grad()`. Models with exact GELU (TinyBERT4) are also exported with
`builtin_gelu=False` (GELU as its erf polynomial, the exporter's lowering
before it used TFLite's GELU op), timed in the same round-robin, so the table
holds the before and after side by side. Median of `--runs` timed runs after
warm-up; the variants are timed round-robin so that background load hits
them alike. Latency is taken at every `--threads` count; counts above the
machine's cores oversubscribe it and are marked so.

Targets (issue 6): int8 >= 2x faster and >= 3.5x smaller than our float
export; our float export faster than PyTorch eager.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from mbert_jax.export.data import synthetic_examples
from mbert_jax.export.exporter import LoadedModel, TFLiteOptions, export_tflite
from mbert_jax.models import Model, param_shapes, variants

MODELS = ("mobilebert", "mobilebert_tiny", "tinybert4")
MODES = ("none", "fp16", "dynamic_int8", "int8")
# Re-exported with GELU as its erf polynomial (builtin_gelu=False), for models with exact GELU.
POLY = "/erf-poly"
POLY_MODES = ("none", "dynamic_int8", "int8")
LABELS = {"none": "tflite float32", "pytorch": "pytorch eager"}
FINDINGS = "## Findings"


def random_params(config, heads, seed=0):
    """Random weights drawn in numpy (norm scales near 1), without compiling an init."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        x = rng.standard_normal(leaf.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            return 1.0 + 0.1 * x
        return 0.02 * x

    return jax.tree_util.tree_map_with_path(draw, param_shapes(Model(config, heads=heads)))


def partitions(path: Path) -> int:
    """How many XNNPACK-delegated partitions the interpreter made (1: the whole graph)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in it._get_ops_details())


def float_ops(path: Path) -> dict[str, int]:
    """Ops of a quantized file that still compute in float32 (all their inputs float32)."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    model = fu.read_model(str(path))
    counts: dict[str, int] = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            types = {fu.type_to_name(sg.tensors[i].type) for i in op.inputs if i >= 0}
            if types == {"FLOAT32"}:
                name = fu.opcode_to_name(model, op.opcodeIndex)
                counts[name] = counts.get(name, 0) + 1
    return counts


def tflite_runner(path: Path, threads: int):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=threads).get_signature_runner()
    names = runner.get_input_details()
    return lambda inputs: runner(**{k: v for k, v in inputs.items() if k in names})


def torch_runner(hf_dir: Path, threads: int):
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    cls = transformers.AutoModelForSequenceClassification
    model = cls.from_pretrained(str(hf_dir)).eval()

    def run(inputs):
        torch.set_num_threads(threads)
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v).long() for k, v in inputs.items()})

    return run


def timed(runners: dict, inputs, runs: int) -> dict[str, float]:
    """Median ms of each runner, timed round-robin after two warm-up calls each."""
    for run in runners.values():
        run(inputs)
        run(inputs)
    times = {k: [] for k in runners}
    for _ in range(runs):
        for k, run in runners.items():
            t = time.perf_counter()
            run(inputs)
            times[k].append(time.perf_counter() - t)
    return {k: 1000.0 * float(np.median(v)) for k, v in times.items()}


def bench_model(name: str, work: Path, seq_len: int, runs: int, threads: tuple[int, ...]):
    from mbert_jax.models import hf

    config = variants.get(name)
    heads = ("classifier",)
    params = random_params(config, heads)
    loaded = LoadedModel(config, heads, params, source=name)
    calibration = synthetic_examples(config, seq_len, 100, seed=1)
    modes = [(m, True) for m in MODES]
    if config.hidden_act == "gelu":
        modes += [(m, False) for m in POLY_MODES]
    files, reports = {}, {}
    for mode, builtin_gelu in modes:
        key = mode if builtin_gelu else mode + POLY
        path = work / f"{name}_{key.replace('/', '_')}.tflite"
        t = time.time()
        options = TFLiteOptions(
            quantize=mode, seq_len=seq_len, num_verify=8, latency_runs=0, builtin_gelu=builtin_gelu
        )
        reports[key] = export_tflite(
            loaded, "classification", path, options,
            calibration=calibration if mode == "int8" else None,
        )  # fmt: skip
        files[key] = path
        print(f"  {name} {key}: exported in {time.time() - t:.0f}s", file=sys.stderr)
    hf_dir = hf.save_hf(work / f"{name}_hf", config, heads, params)
    inputs = {k: v[:1] for k, v in synthetic_examples(config, seq_len, 1, seed=2).inputs().items()}
    inputs["attention_mask"][:] = 1
    rows = {}
    for n in threads:
        runners = {k: tflite_runner(path, n) for k, path in files.items()}
        runners["pytorch"] = torch_runner(hf_dir, n)
        rows[n] = timed(runners, inputs, runs)
        print(f"  {name}: timed at {n} thread(s)", file=sys.stderr)
    sizes = {k: path.stat().st_size for k, path in files.items()}
    sizes["pytorch"] = (hf_dir / "model.safetensors").stat().st_size
    agreement = {k: r.agreement for k, r in reports.items()}
    info = {k: partitions(path) for k, path in files.items()}
    info["float_ops"] = {k: float_ops(files[k]) for k in files if k.startswith("int8")}
    return rows, sizes, agreement, info


def _label(key: str) -> str:
    mode, _, poly = key.partition("/")
    label = LABELS.get(mode, f"tflite {mode}")
    return f"{label}, erf-polynomial GELU (before)" if poly else label


def render(results, seq_len, runs, threads, command, cores, load) -> str:
    over = [t for t in threads if t > cores]
    lines = [
        "# Export latency and size (issue 6)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {_cpu_model()}, {cores} cores; "
        "shared with other jobs, so absolute times are noisy: variants are timed round-robin. "
        f"Load average (1 min) {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
        f"Classification export, sequence {seq_len}, batch 1, median of {runs} runs; "
        "TFLite = LiteRT interpreter + default XNNPACK delegate; "
        "PyTorch = transformers eager, torch.no_grad(), float32.",
    ]
    if over:
        lines.append(
            f"{', '.join(map(str, over))} thread(s) oversubscribe the {cores} cores (marked *): "
            "those columns show contention, not what the file does on a phone with that many "
            "cores."
        )
    mark = {t: f"{t} thr{'*' if t > cores else ''}" for t in threads}
    head = "| model | format | size MB | " + " | ".join(f"{mark[t]} ms" for t in threads)
    head += " | " + " | ".join(f"speed-up {mark[t]}" for t in threads)
    head += " | smaller | agreement | XNNPACK partitions |"
    lines += ["", head, "|" + "---|" * (6 + 2 * len(threads))]
    for name, (rows, sizes, agreement, info) in results.items():
        for key in rows[threads[0]]:
            # Ratios against the float32 file of the same GELU lowering.
            base = "none" + key[key.index("/") :] if "/" in key else "none"
            cells = [name, _label(key), f"{sizes[key] / 1e6:.1f}"]
            cells += [f"{rows[t][key]:.1f}" for t in threads]
            cells += [f"{rows[t][base] / rows[t][key]:.2f}x" for t in threads]
            cells.append(f"{sizes[base] / sizes[key]:.2f}x")
            cells.append(f"{agreement[key]:.3f}" if key in agreement else "")
            cells.append(str(info[key]) if key in info else "")
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ops left in float32 in the int8 files (count per op):", ""]
    for name, (_, _, _, info) in results.items():
        for key, counts in info["float_ops"].items():
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))
            lines.append(f"- {name} ({_label(key)}): {ops or 'none'}")
    lines += [
        "",
        "Speed-up and smaller: against the float32 file of the same GELU lowering (the "
        "erf-polynomial rows against the erf-polynomial float32 file).",
        "Agreement: argmax agreement of the file with the JAX model on 8 synthetic inputs.",
        "XNNPACK partitions: delegated subgraphs (the ops between them run on the "
        "builtin kernels; the SELECT_V2 of the attention mask is one per layer).",
    ]
    return "\n".join(lines) + "\n"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--threads", default="1,2,4", help="thread counts to time (default 1,2,4)")
    p.add_argument("--out", default="benchmarks/results/export_latency.md")
    args = p.parse_args(argv)
    threads = tuple(int(t) for t in args.threads.split(","))
    cores = len(os.sched_getaffinity(0))
    load_start = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models.split(","):
            results[name] = bench_model(name, Path(work), args.seq_len, args.runs, threads)
    command = "python benchmarks/export_latency.py " + " ".join(argv or sys.argv[1:])
    load = (load_start, os.getloadavg()[0])
    text = render(results, args.seq_len, args.runs, threads, command.strip(), cores, load)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # The hand-written findings below the generated part are kept.
    old = out.read_text() if out.is_file() else ""
    findings = old[old.find(FINDINGS) :] if FINDINGS in old else ""
    out.write_text(text + ("\n" + findings if findings else ""))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
