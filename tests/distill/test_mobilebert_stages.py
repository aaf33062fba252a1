"""MobileBERT stage schedules, training rules and config checks: pure data, nothing compiles."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util

from configs import common
from mbert_jax import recipes
from mbert_jax.distill.mobilebert.stages import default_distill_config, mobilebert_stages
from mbert_jax.models import Model, io, param_shapes, variants
from mbert_jax.train.labels import make_labels


def distill(**kw):
    d = default_distill_config()
    d.update(kw)
    return d


def stages_of(d, layers=4, **kw):
    return mobilebert_stages(d, student_layers=layers, teacher_map=tuple(range(layers + 1)), **kw)


def test_pkt_has_one_stage_per_layer_then_pd_with_official_factors():
    stages = stages_of(distill(layer_steps=7, pd_steps=11), layers=4)
    assert [s.name for s in stages] == [f"pkt_layer_{i}" for i in (1, 2, 3, 4)] + ["pd"]
    assert [s.steps for s in stages] == [7, 7, 7, 7, 11]
    for layer, stage in enumerate(stages[:4], start=1):
        # Official factors 100 / L and 1 / L, L = 4; only this layer's terms.
        assert dict(stage.loss_weights) == {f"fmt_layer_{layer}": 25.0, f"at_layer_{layer}": 0.25}
        o = stage.options
        assert (o.student_layers, o.teacher_layers) == (layer, layer)
        assert o.stop_gradient_below == layer - 1  # frozen: nothing below block l
        assert o.layers == (layer,) and o.eval_layers == tuple(range(1, layer + 1))
        assert o.dropout and not o.pd
        assert stage.schedule.kind == "polynomial" and stage.schedule.power == 0.5
        assert stage.schedule.end_factor == 0.9 and stage.schedule.warmup_fraction == 0.1
    pd = stages[-1]
    assert dict(pd.loss_weights) == {"pd_mlm": 1.0, "nsp": 1.0}
    assert pd.rules == ((".*", 1.0),)
    assert pd.options.pd and not pd.options.dropout and pd.options.teacher_layers is None
    assert pd.schedule.kind == "linear" and pd.schedule.warmup_steps == 10_000


@pytest.mark.parametrize(
    "mode, multiplier, lower",
    [("frozen", 1.0, None), ("reduced", 3.0, 0.3), ("same", 3.0, 3.0), ("reduced", 1.0, 0.1)],
)
def test_lower_layer_modes(mode, multiplier, lower):
    d = distill(lower_layers=mode, layer_lr_multiplier=multiplier)
    stage3 = stages_of(d)[2]
    assert stage3.rules[0] == ("encoder/layers_(2)/.*", multiplier)
    assert stage3.rules[1][0] == "encoder/layers_(0|1)/.*"
    assert stage3.rules[1][1] == pytest.approx(lower) if lower else stage3.rules[1][1] is None
    assert stage3.rules[-1] == (".*", None)  # embeddings, heads, upper blocks
    # Only the frozen mode cuts the gradient at the trained block; the others at block 0.
    assert stage3.options.stop_gradient_below == (2 if mode == "frozen" else 0)


def test_tf2_stage_loss_division_and_mean_variance_terms():
    d = distill(stage_loss_division=True, mean_variance_transfer=True)
    stage3 = stages_of(d, layers=2)[1]
    # Layer 2 of L = 2, divided by 2 (the TF2 port's stage_id + 1).
    assert dict(stage3.loss_weights) == {
        "fmt_layer_2": 100 / 2 / 2,
        "at_layer_2": 1 / 2 / 2,
        "mean_layer_2": 5000 / 2 / 2,
        "var_layer_2": 5 / 2 / 2,
    }
    no_attention = stages_of(distill(attention_factor=0.0), layers=2)[0]
    assert set(no_attention.loss_weights) == {"fmt_layer_1"}


def test_jkt_and_akt_budgets_and_terms():
    jkt, pd = stages_of(distill(strategy="jkt", layer_steps=5, pd_steps=9), layers=3)
    assert (jkt.name, jkt.steps, pd.name, pd.steps) == ("jkt", 15, "pd", 9)
    assert set(jkt.loss_weights) == {f"{t}_layer_{i}" for t in ("fmt", "at") for i in (1, 2, 3)}
    assert jkt.options.stop_gradient_below == 0 and jkt.options.student_layers == 3
    (akt,) = stages_of(
        distill(strategy="akt", transfer_steps=4, pd_steps=9), layers=3, use_nsp=False
    )
    assert (akt.name, akt.steps) == ("akt", 13)
    assert akt.loss_weights["pd_mlm"] == 1.0 and "nsp" not in akt.loss_weights
    assert akt.loss_weights["fmt_layer_3"] == pytest.approx(100 / 3)
    assert akt.rules == ((".*", 1.0),) and akt.options.pd


def _leaf_sizes(params) -> dict[str, int]:
    return {
        k: int(np.prod(v.shape)) for k, v in traverse_util.flatten_dict(params, sep="/").items()
    }


def test_rules_train_exactly_the_block_of_the_stage_on_the_real_parameter_tree():
    shapes = param_shapes(Model(variants.get("mobilebert_micro")))
    sizes = _leaf_sizes(shapes)
    stages = stages_of(distill(), layers=4, train_embedding_norm=True)
    for layer, stage in enumerate(stages[:4], start=1):
        labels = traverse_util.flatten_dict(make_labels(shapes, stage.rules), sep="/")
        trained = {k for k, v in labels.items() if v != "frozen"}
        expected = {k for k in sizes if k.startswith(f"encoder/layers_{layer - 1}/")}
        if layer == 1:  # a student norm that was not copied trains with block 1
            expected |= {"encoder/embeddings/norm/scale", "encoder/embeddings/norm/bias"}
        assert trained == expected
    pd_labels = jax.tree.leaves(make_labels(shapes, stages[-1].rules))
    assert set(pd_labels) == {"x1"}


def test_factorized_embeddings_train_with_block_1_in_pkt_and_throughout_jkt():
    shapes = param_shapes(Model(variants.get("mobilebert_micro")))
    embeddings = {k for k in _leaf_sizes(shapes) if k.startswith("encoder/embeddings/")}

    def trained(stage):
        labels = traverse_util.flatten_dict(make_labels(shapes, stage.rules), sep="/")
        return {k for k, v in labels.items() if v != "frozen"}

    pkt = stages_of(distill(), layers=4, train_embeddings=True)
    assert embeddings <= trained(pkt[0]) and pkt[0].options.stop_gradient_below is None
    for stage in pkt[1:4]:  # then frozen with the lower blocks, and cut off by stop_gradient
        assert not embeddings & trained(stage)
        assert stage.options.stop_gradient_below == stage.options.student_layers - 1
    reduced = stages_of(distill(lower_layers="reduced"), layers=4, train_embeddings=True)
    assert reduced[2].rules[2] == ("encoder/embeddings/.*", pytest.approx(0.1))
    (jkt,) = stages_of(distill(strategy="jkt", pd_steps=0), layers=4, train_embeddings=True)
    assert embeddings <= trained(jkt) and jkt.options.stop_gradient_below is None


def test_shared_layer_students_take_jkt():
    shapes = param_shapes(Model(variants.get("albert_base_micro")))
    (jkt,) = stages_of(distill(strategy="jkt", pd_steps=0), layers=4)
    labels = traverse_util.flatten_dict(make_labels(shapes, jkt.rules), sep="/")
    assert {k for k, v in labels.items() if v != "frozen"} == {
        k for k in labels if k.startswith(("encoder/shared_attention/", "encoder/shared_ffn/"))
    }


# ---------------------------------------------------------------- config errors
def config(strategy="pkt", arg="runlocal,data=synthetic", **distill_fields):
    c = common.mobilebert(strategy, arg)
    c.distill.update(distill_fields)
    return c


@pytest.fixture
def no_compiling(monkeypatch):
    """Config errors must come before anything compiles."""

    def refuse(*args, **kwargs):
        raise AssertionError("jax.jit called while checking the config")

    monkeypatch.setattr(jax, "jit", refuse)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"student.overrides": {"num_layers": 6}},
            r"config\.distill\.layer_map='identity'.*equal depths",
        ),
        ({"student.overrides": {"hidden_size": 128}}, r"config\.student\.overrides\.hidden_size"),
        ({"student.overrides": {"num_heads": 2}}, r"config\.student\.overrides\.num_heads"),
        (  # a pruned teacher: its block 1 kept 2 of its 4 heads
            {"teacher.overrides.layer_heads": "4,2,4,4"},
            r"head by head: student block 1 has 4 heads and teacher block 1, which it learns "
            r"from, has 2 \(ModelConfig.layer_heads.*config\.distill\.attention_factor=0",
        ),
        (
            {"student.overrides": {"embedding_size": 16}},
            r"config\.student\.overrides\.embedding_size",
        ),
        ({"student.variant": "albert_base_micro"}, r"config\.distill\.strategy='pkt'.*shares"),
        ({"distill.strategy": "ptk"}, r"config\.distill\.strategy"),
        ({"distill.lower_layers": "thawed"}, r"config\.distill\.lower_layers"),
        (
            {"distill.layer_map": "1,2,9,4"},
            r"config\.distill\.layer_map.*teacher layers are 1\.\.4",
        ),
        ({"distill.ground_truth_ratio": 1.5}, r"config\.distill\.ground_truth_ratio"),
        ({"data.max_seq_length": 256}, r"config\.data\.max_seq_length"),
        ({"teacher.dtype": "int8"}, r"config\.teacher\.dtype"),
        (
            {"student.fit": True, "student.variant": "bert_base_micro"},
            r"config\.student\.variant='bert_base_micro' has no bottleneck",
        ),
    ],
)
def test_impossible_configs_fail_naming_the_field(no_compiling, change, message):
    c = config()
    for path, value in change.items():
        node, leaf = c, path.split(".")
        for p in leaf[:-1]:
            node = node[p]
        node[leaf[-1]] = value
    with pytest.raises(ValueError, match=message):
        recipes.build(c)


def test_a_deeper_student_works_with_an_explicit_map_and_pkt_runs_the_mapped_teacher_depth():
    c = config(layer_map="1,1,2,2,3,4")
    c.student.overrides = {"num_layers": 6}
    recipe = recipes.build(c)
    stages = recipe.stages()
    assert [s.options.teacher_layers for s in stages[:6]] == [1, 1, 2, 2, 3, 4]


def _fake_teacher_dir(tmp_path, **overrides):
    """A model directory whose config differs; its (empty) parameters are never read."""
    cfg = variants.get("ibbert_large_micro", **overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / io.CONFIG_FILE).write_text(
        json.dumps({"config": cfg.to_dict(), "heads": ["mlm", "nsp"]})
    )
    (tmp_path / io.PARAMS_FILE).write_bytes(b"")
    return tmp_path


def test_teacher_directory_checks(tmp_path, no_compiling):
    c = config()
    c.teacher.path = str(_fake_teacher_dir(tmp_path / "a", vocab_size=1024))
    with pytest.raises(ValueError, match=r"config\.data: .*2048 tokens.*vocab_size=1024"):
        recipes.build(c)
    c.teacher.path = str(_fake_teacher_dir(tmp_path / "b", hidden_size=128))
    with pytest.raises(ValueError, match=r"hidden_size.*config\.teacher\.path="):
        recipes.build(c)
    c.teacher.path = str(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"config\.teacher\.path=.*not a model directory"):
        recipes.build(c)


def test_host_init_draws_like_the_models_initializers():
    from mbert_jax.distill.teacher import host_init

    shapes = param_shapes(Model(variants.get("ibbert_large_micro"), heads=("mlm",)))
    params = traverse_util.flatten_dict(host_init(shapes, 0.02, seed=3), sep="/")
    assert params.keys() == traverse_util.flatten_dict(shapes, sep="/").keys()
    np.testing.assert_array_equal(params["encoder/embeddings/norm/scale"], np.ones(64))
    np.testing.assert_array_equal(params["mlm/output_bias"], np.zeros(2048))
    table = params["encoder/embeddings/word_embeddings/embedding"]
    assert table.shape == (2048, 32) and table.dtype == np.float32
    assert abs(table.std() - 0.02) < 0.001 and abs(table.mean()) < 0.001


def test_config_options_official_and_tiny():
    official = recipes.build(config(arg="runlocal,data=synthetic,official"))
    stage2 = official.stages()[1]
    # Official TF1: block l at 3x the base rate, lower blocks at 0.3x, mean/variance on.
    assert stage2.rules[0] == ("encoder/layers_(1)/.*", 3.0)
    assert stage2.rules[1][0] == "encoder/layers_(0)/.*"
    assert stage2.rules[1][1] == pytest.approx(0.3)
    assert dict(stage2.loss_weights) == {
        "fmt_layer_2": 25.0,
        "at_layer_2": 0.25,
        "mean_layer_2": 1250.0,
        "var_layer_2": 1.25,
    }
    assert official.distill.official_padding and official.distill.attention_form == "cross_entropy"
    tiny = recipes.build(config(arg="runlocal,data=synthetic,student=tiny"))
    assert tiny.student_config.use_bottleneck_attention and tiny.student_config.num_layers == 4
