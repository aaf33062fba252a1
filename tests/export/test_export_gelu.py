"""Exact GELU as TFLite's builtin GELU op, in every mode; the erf polynomial as the fallback.

BERT, TinyBERT, DistilBERT and IB-BERT use the exact (erf) GELU. The exporter
traces it in its tanh form, which the converter fuses into one `GELU` op, and
then sets the op's `approximate` option to False (`mbert_jax.export.graph`).
Checked here, against `Model.apply` and numpy's erf: the fused op computes
erf, not tanh; float files stay exact (<= 1e-4); every activation is one exact
GELU op and no erf polynomial is left, in float and in both int8 modes; the
int8 files stay as close to the model as the erf-polynomial int8 files were.
"""

from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from export_helpers import (
    SEQ_LEN,
    expected,
    make_model_dir,
    padded_inputs,
    run_file,
    tensor_types,
)

from mbert_jax.export import cli, graph, tflite
from mbert_jax.export.data import Examples
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export

# What exact GELU leaves when the converter expands erf (its polynomial has
# ABS and EXP); a tanh form that was not fused would leave TANH ops.
ERF_POLYNOMIAL_OPS = {"ABS", "EXP"}
GELU_VARIANTS = ("tinybert4_micro", "bert_base_micro", "distilbert6_micro", "ibbert_large_micro")


@pytest.fixture(scope="module")
def gelu_dirs(model_dirs, tmp_path_factory):
    """{variant: (model dir, config, params)} for every exact-GELU micro variant."""
    root = tmp_path_factory.mktemp("gelu_models")
    dirs = {v: model_dirs[v] for v in GELU_VARIANTS if v in model_dirs}
    for v in GELU_VARIANTS:
        if v not in dirs:
            dirs[v] = make_model_dir(root, v)
    return dirs


def export(directory, task, path, quantize="none", config=None, **kw):
    calibration = None
    if quantize == "int8":
        calibration = Examples(*padded_inputs(config, n=16, seed=3).values())
    options = TFLiteOptions(quantize=quantize, seq_len=SEQ_LEN, latency_runs=0, num_verify=4, **kw)
    export_tflite(load_for_export(directory), task, path, options, calibration=calibration)
    flatbuffer = path.read_bytes()
    assert tflite.custom_ops(flatbuffer) == []
    return flatbuffer


def relative_rms(got, want):
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want**2)))


def cosine(got, want):
    a, b = got.ravel(), want.ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def tanh_count(config, task):
    """TANH ops the exact-GELU graph may hold: the pooler's, when the task runs it."""
    return int(config.use_pooler and task == "classification")


def test_fused_gelu_made_exact_computes_the_erf_gelu():
    # x in [-6, 6) in steps of 0.01, from int32 ids; GELU traced in its tanh form.
    seq_len = 1200

    def fn(_, ids):
        x = (ids.astype(jnp.float32) - 600.0) / 100.0
        return {"y": jax.nn.gelu(x, approximate=True)}

    fused = tflite.convert(fn, {}, seq_len=seq_len, signature="gelu", input_names=("input_ids",))
    assert tflite.gelu_options(fused) == [True]
    assert not {"TANH", *ERF_POLYNOMIAL_OPS} & set(tflite.builtin_ops(fused))
    exact, found = tflite.set_gelu_exact(fused)
    assert found == 1 and tflite.gelu_options(exact) == [False]

    from ai_edge_litert.interpreter import Interpreter

    ids = np.arange(seq_len, dtype=np.int32)[None]
    x = (ids[0].astype(np.float64) - 600.0) / 100.0
    erf_gelu = np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x])
    tanh_gelu = 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    outs = {
        name: Interpreter(model_content=f).get_signature_runner()(input_ids=ids)["y"][0]
        for name, f in (("fused", fused), ("exact", exact))
    }
    assert np.abs(tanh_gelu - erf_gelu).max() > 4e-4  # the two forms are told apart here
    np.testing.assert_allclose(outs["exact"], erf_gelu, atol=2e-6, rtol=0)
    np.testing.assert_allclose(outs["fused"], tanh_gelu, atol=2e-6, rtol=0)


# tinybert4_micro and bert_base_micro get the same checks for every task in
# test_export_matrix.py's float exports; here the other exact-GELU variants.
@pytest.mark.parametrize(
    ("variant", "task"),
    [
        ("tinybert4_micro", "classification"),
        *(
            pytest.param(v, t, marks=pytest.mark.slow)
            for v in ("distilbert6_micro", "ibbert_large_micro")
            for t in ("classification", "mlm")
        ),
    ],
)
def test_float_exact_gelu_is_one_exact_gelu_op_per_activation(gelu_dirs, tmp_path, variant, task):
    directory, config, params = gelu_dirs[variant]
    assert config.hidden_act == "gelu"
    flatbuffer = export(directory, task, tmp_path / "f.tflite")
    ops = tflite.builtin_ops(flatbuffer)
    assert tflite.gelu_options(flatbuffer) == [False] * graph.gelu_count(config, task), ops
    assert not ERF_POLYNOMIAL_OPS & set(ops), ops
    assert ops.get("TANH", 0) == tanh_count(config, task), ops
    inputs = padded_inputs(config)
    got, want = run_file(flatbuffer, inputs), expected(config, params, inputs, task)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-4, rtol=0, err_msg=k)


@pytest.mark.parametrize(
    ("variant", "quantize"),
    [
        ("tinybert4_micro", "int8"),
        pytest.param("tinybert4_micro", "dynamic_int8", marks=pytest.mark.slow),
        pytest.param("bert_base_micro", "int8", marks=pytest.mark.slow),
        pytest.param("distilbert6_micro", "int8", marks=pytest.mark.slow),
        pytest.param("ibbert_large_micro", "int8", marks=pytest.mark.slow),
    ],
)
def test_quantized_gelu_model_has_no_erf_polynomial_and_keeps_its_accuracy(
    gelu_dirs, tmp_path, variant, quantize
):
    directory, config, params = gelu_dirs[variant]
    task = "classification"
    # Static int8 in every dense layer (no dynamic-range FFN outputs, which LayerNorm
    # models get by default: test_layer_report.py), so the FC check below holds.
    kw = {"dynamic_layers": ()} if quantize == "int8" else {}
    files = {
        builtin: export(
            directory,
            task,
            tmp_path / f"{builtin}.tflite",
            quantize,
            config,
            builtin_gelu=builtin,
            **kw,
        )
        for builtin in (True, False)
    }
    ops = tflite.builtin_ops(files[True])
    assert tflite.gelu_options(files[True]) == [False] * config.num_layers, ops
    assert not ERF_POLYNOMIAL_OPS & set(ops), ops
    assert ops.get("TANH", 0) == tanh_count(config, task), ops
    assert set(tflite.builtin_ops(files[False])) >= ERF_POLYNOMIAL_OPS  # the control
    if quantize == "int8":
        assert tensor_types(files[True], "FULLY_CONNECTED") == {"INT8", "INT32"}
        # Left float inside the XNNPACK graph (its int8 form is no XNNPACK kernel).
        assert tensor_types(files[True], "GELU") == {"FLOAT32"}
    inputs = padded_inputs(config, n=8, seed=9)
    want = expected(config, params, inputs, task)["logits"]
    got = {b: run_file(f, inputs)["logits"] for b, f in files.items()}
    # Bounds: measured relative rms 0.013-0.027 (int8) and <= 0.01 (dynamic) on
    # these models, cosine >= 0.9996; the erf-polynomial file is within 1.4x.
    assert relative_rms(got[True], want) <= 0.06
    assert cosine(got[True], want) >= 0.998
    assert relative_rms(got[True], want) <= 1.5 * relative_rms(got[False], want) + 1e-3


def test_no_builtin_gelu_flag_lowers_the_erf_polynomial(gelu_dirs, tmp_path, capsys):
    directory, config, params = gelu_dirs["tinybert4_micro"]
    out = tmp_path / "poly.tflite"
    code = cli.main(
        ["--checkpoint", str(directory), "--task", "classification", "--seq-len", str(SEQ_LEN),
         "--out", str(out), "--latency-runs", "0", "--no-builtin-gelu"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    flatbuffer = out.read_bytes()
    ops = tflite.builtin_ops(flatbuffer)
    assert "GELU" not in ops and set(ops) >= ERF_POLYNOMIAL_OPS, ops
    inputs = padded_inputs(config)
    np.testing.assert_allclose(
        run_file(flatbuffer, inputs)["logits"],
        expected(config, params, inputs, "classification")["logits"],
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.slow
def test_unfused_gelu_falls_back_to_the_erf_polynomial(gelu_dirs, tmp_path, monkeypatch):
    # As if the converter had fused only some activations (another TF version).
    directory, config, params = gelu_dirs["tinybert4_micro"]
    real = graph.gelu_count
    monkeypatch.setattr(graph, "gelu_count", lambda c, t: real(c, t) + 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flatbuffer = export(directory, "classification", tmp_path / "f.tflite")
    assert any("erf polynomial instead" in str(w.message) for w in caught)
    ops = tflite.builtin_ops(flatbuffer)
    assert "GELU" not in ops and set(ops) >= ERF_POLYNOMIAL_OPS, ops
    inputs = padded_inputs(config)
    np.testing.assert_allclose(
        run_file(flatbuffer, inputs)["logits"],
        expected(config, params, inputs, "classification")["logits"],
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.slow
def test_tanh_gelu_model_keeps_the_approximate_gelu_op(tmp_path):
    # ALBERT's own activation is the tanh form: its GELU ops stay approximate.
    directory, config, params = make_model_dir(tmp_path, "albert_base_micro")
    assert config.hidden_act == "gelu_tanh"
    flatbuffer = export(directory, "classification", tmp_path / "albert.tflite")
    assert tflite.gelu_options(flatbuffer) == [True] * config.num_layers
    inputs = padded_inputs(config)
    np.testing.assert_allclose(
        run_file(flatbuffer, inputs)["logits"],
        expected(config, params, inputs, "classification")["logits"],
        atol=1e-4,
        rtol=0,
    )
