"""Every micro variant x task in float, the quantization modes across them (slow), and a
trained model's int8 metric.

Float files must match `Model.apply` to 1e-4 (and an exact-GELU model's file
holds one exact GELU op per activation, no erf polynomial); quantized files of
these random models are checked for agreement with the float outputs (cosine
of the flattened outputs), since their task metric means nothing; the metric
check uses a model trained here on a learnable synthetic task.

Quantized cases: int8 (the mode students ship in, and the one with the most
machinery) on every (variant, task) case; fp16 and dynamic int8 each on a set
that still meets every variant and every task once: a pairwise cover instead
of the full product, which added 9 conversions (~2 minutes of CI) and no
combination that these do not exercise.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from export_helpers import SEQ_LEN, VARIANTS, expected, padded_inputs, run_file

from mbert_jax.export import cli, graph, tflite
from mbert_jax.export.data import Examples
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export


def _export(directory, task, path, quantize, config):
    cal = padded_inputs(config, n=16, seed=3)
    export_tflite(
        load_for_export(directory), task, path,
        TFLiteOptions(quantize=quantize, seq_len=SEQ_LEN, latency_runs=0, num_verify=4),
        calibration=Examples(*cal.values()),
    )  # fmt: skip
    flatbuffer = path.read_bytes()
    assert tflite.custom_ops(flatbuffer) == []
    return flatbuffer


@pytest.mark.slow
@pytest.mark.parametrize("task", graph.TASKS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_float_export_matches_jax(model_dirs, tmp_path, variant, task):
    directory, config, params = model_dirs[variant]
    flatbuffer = _export(directory, task, tmp_path / "f.tflite", "none", config)
    inputs = padded_inputs(config)
    got, want = run_file(flatbuffer, inputs), expected(config, params, inputs, task)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-4, rtol=0, err_msg=k)
    if config.hidden_act == "gelu":  # exact GELU: one builtin op each, made exact
        ops = tflite.builtin_ops(flatbuffer)
        assert tflite.gelu_options(flatbuffer) == [False] * graph.gelu_count(config, task), ops
        assert not {"ABS", "EXP"} & set(ops), ops  # what the erf polynomial leaves


INT8_CASES = [(v, t) for v in VARIANTS for t in ("classification", "mlm")] + [
    ("mobilebert_micro", "qa"),
    ("mobilebert_micro", "embedding"),
    ("tinybert4_micro", "qa"),
    ("mobilebert_micro", "token_classification"),
]
# fp16 and dynamic int8: every variant and every task once each.
OTHER_CASES = {
    "fp16": [
        ("mobilebert_micro", "embedding"),
        ("mobilebert_tiny_micro", "mlm"),
        ("tinybert4_micro", "qa"),
        ("bert_base_micro", "classification"),
        ("bert_base_micro", "token_classification"),
    ],
    "dynamic_int8": [
        ("mobilebert_micro", "qa"),
        ("mobilebert_tiny_micro", "classification"),
        ("tinybert4_micro", "mlm"),
        ("bert_base_micro", "mlm"),
        ("mobilebert_micro", "embedding"),
        ("tinybert4_micro", "token_classification"),
    ],
}
QUANTIZED_CASES = [(v, t, "int8") for v, t in INT8_CASES] + [
    (v, t, q) for q, cases in OTHER_CASES.items() for v, t in cases
]


def test_quantized_cases_meet_every_variant_and_task_in_every_mode():
    for quantize in ("fp16", "dynamic_int8", "int8"):
        cases = [(v, t) for v, t, q in QUANTIZED_CASES if q == quantize]
        assert {v for v, _ in cases} == set(VARIANTS), quantize
        assert {t for _, t in cases} == set(graph.TASKS), quantize


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "task", "quantize"), QUANTIZED_CASES)
def test_quantized_export_agrees_with_jax(model_dirs, tmp_path, variant, task, quantize):
    directory, config, params = model_dirs[variant]
    flatbuffer = _export(directory, task, tmp_path / "q.tflite", quantize, config)
    inputs = padded_inputs(config, n=4, seed=11)
    got, want = run_file(flatbuffer, inputs), expected(config, params, inputs, task)
    for k in want:
        a, b = got[k].ravel(), want[k].ravel()
        if quantize == "fp16":
            assert np.abs(a - b).max() <= 1e-2 * np.abs(b).max(), k
        cosine = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
        assert cosine > 0.95, (k, cosine)


def _train_synthetic_classifier(config, steps=400, seq_len=SEQ_LEN):
    """Label = whether the first token after [CLS] is in the lower half of the vocabulary."""
    import jax
    import optax

    from mbert_jax.models import Model, init_params

    model = Model(config, heads=("classifier",))
    params = init_params(model, jax.random.key(0))
    opt = optax.adam(1e-3)
    state = opt.init(params)

    def batch(rng, n):
        ids = rng.integers(5, config.vocab_size, (n, seq_len)).astype(np.int32)
        lengths = rng.integers(4, seq_len + 1, n)
        mask = (np.arange(seq_len)[None] < lengths[:, None]).astype(np.int32)
        ids = ids * mask
        ids[:, 0] = 2
        labels = (ids[:, 1] < config.vocab_size // 2).astype(np.int32)
        return ids, mask, np.zeros_like(ids), labels

    @jax.jit
    def step(params, state, ids, mask, types, labels):
        def loss_fn(p):
            logits = model.apply({"params": p}, ids, mask, types).logits
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(0)
    for _ in range(steps):
        params, state = step(params, state, *batch(rng, 32))
    return jax.tree.map(np.asarray, params), batch


@pytest.mark.slow
def test_int8_metric_of_a_trained_model_is_within_one_point_of_float(tmp_path, capsys):
    from export_helpers import write_vocab

    from mbert_jax.models import variants
    from mbert_jax.models.io import save_model

    config = variants.get("mobilebert_micro", hidden_dropout=0.0, attention_dropout=0.0)
    params, batch = _train_synthetic_classifier(config)
    vocab = write_vocab(tmp_path / "vocab.txt", config.vocab_size)
    directory = save_model(tmp_path / "model", config, ("classifier",), params, vocab_file=vocab)
    for name, seed, n in (("cal", 1, 100), ("dev", 2, 500)):
        ids, mask, types, labels = batch(np.random.default_rng(seed), n)
        np.savez(tmp_path / f"{name}.npz", input_ids=ids, attention_mask=mask,
                 token_type_ids=types, labels=labels)  # fmt: skip
    out = tmp_path / "cls_int8.tflite"
    code = cli.main(
        ["--checkpoint", str(directory), "--task", "classification", "--quantize", "int8",
         "--seq-len", str(SEQ_LEN), "--calibration-data", str(tmp_path / "cal.npz"),
         "--eval-data", str(tmp_path / "dev.npz"), "--out", str(out), "--latency-runs", "0"]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    m = re.search(r"accuracy: jax ([\d.]+)  tflite ([\d.]+)  drop ([-+][\d.]+) points", text)
    assert m, text
    float_acc, int8_acc, drop = map(float, m.groups())
    assert float_acc >= 90.0, text  # the task was learned
    assert drop <= 1.0, text
    assert "verified on 500 held-out examples" in text
