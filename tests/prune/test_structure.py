"""Structured pruning: per-layer configs, gates, `prune`, model directories and `describe`.

Expected values come from a hand-written float64 numpy BERT forward
(`numpy_bert.py`), from the gated full model (a zero gate is a removed head
or neuron), from XLA's own FLOP count and from the arrays' sizes; never
from the code under test alone.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import numpy_bert
import pytest
from flax import traverse_util

from mbert_jax import tree
from mbert_jax.models import ConfigError, Encoder, ModelConfig, hf, io, variants
from mbert_jax.models.model import Model, param_shapes
from mbert_jax.models.summary import encoder_flops_per_token, param_counts
from mbert_jax.prune import PruneError, gates_from_keep, ones_gates, prune


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def random_params(config, heads=("classifier",), seed=0, scale=0.1):
    """Random params of the right tree (norm scales near 1), without a slow eager init."""
    rng = np.random.RandomState(seed)
    flat = traverse_util.flatten_dict(param_shapes(Model(config, heads)))
    return traverse_util.unflatten_dict(
        {
            k: (k[-1] == "scale") + scale * rng.standard_normal(v.shape).astype(np.float32)
            for k, v in flat.items()
        }
    )


@functools.cache
def forward(config, heads=("classifier",)):
    model = Model(config, heads)
    return jax.jit(
        lambda params, ids, mask, gates=(None, None): model.apply(
            {"params": params}, ids, mask, head_gates=gates[0], neuron_gates=gates[1]
        )
    )


def inputs(config, batch=2, length=10, seed=1):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, config.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, length - 3 :] = 0  # padding in the second row
    return ids, mask


def random_keep(config, seed=0, min_heads=1):
    """Per block, a random subset of heads and neurons (a different count per block)."""
    rng = np.random.RandomState(seed)
    keep_heads, keep_neurons = {}, {}
    for layer in range(config.num_layers):
        h, w = config.heads_at(layer), config.intermediate_size_at(layer)
        keep_heads[layer] = sorted(rng.choice(h, rng.randint(min_heads, h + 1), replace=False))
        keep_neurons[layer] = sorted(rng.choice(w, rng.randint(1, w + 1), replace=False))
    return keep_heads, keep_neurons


# ------------------------------------------------------------ per-layer config
@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(layer_heads=(4, 4)), "layer_heads: has 2 entries but num_layers is 6"),
        (
            dict(layer_heads=(4, 0, 4, 4, 4, 4)),
            "layer_heads: has [0], each must be in 1..num_heads=4",
        ),
        (dict(layer_heads=(4, 5, 4, 4, 4, 4)), "layer_heads: has [5], each must be in 1..num_"),
        (dict(layer_intermediate_sizes=(8,) * 5), "layer_intermediate_sizes: has 5 entries"),
        (dict(layer_intermediate_sizes=(8, 0, 8, 8, 8, 8)), "layer_intermediate_sizes: has [0]"),
        (dict(layer_heads=(4, 2.5, 4, 4, 4, 4)), "layer_heads: must be None or a tuple of int"),
        (
            dict(layer_heads=(2,) * 6, layer_sharing="all"),
            "layer_heads: cannot be combined with layer_sharing='all'",
        ),
    ],
)
def test_bad_per_layer_fields_are_one_line_config_errors(fields, message):
    with pytest.raises(ConfigError) as info:
        variants.get("bert_base_micro", **fields)
    assert f"ModelConfig.{message}" in str(info.value)
    assert "\n" not in str(info.value)


def test_default_per_layer_fields_leave_the_parameter_tree_unchanged():
    base = variants.get("bert_base_micro")
    same = base.replace(layer_heads=(4,) * 6, layer_intermediate_sizes=(256,) * 6)
    assert tree.shapes(param_shapes(Model(base, ()))) == tree.shapes(param_shapes(Model(same, ())))
    params = random_params(base)
    ids, mask = inputs(base)
    plain = forward(base)(params, ids, mask)
    gated = forward(base)(params, ids, mask, ones_gates(base))
    # All-one gates are exact multiplications by 1: bit for bit the plain model.
    np.testing.assert_array_equal(plain.logits, gated.logits)
    np.testing.assert_array_equal(plain.encoder.last_hidden_state, gated.encoder.last_hidden_state)


# ------------------------------------------------------------ gates vs prune
@pytest.mark.parametrize(
    "name", ["bert_base_micro", "tinybert4_micro", "ibbert_large_micro", "mobilebert_micro"]
)
def test_zero_gates_equal_the_pruned_model(name):
    config = variants.get(name)
    params = random_params(config)
    keep_heads, keep_neurons = random_keep(config)
    if config.num_feedforward_networks > 1:  # stacked FFNs: heads only
        keep_neurons = {}
    small_config, small = prune(config, params, keep_heads, keep_neurons)
    assert small_config.layer_heads == tuple(len(keep_heads[i]) for i in range(config.num_layers))
    ids, mask = inputs(config)
    gated = forward(config)(params, ids, mask, gates_from_keep(config, keep_heads, keep_neurons))
    pruned = forward(small_config)(small, ids, mask)
    for a, b in (
        (gated.encoder.last_hidden_state, pruned.encoder.last_hidden_state),
        (gated.logits, pruned.logits),
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)
    # The pruned model really is smaller: its kernels have the kept shapes.
    flat = tree.shapes(small)
    for layer in range(config.num_layers):
        q = flat[f"encoder/layers_{layer}/attention/self_attention/query/kernel"]
        assert q[1] == len(keep_heads[layer]) and q[2] == config.head_dim
        if keep_neurons:
            assert flat[f"encoder/layers_{layer}/ffn/ffn_0/output/kernel"][0] == len(
                keep_neurons[layer]
            )


@pytest.mark.parametrize("name", ["bert_base_micro", "tinybert4_micro"])
def test_pruned_bert_matches_a_numpy_forward(name):
    config = variants.get(name)
    params = random_params(config, seed=3)
    keep_heads, keep_neurons = random_keep(config, seed=4)
    keep_layers = [0, 2, 5] if config.num_layers == 6 else [1]
    keep_heads = {i: keep_heads[i] for i in keep_layers}
    keep_neurons = {i: keep_neurons[i] for i in keep_layers}
    small_config, small = prune(config, params, keep_heads, keep_neurons, keep_layers)
    assert small_config.num_layers == len(keep_layers)
    ids, mask = inputs(config)
    ours = forward(small_config)(small, ids, mask)
    # The reference runs the original weights with zero gates on the removed
    # heads / neurons and only the kept blocks: nothing of `prune` in it.
    head_gates = [np.isin(np.arange(config.num_heads), keep_heads[i]) for i in keep_layers]
    neuron_gates = [
        np.isin(np.arange(config.intermediate_size), keep_neurons[i]) for i in keep_layers
    ]
    ref = numpy_bert.forward(
        params,
        ids,
        mask,
        eps=config.layer_norm_eps,
        head_gates=head_gates,
        neuron_gates=neuron_gates,
        layers=keep_layers,
    )
    np.testing.assert_allclose(ours.encoder.last_hidden_state, ref["hidden"], atol=1e-4)
    np.testing.assert_allclose(ours.logits, ref["logits"], atol=1e-5)
    # And the numpy forward of the sliced weights themselves agrees.
    sliced = numpy_bert.forward(small, ids, mask, eps=config.layer_norm_eps)
    np.testing.assert_allclose(sliced["logits"], ref["logits"], atol=1e-10)


def test_pruning_again_indexes_the_remaining_heads():
    config = variants.get("tinybert4_micro")
    params = random_params(config, seed=5)
    c1, p1 = prune(config, params, {0: [0, 2, 3], 1: [1, 3]}, {0: list(range(0, 192, 2))})
    c2, p2 = prune(c1, p1, {0: [0, 2]})  # heads 0 and 3 of the original block 0
    direct_c, direct = prune(config, params, {0: [0, 3], 1: [1, 3]}, {0: list(range(0, 192, 2))})
    assert c2 == direct_c and c2.layer_heads == (2, 2)
    assert c2.layer_intermediate_sizes == (96, 192)
    for k, v in tree.flat(direct).items():
        np.testing.assert_array_equal(tree.flat(p2)[k], v)


def test_uniform_ffn_width_stays_expressible_and_per_layer_heads_do_not():
    config = variants.get("tinybert4_micro")
    params = random_params(config)
    c, _ = prune(config, params, keep_neurons={1: list(range(100))}, keep_layers=[1])
    assert c.layer_intermediate_sizes is None and c.intermediate_size == 100
    assert c.layer_heads is None and c.num_layers == 1
    hf.check_expressible(c, ("classifier",))
    c, _ = prune(config, params, keep_heads={0: [1]})
    with pytest.raises(hf.ConversionError, match="layer_heads: .*prune_heads"):
        hf.check_expressible(c, ("classifier",))


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("tinybert4_micro", dict(keep_heads={0: []}), "keep_heads[0]: keeps nothing"),
        ("tinybert4_micro", dict(keep_heads={0: [0, 4]}), "keep_heads[0]: [0, 4] must be"),
        ("tinybert4_micro", dict(keep_heads={2: [0]}), "keep_heads: blocks [2] are not in"),
        ("tinybert4_micro", dict(keep_neurons={1: []}), "keep_neurons[1]: keeps nothing"),
        ("tinybert4_micro", dict(keep_layers=[]), "keep_layers: keeps nothing"),
        ("tinybert4_micro", dict(keep_layers=[1, 1]), "keep_layers: [1, 1] must be distinct"),
        ("albert_base_micro", dict(keep_heads={0: [1]}), "ModelConfig.layer_sharing='all'"),
        (
            "mobilebert_micro",
            dict(keep_neurons={0: [1]}),
            "ModelConfig.num_feedforward_networks=4",
        ),
    ],
)
def test_impossible_pruning_is_a_clear_error(name, kwargs, message):
    config = variants.get(name)
    with pytest.raises(PruneError) as info:
        prune(config, random_params(config), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------ directories, describe
def test_pruned_model_directory_round_trips_and_describe_counts_it(tmp_path):
    config = variants.get("bert_base_micro")
    heads = ("mlm", "nsp")
    params = random_params(config, heads)
    keep_heads, keep_neurons = random_keep(config, seed=7)
    small_config, small = prune(config, params, keep_heads, keep_neurons, [0, 1, 3, 4])
    io.save_model(tmp_path / "model", small_config, heads, small)
    loaded_config, loaded_heads, loaded = io.load_model(tmp_path / "model")
    assert loaded_config == small_config and loaded_heads == heads
    assert isinstance(loaded_config.layer_heads, tuple)
    assert tree.shapes(loaded) == tree.shapes(small)
    # describe's total (a pretraining checkpoint: encoder, pooler, MLM, NSP) is
    # the sum of the sizes of the arrays in the directory.
    arrays = sum(math.prod(v.shape) for v in tree.flat(loaded).values())
    assert param_counts(loaded_config).total == arrays
    p = subprocess.run(
        [sys.executable, "-m", "mbert_jax", "describe", str(tmp_path / "model")],
        capture_output=True,
        text=True,
        check=True,
    )
    heads_line = " ".join(str(small_config.heads_at(i)) for i in range(4))
    widths_line = " ".join(str(small_config.intermediate_size_at(i)) for i in range(4))
    assert f"per-layer heads (of 4, head width 16): {heads_line}" in p.stdout
    assert f"per-layer FFN widths (of 256): {widths_line}" in p.stdout
    assert f"{arrays / 1e6:9.3f}M" in p.stdout


def test_flops_of_a_pruned_model_match_xla():
    config = variants.get(
        "bert_base_micro",
        num_layers=3,
        layer_heads=(1, 4, 2),
        layer_intermediate_sizes=(16, 256, 100),
    )
    seq = 64
    enc = Encoder(config)
    ids = np.zeros((1, seq), np.int32)
    shapes = jax.eval_shape(lambda: enc.init(jax.random.key(0), ids))
    compiled = jax.jit(lambda p, x: enc.apply(p, x).last_hidden_state).lower(shapes, ids)
    cost = compiled.compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    analytic = seq * encoder_flops_per_token(config, seq)
    # By hand: 2 per kernel entry of every block, plus the score and context
    # products (4 * seq * heads * head_dim per token).
    kernels = sum(
        math.prod(s)
        for k, s in tree.shapes(nn.meta.unbox(shapes["params"])).items()
        if k.startswith("layers_") and k.endswith("kernel")
    )
    assert analytic == seq * (2 * kernels + 4 * seq * 16 * (1 + 4 + 2))
    assert analytic <= xla <= 1.2 * analytic, (analytic, xla)


def test_from_dict_takes_json_lists():
    config = ModelConfig.from_dict(
        dict(variants.get("tinybert4_micro").to_dict(), layer_heads=[1, 3])
    )
    assert config.layer_heads == (1, 3)
    hash(config)


def test_a_model_pruned_to_one_shape_per_layer_exports_to_transformers(tmp_path):
    import torch
    import transformers

    config = variants.get("bert_base_micro", num_labels=3)
    params = random_params(config, seed=9)
    keep = [1, 2, 4]
    neurons = {i: list(range(3, 200, 3)) for i in keep}  # 66 of 256 in every kept block
    small_config, small = prune(config, params, keep_neurons=neurons, keep_layers=keep)
    assert small_config.intermediate_size == 66 and small_config.num_layers == 3
    hf.save_hf(tmp_path / "hf", small_config, ("classifier",), small)
    ref_model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert ref_model.config.num_hidden_layers == 3 and ref_model.config.intermediate_size == 66
    ids, mask = inputs(config)
    with torch.no_grad():
        ref = ref_model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).logits.numpy()
    np.testing.assert_allclose(forward(small_config)(small, ids, mask).logits, ref, atol=1e-5)


def test_a_pruned_model_directory_exports_to_tflite(tmp_path):
    from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export

    config = variants.get("tinybert4_micro", num_labels=3)
    keep_heads = {0: [0, 2], 1: [3]}
    keep_neurons = {0: list(range(50)), 1: list(range(100))}
    small_config, small = prune(config, random_params(config), keep_heads, keep_neurons)
    io.save_model(tmp_path / "model", small_config, ("classifier",), small)
    report = export_tflite(
        load_for_export(tmp_path / "model"),
        "classification",
        tmp_path / "model.tflite",
        TFLiteOptions(seq_len=32, latency_runs=0),
    )
    # The exporter's own check: the TFLite model against the JAX model on the same inputs.
    assert report.max_abs_diff < 1e-4 and report.agreement == 1.0
