"""The trained activation ranges of a QAT model written into its int8 TFLite file.

The converter calibrates every int8 tensor on the representative set. For a
quantization-aware model (`ModelConfig.fake_quant`) the file should instead
quantize each dense layer's input over the range the model was trained with
(`*/input_range`, `mbert_jax/quant/fake_quant.py`), so that the file computes
what the fake-quant model computed. After conversion, for every
`FULLY_CONNECTED` op:

1. its dense layer is found by its weights: the op's int8 kernel,
   dequantized, equals one layer's fake-quantized kernel (the same symmetric
   per-channel arithmetic) to within rounding;
2. its input tensor gets that layer's nudged range as scale and zero point
   (`zero_point = round(-lo / scale) - 128` in int8), and so do the tensors
   behind it through ops that keep their input's quantization (`RESHAPE`,
   `TRANSPOSE`, `SLICE`, ...), back to the `QUANTIZE` (or other) op that
   produces them;
3. its int32 bias, whose scale is input scale x weight scale, is requantized
   to the new input scale.

An op whose kernel matches no layer (the converter folded something into it)
keeps its calibrated range; `apply` says how many did.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mbert_jax.quant import fake_quant
from mbert_jax.tree import flat

INT8 = 9  # the flatbuffer's TensorType of int8 tensors

# Ops whose int8 output shares its input's scale and zero point.
SAME_SCALE_OPS = {
    "RESHAPE",
    "TRANSPOSE",
    "SLICE",
    "STRIDED_SLICE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "GATHER",
    "GATHER_ND",
}


@dataclasses.dataclass(frozen=True)
class DenseRange:
    """A dense layer of the QAT model: its fake-quantized kernel as [in, out] and its range."""

    name: str
    kernel: np.ndarray  # [inputs, outputs], fake-quantized as in training
    lo: float  # the input's nudged range
    hi: float
    out_lo: float | None = None  # the output's (None: the model has no output range)
    out_hi: float | None = None


@dataclasses.dataclass(frozen=True)
class Applied:
    """What `apply` did: dense inputs given their trained range, and those left calibrated."""

    carried: tuple[str, ...]
    unmatched: int
    dynamic: int = 0  # dense ops with a float input (dynamic-range int8): no range to carry


def dense_ranges(params: dict, contract: dict[str, int] | None = None) -> list[DenseRange]:
    """Every dense layer of a QAT parameter tree that has a trained input range.

    `contract`: the number of contracted (input) axes of a kernel by layer
    name when it is not 1 (the attention output contracts heads x head_dim).
    Without it, a layer whose kernel has 3 axes is taken as [heads, kv, out]
    when its name ends in `output` and [in, heads, kv] otherwise.
    """
    import jax.numpy as jnp

    named = flat(params)
    out = []
    suffix = "/input" + fake_quant.RANGE_SUFFIX
    for key, r in named.items():
        if not key.endswith(suffix):
            continue
        layer = key[: -len(suffix)]
        kernel = np.asarray(named[f"{layer}/kernel"], np.float32)
        n = (contract or {}).get(layer, 2 if kernel.ndim == 3 and layer.endswith("output") else 1)
        q = np.asarray(fake_quant.weight(jnp.asarray(kernel), tuple(range(n))))
        q = q.reshape(int(np.prod(q.shape[:n])), -1)
        n_lo, n_hi, _ = fake_quant.nudged_range(jnp.float32(r[0]), jnp.float32(r[1]))
        o = named.get(f"{layer}/output{fake_quant.RANGE_SUFFIX}")
        o_lo = o_hi = None
        if o is not None:
            o_lo, o_hi, _ = fake_quant.nudged_range(jnp.float32(o[0]), jnp.float32(o[1]))
            o_lo, o_hi = float(o_lo), float(o_hi)
        out.append(DenseRange(layer, q, float(n_lo), float(n_hi), o_lo, o_hi))
    return out


def int8_params(lo: float, hi: float) -> tuple[float, int]:
    """(scale, int8 zero point) of a nudged range."""
    scale = (hi - lo) / fake_quant.QMAX
    return scale, int(round(-lo / scale)) - 128


def _match(weights: np.ndarray, layers: list[DenseRange]) -> DenseRange | None:
    """The layer whose fake-quantized kernel ([in, out]) is `weights` ([out, in])."""
    best, best_err = None, np.inf
    for layer in layers:
        if layer.kernel.shape != weights.T.shape:
            continue
        err = float(np.max(np.abs(layer.kernel - weights.T)))
        if err < best_err:
            best, best_err = layer, err
    if best is None:
        return None
    step = float(np.max(np.abs(best.kernel))) / fake_quant.WMAX
    return best if best_err <= 0.51 * step + 1e-7 else None


def apply(flatbuffer: bytes, layers: list[DenseRange]) -> tuple[bytes, Applied]:
    """`flatbuffer` (an int8 file) with each matched dense input's trained range."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    from mbert_jax.export.tflite import _read

    model = _read(flatbuffer)
    sg = model.subgraphs[0]
    producer = {o: op for op in sg.operators for o in op.outputs}
    consumers: dict[int, list] = {}
    for op in sg.operators:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op)
    carried, unmatched, dynamic, done = [], 0, 0, {}

    def set_range(index: int, scale: float, zero: int) -> None:
        while True:
            q = sg.tensors[index].quantization
            q.scale = np.asarray([scale], np.float32)
            q.zeroPoint = np.asarray([zero], np.int64)
            op = producer.get(index)
            if op is None or fu.opcode_to_name(model, op.opcodeIndex) not in SAME_SCALE_OPS:
                return
            index = op.inputs[0]

    def set_output(index: int, scale: float, zero: int) -> None:
        """The output of an FC and the tensors after it through same-scale ops."""
        q = sg.tensors[index].quantization
        q.scale = np.asarray([scale], np.float32)
        q.zeroPoint = np.asarray([zero], np.int64)
        for nxt in consumers.get(index, []):
            if fu.opcode_to_name(model, nxt.opcodeIndex) in SAME_SCALE_OPS:
                set_output(nxt.outputs[0], scale, zero)

    for op in sg.operators:
        if fu.opcode_to_name(model, op.opcodeIndex) != "FULLY_CONNECTED":
            continue
        w = sg.tensors[op.inputs[1]]
        x = sg.tensors[op.inputs[0]]
        if w.quantization is None or w.quantization.scale is None:
            continue  # a float layer
        if x.type != INT8:  # dynamic-range: a float input, quantized by the kernel
            dynamic += 1
            continue
        data = np.frombuffer(bytes(model.buffers[w.buffer].data), np.int8)
        wscale = np.asarray(w.quantization.scale, np.float64)
        weights = data.reshape([int(d) for d in w.shape]).astype(np.float64) * wscale[:, None]
        layer = _match(weights, layers)
        if layer is None:
            unmatched += 1
            continue
        scale, zero = int8_params(layer.lo, layer.hi)
        if op.inputs[0] in done and done[op.inputs[0]] != (scale, zero):
            # Q, K and V read one tensor: their ranges are equal (the same batches).
            s0, z0 = done[op.inputs[0]]
            lo = min(-(z0 + 128) * s0, layer.lo)
            hi = max((127 - z0) * s0, layer.hi)
            scale, zero = int8_params(lo, hi)
        set_range(op.inputs[0], scale, zero)
        done[op.inputs[0]] = (scale, zero)
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            b = sg.tensors[op.inputs[2]]
            buf = model.buffers[b.buffer]
            bq = b.quantization
            if bq is not None and bq.scale is not None and buf.data is not None:
                old = np.asarray(bq.scale, np.float64)
                real = np.frombuffer(bytes(buf.data), np.int32).astype(np.float64) * old
                new_scale = scale * wscale
                buf.data = np.frombuffer(
                    np.round(real / new_scale).astype(np.int32).tobytes(), np.uint8
                )
                b.quantization.scale = new_scale.astype(np.float32)
        y = sg.tensors[op.outputs[0]]
        if (
            layer.out_lo is not None
            and y.quantization is not None
            and y.quantization.scale is not None
        ):
            set_output(op.outputs[0], *int8_params(layer.out_lo, layer.out_hi))
        carried.append(layer.name)
    out = bytes(fu.convert_object_to_bytearray(model))
    return out, Applied(tuple(carried), unmatched, dynamic)
