"""DistilBERT: initialization from teacher layers, the triple loss, and a run through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mbert_jax.data.synthetic import SyntheticPretrainingData
from mbert_jax.distill import distilbert
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.models import Model, init_params, io, variants
from mbert_jax.train.config import base_config, model_block
from mbert_jax.train.inputs import synthetic_data_config

ROOT = Path(__file__).resolve().parents[2]
LAYERS = (0, 2, 5)


@pytest.fixture(scope="module")
def pair():
    t_cfg = variants.get("bert_base_micro")
    teacher = Model(t_cfg, heads=("mlm",))
    t_params = init_params(teacher, jax.random.PRNGKey(0))
    # Token-type rows that differ, so folding type 0 is visible.
    t_params["encoder"]["embeddings"]["token_type_embeddings"]["embedding"] = (
        jax.random.normal(jax.random.PRNGKey(9), (2, t_cfg.hidden_size)) * 0.3
    )
    student = Model(variants.get("distilbert6_micro"), heads=("mlm",))
    s_params = init_params(student, jax.random.PRNGKey(1))
    return teacher, jax.device_get(t_params), student, jax.device_get(s_params)


def leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_init_copies_exactly_the_chosen_teacher_layers(pair):
    _, t, _, s = pair
    out = distilbert.init_student_from_teacher(s, t, LAYERS)
    for i, j in enumerate(LAYERS):
        assert leaves_equal(out["encoder"][f"layers_{i}"], t["encoder"][f"layers_{j}"])
        for other in set(range(6)) - {j}:
            assert not leaves_equal(out["encoder"][f"layers_{i}"], t["encoder"][f"layers_{other}"])
    emb, t_emb = out["encoder"]["embeddings"], t["encoder"]["embeddings"]
    assert leaves_equal(emb["word_embeddings"], t_emb["word_embeddings"])
    assert leaves_equal(emb["norm"], t_emb["norm"])
    type0 = np.asarray(t_emb["token_type_embeddings"]["embedding"])[0]
    np.testing.assert_array_equal(
        emb["position_embeddings"]["embedding"],
        np.asarray(t_emb["position_embeddings"]["embedding"]) + type0,
    )
    assert "token_type_embeddings" not in emb and "pooler" not in out["encoder"]
    assert leaves_equal(out["mlm"], t["mlm"])
    official = distilbert.init_student_from_teacher(s, t, LAYERS, fold_token_type=False)
    assert leaves_equal(
        official["encoder"]["embeddings"]["position_embeddings"], t_emb["position_embeddings"]
    )


def test_folded_student_embeddings_equal_the_teachers(pair):
    teacher, t, student, s = pair
    out = distilbert.init_student_from_teacher(s, t, LAYERS)
    ids = jnp.asarray(np.random.default_rng(0).integers(5, 2048, (2, 10)), jnp.int32)
    emb = lambda m, p, types: (
        m.apply(
            {"params": p}, ids, jnp.ones_like(ids), types, output_hidden_states=True
        ).encoder.embedding_output
    )
    np.testing.assert_allclose(
        emb(student, out, None), emb(teacher, t, jnp.zeros_like(ids)), rtol=1e-5, atol=1e-6
    )


def test_init_rejects_wrong_layer_lists(pair):
    _, t, _, s = pair
    with pytest.raises(ValueError, match="one teacher layer"):
        distilbert.init_student_from_teacher(s, t, (0, 2))
    with pytest.raises(ValueError, match="layers 0..5"):
        distilbert.init_student_from_teacher(s, t, (0, 2, 6))
    narrow = init_params(
        Model(variants.get("distilbert6_micro", hidden_size=32), heads=("mlm",)),
        jax.random.PRNGKey(2),
    )
    with pytest.raises(ValueError, match="shapes differ"):
        distilbert.init_student_from_teacher(narrow, t, LAYERS)


def config(**distill):
    c = base_config("distill_distilbert")
    c.teacher = teacher_block("bert_base_micro")
    c.student = model_block("distilbert6_micro", hidden_dropout=0.0, attention_dropout=0.0)
    c.distill = ml_collections.ConfigDict(
        dict(
            init_layers=LAYERS,
            fold_token_type=True,
            temperature=2.0,
            kl_positions="all",
            loss_weights=dict(kl=5.0, mlm=2.0, cosine=1.0),
        )
    )
    c.distill.update(distill)
    c.data = synthetic_data_config(nsp=False, global_batch_size=4, max_seq_length=16)
    return c


def batch(seed=0):
    data = SyntheticPretrainingData(2048, 4, 16, 5, seed=seed)
    b = {k: jnp.asarray(v) for k, v in next(data).items()}
    b["token_type_ids"] = jnp.zeros_like(b["token_type_ids"])  # single segment
    return b


def test_a_student_identical_to_its_teacher_has_zero_kl_and_cosine():
    """A 6-layer student copying all teacher layers computes the teacher's function."""
    c = config(init_layers=tuple(range(6)))
    c.student.overrides["num_layers"] = 6
    recipe = distilbert.DistilBertRecipe(c)
    params = recipe.initial_overrides(
        jax.device_get(jax.tree.map(np.asarray, init_params(recipe.student, jax.random.PRNGKey(0))))
    )
    metrics = jax.jit(lambda p, t, b: recipe.compute_losses(p, t, b, train=False))(
        params, recipe.load_teacher_params(), batch()
    )
    assert float(metrics["kl"].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(metrics["cosine"].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(metrics["mlm"].mean()) > 1.0


@pytest.mark.parametrize("kl_positions", ["all", "masked"])
def test_a_step_lowers_the_triple_loss_on_a_fixed_batch(kl_positions):
    recipe = distilbert.DistilBertRecipe(config(kl_positions=kl_positions))
    (stage,) = recipe.stages()
    assert dict(stage.loss_weights) == {"kl": 5.0, "mlm": 2.0, "cosine": 1.0}
    params = recipe.initial_overrides(
        jax.device_get(init_params(recipe.student, jax.random.PRNGKey(0)))
    )
    teacher = recipe.load_teacher_params()
    b = batch()
    tx = optax.adam(1e-3)

    @jax.jit
    def step(p, s, key):
        (value, _), g = jax.value_and_grad(recipe.loss, argnums=1, has_aux=True)(
            stage, p, teacher, b, key
        )
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    def objective(p):
        m = recipe.evaluate(stage, p, teacher, b)
        return float(sum(w * m[k].mean() for k, w in stage.loss_weights.items()))

    before = objective(params)
    state = tx.init(params)
    for i in range(4):
        params, state, _ = step(params, state, jax.random.PRNGKey(i))
    assert objective(params) < before


def test_config_errors_name_the_fix():
    c = config()
    c.data.nsp = True
    with pytest.raises(ValueError, match="nsp=False"):
        distilbert.DistilBertRecipe(c)
    with pytest.raises(ValueError, match="kl_positions"):
        distilbert.DistilBertRecipe(config(kl_positions="some"))
    with pytest.raises(ValueError, match="one teacher layer"):
        distilbert.DistilBertRecipe(config(init_layers=(0, 1)))


@pytest.mark.slow
def test_runlocal_through_the_cli(tmp_path):
    env = dict(os.environ, MBERT_JAX_COMPILE_CACHE="", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "mbert_jax",
        "train",
        "--config",
        "configs/distilbert.py:runlocal,data=synthetic",
        "--workdir",
        str(tmp_path / "run"),
        "--config.train.steps=6",
        "--config.train.eval_every=6",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["step"] == 6 and {"kl", "mlm", "cosine"} <= set(results["eval"])
    cfg, heads, params = io.load_model(tmp_path / "run/model")
    assert cfg.type_vocab_size == 0 and not cfg.use_pooler and cfg.num_layers == 3
    assert heads == ("mlm",) and "token_type_embeddings" not in params["encoder"]["embeddings"]
