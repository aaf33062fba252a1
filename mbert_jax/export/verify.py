"""Verification of an exported file against the JAX model, printed after every export.

The exported file runs in `ai_edge_litert`'s `Interpreter` (with its default
XNNPACK delegate, as on a phone) one example at a time; the JAX model runs
through plain `Model.apply` (`graph.reference_outputs`), not the export
function, so a rewrite in the export graph is checked too. Reported:

- float32 / fp16: max |TFLite - JAX| over all outputs (float target <= 1e-4).
- every mode: agreement of predictions: argmax for classification, and for
  token_classification and mlm over the real tokens, start and end argmax
  both equal for qa, cosine similarity for embeddings.
- with labels: the task metric of JAX and of the file (accuracy; regression:
  Pearson correlation; token_classification: entity-level F1 over the
  labelled words when the label names are BIO / IOBES tags, else their
  accuracy; qa: exact span match of the argmax start/end) and the drop in
  points.
- file size, median latency at batch 1 on 1 and 4 threads.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from mbert_jax.export.data import Examples
from mbert_jax.export.graph import INPUT_NAMES


def interpreter(flatbuffer: bytes, num_threads: int = 1):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=flatbuffer, num_threads=num_threads)


def run_tflite(
    flatbuffer: bytes, examples: Examples, num_threads: int = 1
) -> dict[str, np.ndarray]:
    """Run every example at batch 1 (through `runner.Runner`, which checks the inputs);
    returns {output name: [n, ...]}."""
    from mbert_jax.export.runner import Runner

    return Runner(flatbuffer, num_threads)(**examples.inputs())


def latency_ms(flatbuffer: bytes, seq_len: int, num_threads: int, runs: int = 20) -> float:
    """Median wall time of one batch-1 inference (after one warm-up run)."""
    return float(np.median(round_robin_ms({0: flatbuffer}, seq_len, num_threads, runs)[0]))


def round_robin_ms(
    files: dict, seq_len: int, num_threads: int = 1, runs: int = 20
) -> dict[object, list[float]]:
    """{key: `runs` wall times in ms} of batch-1 inferences of several files, timed round-robin.

    After one warm-up run of each, the k-th timed run of every file comes before the
    (k+1)-th of any, so background load on a shared machine slows them alike: the
    ratio of two files' medians is then a fair comparison, which timing one file
    after another is not. `files`: {key: flatbuffer bytes}, all taking [1, seq_len].
    """
    calls = {}
    for key, flatbuffer in files.items():
        runner = interpreter(flatbuffer, num_threads).get_signature_runner()
        names = [k for k in INPUT_NAMES if k in runner.get_input_details()]
        inputs = {k: np.ones((1, seq_len), np.int32) for k in names}
        calls[key] = (runner, inputs)
    for runner, inputs in calls.values():
        runner(**inputs)
    times: dict[object, list[float]] = {key: [] for key in calls}
    for _ in range(runs):
        for key, (runner, inputs) in calls.items():
            t = time.perf_counter()
            runner(**inputs)
            times[key].append(1000.0 * (time.perf_counter() - t))
    return times


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.sum(a * b, axis=-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return num / np.maximum(den, 1e-12)


def agreement(task: str, ref: dict, got: dict, mask: np.ndarray) -> tuple[str, float]:
    """(what, value): how often the file's prediction equals the JAX model's."""
    if task == "classification" and ref["logits"].shape[-1] == 1:
        return "max |score difference|", float(np.max(np.abs(ref["logits"] - got["logits"])))
    if task == "classification":
        return "argmax agreement", float(
            np.mean(ref["logits"].argmax(-1) == got["logits"].argmax(-1))
        )
    if task == "token_classification":
        same = ref["logits"].argmax(-1) == got["logits"].argmax(-1)
        return "argmax agreement (real tokens)", float(same[mask > 0].mean())
    if task == "qa":
        same = (ref["start_logits"].argmax(-1) == got["start_logits"].argmax(-1)) & (
            ref["end_logits"].argmax(-1) == got["end_logits"].argmax(-1)
        )
        return "start+end argmax agreement", float(np.mean(same))
    if task == "mlm":
        same = ref["mlm_logits"].argmax(-1) == got["mlm_logits"].argmax(-1)
        return "argmax agreement (real tokens)", float(same[mask > 0].mean())
    return "mean cosine similarity", float(np.mean(_cosine(ref["embedding"], got["embedding"])))


def tagging_metric(logits: np.ndarray, labels: np.ndarray, label_names) -> tuple[str, float]:
    """Entity F1 (BIO / IOBES tags) or accuracy over the labelled positions, in points.

    `labels` [n, seq_len] holds each word's tag id at its first piece and -1
    elsewhere, so a sentence's words are its labelled positions in order.
    """
    from mbert_jax.data.tasks import metrics as data_metrics

    pred = logits.argmax(-1)
    if label_names and data_metrics.is_entity_scheme(label_names):
        at = [np.flatnonzero(row >= 0) for row in labels]
        gold = [[label_names[t] for t in labels[i, a]] for i, a in enumerate(at)]
        guess = [[label_names[t] for t in pred[i, a]] for i, a in enumerate(at)]
        return "entity F1", 100.0 * data_metrics.tagging_scores(gold, guess)["f1"]
    keep = labels >= 0
    return "tag accuracy", 100.0 * float(np.mean(pred[keep] == labels[keep]))


def metric(task: str, outputs: dict, labels: dict, label_names=None) -> tuple[str, float] | None:
    """The task metric (in points, 0-100) when the examples have labels, else None."""
    if task == "classification" and "labels" in labels and outputs["logits"].shape[-1] == 1:
        from mbert_jax.data.tasks.metrics import pearson

        return "Pearson r", 100.0 * pearson(outputs["logits"][:, 0], labels["labels"])
    if task == "classification" and "labels" in labels:
        return "accuracy", 100.0 * float(np.mean(outputs["logits"].argmax(-1) == labels["labels"]))
    if task == "token_classification" and "labels" in labels:
        return tagging_metric(outputs["logits"], labels["labels"], label_names)
    if task == "qa" and "start_positions" in labels and "end_positions" in labels:
        hit = (outputs["start_logits"].argmax(-1) == labels["start_positions"]) & (
            outputs["end_logits"].argmax(-1) == labels["end_positions"]
        )
        return "exact span match", 100.0 * float(np.mean(hit))
    return None


@dataclasses.dataclass
class Report:
    """What verification found; `lines()` is what the CLI prints."""

    path: str
    task: str
    quantize: str
    size_bytes: int
    num_examples: int
    source: str
    max_abs_diff: float
    agreement_name: str
    agreement: float
    metric_name: str | None = None
    metric_jax: float | None = None
    metric_tflite: float | None = None
    latency_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    ops: dict[str, int] = dataclasses.field(default_factory=dict)
    # What the export did beyond its mode (a QAT model's ranges), the layer report's summary.
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def metric_drop(self) -> float | None:
        if self.metric_jax is None:
            return None
        return self.metric_jax - self.metric_tflite

    def lines(self) -> list[str]:
        target = " (target <= 1e-4)" if self.quantize == "none" else ""
        out = [
            f"exported {self.path}: task={self.task} quantize={self.quantize} "
            f"size={self.size_bytes / 1e6:.2f} MB",
            f"  ops: {', '.join(f'{k} x{v}' for k, v in sorted(self.ops.items()))}",
            f"  verified on {self.num_examples} held-out examples ({self.source}):",
            f"    max |tflite - jax| = {self.max_abs_diff:.3g}{target}",
            f"    {self.agreement_name} = {self.agreement:.4f}",
        ]
        if self.metric_name is not None:
            jax_m, tfl_m = self.metric_jax, self.metric_tflite
            out.append(
                f"    {self.metric_name}: jax {jax_m:.2f}  tflite {tfl_m:.2f}"
                f"  drop {self.metric_drop:+.2f} points"
            )
        for threads, ms in sorted(self.latency_ms.items()):
            out.append(f"    median latency, batch 1, {threads} thread(s): {ms:.2f} ms")
        return out + [f"  {line}" for line in self.notes]


def verify(
    flatbuffer: bytes,
    *,
    path: str,
    task: str,
    quantize: str,
    reference: dict[str, np.ndarray],
    examples: Examples,
    source: str,
    threads: tuple[int, ...] = (1, 4),
    latency_runs: int = 20,
    ops: dict[str, int] | None = None,
    label_names: tuple[str, ...] | None = None,
) -> Report:
    """Compare the file with the JAX outputs `reference` on `examples`; time it.

    `label_names` (the model's) turn token_classification labels into tags for entity F1.
    """
    got = run_tflite(flatbuffer, examples)
    diff = max(float(np.max(np.abs(got[k] - reference[k]))) for k in reference)
    name, value = agreement(task, reference, got, examples.attention_mask)
    report = Report(
        path=path,
        task=task,
        quantize=quantize,
        size_bytes=len(flatbuffer),
        num_examples=len(examples),
        source=source,
        max_abs_diff=diff,
        agreement_name=name,
        agreement=value,
        ops=dict(ops or {}),
    )
    m_ref = metric(task, reference, examples.labels, label_names)
    m_got = metric(task, got, examples.labels, label_names)
    if m_ref is not None:
        report.metric_name, report.metric_jax = m_ref
        report.metric_tflite = m_got[1]
    for t in threads:
        report.latency_ms[t] = latency_ms(flatbuffer, examples.seq_len, t, latency_runs)
    return report
