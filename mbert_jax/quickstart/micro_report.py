"""The micro preset's last phases: TFLite export of the fine-tuned models, report.md and plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mbert_jax.models import io
from mbert_jax.models.summary import param_counts
from mbert_jax.quickstart import exports
from mbert_jax.train.logs import read_metrics

MODELS = ("teacher", "distilled", "scratch")
LABELS = {
    "teacher": "teacher (IB-BERT)",
    "distilled": "distilled student",
    "scratch": "scratch student",
}


def export_all(workdir: Path, q) -> dict[str, dict[str, dict]]:
    """Export every fine-tuned model in each of `q.export_quantize`; returns their reports."""
    entries = [(name, workdir / f"finetune_{name}" / "model", "stdlib") for name in MODELS]
    return exports.export_all(workdir, q, entries)


def _results(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def plot_losses(workdir: Path) -> tuple[Path, Path]:
    """losses.png (every stage's objective) and layer_losses.png (per-layer transfer losses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, name in zip(axes, MODELS):
        rows = read_metrics(workdir / name, "train")
        series = {
            stage: [(r["step"], r["objective"]) for r in rows if r["stage"] == stage]
            for stage in dict.fromkeys(r["stage"] for r in rows)
        }
        _log_plot(ax, series, LABELS[name], ylabel="stage objective")
    losses_png = _save(fig, workdir / "losses.png")

    rows = read_metrics(workdir / "distilled", "train")
    terms = sorted(
        {k for r in rows for k in r if re.fullmatch(r"(fmt|at)_layer_\d+", k)},
        key=lambda k: (k.split("_")[0], int(k.rsplit("_", 1)[1])),
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, kind, title in zip(axes, ("fmt", "at"), ("feature-map transfer", "attention transfer")):
        series = {
            term.replace(f"{kind}_", ""): [(r["step"], r[term]) for r in rows if term in r]
            for term in terms
            if term.startswith(kind + "_")
        }
        _log_plot(ax, series, f"{title} per layer (distilled student)")
    layers_png = _save(fig, workdir / "layer_losses.png")
    return losses_png, layers_png


def _log_plot(ax, series: dict[str, list[tuple]], title: str, ylabel: str = "") -> None:
    """One line per (label -> [(step, value)]), log scale; short series get point markers."""
    for label, pts in series.items():
        ax.plot(*zip(*pts), label=label, marker="." if len(pts) < 20 else None)
    ax.set_title(title)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend(fontsize=7)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(workdir: Path, mlm: dict, exports: dict, quantize: tuple[str, ...]) -> str:
    head = [
        "model",
        "params (emb+blocks)",
        "params (all)",
        "held-out MLM acc",
        "perplexity",
        "stdlib acc (fine-tuned)",
    ]
    for qz in quantize:
        label = "float" if qz == "none" else qz
        head += [f"TFLite {label} MB", f"TFLite {label} ms", f"TFLite {label} acc"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in MODELS:
        config = io.load_model(workdir / name / "model")[0]
        counts = param_counts(config)
        task = _results(workdir / f"finetune_{name}").get("eval", {})
        row = [
            LABELS[name],
            f"{counts.backbone / 1e6:.3f}M",
            f"{counts.total / 1e6:.3f}M",
            f"{mlm[name]['mlm_accuracy']:.4f}",
            f"{mlm[name]['perplexity']:.1f}",
            f"{task.get('accuracy', float('nan')):.4f}",
        ]
        for qz in quantize:
            e = exports.get(f"{name}/{qz}", {})
            row += [
                f"{e.get('size_bytes', float('nan')) / 1e6:.3f}",
                f"{e.get('latency_ms') or float('nan'):.2f}",
                f"{(e.get('accuracy_tflite') or float('nan')) / 100:.4f}",
            ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def write_report(workdir: Path, q, mlm: dict, exports: dict) -> Path:
    losses_png, layers_png = plot_losses(workdir)
    rows = table(workdir, mlm, exports, tuple(q.export_quantize))
    winner = mlm["distilled"]["mlm_accuracy"] > mlm["scratch"]["mlm_accuracy"]
    teacher_steps = q.teacher_steps
    layers = io.load_model(workdir / "distilled" / "model")[0].num_layers
    student_steps = layers * q.distill_stage_steps + q.pd_steps
    from mbert_jax.data.tasks import corpus as corpus_task

    split_sizes = {k: len(v) for k, v in corpus_task.build_examples().items()}
    n_dev, n_train = split_sizes["dev"], split_sizes["train"]
    se = (0.25 / n_dev) ** 0.5
    text = f"""# mbert_jax quickstart report

The MobileBERT recipe at micro size on the embedded corpus (Python standard
library docstrings): a micro IB-BERT teacher pretrained for {teacher_steps} steps,
progressive knowledge transfer into a micro MobileBERT ({layers} layer stages of
{q.distill_stage_steps} steps) then {q.pd_steps} steps of pre-training distillation,
and the same student trained from scratch for the same {student_steps} steps.
Batches of {q.global_batch_size} x {q.max_seq_length} tokens. All three were then
fine-tuned for {q.finetune_steps} steps on the `stdlib` task (which of 6 standard-library
packages a passage documents; chance 1/6) and exported to TFLite.

{rows}

- Held-out MLM accuracy and perplexity: every masked position of the held-out
  documents (same batches and masks for the three models); perplexity is
  exp(mean cross-entropy).
- Parameters: embeddings + blocks (the MobileBERT paper's convention), and
  every parameter of the pretraining checkpoint (with the MLM and NSP heads).
- stdlib accuracy: the dev split ({n_dev} passages). Its standard error is at most
  {se:.3f}, so differences below ~{2 * se:.2f} between the
  three models are noise; at micro size, on {n_train} training passages, their
  order also changes with the fine-tuning learning rate and length.
- TFLite: the fine-tuned classifiers, batch 1 x {q.export_seq_len} tokens, median
  latency on 1 thread of this CPU (LiteRT interpreter); accuracy of the
  exported file on the stdlib dev split.
- Distilled student {"beats" if winner else "does NOT beat"} the scratch student on
  held-out MLM accuracy ({mlm["distilled"]["mlm_accuracy"]:.4f} vs
  {mlm["scratch"]["mlm_accuracy"]:.4f}).

![loss of every stage]({losses_png.name})

![per-layer transfer losses]({layers_png.name})
"""
    path = workdir / "report.md"
    path.write_text(text)
    return path
