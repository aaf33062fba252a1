"""Unit tests of the model zoo: validation, variants, parameter counts, sharing,
layer truncation, gradient stops, masks and dtypes.

Expected values come from docs/reference.md, from transformers' own PyTorch models
(parameter counts on the meta device) or from numpy by hand, never from the
code under test.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from mbert_jax.models import ConfigError, ModelConfig, variants
from mbert_jax.models.attention import make_attention_mask
from mbert_jax.models.model import Model, logical_axes, param_shapes


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


def random_params(config, heads=(), seed=0, scale=0.05):
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
def forward(config, heads=(), **static):
    model = Model(config, heads)
    return jax.jit(
        lambda params, ids, mask=None, types=None, positions=None: model.apply(
            {"params": params}, ids, mask, types, positions, **static
        )
    )


def count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def ids_for(config, shape=(2, 12), seed=0):
    return np.random.RandomState(seed).randint(1, config.vocab_size, shape).astype(np.int32)


# ------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(hidden_size=100, num_heads=12), "num_heads: hidden_size=100 is not divisible"),
        (
            dict(variant="mobilebert_micro", intra_bottleneck_size=30),
            "num_heads: intra_bottleneck_size=30 is not divisible",
        ),
        (
            dict(variant="mobilebert_micro", intra_bottleneck_size=128),
            "intra_bottleneck_size: (128) is larger than hidden_size",
        ),
        (
            dict(variant="mobilebert_micro", use_bottleneck_attention=True),
            "key_query_shared_bottleneck: and use_bottleneck_attention are exclusive",
        ),
        (dict(use_bottleneck=True), "intra_bottleneck_size: must be a positive integer"),
        (dict(embedding_size=128), "embedding_size: is 128 but hidden_size is 768"),
        (dict(attention_mask_value=6.0), "attention_mask_value: must be negative"),
        (dict(hidden_dropout=1.0), "hidden_dropout: must be in [0, 1)"),
        (dict(hidden_act="swish"), "hidden_act: must be one of"),
        (dict(num_layers=0), "num_layers: must be a positive integer"),
        (dict(type_vocab_size=-1), "type_vocab_size: must be an integer >= 0"),
        (dict(key_query_shared_bottleneck=True), "key_query_shared_bottleneck: requires"),
        (dict(num_labels=3, label_names=("a", "b")), "label_names: has 2 names but num_labels"),
        (dict(label_names=("a", "a")), "label_names: repeats ['a']"),
        (dict(label_names=("a", "")), "label_names: must be None or a tuple of non-empty"),
    ],
)
def test_invalid_configs_name_the_field(fields, message):
    fields = dict(fields)
    variant = fields.pop("variant", None)
    with pytest.raises(ConfigError) as info:
        if variant:
            variants.get(variant, **fields)
        else:
            ModelConfig(**fields)
    assert f"ModelConfig.{message}" in str(info.value)


def test_unknown_fields_and_variants_list_the_valid_ones():
    with pytest.raises(ConfigError, match="num_hidden_layers") as info:
        ModelConfig().replace(num_hidden_layers=3)
    assert "num_layers" in str(info.value)
    with pytest.raises(ValueError) as info:
        variants.get("mobilebert_huge")
    for name in ("bert_base", "ibbert_large", "mobilebert_tiny", "albert_base_micro"):
        assert name in str(info.value)


def test_every_variant_builds_and_micro_keeps_the_structure():
    for name in variants.VARIANTS:
        full, micro = variants.get(name), variants.get(name + "_micro")
        for field in (
            "use_bottleneck",
            "key_query_shared_bottleneck",
            "use_bottleneck_attention",
            "num_feedforward_networks",
            "embedding_transform",
            "layer_sharing",
            "normalization",
            "hidden_act",
            "use_pooler",
            "type_vocab_size",
            "attention_mask_value",
        ):
            assert getattr(full, field) == getattr(micro, field), (name, field)
        assert micro.num_layers <= full.num_layers and micro.hidden_size < full.hidden_size


# ------------------------------------------------------------ inputs
def test_inputs_longer_than_the_position_table_fail():
    config = variants.get("bert_base_micro")
    params = random_params(config)
    ids = np.ones((1, config.max_position_embeddings + 1), np.int32)
    with pytest.raises(ValueError, match="max_position_embeddings=128"):
        Model(config, ()).apply({"params": params}, ids)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("input_ids", r"input_ids has values in \[0, 2048\].*vocab_size=2048"),
        ("negative", r"input_ids has values in \[-1, .*vocab_size"),
        ("token_type_ids", r"token_type_ids has values in \[0, 2\].*type_vocab_size=2"),
    ],
)
def test_ids_outside_the_tables_fail(bad, message):
    config = variants.get("bert_base_micro")
    params = random_params(config)
    ids = np.zeros((2, 6), np.int32)
    types = np.zeros_like(ids)
    if bad == "input_ids":
        ids[1, 3] = config.vocab_size
    elif bad == "negative":
        ids[0, 0] = -1
    else:
        types[0, 2] = 2
    with pytest.raises(ValueError, match=message):
        Model(config, ()).apply({"params": params}, ids, None, types)


# ------------------------------------------------------------ parameter counts
def _torch_count(model_cls, config_cls, **kw) -> int:
    with torch.device("meta"):
        model = model_cls(config_cls(**kw))
    return sum(p.numel() for p in model.parameters())


def _backbone(config) -> tuple[int, int]:
    """(embeddings + blocks, pooler) parameters of our encoder."""
    encoder = dict(param_shapes(Model(config, ()))["encoder"])
    pooler = count(encoder.pop("pooler", {}))
    return count(encoder), pooler


def test_parameter_counts_match_reference_and_transformers():
    # docs/reference.md#parameter-counts: embeddings + blocks (no pooler, no untied MLM output).
    for name, millions, tol in (
        ("mobilebert", 24.58, 0.005),
        ("mobilebert_tiny", 15.49, 0.005),
        ("ibbert_large", 294.2, 0.05),
    ):
        backbone, _ = _backbone(variants.get(name))
        assert abs(backbone / 1e6 - millions) <= tol, (name, backbone)
    # The issue: TinyBERT4 ~14.4M (paper 14.5M), with the pooler.
    assert abs(sum(_backbone(variants.get("tinybert4"))) / 1e6 - 14.4) < 0.1
    # transformers' models of the same shape, exactly (their MobileBERT has no pooler
    # parameters with classifier_activation=False, as the official one).
    bert = _torch_count(transformers.BertModel, transformers.BertConfig)
    assert sum(_backbone(variants.get("bert_base"))) == bert  # ~110M with the pooler
    assert abs(bert / 1e6 - 110) < 1
    tinybert = _torch_count(
        transformers.BertModel,
        transformers.BertConfig,
        hidden_size=312,
        num_hidden_layers=4,
        intermediate_size=1200,
    )
    assert sum(_backbone(variants.get("tinybert4"))) == tinybert
    mobile = dict(classifier_activation=False)
    tiny = dict(
        mobile,
        num_feedforward_networks=2,
        key_query_shared_bottleneck=False,
        use_bottleneck_attention=True,
    )
    for name, kw in (("mobilebert", mobile), ("mobilebert_tiny", tiny)):
        ref = _torch_count(transformers.MobileBertModel, transformers.MobileBertConfig, **kw)
        assert sum(_backbone(variants.get(name))) == ref, name


def test_mobilebert_mlm_output_is_tied_in_the_first_e_columns():
    config = variants.get("mobilebert")
    mlm = param_shapes(Model(config, ("mlm",)))["mlm"]
    # V x (512 - 128) untied columns: about 11.7M (docs/reference.md: "about 12M on top").
    assert mlm["extra_output_weights"].shape == (30522, 384)
    bert_mlm = param_shapes(Model(variants.get("bert_base"), ("mlm",)))["mlm"]
    assert "extra_output_weights" not in bert_mlm  # BERT is fully tied


# ------------------------------------------------------------ ALBERT sharing
def _albert_count(c, shared_parts: int) -> int:
    """Hand count of an ALBERT micro encoder; `shared_parts` blocks' worth of parameters."""
    h, i, e = c.hidden_size, c.intermediate_size, c.embed_size
    embeddings = c.vocab_size * e + c.max_position_embeddings * h + 2 * h + (e * h + h) + 2 * h
    attention = 4 * (h * h + h) + 2 * h
    ffn = (h * i + i) + (i * h + h) + 2 * h
    pooler = h * h + h
    return embeddings + shared_parts(attention, ffn) + pooler


@pytest.mark.parametrize(
    "sharing, parts",
    [
        ("all", lambda a, f: a + f),
        ("attention", lambda a, f: a + 4 * f),
        ("ffn", lambda a, f: 4 * a + f),
        ("none", lambda a, f: 4 * (a + f)),
    ],
)
def test_albert_sharing_counts(sharing, parts):
    config = variants.get("albert_base_micro", layer_sharing=sharing)
    assert config.num_layers == 4
    shapes = param_shapes(Model(config, ()))
    assert count(shapes) == _albert_count(config, parts)
    encoder = shapes["encoder"]
    assert ("shared_attention" in encoder) == (sharing in ("all", "attention"))
    assert ("shared_ffn" in encoder) == (sharing in ("all", "ffn"))


def test_albert_sharing_equals_an_unshared_stack_of_copies():
    """All-shared ALBERT == the unshared encoder with every layer a copy of the shared block."""
    shared = variants.get("albert_base_micro")
    unshared = shared.replace(layer_sharing="none")
    params = random_params(shared)
    enc = dict(params["encoder"])
    block = {"attention": enc.pop("shared_attention"), "ffn": enc.pop("shared_ffn")}
    for i in range(shared.num_layers):
        enc[f"layers_{i}"] = block
    copies = {"encoder": enc}
    ids = ids_for(shared)
    a = forward(shared, output_hidden_states=True)(params, ids)
    b = forward(unshared, output_hidden_states=True)(copies, ids)
    for x, y in zip(a.encoder.hidden_states, b.encoder.hidden_states):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    # And the layers really differ from each other (the input changes per layer).
    h = a.encoder.hidden_states
    assert float(jnp.abs(h[0] - h[1]).max()) > 1e-2


# ------------------------------------------------------------ truncation and gradients
def test_num_layers_runs_the_first_blocks_only():
    config = variants.get("mobilebert_micro")
    heads = ("mlm", "nsp")
    params = random_params(config, heads)
    ids = ids_for(config)
    full = forward(config, heads, output_hidden_states=True)(params, ids)
    cut = forward(config, heads, num_layers=2, output_hidden_states=True)(params, ids)
    np.testing.assert_array_equal(
        np.asarray(cut.encoder.last_hidden_state), np.asarray(full.encoder.hidden_states[1])
    )
    assert len(cut.encoder.hidden_states) == 2
    assert cut.encoder.pooled_output is None and cut.mlm_logits is None and cut.nsp_logits is None
    # A 2-layer model holding the first two layers computes the same thing.
    two = config.replace(num_layers=2)
    enc = {k: v for k, v in params["encoder"].items() if k not in ("layers_2", "layers_3")}
    small = forward(two)({"encoder": enc}, ids)
    np.testing.assert_allclose(
        np.asarray(small.encoder.last_hidden_state),
        np.asarray(cut.encoder.last_hidden_state),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="num_layers=5 outside"):
        Model(config, ()).apply({"params": {"encoder": params["encoder"]}}, ids, num_layers=5)


@pytest.mark.parametrize("stop, run", [(2, 4), (0, 4), (3, 3)])
def test_stop_gradient_below(stop, run):
    config = variants.get("bert_base_micro", num_layers=4)
    params = random_params(config)
    ids = ids_for(config)
    model = Model(config, ())

    def loss(p):
        out = model.apply({"params": p}, ids, num_layers=run, stop_gradient_below=stop)
        return jnp.sum(out.encoder.last_hidden_state**2)

    grads = jax.jit(jax.grad(loss))(params)["encoder"]

    def norm(tree):
        return float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))

    assert norm(grads["embeddings"]) == 0.0
    for i in range(config.num_layers):
        g = norm(grads[f"layers_{i}"])
        if i < stop or i >= run:
            assert g == 0.0, (i, g)
        else:
            assert g > 0.0, (i, g)


# ------------------------------------------------------------ attention masks
def test_packed_attention_mask_by_hand():
    # Row: piece 1 (3 tokens), piece 2 (2 tokens), 2 padding tokens.
    mask = np.array([[1, 1, 1, 2, 2, 0, 0]])
    expected = np.array(
        [
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [0, 0, 0, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],  # padding queries see every real key (as BERT)
            [1, 1, 1, 1, 1, 0, 0],
        ],
        bool,
    )
    got = np.asarray(make_attention_mask(jnp.asarray(mask)))
    assert got.shape == (1, 1, 7, 7)
    np.testing.assert_array_equal(got[0, 0], expected)


@pytest.mark.parametrize("name", ["bert_base_micro", "mobilebert_micro"])
def test_packed_pieces_equal_separate_sequences(name):
    """Two pieces packed in one row (piece ids, restarted positions) = each run alone.

    The last piece is followed by the row's padding, so it is compared with
    its sequence run alone with the same padding (MobileBERT's trigram input
    sees a padding neighbour, as in the official code). MobileBERT's trigram
    input must not see across the piece boundary. (With the official mask
    value -6 a masked key keeps a small weight, so packing cannot be exact;
    the test uses the large negative.)
    """
    config = variants.get(name, attention_mask_value=None)
    params = random_params(config)
    a, b = ids_for(config, (1, 5), seed=1), ids_for(config, (1, 4), seed=2)
    packed = np.concatenate([a, b, np.zeros((1, 3), np.int32)], axis=1)
    pieces = np.array([[1] * 5 + [2] * 4 + [0] * 3])
    positions = np.array([list(range(5)) + list(range(4)) + [0] * 3])
    run = forward(config)
    out = run(params, packed, pieces, None, positions)
    alone_a = run(params, a).encoder.last_hidden_state
    padded_b = np.concatenate([b, np.zeros((1, 3), np.int32)], axis=1)
    alone_b = run(params, padded_b, np.array([[1] * 4 + [0] * 3])).encoder.last_hidden_state[:, :4]
    hidden = np.asarray(out.encoder.last_hidden_state)
    np.testing.assert_allclose(hidden[:, :5], np.asarray(alone_a), atol=1e-5)
    np.testing.assert_allclose(hidden[:, 5:9], np.asarray(alone_b), atol=1e-5)


@pytest.mark.parametrize("value", [-6.0, None])
def test_masked_keys_get_the_configured_logit(value):
    """Official MobileBERT replaces masked scores with -6 (not adds); None: zero weight."""
    config = variants.get("mobilebert_micro", attention_mask_value=value)
    params = random_params(config)
    ids = ids_for(config, (2, 8))
    mask = np.array([[1] * 8, [1] * 5 + [0] * 3])
    out = forward(config, output_attentions=True)(params, ids, mask)
    scores = np.asarray(out.encoder.attention_scores[0])
    probs = np.asarray(out.encoder.attention_probs[0])
    masked = scores[1, :, :, 5:]
    if value is None:
        assert np.all(masked <= np.finfo(np.float32).min / 2) and np.all(probs[1, :, :, 5:] == 0)
    else:
        np.testing.assert_array_equal(masked, -6.0)
        # softmax by hand over real scores and the three -6 logits.
        real = scores[1, :, :, :5].astype(np.float64)
        z = np.exp(real).sum(-1) + 3 * np.exp(-6.0)
        np.testing.assert_allclose(probs[1, :, :, 5], np.exp(-6.0) / z, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)


# ------------------------------------------------------------ numerics and metadata
def test_bfloat16_compute_keeps_float32_params():
    config = variants.get("bert_base_micro")
    params = random_params(config, ("mlm",))
    ids = ids_for(config)
    ref = forward(config, ("mlm",))(params, ids)
    low = forward(config.replace(dtype="bfloat16"), ("mlm",))(params, ids)
    assert low.encoder.last_hidden_state.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(param_shapes(Model(config))))
    np.testing.assert_allclose(
        np.asarray(low.encoder.last_hidden_state, np.float32),
        np.asarray(ref.encoder.last_hidden_state),
        atol=0.1,
    )


def test_every_parameter_has_logical_axis_names():
    for name in ("mobilebert_micro", "albert_base_micro", "mobilebert_tiny_micro"):
        config = variants.get(name)
        model = Model(config, ("mlm", "nsp", "classifier", "qa"))
        specs = traverse_util.flatten_dict(logical_axes(model))
        shapes = traverse_util.flatten_dict(param_shapes(model))
        assert specs.keys() == shapes.keys()
        for path, spec in specs.items():
            assert len(spec) == len(shapes[path].shape), path
            # Only position / token-type rows and head outputs are unnamed.
            unnamed = [i for i, n in enumerate(spec) if n is None]
            assert len(unnamed) <= 1, (path, spec)


# ------------------------------------------------------------ token classification
def test_token_classifier_is_a_dense_layer_at_every_position(tmp_path):
    """token_logits = last hidden state @ kernel + bias, by numpy; label names round-trip."""
    from mbert_jax.models import io

    config = variants.get("tinybert4_micro", num_labels=3, label_names=["O", "B-X", "I-X"])
    assert config.label_names == ("O", "B-X", "I-X")  # lists (JSON) become a tuple
    heads = ("token_classifier",)
    params = random_params(config, heads)
    ids = ids_for(config, (2, 9))
    mask = np.ones_like(ids)
    mask[1, 5:] = 0
    out = forward(config, heads)(params, ids, mask)
    assert out.token_logits.shape == (2, 9, 3) and out.logits is None
    dense = params["token_classifier"]["dense"]
    hidden = np.asarray(out.encoder.last_hidden_state, np.float64)
    expected = hidden @ np.asarray(dense["kernel"], np.float64) + np.asarray(dense["bias"])
    np.testing.assert_allclose(np.asarray(out.token_logits), expected, atol=1e-5)
    io.save_model(tmp_path, config, heads, params)
    loaded, loaded_heads = io.load_config(tmp_path)
    assert loaded == config and loaded_heads == heads
    # A new head size drops the names of the old one.
    assert config.replace(num_labels=5).label_names is None
