"""The export API: load a trained model, export it for a task, verify the result.

    loaded = load_for_export(path)                 # a model directory
    report = export_tflite(loaded, "classification", "model.tflite",
                           TFLiteOptions(quantize="int8", seq_len=128),
                           calibration=examples, verify_examples=dev)
    print("\n".join(report.lines()))

Loading goes through `load_for_export` alone: it reads a model directory
(`mbert_jax.models.io`, which every training run writes to WORKDIR/model) or
a transformers directory (converted and cached, `mbert_jax.models.resolve`).
The trainer's orbax checkpoints become loadable by adding a branch there.

Heads: the file holds the encoder and the task's head only (the MLM head only
for the mlm task). A model directory without the task's head (e.g. a
pretraining checkpoint exported for qa) is refused, because the head would
have no trained weights; `init_missing_head=True` exports it with a freshly
initialized head (for latency and size measurements, or an on-device
fine-tuning start).

Metadata: every file records, in its flatbuffer `metadata` list, the task,
what its outputs mean (`kind`), the model's label names, the input and
output names, the valid range of each input (`input_ranges`: the graph
itself cannot refuse an id, see `runner`) and the sequence length
(`tflite.task_metadata` reads it).

Exact GELU becomes TFLite's builtin `GELU` op in every mode (see `graph`):
the graph is traced with the tanh form as a carrier, the converter fuses it,
and the fused ops are set exact. If the converter did not fuse every
activation (another TensorFlow version), the export is redone with the erf
polynomial, with a warning; `builtin_gelu=False` asks for the polynomial
(for runtimes older than TFLite 2.9, which lack the `GELU` op).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from pathlib import Path

import jax
import numpy as np

from mbert_jax.export import graph, qat_ranges, tflite, verify
from mbert_jax.export.data import Examples, check_examples, synthetic_examples
from mbert_jax.export.runner import input_ranges
from mbert_jax.export.tflite import ExportError
from mbert_jax.models import io, resolve
from mbert_jax.models.config import ModelConfig
from mbert_jax.models.model import Model, init_params
from mbert_jax.quant import fake_quant


@dataclasses.dataclass
class LoadedModel:
    config: ModelConfig
    heads: tuple[str, ...]
    params: dict
    vocab_file: Path | None = None
    source: str = ""
    # A quantization-aware model (`fake_quant=True`): `config` / `params` above are
    # its float graph, these the fake-quant model (ranges included).
    qat_config: ModelConfig | None = None
    qat_params: dict | None = None


def load_for_export(path: str | os.PathLike, what: str = "--checkpoint") -> LoadedModel:
    """Read the model to export from `path`.

    `path` is a model directory (model_config.json + params.safetensors
    (+ vocab.txt)) or a transformers directory, converted on the fly and
    cached (`models/resolve.py`). This is the one place that knows checkpoint
    formats: an orbax training checkpoint will be read here through the
    trainer's loader.

    The training numerics (`dtype`, `matmul_dtype`) are reset to float32: the
    file's precision is the exporter's `quantize` choice, not the training run's.
    A quantization-aware model (`fake_quant=True`) is read as its float graph
    with the trained weights (`config`, `params`) and the fake-quant model
    (`qat_config`, `qat_params`), whose ranges an int8 export writes into the
    file (`qat_ranges.py`).

    Args:
      path: the model.
      what: the flag or field that named it, for messages.

    Raises:
      ValueError: when `path` is neither a model nor a transformers directory.
    """
    directory = resolve.model_dir(path, what)
    config, heads, params = io.load_model(directory)
    config = config.replace(dtype="float32", matmul_dtype=None)
    qat_config, qat_params = None, None
    if config.fake_quant:
        qat_config, qat_params = config, params
        config, params = config.replace(fake_quant=False), fake_quant.without_ranges(params)
    return LoadedModel(
        config, tuple(heads), params, io.vocab_path(directory), str(path), qat_config, qat_params
    )


def params_for_task(
    loaded: LoadedModel, task: str, *, init_missing_head: bool = False, seed: int = 0
) -> tuple[tuple[str, ...], dict]:
    """(heads, params) holding the encoder and the task's head only.

    Raises:
      ExportError: the task's head is missing and `init_missing_head` is False.
    """
    if task not in graph.TASKS:
        raise ExportError(f"unknown task {task!r}; valid tasks: {', '.join(graph.TASKS)}")
    head = graph.TASK_HEAD[task]
    params = {"encoder": loaded.params["encoder"]}
    if head is None:
        return (), params
    if head in loaded.heads:
        params[head] = loaded.params[head]
        return (head,), params
    if not init_missing_head:
        raise ExportError(
            f"--task {task} needs a trained {head!r} head but {loaded.source or 'the model'} "
            f"has heads {list(loaded.heads)}; export a model fine-tuned for {task}, choose "
            f"a task it has a head for, or pass --init-missing-head to export the encoder "
            f"with an untrained (randomly initialized) {head!r} head"
        )
    fresh = init_params(Model(loaded.config, heads=(head,)), jax.random.key(seed))
    params[head] = jax.tree.map(np.asarray, fresh[head])
    return (head,), params


def quantization_friendly(config: ModelConfig) -> bool:
    """NoNorm and ReLU/relu6: a block has no statistics that int8 cannot hold."""
    return config.normalization == "no_norm" and config.hidden_act in ("relu", "relu6")


# LayerNorm models: every FFN's output projection (see `default_dynamic_layers`).
LAYER_NORM_DYNAMIC_LAYERS = (r"ffn_\d+/output$",)


def default_dynamic_layers(config: ModelConfig) -> tuple[str, ...]:
    """The dense layers that int8 mode makes dynamic-range int8 by default.

    In a LayerNorm BERT, the FFN output projections write the residual
    stream's outlier dimensions (measured on the fine-tuned all-MiniLM-L6-v2:
    their outputs' peak is 38-100x their RMS), so a static per-tensor int8
    output spends its steps on the outliers (a step of 0.35-0.92 against
    typical values near 1) and the LayerNorm after it, which scales the
    ordinary dimensions back up, carries that error into every block
    (BENCHMARKS.md, "int8 for LayerNorm models"). Dynamic-range int8 keeps
    their int8 weights and int8 arithmetic but gives a float output. NoNorm
    models keep every dense layer static int8.
    """
    return LAYER_NORM_DYNAMIC_LAYERS if config.normalization == "layer_norm" else ()


def _check_seq_len(config: ModelConfig, seq_len: int) -> None:
    if not 1 <= seq_len <= config.max_position_embeddings:
        raise ExportError(
            f"--seq-len {seq_len} must be in [1, {config.max_position_embeddings}] "
            "(the model's max_position_embeddings)"
        )


@dataclasses.dataclass(frozen=True)
class TFLiteOptions:
    """Settings of a TFLite export (`export_tflite`); the defaults are the CLI's."""

    quantize: str = "none"
    """none, fp16, dynamic_int8 or int8 (int8 needs `calibration` examples)."""

    seq_len: int = 128
    """The static input length."""

    num_verify: int = 32
    """How many unlabelled examples verification uses at most (labelled ones
    are all used; with no verification examples, this many synthetic inputs)."""

    pooling: str = "mean"
    """"mean" or "cls" for the embedding task."""

    init_missing_head: bool = False
    """Export with a fresh head when the model lacks the task's."""

    int8_attention: bool = False
    """In int8 mode, quantize the attention core too."""

    int8_elementwise: bool = False
    """In int8 mode, quantize the residual adds and NoNorm too (NoNorm/ReLU
    models only); with `int8_attention`, an integer-only graph. Costs accuracy
    (see `tflite`)."""

    builtin_gelu: bool = True
    """Compute exact GELU with TFLite's `GELU` op (exact erf form; one kernel
    instead of a ~40-op polynomial); False lowers it to elementwise ops that
    runtimes older than TFLite 2.9 can run."""

    threads: tuple[int, ...] = (1, 4)
    """Thread counts to time."""

    latency_runs: int = 20
    """Runs per timing (0: no timing)."""

    dynamic_layers: tuple[str, ...] | None = None
    """In int8 mode, regular expressions over the dense layers' module paths
    (e.g. 'ffn_\\d+/output$'): the layers they match are dynamic-range int8
    (int8 weights, input quantized at run time, float output) instead of
    static int8. None: the model's default (`default_dynamic_layers`)."""

    layer_report: str | None = None
    """In int8 mode, also write the per-layer quantization report
    (`layer_report`: the int8 file against its float graph on the calibration
    examples) to LAYER_REPORT.md, .csv and .png."""


def export_tflite(
    loaded: LoadedModel,
    task: str,
    out: str | os.PathLike,
    options: TFLiteOptions = TFLiteOptions(),
    *,
    calibration: Examples | None = None,
    verify_examples: Examples | None = None,
    verify_source: str = "held-out data",
) -> verify.Report:
    """Export `loaded` for `task` to a TFLite file at `out`, then verify it.

    Args:
      loaded: from `load_for_export`.
      task: classification, token_classification, qa, mlm or embedding.
      out: the .tflite path (written atomically; nothing is written on error).
      options: the export's settings (quantization, sequence length, ...).
      calibration: representative examples for int8 (all of them are used).
      verify_examples: held-out examples for verification (with labels, the
        task metric is reported); None: `options.num_verify` synthetic inputs.
      verify_source: what `verify_examples` are, for the report.

    Returns:
      The verification `Report`.

    Raises:
      ExportError: bad task / quantization / sequence length / calibration
        set, a missing head, or a graph that needs non-builtin ops.
    """
    quantize, seq_len, pooling = options.quantize, options.seq_len, options.pooling
    int8_attention, int8_elementwise = options.int8_attention, options.int8_elementwise
    num_verify = options.num_verify
    config = loaded.config
    if quantize not in tflite.QUANTIZATIONS:
        raise ExportError(
            f"unknown quantization {quantize!r}; valid modes: {', '.join(tflite.QUANTIZATIONS)}"
        )
    _check_seq_len(config, seq_len)
    if int8_elementwise and not quantization_friendly(config):
        raise ExportError(
            "--int8-elementwise needs a NoNorm/ReLU model (MobileBERT's quantization-friendly "
            f"choices); this one has normalization={config.normalization!r}, "
            f"hidden_act={config.hidden_act!r}, whose LayerNorm statistics int8 cannot hold: "
            "drop the flag"
        )
    if (int8_attention or int8_elementwise) and quantize != "int8":
        raise ExportError("--int8-attention / --int8-elementwise apply to --quantize int8 only")
    if int8_attention and config.attention_mask_value is None:
        raise ExportError(
            "--int8-attention needs a finite attention mask fill: this model gives masked keys "
            "float32's lowest value (attention_mask_value=None), which no int8 range of the "
            "scores can hold beside the real ones; export without --int8-attention, or use a "
            "model trained with attention_mask_value=-6.0 (MobileBERT's)"
        )
    if options.layer_report and quantize != "int8":
        raise ExportError(
            f"--report compares an int8 file with its float graph; add --quantize int8 "
            f"(this export is {quantize})"
        )
    heads, params = params_for_task(loaded, task, init_missing_head=options.init_missing_head)
    representative = None
    if quantize == "int8":
        if calibration is None:
            raise ExportError("--quantize int8 needs --calibration-data (a representative set)")
        check_examples(calibration, config, seq_len, "calibration")

        def representative():
            for i in range(len(calibration)):
                yield {k: v[i : i + 1] for k, v in calibration.inputs().items()}

    if verify_examples is not None:
        check_examples(verify_examples, config, seq_len, verify_source)

    table_q = None
    if quantize in ("dynamic_int8", "int8"):
        table_q = graph.quantize_rows(graph.word_table(params))

    dynamic_layers = options.dynamic_layers
    if dynamic_layers is None:
        dynamic_layers = default_dynamic_layers(config) if quantize == "int8" else ()
    elif quantize != "int8" and dynamic_layers:
        raise ExportError("--dynamic-layers applies to --quantize int8 only")
    for pattern in dynamic_layers:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ExportError(
                f"--dynamic-layers {pattern!r} is not a regular expression ({e})"
            ) from None
    float_graph: list[bytes] = []  # the int8 file's float graph, for the layer report

    def convert(traced: ModelConfig) -> bytes:
        out = tflite.convert(
            graph.export_fn(traced, heads, task, quantized_table=table_q, pooling=pooling),
            params,
            seq_len=seq_len,
            signature=task,
            quantize=quantize,
            representative=representative,
            int8_attention=int8_attention,
            int8_elementwise=int8_elementwise,
            dynamic_layers=dynamic_layers,
            keep_float_graph=bool(options.layer_report),
        )
        if not options.layer_report:
            return out
        float_graph[:] = [out[1]]
        return out[0]

    # A QAT model: int8 files take its trained ranges, and are checked against it.
    carry_ranges = quantize == "int8" and loaded.qat_params is not None
    notes: list[str] = []
    if loaded.qat_params is not None and not carry_ranges:
        notes.append(f"a QAT model exported {quantize}: its trained weights, no ranges")

    def make() -> bytes:
        traced = graph.builtin_gelu_config(config) if options.builtin_gelu else config
        if traced is config:
            flatbuffer = convert(config)
        else:
            flatbuffer, found = tflite.set_gelu_exact(convert(traced))
            if float_graph:
                float_graph[0] = tflite.set_gelu_exact(float_graph[0])[0]
            expected = graph.gelu_count(config, task)
            if found != expected:
                warnings.warn(
                    f"the converter fused {found} of the {expected} GELU activations into "
                    "TFLite's GELU op; exporting exact GELU as its erf polynomial instead "
                    "(slower, above all in int8)",
                    stacklevel=4,
                )
                flatbuffer = convert(config)
        if carry_ranges:
            flatbuffer, applied = qat_ranges.apply(
                flatbuffer, qat_ranges.dense_ranges(loaded.qat_params)
            )
            left = [
                f"{applied.dynamic} dynamic-range (float input)" if applied.dynamic else "",
                f"{applied.unmatched} matched no layer (calibrated)" if applied.unmatched else "",
            ]
            left = "; ".join(x for x in left if x)
            notes.append(
                f"trained ranges carried into {len(applied.carried)} dense inputs"
                + (f" ({left})" if left else "")
            )
        custom = tflite.custom_ops(flatbuffer)
        if custom:
            raise ExportError(f"the converted graph needs non-builtin ops {custom}")
        return tflite.with_metadata(flatbuffer, {tflite.METADATA_NAME: describe()})

    def describe() -> bytes:
        meta = {
            "task": task,
            "kind": graph.task_kind(config, task),
            "label_names": list(config.label_names) if config.label_names else None,
            "inputs": list(graph.INPUT_NAMES),
            "input_ranges": input_ranges(config),
            "outputs": list(graph.OUTPUT_NAMES[task]),
            "seq_len": seq_len,
            "quantize": quantize,
        }
        if task == "token_classification":
            meta["tag_position"] = "first WordPiece of each word"
        return json.dumps(meta).encode("utf-8")

    path = tflite.write_atomic(out, make)
    flatbuffer = path.read_bytes()
    report_lines = []
    if options.layer_report:
        from mbert_jax.export import layer_report

        layers = layer_report.compare(
            flatbuffer, float_graph[0], calibration, hidden_size=config.hidden_size
        )
        written = layers.write(options.layer_report)
        report_lines = layers.summary() + ["    written: " + ", ".join(str(p) for p in written)]

    if verify_examples is None:
        verify_examples = synthetic_examples(config, seq_len, num_verify)
        verify_source = "synthetic inputs"
    elif not verify_examples.labels:
        verify_examples = verify_examples.take(0, num_verify)
    examples = verify_examples
    if carry_ranges:
        qat = {k: loaded.qat_params[k] for k in params}
        reference = graph.reference_outputs(
            loaded.qat_config, heads, qat, task, examples.inputs(), pooling
        )
        notes.append("the reference is the fake-quant JAX model")
    else:
        reference = graph.reference_outputs(config, heads, params, task, examples.inputs(), pooling)
    report = verify.verify(
        flatbuffer,
        path=str(path),
        task=task,
        quantize=quantize,
        reference=reference,
        examples=examples,
        source=verify_source,
        threads=options.threads if options.latency_runs > 0 else (),
        latency_runs=options.latency_runs,
        ops=dict(tflite.builtin_ops(flatbuffer)),
        label_names=config.label_names,
    )
    report.notes = [*notes, *report_lines]
    return report
