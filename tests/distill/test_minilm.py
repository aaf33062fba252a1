"""MiniLM / MiniLMv2: the models' Q/K/V output, the recipe's layer choice and checks, and
training through the CLI's entry point (`run_config` with configs/minilm.py)."""

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from mbert_jax import losses, recipes
from mbert_jax.data.synthetic import SyntheticPretrainingData
from mbert_jax.distill import minilm
from mbert_jax.models import Model, init_params, io, resolve, variants
from mbert_jax.train.cli import run_config
from mbert_jax.train.config import load_config_module

ROOT = Path(__file__).resolve().parents[2]


def config(arg="runlocal,data=synthetic", **fields):
    module, _ = load_config_module(f"{ROOT}/configs/minilm.py")
    c = module.get_config(arg)
    c.data.global_batch_size, c.data.max_seq_length = 4, 16
    for key, value in fields.items():
        node = c
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return c


def batch(seed=0):
    b = next(SyntheticPretrainingData(2048, 4, 16, 3, seed=seed))
    b = {k: jnp.asarray(v) for k, v in b.items()}
    mask = np.ones((4, 16), np.int32)
    mask[1, 9:] = 0
    mask[3, 4:] = 0
    b["attention_mask"] = jnp.asarray(mask)
    return b


# ------------------------------------------------------------------ the models' Q/K/V
def test_qkv_are_returned_only_when_asked_and_give_the_attention_scores():
    cfg = variants.get("minilm6_micro")
    model = Model(cfg, heads=())
    params = init_params(model, jax.random.PRNGKey(0))
    b = batch()
    args = (b["input_ids"], b["attention_mask"], b["token_type_ids"])
    plain = model.apply({"params": params}, *args, output_attentions=True)
    out = model.apply({"params": params}, *args, output_attentions=True, output_qkv=True)
    assert plain.encoder.queries is None and plain.encoder.values is None
    np.testing.assert_array_equal(plain.encoder.last_hidden_state, out.encoder.last_hidden_state)
    assert len(out.encoder.queries) == cfg.num_layers
    q, k = out.encoder.queries[-1], out.encoder.keys[-1]
    assert q.shape == (4, 16, 6, 8) and out.encoder.values[-1].shape == (4, 16, 6, 8)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    visible = np.asarray(b["attention_mask"])[:, None, None, :] > 0
    visible = np.broadcast_to(visible, scores.shape)
    np.testing.assert_allclose(
        np.asarray(out.encoder.attention_scores[-1])[visible], scores[visible], rtol=1e-4, atol=1e-5
    )


def test_qkv_of_a_transformers_bert_are_its_query_key_value_projections(tmp_path, monkeypatch):
    monkeypatch.setenv(resolve.ENV_CACHE_DIR, str(tmp_path / "cache"))
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    reference = transformers.BertModel(hf_cfg, add_pooling_layer=True).eval()
    reference.save_pretrained(tmp_path / "bert")
    seen = {}
    layer = reference.encoder.layer[1].attention.self
    for name in ("query", "key", "value"):
        getattr(layer, name).register_forward_hook(
            lambda m, i, o, name=name: seen.__setitem__(name, o.detach().numpy())
        )
    b = batch()
    ids, mask, types = (np.asarray(b[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    with torch.no_grad():
        reference(torch.tensor(ids), torch.tensor(mask), torch.tensor(types))
    cfg, heads, params = io.load_model(resolve.model_dir(str(tmp_path / "bert"), "teacher.path"))
    with jax.default_matmul_precision("highest"):
        out = Model(cfg, heads=heads).apply(
            {"params": params}, ids, mask, types, output_qkv=True, run_heads=()
        )
    for name, ours in (("query", out.encoder.queries), ("key", out.encoder.keys)):
        np.testing.assert_allclose(
            np.asarray(ours[1]).reshape(4, 16, 64), seen[name], rtol=1e-4, atol=1e-5
        )
    np.testing.assert_allclose(
        np.asarray(out.encoder.values[1]).reshape(4, 16, 64), seen["value"], rtol=1e-4, atol=1e-5
    )


# ------------------------------------------------------------------ the recipe
def test_masked_tokens_are_restored_for_both_models():
    b = batch()
    ids = np.asarray(minilm.unmasked_ids(b))
    rows = np.arange(4)[:, None]
    pos, weights = np.asarray(b["masked_lm_positions"]), np.asarray(b["masked_lm_weights"])
    restored = ids[rows, pos]
    np.testing.assert_array_equal(
        restored[weights > 0], np.asarray(b["masked_lm_ids"])[weights > 0]
    )
    untouched = np.ones(ids.shape, bool)
    untouched[rows, pos] = False
    np.testing.assert_array_equal(ids[untouched], np.asarray(b["input_ids"])[untouched])


@pytest.mark.parametrize("layer, index", [(-1, 6), (-2, 5), (4, 4), (6, 6)])
def test_the_teacher_layer_is_the_one_distilled(layer, index):
    recipe = recipes.build(config(**{"distill.teacher_layer": layer}))
    assert recipe.teacher_layer == index
    assert (recipe.student_config.hidden_size, recipe.student_config.num_heads) == (48, 6)
    assert (recipe.teacher_spec.config.hidden_size, recipe.teacher_spec.config.num_heads) == (64, 4)
    params = nn.meta.unbox(recipe.init_params(jax.random.PRNGKey(0)))
    teacher = recipe.load_teacher_params()
    b = batch()
    (stage,) = recipe.stages()
    metrics = recipe.evaluate(stage, params, teacher, b)
    assert set(metrics) == {"qq", "kk", "vv", "relation"}
    # Independently: the full teacher's layer `index`, on the restored ids.
    feed = {**b, "input_ids": minilm.unmasked_ids(b)}
    args = (feed["input_ids"], feed["attention_mask"], feed["token_type_ids"])
    t = recipe.teacher_model.apply({"params": teacher}, *args, output_qkv=True).encoder
    s = recipe.student.apply({"params": params}, *args, output_qkv=True).encoder
    for term, field in minilm.RELATIONS.items():
        want = losses.minilmv2_relation_loss(
            getattr(s, field)[-1],
            getattr(t, field)[index - 1],
            relation_heads=4,
            attention_mask=b["attention_mask"],
        )
        np.testing.assert_allclose(float(metrics[term].mean()), float(want.mean()), rtol=1e-5)
    total = sum(float(metrics[k].mean()) for k in ("qq", "kk", "vv"))
    np.testing.assert_allclose(float(metrics["relation"].mean()), total, rtol=1e-5)


def test_minilm_uses_the_attention_and_value_terms_and_their_weights():
    c = config("runlocal,variant=minilm,data=synthetic", **{"distill.loss_weights.value": 0.5})
    recipe = recipes.build(c)
    (stage,) = recipe.stages()
    assert dict(stage.loss_weights) == {"attention": 1.0, "value": 0.5}
    params = nn.meta.unbox(recipe.init_params(jax.random.PRNGKey(0)))
    metrics = recipe.evaluate(stage, params, recipe.load_teacher_params(), batch())
    assert set(metrics) == {"attention", "value", "relation"}
    want = metrics["attention"].mean() + 0.5 * metrics["value"].mean()
    np.testing.assert_allclose(float(metrics["relation"].mean()), float(want), rtol=1e-5)


@pytest.mark.parametrize(
    "arg, fields, message",
    [
        (
            "runlocal,data=synthetic",
            {"distill.relation_heads": 5},
            r"config.distill.relation_heads=5 must divide the student's attention width 48 "
            r"\(6 heads x 8\)",
        ),
        (
            "runlocal,data=synthetic",
            {"distill.relation_heads": 3},  # divides 48, not 64
            r"config.distill.relation_heads=3 must divide the teacher's attention width 64",
        ),
        (
            "runlocal,data=synthetic",
            {"distill.variant": "minilm"},  # the micro student's 6 heads vs 4
            "compares heads one to one: the student has 6 heads and the teacher 4",
        ),
        ("runlocal,data=synthetic", {"distill.teacher_layer": 7}, "the teacher has layers 1..6"),
        ("runlocal,data=synthetic", {"distill.teacher_layer": 0}, "teacher_layer=0"),
        ("runlocal,data=synthetic", {"distill.variant": "minilm3"}, "one of"),
        (
            "runlocal,data=synthetic",
            {
                "distill.loss_weights.qq": 0.0,
                "distill.loss_weights.kk": 0.0,
                "distill.loss_weights.vv": 0.0,
            },
            "no active minilmv2 term",
        ),
    ],
)
def test_config_errors_are_one_line_before_anything_is_written(tmp_path, arg, fields, message):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit, match=message) as e:
        run_config(config(arg, **fields), str(workdir))
    assert str(e.value).startswith("config error: ") and "\n" not in str(e.value)
    assert not workdir.exists()


def train_rows(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "eval"]


@pytest.mark.slow  # 15-25 s on 2 shared cores
def test_a_narrower_student_with_other_heads_lowers_the_minilmv2_loss(tmp_path):
    """Through the CLI's entry point; the student (48 wide, 6 heads) is saved as a model."""
    c = config(
        **{
            "train.steps": 40,
            "train.log_every": 5,
            "train.eval_every": 40,
            "train.eval_steps": 1,
            "train.checkpoint_every": 100,
        }
    )
    run_config(c, str(tmp_path / "run"))
    train, evals = train_rows(tmp_path / "run")
    first, last = train[0]["objective"], train[-1]["objective"]
    assert last < 0.8 * first, (first, last)
    assert all(
        last_ < first_
        for first_, last_ in zip(
            (train[0][k] for k in ("qq", "kk", "vv")), (train[-1][k] for k in ("qq", "kk", "vv"))
        )
    )
    assert {"qq", "kk", "vv", "relation"} <= set(evals[-1])
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["step"] == 40 and {"qq", "kk", "vv", "relation"} <= set(results["eval"])
    cfg, heads, params = io.load_model(tmp_path / "run/model")
    assert heads == () and (cfg.hidden_size, cfg.num_heads, cfg.num_layers) == (48, 6, 2)
    assert "encoder" in params


@pytest.mark.slow
def test_a_transformers_teacher_directory_distils_into_minilm(tmp_path, monkeypatch):
    """MiniLM (equal heads) from a transformers BertModel directory given as teacher.path."""
    monkeypatch.setenv(resolve.ENV_CACHE_DIR, str(tmp_path / "cache"))
    torch.manual_seed(0)
    hf_cfg = transformers.BertConfig(
        vocab_size=2048,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    transformers.BertModel(hf_cfg).save_pretrained(tmp_path / "bert")
    c = config(
        f"runlocal,variant=minilm,data=synthetic,teacher={tmp_path / 'bert'}",
        **{
            "train.steps": 6,
            "train.log_every": 2,
            "train.eval_every": 6,
            "train.eval_steps": 1,
            "distill.teacher_layer": -2,
        },
    )
    run_config(c, str(tmp_path / "run"))
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["step"] == 6 and {"attention", "value"} <= set(results["eval"])
    assert np.isfinite(results["eval"]["relation"])
    cfg, _, _ = io.load_model(tmp_path / "run/model")
    assert (cfg.hidden_size, cfg.num_heads) == (48, 4)


@pytest.mark.parametrize(
    "student, overrides",
    [("albert_base", {}), ("minilm6", {"student.overrides.remat": True})],
)
def test_shared_and_rematerialized_students_give_qkv_and_gradients(student, overrides):
    """An ALBERT-style student (one shared block) and `remat` blocks return Q/K/V too."""
    recipe = recipes.build(config(f"runlocal,data=synthetic,student={student}", **overrides))
    (stage,) = recipe.stages()
    params = nn.meta.unbox(recipe.init_params(jax.random.PRNGKey(0)))
    teacher = recipe.load_teacher_params()
    b = batch()
    (value, metrics), grads = jax.value_and_grad(
        lambda p: recipe.loss(stage, p, teacher, b, jax.random.PRNGKey(1)), has_aux=True
    )(params)
    assert np.isfinite(float(value)) and float(value) > 0
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and max(norms) > 0
