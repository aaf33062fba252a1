"""The per-layer quantization report and the int8 rules it led to.

The report compares an int8 file with the float graph it was quantized from,
site by site. Checked here: a float file against that graph has no error at
any site; an error injected into one dense layer's weights appears first at
that layer's output, as large as numpy computes it from the JAX model's own
input to that layer; and the int8 mode's rules for LayerNorm models (the
attention scores and LayerNorm statistics stay float, the FFN output
projections are dynamic-range int8 with per-channel weights equal to a numpy
quantization of the JAX kernels).
"""

from __future__ import annotations

import re

import flax.linen as nn
import numpy as np
import pytest
from export_helpers import SEQ_LEN, jax_outputs, padded_inputs, run_file

from mbert_jax.export import cli, graph, layer_report, tflite
from mbert_jax.export.data import Examples
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export
from mbert_jax.models import Model

VARIANT = "tinybert4_micro"  # LayerNorm, exact GELU, pooler; 2 layers of width 48


def _ops(flatbuffer):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    sg = model.subgraphs[0]
    out = []
    for op in sg.operators:
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        out.append((name, op, [sg.tensors[i] if i >= 0 else None for i in op.inputs],
                    [sg.tensors[i] for i in op.outputs]))  # fmt: skip
    return model, out


def _type(t):
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.type_to_name(t.type)


def _tname(t):
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


@pytest.fixture(scope="module")
def converted(model_dirs):
    """(config, params, examples, float file, int8 file, the int8 file's float graph)."""
    _, config, params = model_dirs[VARIANT]
    p = {"encoder": params["encoder"], "classifier": params["classifier"]}
    table = graph.quantize_rows(graph.word_table(p))  # the same embedding table in both
    fn = graph.export_fn(config, ("classifier",), "classification", quantized_table=table)
    examples = Examples(*padded_inputs(config, n=6, seed=1).values())

    def representative():
        for i in range(len(examples)):
            yield {k: v[i : i + 1] for k, v in examples.inputs().items()}

    common = dict(seq_len=SEQ_LEN, signature="classification")
    float_file = tflite.convert(fn, p, quantize="none", **common)
    int8_file, float_graph = tflite.convert(
        fn, p, quantize="int8", representative=representative, keep_float_graph=True, **common
    )
    return config, params, examples, float_file, int8_file, float_graph


def test_module_of_reads_the_jax_module_path_from_a_tensor_name():
    assert (
        tflite.module_of(
            "jit(fn)/Model/encoder/layers_0/attention/output/abcd,cdA->abA/dot_general1"
        )
        == "encoder/layers_0/attention/output"
    )
    assert (
        tflite.module_of("a;jit(fn)/Model/encoder/layers_1/ffn/ffn_0/output_norm/add")
        == "encoder/layers_1/ffn/ffn_0/output_norm"
    )
    assert tflite.module_of("tfl.quantize3") == ""


def test_float_file_has_no_error_at_any_site(converted):
    config, _, examples, float_file, _, float_graph = converted
    report = layer_report.compare(float_file, float_graph, examples, hidden_size=config.hidden_size)
    kinds = [r.kind for r in report.rows]
    layers = config.num_layers
    # Per block: query, key, value, attention output, FFN in and out; then pooler, classifier.
    dense = 6 * layers + 2
    assert kinds.count("dense input") == kinds.count("dense output") == dense
    assert kinds.count("attention scores") == layers
    assert kinds.count("block output") == layers and kinds.count("embeddings") == 1
    assert kinds[-1] == "output" and report.rows[-1].module == "logits"
    # Graph order: the embeddings, then block 0's query input, ..., its output, block 1, ...
    blocks = [r.module for r in report.rows if r.kind in ("embeddings", "block output")]
    assert blocks == ["encoder/embeddings"] + [f"encoder/layers_{i}" for i in range(layers)]
    assert report.rows[1].module == "encoder/layers_0/attention/self_attention/query"
    assert max(r.rel_rms for r in report.rows) < 1e-5
    assert all(r.int8_step is None for r in report.rows)


def test_injected_weight_error_is_found_in_its_layer(converted, tmp_path):
    """Perturb one dense layer's weights in the float file: the report's first error is
    that layer's output, and its size is what numpy computes from the JAX model."""
    from ai_edge_litert.tools import flatbuffer_utils

    config, params, examples, float_file, _, float_graph = converted
    target = "encoder/layers_1/ffn/ffn_0/intermediate"
    model, ops = _ops(float_file)
    (fc,) = [
        op
        for name, op, _, outs in ops
        if name == "FULLY_CONNECTED" and tflite.module_of(_tname(outs[0])) == target
    ]
    sg = model.subgraphs[0]
    weight = sg.tensors[fc.inputs[1]]
    buf = model.buffers[weight.buffer]
    w = np.frombuffer(np.asarray(buf.data, np.uint8).tobytes(), np.float32).reshape(weight.shape)
    kernel = np.asarray(params["encoder"]["layers_1"]["ffn"]["ffn_0"]["intermediate"]["kernel"])
    np.testing.assert_allclose(w, kernel.T, rtol=0, atol=1e-7)  # the layer we meant
    delta = 0.02 * np.random.default_rng(0).standard_normal(w.shape).astype(np.float32)
    buf.data = np.frombuffer((w + delta).astype(np.float32).tobytes(), np.uint8).copy()
    perturbed = bytes(flatbuffer_utils.convert_object_to_bytearray(model))

    report = layer_report.compare(perturbed, float_graph, examples, hidden_size=config.hidden_size)
    rows = report.rows
    first = next(i for i, r in enumerate(rows) if r.rel_rms > 1e-4)
    assert (rows[first].kind, rows[first].module) == ("dense output", target)
    assert rows[first - 1].kind == "dense input" and rows[first - 1].rel_rms < 1e-5

    # Independently: the layer's input from the JAX model, its output error by numpy.
    captured = []

    def grab(next_fun, args, kwargs, context):
        if "/".join(context.module.scope.path) == target and context.method_name == "__call__":
            captured.append(np.asarray(args[0]))
        return next_fun(*args, **kwargs)

    inputs = examples.inputs()
    with nn.intercept_methods(grab):
        Model(config, heads=("classifier",)).apply(
            {"params": params}, inputs["input_ids"], inputs["attention_mask"],
            inputs["token_type_ids"],
        )  # fmt: skip
    x = captured[0][inputs["attention_mask"] > 0]  # real tokens, [n_real, hidden]
    bias = np.asarray(params["encoder"]["layers_1"]["ffn"]["ffn_0"]["intermediate"]["bias"])
    y = x @ kernel + bias
    err = x @ delta.T
    want = np.sqrt((err**2).sum() / (y**2).sum())
    np.testing.assert_allclose(rows[first].rel_rms, want, rtol=1e-3)
    later = [r for r in rows[first:] if r.kind == "block output"]
    assert later and all(r.rel_rms > 1e-4 for r in later)


def test_int8_report_sees_every_site_and_float_scores(converted, tmp_path):
    config, _, examples, _, int8_file, float_graph = converted
    report = layer_report.compare(int8_file, float_graph, examples, hidden_size=config.hidden_size)
    kinds = [r.kind for r in report.rows]
    assert kinds.count("dense input") == 6 * config.num_layers + 2
    assert kinds.count("attention scores") == config.num_layers
    scores = [r for r in report.rows if r.kind == "attention scores"]
    # The masked scores stay float (before: an int8 step of ~1e36, every score 0, error 1).
    assert all(r.int8_step is None for r in scores)
    assert all(r.rel_rms < 0.2 for r in scores)
    dense_in = [r for r in report.rows if r.kind == "dense input"]
    assert all(r.rel_rms > 0 for r in dense_in)
    paths = report.write(tmp_path / "rep" / "layers")
    assert [p.suffix for p in paths] == [".md", ".csv", ".png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths[0].read_text().splitlines()
    assert (
        len([line for line in md if line.startswith("| ") and "---" not in line])
        == len(report.rows) + 1
    )
    csv_rows = paths[1].read_text().strip().splitlines()
    assert len(csv_rows) == len(report.rows) + 1 and csv_rows[0].startswith("index,layer,kind")


def test_rel_rms_and_masking_by_hand():
    mask = np.array([1, 1, 0])
    scores = np.arange(9.0).reshape(1, 1, 3, 3)
    keep = layer_report._real_mask(scores.shape, mask)
    assert keep[0, 0].tolist() == [[True, True, False], [True, True, False], [False] * 3]
    rows = layer_report._real_mask((1, 3, 5), mask)
    assert rows[0, :, 0].tolist() == [True, True, False]
    assert layer_report._real_mask((1, 7), mask) is None


def _per_row_int8(kernel_t):
    scale = np.abs(kernel_t).max(axis=1) / 127.0
    q = np.clip(np.round(kernel_t / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def test_int8_of_a_layernorm_model_keeps_scores_and_statistics_float_and_ffn_output_dynamic(
    model_dirs, tmp_path
):
    directory, config, params = model_dirs[VARIANT]
    calibration = Examples(*padded_inputs(config, n=8, seed=3).values())
    report = export_tflite(
        load_for_export(directory),
        "classification",
        tmp_path / "int8.tflite",
        TFLiteOptions(quantize="int8", seq_len=SEQ_LEN, latency_runs=0),
        calibration=calibration,
    )
    flatbuffer = (tmp_path / "int8.tflite").read_bytes()
    _, ops = _ops(flatbuffer)
    dynamic = static = 0
    for name, op, ins, outs in ops:
        if name == "SOFTMAX":
            assert _type(ins[0]) == "FLOAT32"
        if name in ("SELECT_V2", "RESHAPE") and "norm" in tflite.module_of(_tname(outs[0])):
            assert _type(outs[0]) == "FLOAT32", _tname(outs[0])  # LayerNorm mean / variance
        if name != "FULLY_CONNECTED":
            continue
        module = tflite.module_of(_tname(outs[0]))
        assert _type(ins[1]) == "INT8"
        if re.search(r"ffn_\d+/output$", module):
            dynamic += 1
            assert (_type(ins[0]), _type(outs[0])) == ("FLOAT32", "FLOAT32")
            assert op.builtinOptions.asymmetricQuantizeInputs
            layer = module.split("/")[1]
            kernel = np.asarray(params["encoder"][layer]["ffn"]["ffn_0"]["output"]["kernel"])
            q, scale = _per_row_int8(kernel.T)
            w = ins[1]
            got = np.frombuffer(
                np.asarray(model_buffer(flatbuffer, w), np.uint8).tobytes(), np.int8
            )
            np.testing.assert_array_equal(got.reshape(q.shape), q)
            np.testing.assert_allclose(w.quantization.scale, scale, rtol=1e-6)
        else:
            static += 1
            assert (_type(ins[0]), _type(outs[0])) == ("INT8", "INT8")
    assert dynamic == config.num_layers and static == 5 * config.num_layers + 2
    assert report.agreement >= 0.75
    inputs = padded_inputs(config, n=8, seed=9)
    got = run_file(flatbuffer, inputs)["logits"]
    want = np.asarray(jax_outputs(config, params, inputs).logits)
    cos = (got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want)
    assert cos > 0.95


def model_buffer(flatbuffer, tensor):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    return model.buffers[tensor.buffer].data


def test_nonorm_model_keeps_every_dense_layer_static_int8(model_dirs, tmp_path):
    directory, config, _ = model_dirs["mobilebert_micro"]
    calibration = Examples(*padded_inputs(config, n=8, seed=3).values())
    export_tflite(
        load_for_export(directory),
        "classification",
        tmp_path / "nonorm.tflite",
        TFLiteOptions(quantize="int8", seq_len=SEQ_LEN, latency_runs=0),
        calibration=calibration,
    )
    _, ops = _ops((tmp_path / "nonorm.tflite").read_bytes())
    fc = [(ins, outs) for name, _, ins, outs in ops if name == "FULLY_CONNECTED"]
    assert fc and all(_type(ins[0]) == _type(outs[0]) == "INT8" for ins, outs in fc)


def cli_export(*args):
    return cli.main([*map(str, args), "--seq-len", str(SEQ_LEN), "--latency-runs", "0"])


def test_cli_report_writes_table_csv_and_plot(model_dirs, sentences, tmp_path, capsys):
    directory = model_dirs[VARIANT][0]
    out = tmp_path / "out" / "tb_int8.tflite"
    code = cli_export(
        "--checkpoint", directory, "--task", "classification", "--quantize", "int8",
        "--calibration-data", sentences, "--num-calibration", "10", "--out", out, "--report",
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    prefix = tmp_path / "out" / "tb_int8_layers"
    for suffix in (".md", ".csv", ".png"):
        assert prefix.with_suffix(suffix).is_file()
    assert "per-layer int8 error over 10 calibration examples" in text
    assert "attention scores worst" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (("--quantize", "none", "--report"), "--report compares an int8 file"),
        (("--quantize", "int8", "--dynamic-layers", "nothing_here$"), "matches none of the"),
        (("--quantize", "int8", "--dynamic-layers", "ffn_(\\d"), "is not a regular expression"),
        (("--quantize", "int8", "--int8-attention"), "--int8-attention needs a finite"),
    ],
)
def test_bad_report_and_layer_options_are_one_line_errors(
    model_dirs, sentences, tmp_path, capsys, args, message
):
    directory = model_dirs[VARIANT][0]
    out = tmp_path / "o" / "x.tflite"
    code = cli_export(
        "--checkpoint", directory, "--task", "classification", "--calibration-data", sentences,
        "--num-calibration", "8", "--out", out, *args,
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert not out.exists()
