"""Parity with transformers' PyTorch BERT / MobileBERT, and the checkpoint round trip.

The reference models are transformers' own (eager attention, random seeded
weights, every parameter perturbed so that LayerNorm / NoNorm scales and
biases are not the trivial 1 / 0 and a swapped mapping shows). Inputs are a
padded batch with token types. Tolerance: 1e-4 absolute in float32.

Where transformers' defaults differ from the official MobileBERT, the tests
set them to match:
- transformers' `MobileBertConfig.classifier_activation` defaults to True (a
  tanh pooler); the official MobileBERT has none, so the reference configs set
  `classifier_activation=False` (one case keeps the pooler, as ours
  `use_pooler=True`);
- transformers gives masked keys a large negative logit, the official
  MobileBERT -6, so our side uses `attention_mask_value=None`.
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util

from mbert_jax.models import hf, io, variants
from mbert_jax.models.model import Model, param_shapes

TOL = 1e-4
PRETRAINING = ("mlm", "nsp")


@pytest.fixture(autouse=True)
def _exact_matmuls():
    # CPU matmuls are float32 anyway; on TPU/GPU the default would be bf16 passes.
    with jax.default_matmul_precision("highest"):
        yield


# ------------------------------------------------------------------ helpers
def padded_batch(vocab_size: int, length: int = 16, lengths=(16, 11, 5), seed: int = 0):
    """Rows of different lengths padded with 0, segment B in each row's second half."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab_size, (len(lengths), length)).astype(np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
        types[i, n // 2 : n] = 1
    return ids, mask, types


# Masked positions inside each row's real tokens (rows of length 16, 11, 5).
POSITIONS = np.array([[1, 4, 7, 15], [2, 3, 9, 10], [1, 2, 3, 4]])


def perturbed(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()


def random_params(config, heads, seed: int, scale: float = 0.05) -> dict:
    """Random params of the right tree (norm scales near 1), without a slow eager init."""
    rng = np.random.RandomState(seed)
    flat = traverse_util.flatten_dict(param_shapes(Model(config, heads)))
    return traverse_util.unflatten_dict(
        {
            path: (path[-1] == "scale") + scale * rng.standard_normal(x.shape).astype(np.float32)
            for path, x in flat.items()
        }
    )


def run_torch(model, ids, mask, types, **kw):
    with torch.inference_mode():
        return model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            output_hidden_states=True,
            output_attentions=True,
            **kw,
        )


@functools.cache
def _forward(config, heads):
    model = Model(config, heads)

    def forward(params, ids, mask, types, positions):
        return model.apply(
            {"params": params},
            ids,
            mask,
            types,
            masked_lm_positions=positions,
            output_hidden_states=True,
            output_attentions=True,
        )

    return jax.jit(forward)


def run_ours(config, heads, params, ids, mask, types, masked_lm_positions=None):
    return _forward(config, tuple(heads))(params, ids, mask, types, masked_lm_positions)


def close(ours, ref, what: str):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} vs {ref.shape}"
    err = float(np.abs(ours - ref).max())
    assert err <= TOL, f"{what}: max abs error {err:.3g} > {TOL}"


def check_encoder(ours, ref):
    """Every layer's hidden state (embedding output first) and attention probabilities."""
    hidden = [ours.encoder.embedding_output, *ours.encoder.hidden_states]
    assert len(hidden) == len(ref.hidden_states)
    for i, (a, b) in enumerate(zip(hidden, ref.hidden_states)):
        close(a, b, f"hidden state {i}")
    assert len(ours.encoder.attention_probs) == len(ref.attentions)
    for i, (a, b) in enumerate(zip(ours.encoder.attention_probs, ref.attentions)):
        close(a, b, f"attention probabilities {i}")
    # The comparison means something only if the activations are not tiny.
    assert float(np.abs(ref.hidden_states[-1].numpy()).max()) > 0.25


def bert_kwargs(**kw):
    # bert_base_micro's shape.
    base = dict(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=128,
    )
    return base | kw


def mobilebert_kwargs(**kw):
    # mobilebert_micro's shape; classifier_activation=False: the official model has no pooler.
    base = dict(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        embedding_size=32,
        intra_bottleneck_size=32,
        intermediate_size=64,
        max_position_embeddings=128,
        classifier_activation=False,
        initializer_range=0.1,  # O(1) activations through the NoNorm stack
    )
    return base | kw


TINY = dict(
    num_feedforward_networks=2, key_query_shared_bottleneck=False, use_bottleneck_attention=True
)

# name -> (transformers config class, its kwargs, our expected config).
CASES = {
    "bert": (transformers.BertConfig, bert_kwargs(), lambda: variants.get("bert_base_micro")),
    "bert_gelu_new": (
        transformers.BertConfig,
        dict(
            vocab_size=2048,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=192,
            max_position_embeddings=128,
            hidden_act="gelu_new",
        ),
        lambda: variants.get("tinybert4_micro", hidden_act="gelu_tanh"),
    ),
    "mobilebert": (
        transformers.MobileBertConfig,
        mobilebert_kwargs(),
        lambda: variants.get("mobilebert_micro", attention_mask_value=None, initializer_range=0.1),
    ),
    "mobilebert_tiny": (
        transformers.MobileBertConfig,
        mobilebert_kwargs(**TINY),
        lambda: variants.get(
            "mobilebert_tiny_micro", attention_mask_value=None, initializer_range=0.1
        ),
    ),
    # transformers' default tanh pooler = ours use_pooler=True.
    "mobilebert_pooler": (
        transformers.MobileBertConfig,
        mobilebert_kwargs(classifier_activation=True),
        lambda: variants.get(
            "mobilebert_micro", attention_mask_value=None, initializer_range=0.1, use_pooler=True
        ),
    ),
}


def reference(name: str, suffix: str, seed: int = 0, **extra):
    config_cls, kwargs, _ = CASES[name]
    prefix = "Bert" if config_cls is transformers.BertConfig else "MobileBert"
    model_cls = getattr(transformers, prefix + suffix)
    torch.manual_seed(seed)
    config = config_cls(**(kwargs | extra), attn_implementation="eager")
    return perturbed(model_cls(config), seed)


# ------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", list(CASES))
def test_pretraining_parity(name, tmp_path):
    ref_model = reference(name, "ForPreTraining")
    ref_model.save_pretrained(tmp_path)
    config, heads, params = hf.load_hf(tmp_path)
    assert config == CASES[name][2]()
    assert heads == PRETRAINING

    ids, mask, types = padded_batch(config.vocab_size)
    ref = run_torch(ref_model, ids, mask, types)
    ours = run_ours(config, heads, params, ids, mask, types)
    check_encoder(ours, ref)
    close(ours.mlm_logits, ref.prediction_logits, "MLM logits")
    close(ours.nsp_logits, ref.seq_relationship_logits, "NSP logits")

    gathered = run_ours(config, heads, params, ids, mask, types, masked_lm_positions=POSITIONS)
    expected = np.take_along_axis(ref.prediction_logits.numpy(), POSITIONS[:, :, None], axis=1)
    close(gathered.mlm_logits, expected, "MLM logits at masked_lm_positions")


@pytest.mark.parametrize("name", ["bert", "mobilebert_pooler"])
def test_bare_model_parity(name, tmp_path):
    """A bare `BertModel` / `MobileBertModel` (keys without prefix): no heads, pooled output."""
    ref_model = reference(name, "Model")
    ref_model.save_pretrained(tmp_path)
    config, heads, params = hf.load_hf(tmp_path)
    assert heads == ()
    assert config == CASES[name][2]()
    ids, mask, types = padded_batch(config.vocab_size)
    ref = run_torch(ref_model, ids, mask, types)
    ours = run_ours(config, heads, params, ids, mask, types)
    check_encoder(ours, ref)
    close(ours.encoder.last_hidden_state, ref.last_hidden_state, "last hidden state")
    close(ours.encoder.pooled_output, ref.pooler_output, "pooled output")


@pytest.mark.parametrize("embedding_size, transform", [(64, "none"), (32, "dense")])
def test_mobilebert_without_trigram(embedding_size, transform, tmp_path):
    """`trigram_input=False`: E == B adds nothing (transformers' unused projection is
    dropped), E != B projects E -> B (ours "dense", without its ALBERT-style MLM head)."""
    kwargs = dict(trigram_input=False, embedding_size=embedding_size)
    ref_model = reference("mobilebert", "Model", **kwargs)
    ref_model.save_pretrained(tmp_path / "model")
    config, heads, params = hf.load_hf(tmp_path / "model")
    assert config.embedding_transform == transform and heads == ()
    ids, mask, types = padded_batch(config.vocab_size)
    check_encoder(
        run_ours(config, heads, params, ids, mask, types), run_torch(ref_model, ids, mask, types)
    )
    if transform == "dense":
        reference("mobilebert", "ForMaskedLM", **kwargs).save_pretrained(tmp_path / "mlm")
        with pytest.raises(hf.ConversionError, match="embedding_transform"):
            hf.load_hf(tmp_path / "mlm")
    else:  # and back: transformers loads the (identity) projection we write for it
        hf.save_hf(tmp_path / "back", config, heads, params)
        model, info = transformers.MobileBertModel.from_pretrained(
            tmp_path / "back", attn_implementation="eager", output_loading_info=True
        )
        assert not any(info.values()), info
        check_encoder(
            run_ours(config, heads, params, ids, mask, types), run_torch(model, ids, mask, types)
        )


def test_masked_lm_without_pooler(tmp_path):
    """`MobileBertForMaskedLM` has no pooler even with classifier_activation=True."""
    ref_model = reference("mobilebert_pooler", "ForMaskedLM")
    ref_model.save_pretrained(tmp_path)
    config, heads, params = hf.load_hf(tmp_path)
    assert heads == ("mlm",)
    assert not config.use_pooler
    ids, mask, types = padded_batch(config.vocab_size)
    ref = run_torch(ref_model, ids, mask, types)
    ours = run_ours(config, heads, params, ids, mask, types)
    check_encoder(ours, ref)
    close(ours.mlm_logits, ref.logits, "MLM logits")


def test_classifier_and_span_heads(tmp_path):
    cls_model = reference("bert", "ForSequenceClassification", num_labels=3)
    cls_model.save_pretrained(tmp_path / "cls")
    config, heads, params = hf.load_hf(tmp_path / "cls")
    assert heads == ("classifier",) and config.num_labels == 3
    ids, mask, types = padded_batch(config.vocab_size)
    ours = run_ours(config, heads, params, ids, mask, types)
    close(ours.logits, run_torch(cls_model, ids, mask, types).logits, "classifier logits")

    qa_model = reference("mobilebert_tiny", "ForQuestionAnswering")
    qa_model.save_pretrained(tmp_path / "qa")
    config, heads, params = hf.load_hf(tmp_path / "qa")
    assert heads == ("qa",)
    ours = run_ours(config, heads, params, ids, mask, types)
    ref = run_torch(qa_model, ids, mask, types)
    close(ours.start_logits, ref.start_logits, "start logits")
    close(ours.end_logits, ref.end_logits, "end logits")


@pytest.mark.parametrize("name", ["bert", "mobilebert"])
def test_token_classification_parity_and_label_names(name, tmp_path):
    """*ForTokenClassification -> ours (token_classifier, label_names) -> transformers again."""
    id2label = {0: "O", 1: "B-PER", 2: "I-PER"}
    label2id = {v: k for k, v in id2label.items()}
    ref_model = reference(
        name, "ForTokenClassification", num_labels=3, id2label=id2label, label2id=label2id
    )
    ref_model.save_pretrained(tmp_path / "hf")
    config, heads, params = hf.load_hf(tmp_path / "hf")
    # Its weights are named classifier.* as a sequence classifier's: architectures decides.
    assert heads == ("token_classifier",) and config.label_names == ("O", "B-PER", "I-PER")
    ids, mask, types = padded_batch(config.vocab_size)
    ours = run_ours(config, heads, params, ids, mask, types)
    check_encoder(ours, run_torch(ref_model, ids, mask, types))
    close(ours.token_logits, run_torch(ref_model, ids, mask, types).logits, "token logits")

    hf.save_hf(tmp_path / "back", config, heads, params)
    written = json.loads((tmp_path / "back" / "config.json").read_text())
    prefix = "Bert" if name == "bert" else "MobileBert"
    assert written["architectures"] == [prefix + "ForTokenClassification"]
    assert written["id2label"] == {"0": "O", "1": "B-PER", "2": "I-PER"}
    back, info = getattr(transformers, prefix + "ForTokenClassification").from_pretrained(
        tmp_path / "back", attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert back.config.id2label == id2label and back.config.label2id == label2id
    close(ours.token_logits, run_torch(back.eval(), ids, mask, types).logits, "token logits")


def test_placeholder_label_names_read_as_none(tmp_path):
    """transformers' LABEL_0, LABEL_1 are no names; ours are written back as LABEL_i too."""
    ref_model = reference("bert", "ForSequenceClassification", num_labels=2)
    ref_model.save_pretrained(tmp_path)
    config, heads, params = hf.load_hf(tmp_path)
    assert heads == ("classifier",) and config.label_names is None
    assert hf.config_to_hf(config, heads)["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    named = config.replace(label_names=("neg", "pos"))
    assert hf.config_to_hf(named, heads)["label2id"] == {"neg": 0, "pos": 1}


def test_pytorch_bin_checkpoint(tmp_path):
    """A pickled state dict (with the tied decoder tensors in it) loads like safetensors."""
    ref_model = reference("mobilebert", "ForPreTraining")
    ref_model.save_pretrained(tmp_path / "st")
    ref_model.config.save_pretrained(tmp_path / "bin")
    state = ref_model.state_dict()
    assert "cls.predictions.decoder.weight" in state
    torch.save(state, tmp_path / "bin" / hf.BIN_FILE)
    a = hf.load_hf(tmp_path / "st")
    b = hf.load_hf(tmp_path / "bin")
    assert a[:2] == b[:2]
    for x, y in zip(jax.tree.leaves(a[2]), jax.tree.leaves(b[2])):
        np.testing.assert_array_equal(x, y)


def test_untied_or_unknown_tensors_are_rejected(tmp_path):
    ref_model = reference("bert", "ForPreTraining")
    config = hf.config_from_hf(ref_model.config.to_dict())
    state = {k: v.numpy() for k, v in ref_model.state_dict().items()}
    hf.params_from_hf(config, state, "bert")  # the tied copies are accepted
    untied = dict(state)
    untied["cls.predictions.decoder.weight"] = untied["cls.predictions.decoder.weight"] + 1.0
    with pytest.raises(hf.ConversionError, match="tie_word_embeddings"):
        hf.params_from_hf(config, untied, "bert")
    extra = dict(state, **{"bert.encoder.layer.0.attention.self.rotary.weight": np.zeros(3)})
    with pytest.raises(hf.ConversionError, match="rotary"):
        hf.params_from_hf(config, extra, "bert")
    wrong = hf.config_from_hf(ref_model.config.to_dict() | {"intermediate_size": 128})
    with pytest.raises(hf.ConversionError, match="intermediate"):
        hf.params_from_hf(wrong, state, "bert")


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["mobilebert", "bert_base"])
def test_real_size_parity(variant, tmp_path):
    """Full-size shapes (vocab 30522, 24 x 512 MobileBERT / 12 x 768 BERT)."""
    ours_config = variants.get(variant, attention_mask_value=None)
    if variant == "mobilebert":
        ref_config = transformers.MobileBertConfig(
            classifier_activation=False, attn_implementation="eager"
        )
        model_cls = transformers.MobileBertForPreTraining
    else:
        ref_config = transformers.BertConfig(attn_implementation="eager")
        model_cls = transformers.BertForPreTraining
    torch.manual_seed(0)
    ref_model = perturbed(model_cls(ref_config), 0, scale=0.01)
    ref_model.save_pretrained(tmp_path)
    config, heads, params = hf.load_hf(tmp_path)
    assert config == ours_config
    ids, mask, types = padded_batch(config.vocab_size, length=64, lengths=(64, 40, 9))
    ref = run_torch(ref_model, ids, mask, types)
    ours = run_ours(config, heads, params, ids, mask, types)
    check_encoder(ours, ref)
    close(ours.mlm_logits, ref.prediction_logits, "MLM logits")
    close(ours.nsp_logits, ref.seq_relationship_logits, "NSP logits")


# ------------------------------------------------------------------ round trip
ROUND_TRIP = {
    # The official MobileBERT: mask value -6, no pooler.
    "mobilebert_official": lambda: variants.get("mobilebert_micro"),
    "mobilebert_tiny": lambda: variants.get("mobilebert_tiny_micro", attention_mask_value=None),
    "bert": lambda: variants.get("bert_base_micro"),
    "tinybert_gelu_tanh": lambda: variants.get("tinybert4_micro", hidden_act="gelu_tanh"),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_round_trip_is_exact(name, tmp_path):
    """ours -> transformers directory -> ours: same config, bit-identical params and outputs."""
    config = ROUND_TRIP[name]()
    params = random_params(config, PRETRAINING, seed=3)
    if config.attention_mask_value is not None:
        with pytest.warns(UserWarning, match="attention_mask_value"):
            hf.save_hf(tmp_path, config, PRETRAINING, params)
        assert json.loads((tmp_path / "config.json").read_text())["attention_mask_value"] == -6.0
    else:
        hf.save_hf(tmp_path, config, PRETRAINING, params)
    config2, heads2, params2 = hf.load_hf(tmp_path)
    assert config2 == config and heads2 == PRETRAINING
    flat, flat2 = (traverse_util.flatten_dict(p, sep="/") for p in (params, params2))
    assert flat.keys() == flat2.keys()
    for k in flat:
        np.testing.assert_array_equal(flat[k], flat2[k], err_msg=k)
    ids, mask, types = padded_batch(config.vocab_size)
    a = run_ours(config, PRETRAINING, params, ids, mask, types)
    b = run_ours(config2, heads2, params2, ids, mask, types)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


FROM_PRETRAINED = {
    "bert_pretraining": (lambda: variants.get("bert_base_micro"), PRETRAINING),
    "bert_model": (lambda: variants.get("tinybert4_micro"), ()),
    "mobilebert_pretraining": (
        lambda: variants.get("mobilebert_micro", attention_mask_value=None),
        PRETRAINING,
    ),
    "mobilebert_tiny_mlm": (
        lambda: variants.get("mobilebert_tiny_micro", attention_mask_value=None),
        ("mlm",),
    ),
    "mobilebert_model_pooler": (
        lambda: variants.get("mobilebert_micro", attention_mask_value=None, use_pooler=True),
        (),
    ),
}


@pytest.mark.parametrize("name", list(FROM_PRETRAINED))
def test_transformers_loads_our_directory(name, tmp_path):
    """transformers' `from_pretrained` on our directory reproduces our outputs."""
    config_fn, heads = FROM_PRETRAINED[name]
    config = config_fn()
    params = random_params(config, heads, seed=5)
    hf.save_hf(tmp_path, config, heads, params)
    architecture = json.loads((tmp_path / "config.json").read_text())["architectures"][0]
    family = "MobileBert" if config.use_bottleneck else "Bert"
    suffix = {PRETRAINING: "ForPreTraining", ("mlm",): "ForMaskedLM", (): "Model"}[heads]
    assert architecture == family + suffix
    model, info = getattr(transformers, architecture).from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["mismatched_keys"], info
    assert not info["unexpected_keys"], info
    ids, mask, types = padded_batch(config.vocab_size)
    ref = run_torch(model.eval(), ids, mask, types)
    ours = run_ours(config, heads, params, ids, mask, types)
    check_encoder(ours, ref)
    if "mlm" in heads:
        logits = ref.prediction_logits if "nsp" in heads else ref.logits
        close(ours.mlm_logits, logits, "MLM logits")
    if "nsp" in heads:
        close(ours.nsp_logits, ref.seq_relationship_logits, "NSP logits")
    if not heads:
        close(ours.encoder.pooled_output, ref.pooler_output, "pooled output")


def test_official_mask_value_differs_only_with_padding(tmp_path):
    """Masked keys get -6 in the official MobileBERT (ours), a large negative in transformers."""
    config = variants.get("mobilebert_micro")
    params = random_params(config, (), seed=7)
    with pytest.warns(UserWarning, match="large negative"):
        hf.save_hf(tmp_path, config, (), params)
    model = transformers.MobileBertModel.from_pretrained(tmp_path, attn_implementation="eager")
    ids, mask, types = padded_batch(config.vocab_size)
    full = np.ones_like(mask)
    ref = run_torch(model, ids, full, types)
    close(run_ours(config, (), params, ids, full, types).encoder.last_hidden_state,
          ref.last_hidden_state, "unpadded last hidden state")  # fmt: skip
    ref = run_torch(model, ids, mask, types)
    ours = run_ours(config, (), params, ids, mask, types)
    masked_keys = np.broadcast_to(~mask.astype(bool)[:, None, None, :], ref.attentions[0].shape)
    for a, b in zip(ours.encoder.attention_probs, ref.attentions):
        assert np.all(b.numpy()[masked_keys] == 0.0)  # transformers: no weight at padding
        assert np.asarray(a)[masked_keys].min() > 1e-4  # ours: logit -6, a small weight
    diff = np.abs(np.asarray(ours.encoder.last_hidden_state) - ref.last_hidden_state.numpy())
    assert diff[0].max() <= TOL  # the row without padding agrees


@pytest.mark.parametrize(
    "name, overrides, heads, field",
    [
        ("ibbert_large_micro", {}, (), "key_query_shared_bottleneck"),
        ("albert_base_micro", {}, (), "layer_sharing"),
        ("distilbert6_micro", {}, (), "type_vocab_size"),
        ("bert_base_micro", {"use_pooler": False}, PRETRAINING, "use_pooler"),
        (
            "mobilebert_micro",
            {"embedding_transform": "dense", "attention_mask_value": None},
            ("mlm",),
            "embedding_transform",
        ),
        ("bert_base_micro", {}, ("mlm", "classifier"), "heads"),
    ],
)
def test_inexpressible_models_name_the_field(name, overrides, heads, field, tmp_path):
    config = variants.get(name, **overrides)
    params = random_params(config, heads, seed=0)
    with pytest.raises(hf.ConversionError, match=field):
        hf.save_hf(tmp_path / "out", config, heads, params)
    assert not (tmp_path / "out").exists()


def test_layer_norm_mobilebert_warns_about_the_eps_quirk(tmp_path):
    """transformers' MobileBERT builds two LayerNorms without eps (1e-5, not layer_norm_eps)."""
    config = variants.get("mobilebert_micro", normalization="layer_norm", attention_mask_value=None)
    params = random_params(config, (), seed=2)
    with pytest.warns(UserWarning, match="eps=1e-5"):
        hf.save_hf(tmp_path, config, (), params)
    with pytest.warns(UserWarning, match="eps=1e-5"):
        config2, _, _ = hf.load_hf(tmp_path)
    assert config2 == config


def test_bert_class_refuses_mobilebert_fields():
    config = variants.get("mobilebert_micro", attention_mask_value=None)
    with pytest.raises(hf.ConversionError, match="use_bottleneck"):
        hf.config_to_hf(config, (), model_type="bert")


def test_model_directory_conversion_cli(tmp_path):
    """model dir -> transformers dir (with tokenizer) -> model dir, through `main`."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    config = variants.get("mobilebert_tiny_micro", attention_mask_value=None)
    params = random_params(config, PRETRAINING, seed=11)
    io.save_model(tmp_path / "ours", config, PRETRAINING, params, vocab_file=vocab)

    assert hf.main(["to-hf", str(tmp_path / "ours"), str(tmp_path / "hf")]) == 0
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tokenizer("The cats sat")["input_ids"] == [2, 5, 6, 10, 7, 3]
    model = transformers.MobileBertForPreTraining.from_pretrained(tmp_path / "hf")
    assert model.config.num_hidden_layers == config.num_layers

    assert hf.main(["from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    config2, heads2, params2 = io.load_model(tmp_path / "back")
    assert (config2, heads2) == (config, PRETRAINING)
    assert io.vocab_path(tmp_path / "back").read_text() == vocab.read_text()
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        np.testing.assert_array_equal(x, y)
    assert hf.main(["from-hf", str(tmp_path / "missing"), str(tmp_path / "x")]) == 1
