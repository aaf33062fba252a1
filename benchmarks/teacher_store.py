"""Task distillation from stored teacher outputs against the live teacher, build counted in.

The real preset's TinyBERT task phase (mbert_jax/quickstart/real.py
`task_distill_config`: configs/tinybert_task.py, no augmentation, the
preset's steps, batch, sequence length and padding) on `stdlib`, from the
fine-tuned teacher `--teacher` (the preset's teacher_stdlib/model), run
twice per repeat in fresh processes, alternating:

- live: `config.distill.teacher_store=""`: the teacher runs at every step;
- stored: `config.distill.teacher_store=DIR` (a fresh DIR): the teacher runs
  once over the 1,452 training rows, the steps read its outputs from DIR.

The student is the preset's TinyBERT start (`real.tinybert_init`: the fine-
tuned teacher's blocks 0, 2, 4, less the preset's `tinybert_neurons`), built
once in WORKDIR before the runs. Each figure is
the wall time of the whole `run_config` (set-up, compilation, the store's
build, every step of both stages, the final evaluation and model), and the
store's build alone (fingerprint + teacher pass + writing).

    python benchmarks/teacher_store.py --teacher /work/runs/real/teacher_stdlib/model \
        --workdir /tmp/teacher_store_bench --repeats 2

`--intermediate-steps` / `--prediction-steps` (default: the preset's TinyBERT
steps) shorten the phase; `--teacher` must be a `<run>/model` directory.
Results (with the command) go to benchmarks/results/teacher_store.md and .json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import time
from pathlib import Path


def student_start(teacher: str, root: Path) -> Path:
    """The preset's TinyBERT start from `teacher` (ROOT/tinybert_init_stdlib/model)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs.quickstart import real_config
    from mbert_jax.quickstart import real

    root.mkdir(parents=True, exist_ok=True)
    link = root / "teacher_stdlib"
    if not link.exists():
        link.symlink_to(Path(teacher).resolve().parent)
    return real.tinybert_init(real_config(), "stdlib", root)


def one_run(teacher: str, workdir: str, store: str, inter: int, pred: int, queue) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs.quickstart import real_config
    from mbert_jax.quickstart import real
    from mbert_jax.train import teacher_store
    from mbert_jax.train.cli import run_config

    q = real_config()
    q.teacher = teacher
    q.intermediate_steps, q.prediction_steps.tinybert = inter, pred
    # from WORKDIR/.. : its teacher_stdlib link and the start `student_start` built there
    c = real.task_distill_config(q, "tinybert", "stdlib", Path(workdir).parent)
    c.teacher.path = teacher
    c.data.cache_dir = str(Path(workdir).parent / "cache")
    c.distill.teacher_store = store
    build = {"seconds": 0.0, "cpu": 0.0}
    original = teacher_store.open_or_build

    def timed(*a, **kw):
        t, cpu = time.perf_counter(), time.process_time()
        out = original(*a, **kw)
        build["seconds"], build["cpu"] = time.perf_counter() - t, time.process_time() - cpu
        return out

    teacher_store.open_or_build = timed
    t, cpu = time.perf_counter(), time.process_time()
    run_config(c, workdir)
    total, cpu = time.perf_counter() - t, time.process_time() - cpu
    results = json.loads((Path(workdir) / "results.json").read_text())
    logged = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    rates = {}
    for r in logged:
        if r.get("split") == "train" and r.get("steps_per_sec"):
            rates.setdefault(r["stage"], []).append(r["steps_per_sec"])
    queue.put(
        {
            "total_s": total,
            "cpu_s": cpu,
            "build_s": build["seconds"],
            "build_cpu_s": build["cpu"],
            "eval": results["eval"],
            "steps_per_sec": rates,
        }
    )


def measure(args, mode: str, repeat: int) -> dict:
    root = Path(args.workdir)
    workdir = root / f"{mode}_{repeat}"
    store = root / f"store_{repeat}"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(
        target=one_run,
        args=(
            args.teacher,
            str(workdir),
            str(store) if mode == "stored" else "",
            args.intermediate_steps,
            args.prediction_steps,
            queue,
        ),
    )
    p.start()
    out = queue.get()
    p.join()
    size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) if store.exists() else 0
    out["store_mb"] = size / 2**20
    shutil.rmtree(store, ignore_errors=True)
    print(mode, repeat, json.dumps(out), flush=True)
    return out


def mean_se(xs):
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return m, se


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--intermediate-steps", type=int, default=None)
    ap.add_argument("--prediction-steps", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/teacher_store")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configs.quickstart import real_config

    q = real_config()
    if args.intermediate_steps is None:
        args.intermediate_steps = q.intermediate_steps
    if args.prediction_steps is None:
        args.prediction_steps = q.prediction_steps.tinybert
    student_start(args.teacher, Path(args.workdir))
    rows = {"live": [], "stored": []}
    for r in range(args.repeats):
        for mode in ("live", "stored") if r % 2 == 0 else ("stored", "live"):
            rows[mode].append(measure(args, mode, r))

    def stats(mode, key):
        return mean_se([x[key] for x in rows[mode]])

    def speedup(key):
        return mean_se([a[key] / b[key] for a, b in zip(rows["live"], rows["stored"])])

    def cell(m, d=1):
        return f"{m[0]:.{d}f}" if m[1] != m[1] else f"{m[0]:.{d}f} ± {m[1]:.{d}f}"

    def acc(mode):
        return ", ".join(f"{x['eval'].get('accuracy', float('nan')):.4f}" for x in rows[mode])

    cmd = "python " + " ".join(sys.argv)
    lines = [
        "# Task distillation: stored teacher outputs vs the live teacher",
        "",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')}, {args.repeats} repeats, "
        f"{args.intermediate_steps} + {args.prediction_steps} steps)",
        "",
        "| | wall, whole run (s) | CPU, whole run (s) | store build: wall / CPU (s) | "
        "speed-up: wall / CPU | dev accuracy |",
        "|---|---|---|---|---|---|",
        f"| live teacher | {cell(stats('live', 'total_s'))} | {cell(stats('live', 'cpu_s'))} "
        f"| - | 1 / 1 | {acc('live')} |",
        f"| stored outputs | {cell(stats('stored', 'total_s'))} | "
        f"{cell(stats('stored', 'cpu_s'))} | {cell(stats('stored', 'build_s'))} / "
        f"{cell(stats('stored', 'build_cpu_s'))} | {cell(speedup('total_s'), 2)}"
        f" / {cell(speedup('cpu_s'), 2)} | {acc('stored')} |",
        "",
        f"Store size: {rows['stored'][0]['store_mb']:.0f} MiB.",
    ]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
