"""A QAT model's int8 file quantizes each dense layer's input and output over its trained range.

The expected scale and zero point of every range are computed here from
TF's nudging rule in numpy; the dense layer behind each FULLY_CONNECTED op is
found by comparing its int8 kernel with the layer's kernel quantized here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from export_helpers import SEQ_LEN, make_model_dir, padded_inputs

from mbert_jax.export import exporter, tflite
from mbert_jax.export.data import Examples
from mbert_jax.models import Model, io
from mbert_jax.quant.calibrate import calibrate
from mbert_jax.tree import flat, unflat


def np_int8_params(lo, hi):
    """(scale, int8 zero point) of TF's nudged 8-bit range, in float32 as TF computes it."""
    f = np.float32
    lo, hi = f(lo), f(hi)
    scale = (hi - lo) / f(255)
    zp = min(max(np.floor(-lo * f(255) / (hi - lo) + f(0.5)), 0), 255)
    return float(scale), int(zp) - 128


def np_weight_int8(kernel):
    """[in, out] -> per-output-channel symmetric int8 values, [out, in]."""
    s = np.abs(kernel).max(axis=0) / 127.0
    return np.clip(np.floor(kernel / s + 0.5), -127, 127).T.astype(np.int8)


@pytest.fixture(scope="module")
def qat_model(tmp_path_factory):
    """A micro BERT classifier with fake quantization, its ranges calibrated on its inputs."""
    root = tmp_path_factory.mktemp("qat_export")
    directory, config, params = make_model_dir(
        root, "bert_base_micro", heads=("classifier",), fake_quant=True, fake_quant_decay=0.0
    )
    named = {
        k: (np.asarray([-6.0, 6.0], np.float32) if k.endswith("_range") else v)
        for k, v in flat(params).items()
    }
    params = unflat(named)
    model = Model(config, heads=("classifier",))
    batches = [padded_inputs(config, n=8, seed=s) for s in range(3)]

    def outputs(p, b):
        return model.apply({"params": p}, b["input_ids"], b["attention_mask"], b["token_type_ids"])

    params = calibrate(outputs, jax.tree.map(jnp.asarray, params), batches)
    params = jax.tree.map(np.asarray, params)
    cfg = config.replace(fake_quant_decay=0.999)
    return io.save_model(root / "qat", cfg, ("classifier",), params, io.vocab_path(directory))


def test_int8_file_carries_the_trained_ranges(qat_model, tmp_path):
    loaded = exporter.load_for_export(qat_model)
    cal = Examples(**padded_inputs(loaded.qat_config, n=16, seed=9))
    opts = exporter.TFLiteOptions(quantize="int8", seq_len=SEQ_LEN, latency_runs=0)
    report = exporter.export_tflite(
        loaded,
        "classification",
        tmp_path / "qat.tflite",
        opts,
        calibration=cal,
        verify_examples=Examples(**padded_inputs(loaded.qat_config, n=8, seed=10)),
    )
    # The 6 FFN output projections of a LayerNorm model are dynamic-range int8 by default
    # (float inputs, docs/export.md): 32 of the 38 dense layers read int8.
    assert "trained ranges carried into 32 dense inputs (6 dynamic-range (float input))" in (
        report.notes
    )
    assert "the reference is the fake-quant JAX model" in report.notes

    named = flat(loaded.qat_params)
    layers = {}
    for key in named:
        if key.endswith("/input_range"):
            layer = key[: -len("/input_range")]
            k = np.asarray(named[f"{layer}/kernel"])
            n = 2 if k.ndim == 3 and layer.endswith("attention/output") else 1
            layers[layer] = k.reshape(int(np.prod(k.shape[:n])), -1)
    model = tflite._read((tmp_path / "qat.tflite").read_bytes())
    from ai_edge_litert.tools import flatbuffer_utils as fu

    sg = model.subgraphs[0]
    seen = set()
    for op in sg.operators:
        if fu.opcode_to_name(model, op.opcodeIndex) != "FULLY_CONNECTED":
            continue
        w = sg.tensors[op.inputs[1]]
        if sg.tensors[op.inputs[0]].type != 9:  # a float (dynamic-range) input
            continue
        data = np.frombuffer(bytes(model.buffers[w.buffer].data), np.int8)
        data = data.reshape([int(d) for d in w.shape])
        matches = [  # the converter may round a tie the other way: within one step
            name
            for name, k in layers.items()
            if k.T.shape == data.shape and np.max(np.abs(np_weight_int8(k).astype(int) - data)) <= 1
        ]
        assert len(matches) == 1, matches
        layer = matches[0]
        seen.add(layer)
        for point, tensor in (("input", op.inputs[0]), ("output", op.outputs[0])):
            q = sg.tensors[tensor].quantization
            scale, zero = np_int8_params(*named[f"{layer}/{point}_range"])
            assert float(q.scale[0]) == pytest.approx(scale, rel=1e-6), (layer, point)
            assert int(q.zeroPoint[0]) == zero, (layer, point)
        # the int32 bias, requantized to the new input scale, still holds the float bias
        b = sg.tensors[op.inputs[2]]
        bias = np.frombuffer(bytes(model.buffers[b.buffer].data), np.int32) * np.asarray(
            b.quantization.scale
        )
        np.testing.assert_allclose(
            bias,
            np.asarray(named[f"{layer}/bias"]).reshape(-1),
            atol=float(np.max(b.quantization.scale)),
        )
    ffn_out = {k for k in layers if k.endswith("ffn_0/output")}
    assert len(ffn_out) == 6 and seen == set(layers) - ffn_out
