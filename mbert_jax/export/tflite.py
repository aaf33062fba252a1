"""JAX -> TFLite conversion, quantization, and flatbuffer inspection.

Path: `jax2tf.convert` (native serialization: the function is lowered to
StableHLO inside one `XlaCallModule` op) with the parameters passed as
`tf.Variable`s, saved as a SavedModel whose one signature is named after the
task, then `TFLiteConverter.from_saved_model`, which legalizes the StableHLO
to TFLite builtins. Only `TFLITE_BUILTINS` (plus `TFLITE_BUILTINS_INT8`) are
allowed, never `SELECT_TF_OPS`, so the file runs on the plain LiteRT
interpreter; `builtin_ops` reads the op list back from the flatbuffer.

The sequence length is static: a shape-polymorphic length is lowered to
`dynamic_slice` / `dynamic_gather` (the trigram shift, the [CLS] slice),
which the converter's StableHLO legalization rejects as of TF 2.21.

Quantization modes:

- `none`: float32.
- `fp16`: float16 weights, dequantized at load (XNNPACK computes in float32).
- `dynamic_int8`: int8 weights with per-channel scales, activations quantized
  on the fly by the kernels (XNNPACK `qd8`); the word table is int8 too (see
  `graph`).
- `int8`: integer quantization calibrated on a representative set: int8
  weights and int8 activations with calibrated ranges for the dense layers
  (`FULLY_CONNECTED`) and the data-movement ops around them (`INT8_OPS`).
  Everything else stays float32 between QUANTIZE / DEQUANTIZE ops, inside
  one XNNPACK graph:
  - the attention core (the two `BATCH_MATMUL`s between activations and the
    `SOFTMAX`), because XNNPACK has no int8 kernels for them, so quantizing
    them splits the delegated graph at every layer and MobileBERT int8 ran
    1.5x faster than float instead of 2.75x
    (benchmarks/results/export_latency.md), while they are ~1/40 of the FLOPs;
  - the elementwise ops (`ELEMENTWISE_OPS`): the residual adds and NoNorm's
    scale and shift in MobileBERT, the LayerNorm statistics in BERT and
    TinyBERT (int8 has no sensible form for a variance). A per-tensor int8
    residual stream loses the small features beside the large ones: a
    quantization-friendly micro MobileBERT lost 2.4 points of accuracy with
    them int8 and gained 1.1 with them float (prediction agreement with the
    float file 0.87 -> 0.98), and the full-size MobileBERT int8 file ran as
    fast (2.78x over float instead of 2.53x);
  - the `GELU` op. Exact GELU reaches the graph as TFLite's one `GELU` op
    (see `graph` and `set_gelu_exact`), not as its erf polynomial, which
    stayed float beside the int8 dense layers and held TinyBERT4's int8 file
    to 1.4x over float. Its int8 form (a lookup table, the same values) is
    not an XNNPACK kernel, so it added a delegate partition per layer and
    measured no faster.
  The data-movement ops of `INT8_OPS` (`MOVEMENT_OPS`) are int8 only where
  they carry an int8 op's input or output (`float_islands`): between two
  float ops they stayed int8 before, which in a transformers BERT quantized
  the masked scores (fill: float32's lowest value, one int8 step 1.3e36, every
  real score 0) and the LayerNorm statistics (one scale for every token's
  variance) and left its int8 file at chance. `dynamic_layers` names dense
  layers to make dynamic-range int8 instead (float output): by default the
  FFN output projections of LayerNorm models, whose outputs carry BERT's
  outlier dimensions (`exporter.default_dynamic_layers`). The per-layer
  report (`layer_report`) measured both.
  `int8_attention=True` and `int8_elementwise=True` quantize the attention
  core and the elementwise ops too: together, an integer-only graph for
  NoNorm/ReLU models (for NPUs and DSPs without float units), at the
  accuracy cost above. Calibration examples should contain padding so that
  the -6 mask fill lies inside the calibrated score range.

Files are written atomically (temporary sibling, then `os.replace`), so a
failed export leaves no partial file. Each file describes itself in its
flatbuffer `metadata` list (`task_metadata`): the task and what its outputs
mean, and the label names.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from mbert_jax import files

QUANTIZATIONS = ("none", "fp16", "dynamic_int8", "int8")
# Ops quantized in "int8" mode (see the module docstring); every other op of
# the graph stays float32 between QUANTIZE / DEQUANTIZE pairs.
INT8_OPS = frozenset(
    {
        "FULLY_CONNECTED", "RELU", "RELU6", "RESHAPE", "TRANSPOSE",
        "CONCATENATION", "SLICE", "STRIDED_SLICE", "GATHER", "GATHER_ND", "SELECT", "SELECT_V2",
    }
)  # fmt: skip
# The ops of INT8_OPS that only move, select or clip values: int8 only where
# they carry an int8 compute op's input or output (`float_islands`).
MOVEMENT_OPS = INT8_OPS - {"FULLY_CONNECTED"}
ATTENTION_OPS = frozenset({"BATCH_MATMUL", "SOFTMAX"})
ELEMENTWISE_OPS = frozenset({"ADD", "SUB", "MUL"})


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says why and what to change."""


@contextlib.contextmanager
def _quiet_tf():
    """Import TensorFlow and keep its chatter out of the report on stdout.

    The quantizer's C++ code prints to file descriptor 1, so it is redirected
    to a temporary file during conversion (its tail is attached to a failure);
    stderr is left alone so that a crash of the converter still says why.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import tensorflow as tf

                tf.get_logger().setLevel(logging.ERROR)
                yield tf
        except Exception as e:
            log.seek(0)
            tail = log.read()[-3000:].decode(errors="replace")
            if tail.strip():
                e.add_note("converter log (tail):\n" + tail)
            raise
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


def _saved_model(
    tf, fn: Callable, variables: dict, seq_len: int, signature: str, input_names: Iterable[str]
) -> str:
    """Write `fn` (jax2tf-converted, variables as tf.Variables) as a SavedModel; returns its dir."""
    from jax.experimental import jax2tf

    names = tuple(input_names)
    tf_fn = jax2tf.convert(fn, with_gradient=False)
    module = tf.Module()
    module.variables_tree = tf.nest.map_structure(
        lambda x: tf.Variable(x, trainable=False), variables
    )

    def serve(*args):
        return tf_fn(module.variables_tree, *args)

    # The signature's input names are the TensorSpecs' names.
    specs = [tf.TensorSpec((1, seq_len), tf.int32, name=n) for n in names]
    module.serve = tf.function(serve, input_signature=specs, autograph=False)
    directory = tempfile.mkdtemp(prefix="mbert_jax_export_")
    tf.saved_model.save(
        module, directory, signatures={signature: module.serve.get_concrete_function()}
    )
    return directory


def convert(
    fn: Callable,
    variables: dict,
    *,
    seq_len: int,
    signature: str,
    quantize: str = "none",
    representative: Callable[[], Iterable[dict[str, np.ndarray]]] | None = None,
    int8_attention: bool = False,
    int8_elementwise: bool = False,
    input_names: Iterable[str] = ("input_ids", "attention_mask", "token_type_ids"),
    dynamic_layers: Iterable[str] = (),
    keep_float_graph: bool = False,
) -> bytes | tuple[bytes, bytes]:
    """Convert `fn(variables, *inputs)` to a TFLite flatbuffer.

    The variables become `tf.Variable`s (frozen to constants by the
    converter) rather than constants of the traced function, which keeps the
    StableHLO module small for full-size models.

    Args:
      fn: a JAX function of the variables and the int32 [1, seq_len] inputs,
        returning a dict of named outputs (see `graph.export_fn`).
      variables: its variables (numpy / jax arrays).
      seq_len: the static sequence length.
      signature: the signature key (the task name).
      quantize: one of `QUANTIZATIONS`.
      representative: for "int8", a function yielding {input name: [1, seq_len]
        int32} calibration examples.
      int8_attention: in "int8" mode, quantize the attention core too.
      int8_elementwise: in "int8" mode, quantize ADD / SUB / MUL too (see the
        module docstring; only sensible for NoNorm/ReLU models).
      input_names: the input names, in `fn`'s order.
      dynamic_layers: in "int8" mode, regular expressions over the JAX
        module paths of the dense layers (`module_of`, e.g.
        'encoder/layers_3/ffn/ffn_0/output'): a dense layer that one of them
        matches (`re.search`) is dynamic-range int8 (int8 weights, its input
        quantized at run time, a float output) instead of static int8.
      keep_float_graph: in "int8" mode, also return the calibrated float
        graph the file was quantized from (same ops and tensor names; the
        reference of `layer_report`).

    Returns:
      The flatbuffer bytes, after `tidy` (identical constants shared, dense
      biases 1-D); with `keep_float_graph`, (those bytes, the float graph's).
    """
    if quantize not in QUANTIZATIONS:
        raise ExportError(
            f"unknown quantization {quantize!r}; valid modes: {', '.join(QUANTIZATIONS)}"
        )
    if quantize == "int8" and representative is None:
        raise ExportError("int8 quantization needs a representative (calibration) dataset")
    if keep_float_graph and quantize != "int8":
        raise ExportError(
            f"the float graph of a conversion is kept in int8 mode only, not {quantize}"
        )
    calibrated = None
    with _quiet_tf() as tf:
        directory = _saved_model(tf, fn, variables, seq_len, signature, input_names)
        try:
            converter = tf.lite.TFLiteConverter.from_saved_model(directory)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            if quantize == "fp16":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_types = [tf.float16]
            elif quantize == "dynamic_int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
            elif quantize == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.representative_dataset = representative
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                    tf.lite.OpsSet.TFLITE_BUILTINS,
                ]
            if quantize == "int8":
                allowed = INT8_OPS
                if int8_attention:
                    allowed |= ATTENTION_OPS
                if int8_elementwise:
                    allowed |= ELEMENTWISE_OPS
                flatbuffer, calibrated = _int8_selective(converter, allowed, tuple(dynamic_layers))
            else:
                flatbuffer = converter.convert()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if keep_float_graph:
        return tidy(bytes(flatbuffer)), tidy(bytes(calibrated))
    return tidy(bytes(flatbuffer))


def _int8_selective(
    converter, allowed: frozenset[str], dynamic_layers: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    """Calibrate, then quantize only the ops in `allowed` (selective quantization).

    Movement ops between float ops stay float (`float_islands`); the dense
    layers that `dynamic_layers` match are left float by the quantizer, then
    made dynamic-range int8 (`dynamic_range_dense`).

    Returns (the quantized model, the calibrated float model).

    The other ops of the calibrated graph are passed to the quantizer's
    `denylisted_ops`, which is what `tf.lite.experimental.QuantizationDebugger`
    does for that option, without building its instrumented debug model.
    """
    from tensorflow.lite.python import convert as tfl_convert

    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    denied = sorted(set(builtin_ops(calibrated)) - allowed)
    dynamic = dense_layers(calibrated, dynamic_layers)
    quantized = tfl_convert.mlir_quantize(
        calibrated,
        disable_per_channel=False,
        fully_quantize=False,
        denylisted_ops=denied,
        denylisted_nodes=dynamic + float_islands(calibrated, allowed - MOVEMENT_OPS, dynamic),
    )
    return dynamic_range_dense(bytes(quantized), dynamic), calibrated


def dense_layers(flatbuffer: bytes, patterns: Iterable[str]) -> list[str]:
    """Output tensor names of the `FULLY_CONNECTED` ops whose module a pattern matches."""
    import re

    from ai_edge_litert.tools import flatbuffer_utils

    patterns = list(patterns)
    if not patterns:
        return []
    model = _read(flatbuffer)
    dense = [
        _name(sg.tensors[op.outputs[0]].name)
        for sg in model.subgraphs
        for op in sg.operators
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "FULLY_CONNECTED"
    ]
    out = []
    for pattern in patterns:
        hits = [n for n in dense if re.search(pattern, module_of(n))]
        if not hits:
            modules = sorted({module_of(n) for n in dense})
            raise ExportError(
                f"--dynamic-layers {pattern!r} matches none of the {len(modules)} dense layers "
                f"({', '.join(modules[:4])}, ...); give a pattern over these module paths"
            )
        out += [n for n in hits if n not in out]
    return out


def float_islands(
    flatbuffer: bytes, compute: frozenset[str], float_nodes: Iterable[str] = ()
) -> list[str]:
    """The data-movement ops (`MOVEMENT_OPS`) that no int8 compute op reads or feeds.

    A reshape, select or slice between two float ops gains nothing from int8
    and loses what a per-tensor scale cannot hold: in BERT, the LayerNorm
    statistics (a [1, seq_len] mean and variance reshaped for broadcasting:
    one scale for every token's variance), the word table's per-row scales
    (gathered, then reshaped) and, above all, the masked attention scores
    (`SELECT_V2` of the scores and the mask fill), whose calibrated range
    spans the fill: with a fill of float32's lowest value (transformers'
    BERT), one int8 step is 1.3e36 and every real score becomes 0.

    Movement ops connected to a compute op in `compute` through a chain of
    movement ops (over float activation tensors, not the boolean mask or
    int32 indices) stay int8 and carry int8 values between int8 ops; the
    rest are returned, by the names the quantizer's `denylisted_nodes` takes
    (the op's output tensor name).

    Args:
      flatbuffer: the calibrated float model.
      compute: the op names quantized in this mode besides the movement ops.
      float_nodes: output tensor names of compute ops kept float all the same.

    Returns:
      The output tensor names of the movement ops to keep float.
    """
    model = _read(flatbuffer)
    islands = []
    for sg in model.subgraphs:
        islands += _islands(model, sg, compute, set(float_nodes))
    return islands


def _islands(model, sg, compute: frozenset[str], skip: set[str]) -> list[str]:
    """`float_islands` of one subgraph."""
    from ai_edge_litert.tools import flatbuffer_utils

    ops = [
        (flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), list(op.inputs), list(op.outputs))
        for op in sg.operators
    ]

    def activation(t: int) -> bool:
        if t < 0:
            return False
        tensor = sg.tensors[t]
        data = model.buffers[tensor.buffer].data
        const = data is not None and len(data) > 0
        return not const and flatbuffer_utils.type_to_name(tensor.type) == "FLOAT32"

    readers: dict[int, list[int]] = {}
    for i, (_, ins, _) in enumerate(ops):
        for t in ins:
            readers.setdefault(t, []).append(i)
    writer = {t: i for i, (_, _, outs) in enumerate(ops) for t in outs}

    def neighbours(i: int):
        _, ins, outs = ops[i]
        for t in ins:
            if activation(t) and t in writer:
                yield writer[t]
        for t in outs:
            if activation(t):
                yield from readers.get(t, ())

    kept = set()
    todo = [
        i
        for i, (name, _, outs) in enumerate(ops)
        if name in compute and _name(sg.tensors[outs[0]].name) not in skip
    ]
    while todo:
        i = todo.pop()
        for j in neighbours(i):
            if ops[j][0] in MOVEMENT_OPS and j not in kept:
                kept.add(j)
                todo.append(j)
    return [
        _name(sg.tensors[outs[0]].name)
        for i, (name, _, outs) in enumerate(ops)
        if name in MOVEMENT_OPS and i not in kept
    ]


# ------------------------------------------------------------ flatbuffer tools
def module_of(name: str) -> str:
    """The JAX module path in a converter tensor name ('' when there is none).

    The converter names an op's output after its JAX location:
    'jit(fn)/Model/encoder/layers_0/attention/output/abcd,cdA->abA/dot_general1'
    -> 'encoder/layers_0/attention/output' (the op and an einsum's equation
    dropped); a fused name ('a;b') gives its first part that has one.
    """
    for part in name.split(";"):
        i = part.find("/Model/")
        if i >= 0:
            parts = part[i + len("/Model/") :].split("/")[:-1]  # the last one is the op
            while parts and ("," in parts[-1] or ">" in parts[-1]):  # an einsum's equation
                parts.pop()
            return "/".join(parts)
    return ""


def _read(flatbuffer: bytes):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))


def tidy(flatbuffer: bytes) -> bytes:
    """Post-conversion fixes of the flatbuffer; see the two helpers."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(flatbuffer)
    changed = _share_identical_buffers(model) | _flatten_fc_biases(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)) if changed else flatbuffer


def _share_identical_buffers(model) -> bool:
    """Point constant tensors with byte-identical data at one buffer.

    The converter writes a separate buffer per constant even when two hold the
    same bytes (the tied word table read by the lookup and by the MLM
    projection, see `graph`). Tensors keep their own types and quantization
    parameters; only the raw data is shared.
    """
    first: dict[tuple[int, str], int] = {}
    remap: dict[int, int] = {}
    for i, buf in enumerate(model.buffers):
        if buf.data is None or len(buf.data) < 1024:
            continue
        data = np.asarray(buf.data)
        key = (data.size, hashlib.sha256(data.tobytes()).hexdigest())
        if key in first:
            remap[i] = first[key]
        else:
            first[key] = i
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            if tensor.buffer in remap:
                tensor.buffer = remap[tensor.buffer]
    for i in remap:
        model.buffers[i].data = None
    return bool(remap)


def _flatten_fc_biases(model) -> bool:
    """Give FULLY_CONNECTED biases their canonical 1-D shape.

    When the converter folds a norm's shift into a dense layer's bias it can
    leave the bias [1, 1, N]; XNNPACK then refuses that int8 layer, which
    splits the delegated graph (measured: 24 extra partitions in int8
    MobileBERT, 1.2x slower on 1 thread and much slower on several). The data
    is unchanged; only the shape (and the quantized axis) is.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    changed = False
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) != "FULLY_CONNECTED":
                continue
            if len(op.inputs) < 3 or op.inputs[2] < 0:
                continue
            bias = subgraph.tensors[op.inputs[2]]
            shape = [int(d) for d in bias.shape]
            if len(shape) > 1 and all(d == 1 for d in shape[:-1]):
                bias.shape = np.asarray(shape[-1:], np.int32)
                bias.shapeSignature = None
                if bias.quantization is not None and bias.quantization.scale is not None:
                    bias.quantization.quantizedDimension = 0
                changed = True
    return changed


def set_gelu_exact(flatbuffer: bytes) -> tuple[bytes, int]:
    """Set `approximate=False` (the exact erf GELU) on every `GELU` op of the model.

    The converter reaches the builtin `GELU` only by fusing the tanh form,
    so the exporter traces exact GELU in that form (`graph.builtin_gelu_config`)
    and makes the fused ops exact here. Both the builtin kernel and XNNPACK's
    compute `0.5 x (1 + erf(x / sqrt(2)))` when the option is False (in int8,
    the kernel's lookup table is built from it). Call it only on a model
    whose every `GELU` op stands for an exact GELU.

    Args:
      flatbuffer: a TFLite model.

    Returns:
      (the model with every GELU exact, how many GELU ops it has).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(flatbuffer)
    found = changed = 0
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) != "GELU":
                continue
            found += 1
            if op.builtinOptions.approximate:
                op.builtinOptions.approximate = False
                changed += 1
    if not changed:
        return flatbuffer, found
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), found


def gelu_options(flatbuffer: bytes) -> list[bool]:
    """The `approximate` option of every `GELU` op, in graph order (False: exact erf GELU)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(flatbuffer)
    return [
        bool(op.builtinOptions.approximate)
        for subgraph in model.subgraphs
        for op in subgraph.operators
        if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "GELU"
    ]


def builtin_ops(flatbuffer: bytes) -> Counter:
    """Count of each operator in the model (names as in the TFLite schema)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(flatbuffer)
    counts: Counter = Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            counts[flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)] += 1
    return counts


def custom_ops(flatbuffer: bytes) -> list[str]:
    """Names of custom (non-builtin) operators, e.g. Flex ops; empty for a builtin-only model."""
    model = _read(flatbuffer)
    return sorted(
        {
            code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
            for code in model.operatorCodes
            if code.customCode
        }
    )


def fused_activations(flatbuffer: bytes) -> Counter:
    """Fused activation functions of the fully-connected / add / mul ops (e.g. RELU, RELU6)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {v: k for k, v in vars(schema.ActivationFunctionType).items() if not k.startswith("_")}
    model = _read(flatbuffer)
    counts: Counter = Counter()
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            fn = getattr(op.builtinOptions, "fusedActivationFunction", None)
            if fn:
                name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
                counts[f"{name}+{names.get(fn, fn)}"] += 1
    return counts


def constant_tensors(flatbuffer: bytes) -> list[dict]:
    """Every constant tensor: name, shape, type, bytes and buffer index (shared buffers repeat)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(flatbuffer)
    out = []
    for subgraph in model.subgraphs:
        for t in subgraph.tensors:
            buf = model.buffers[t.buffer]
            if buf.data is None or len(buf.data) == 0:
                continue
            out.append(
                {
                    "name": t.name.decode() if isinstance(t.name, bytes) else str(t.name),
                    "shape": tuple(int(s) for s in t.shape) if t.shape is not None else (),
                    "type": flatbuffer_utils.type_to_name(t.type),
                    "bytes": len(buf.data),
                    "buffer": t.buffer,
                }
            )
    return out


# ------------------------------------------------------------------ metadata
# The file's own description, for the app that runs it: a UTF-8 JSON object in
# the flatbuffer's `metadata` list (name + buffer, the schema's generic
# key-value slot, which interpreters ignore) under this name.
METADATA_NAME = "mbert_jax"


def with_metadata(flatbuffer: bytes, entries: dict[str, bytes]) -> bytes:
    """`flatbuffer` with `entries` (name -> bytes) in its `metadata` list (same names replaced)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(flatbuffer)
    kept = [m for m in model.metadata or [] if _name(m.name) not in entries]
    for name, data in entries.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(data, np.uint8).copy()
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        kept.append(entry)
    model.metadata = kept
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def read_metadata(flatbuffer: bytes) -> dict[str, bytes]:
    """Every entry of the file's `metadata` list: name -> its buffer's bytes."""
    model = _read(flatbuffer)
    out = {}
    for m in model.metadata or []:
        data = model.buffers[m.buffer].data
        out[_name(m.name)] = b"" if data is None else bytes(np.asarray(data, np.uint8))
    return out


def task_metadata(flatbuffer: bytes) -> dict | None:
    """What the exporter wrote about the file (task, kind, label names, inputs, outputs,
    sequence length, quantization), or None for a file from elsewhere.

    Args:
      flatbuffer: the bytes of a .tflite file.

    Returns:
      The JSON object stored under `METADATA_NAME`.
    """
    import json

    data = read_metadata(flatbuffer).get(METADATA_NAME)
    return None if data is None else json.loads(data.decode("utf-8"))


def write_atomic(path: str | os.PathLike, make: Callable[[], bytes]) -> Path:
    """Write `make()` to `path` through a temporary sibling; nothing is left if `make` fails."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(
            f"{path} is a directory; give --out a file name, e.g. {path}/model.tflite"
        )
    try:  # before `make` (a conversion can take minutes): a path that cannot be written
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = files.temp_file(path)
    except OSError as e:
        where = next((p for p in path.parents if p.exists()), path.parent)
        why = "is not a directory" if where.exists() and not where.is_dir() else e.strerror
        raise ExportError(
            f"{path}: cannot write here ({where} {why}); choose another --out"
        ) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(make())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    return path


def dynamic_range_dense(flatbuffer: bytes, names: Iterable[str]) -> bytes:
    """Make the float `FULLY_CONNECTED` ops whose outputs are `names` dynamic-range int8.

    Their weights become int8 with a symmetric scale per output channel (the
    largest magnitude of each row is 127) and the op quantizes its float
    input at run time (`asymmetric_quantize_inputs`, per row in XNNPACK's
    `qd8` kernels), so the output stays float: the same form the
    `dynamic_int8` mode gives every dense layer.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = set(names)
    if not names:
        return flatbuffer
    model = _read(flatbuffer)
    for sg in model.subgraphs:
        for op in sg.operators:
            if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) != "FULLY_CONNECTED":
                continue
            if _name(sg.tensors[op.outputs[0]].name) not in names:
                continue
            weight = sg.tensors[op.inputs[1]]
            if flatbuffer_utils.type_to_name(weight.type) != "FLOAT32":
                continue
            buf = model.buffers[weight.buffer]
            w = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float32)
            w = w.reshape([int(d) for d in weight.shape])
            w2 = w.reshape(w.shape[0], -1)
            scale = np.abs(w2).max(axis=1) / 127.0
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            q = np.clip(np.round(w2 / scale[:, None]), -127, 127).astype(np.int8)
            buf.data = np.frombuffer(q.tobytes(), np.uint8).copy()
            weight.type = schema.TensorType.INT8
            quant = schema.QuantizationParametersT()
            quant.scale = scale.tolist()
            quant.zeroPoint = [0] * len(scale)
            quant.quantizedDimension = 0
            weight.quantization = quant
            op.builtinOptions.asymmetricQuantizeInputs = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
