"""TinyBERT: layer-mapped losses against numpy, projections, stages, and the CLI chain."""

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mbert_jax.data.synthetic import SyntheticPretrainingData
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.distill.tinybert import recipe as tinybert
from mbert_jax.models import Model, init_params, io, variants
from mbert_jax.train.config import base_config, model_block
from mbert_jax.train.inputs import synthetic_data_config
from mbert_jax.train.labels import make_labels

ROOT = Path(__file__).resolve().parents[2]


def config(student="tinybert4_micro", shared=False, bias=False, **weights):
    c = base_config("distill_tinybert")
    c.teacher = teacher_block("bert_base_micro")  # 6 layers
    c.student = model_block(student, hidden_dropout=0.0, attention_dropout=0.0)
    if student.startswith("albert"):
        c.student.overrides["num_layers"] = 3  # 6 / 3: uniform k = 2
    c.init_from = ""
    c.distill = ml_collections.ConfigDict(
        dict(
            mode="general",
            layer_map="uniform",
            loss_weights={**dict(attention=1.0, hidden=1.0, embedding=1.0), **weights},
            official_losses=False,
            shared_projection=shared,
            projection_bias=bias,
        )
    )
    c.data = synthetic_data_config(nsp=False, global_batch_size=4, max_seq_length=16)
    return c


def batch():
    b = {
        k: jnp.asarray(v) for k, v in next(SyntheticPretrainingData(2048, 4, 16, 5, seed=0)).items()
    }
    mask = np.ones((4, 16), np.int32)
    mask[1, 10:] = 0
    mask[3, 5:] = 0
    b["attention_mask"] = jnp.asarray(mask)
    return b


def fresh(recipe):
    params = jax.device_get(jax.tree.map(np.asarray, recipe.init_params(jax.random.PRNGKey(0))))
    return nn.meta.unbox(params), recipe.load_teacher_params()


def test_uniform_map_losses_match_an_independent_computation():
    recipe = tinybert.TinyBertRecipe(config())
    assert recipe.mapping == (0, 3, 6)
    (stage,) = recipe.stages()
    params, teacher = fresh(recipe)
    b = batch()
    got = jax.jit(lambda p, t: recipe.compute_losses(stage, p, t, b, train=False))(params, teacher)

    def outputs(model, p):
        out = model.apply(
            {"params": p},
            b["input_ids"],
            b["attention_mask"],
            b["token_type_ids"],
            b["position_ids"],
            output_hidden_states=True,
            output_attentions=True,
            run_heads=(),
        ).encoder
        hidden = [np.asarray(out.embedding_output)] + [np.asarray(h) for h in out.hidden_states]
        return hidden, [np.asarray(a, np.float64) for a in out.attention_scores]

    s_hidden, s_att = outputs(recipe.student, params["student"])
    t_hidden, t_att = outputs(recipe.teacher_model, teacher)
    mask = np.asarray(b["attention_mask"]) > 0
    heads = s_att[0].shape[1]
    valid = mask[:, None, :, None] & mask[:, None, None, :]  # real query, real key
    # Student block m (1-based) <- teacher block 3m: teacher attention index 3m - 1.
    attention = sum(
        np.sum(np.where(valid, (s_att[m - 1] - t_att[3 * m - 1]) ** 2, 0.0)) / (heads * valid.sum())
        for m in (1, 2)
    )

    def mse(s, t, w):
        per_token = np.mean((s.astype(np.float64) @ w - t) ** 2, axis=-1)
        return per_token[mask].mean()

    proj = params["proj"]
    hidden = sum(mse(s_hidden[m], t_hidden[3 * m], proj["hidden_kernel"]) for m in (1, 2))
    embedding = mse(s_hidden[0], t_hidden[0], proj["embedding_kernel"])
    assert float(got["attention"].mean()) == pytest.approx(attention, rel=1e-4)
    assert float(got["hidden"].mean()) == pytest.approx(hidden, rel=1e-4)
    assert float(got["embedding"].mean()) == pytest.approx(embedding, rel=1e-4)


@pytest.mark.parametrize("shared", [False, True])
def test_projections_get_gradients(shared):
    recipe = tinybert.TinyBertRecipe(config(shared=shared, bias=shared))
    (stage,) = recipe.stages()
    params, teacher = fresh(recipe)
    grads = jax.jit(
        jax.grad(lambda p: recipe.loss(stage, p, teacher, batch(), jax.random.PRNGKey(0))[0])
    )(params)
    names = ["shared_kernel", "shared_bias"] if shared else ["hidden_kernel", "embedding_kernel"]
    assert sorted(grads["proj"]) == sorted(names)
    for name in names:
        assert grads["proj"][name].shape == params["proj"][name].shape
        assert float(jnp.abs(grads["proj"][name]).max()) > 0, name
    assert params["proj"][names[0]].shape == (48, 64)  # student width -> teacher width


def test_stage_rules_freeze_the_projection_of_an_inactive_loss():
    recipe = tinybert.TinyBertRecipe(config(embedding=0.0))
    (stage,) = recipe.stages()
    assert dict(stage.loss_weights) == {"attention": 1.0, "hidden": 1.0}
    params, _ = fresh(recipe)
    labels = make_labels(params, stage.rules)
    assert labels["proj"]["embedding_kernel"] == "frozen"
    assert labels["proj"]["hidden_kernel"] == "x1"
    with pytest.raises(ValueError, match="no task head"):
        tinybert.TinyBertRecipe(config(prediction=1.0)).stages()


def test_heads_must_match_for_the_attention_loss():
    c = config()
    c.student.overrides["num_heads"] = 2
    with pytest.raises(ValueError, match="head by head"):
        tinybert.TinyBertRecipe(c)
    c.distill.loss_weights.attention = 0.0
    tinybert.TinyBertRecipe(c)  # hidden and embedding losses only: fine


def test_a_pruned_teacher_needs_the_heads_of_each_mapped_block():
    """Student blocks 0 and 1 learn from teacher blocks 2 and 5 (uniform map, 6 / 2)."""
    c = config()
    c.teacher.overrides["layer_heads"] = "2,2,4,2,2,4"  # the mapped blocks keep 4
    tinybert.TinyBertRecipe(c)
    c.teacher.overrides["layer_heads"] = "4,4,2,4,4,4"
    with pytest.raises(
        ValueError,
        match=r"head by head: student block 0 has 4 heads and teacher block 2, which it "
        r"learns from, has 2 \(ModelConfig.layer_heads",
    ):
        tinybert.TinyBertRecipe(c)
    c.distill.loss_weights.attention = 0.0
    tinybert.TinyBertRecipe(c)


@pytest.mark.parametrize("student", ["tinybert4_micro", "albert_base_micro"])
def test_a_step_lowers_the_general_distillation_loss(student):
    """Also for an ALBERT-style student (factorized embedding, every layer shared)."""
    recipe = tinybert.TinyBertRecipe(config(student))
    (stage,) = recipe.stages()
    params, teacher = fresh(recipe)
    if student.startswith("albert"):
        assert recipe.student_config.layer_sharing == "all"
        assert "layers_0" not in params["student"]["encoder"]  # one shared block
    b = batch()
    tx = optax.adam(3e-3)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(
            lambda p: recipe.loss(stage, p, teacher, b, jax.random.PRNGKey(0))[0]
        )(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    state = tx.init(params)
    values = []
    for _ in range(5):
        params, state, value = step(params, state)
        values.append(float(value))
    assert values[-1] < values[0]


def test_ablation_sweeps_drop_one_loss_each():
    sys.path.insert(0, str(ROOT / "configs"))
    try:
        import tinybert_general
        import tinybert_task
    finally:
        sys.path.pop(0)
    for module, losses in (
        (tinybert_general, ("attention", "hidden", "embedding")),
        (tinybert_task, ("attention", "hidden", "embedding", "prediction")),
    ):
        runs = []
        module.sweep(lambda runs=runs, **kw: runs.append(kw))
        names = {r["name"] for r in runs}
        assert {f"without_{x}" for x in losses} <= names
        for r in runs:
            cfg = module.get_config("runlocal")
            for key, value in r.items():
                if key != "name":
                    node = cfg
                    *parents, leaf = key.split(".")
                    for p in parents:
                        node = node[p]
                    assert leaf in node
                    node[leaf] = value


# ------------------------------------------------------------------ end to end
def run_cli(args, env):
    cmd = [sys.executable, "-m", "mbert_jax", "train", *args]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


@pytest.mark.slow
# Out of CI for time: its parts run there (general distillation, in process:
# test_resolve.py's from the real MiniLM; task distillation with augmentation:
# test_task_distill.py; the train CLI: test_mobilebert.py's runlocal runs).
@pytest.mark.heavy
def test_general_then_task_distillation_through_the_cli(tmp_path):
    """pretrained BERT (random, with vocab) -> finetune -> general -> task (with augmentation)."""
    from mbert_jax.data import config as data_config
    from mbert_jax.data import pipeline

    tok = pipeline.get_tokenizer(data_config.pretraining_data_defaults())
    vocab = tok.save(tmp_path / "vocab")
    cfg = variants.get("bert_base_micro", vocab_size=tok.vocab_size)
    bert = Model(cfg, heads=("mlm",))
    io.save_model(tmp_path / "bert", cfg, ("mlm",), init_params(bert, jax.random.PRNGKey(0)), vocab)
    env = dict(os.environ, MBERT_JAX_COMPILE_CACHE="", PYTHONUNBUFFERED="1")
    short = ["--config.train.log_every=1", "--config.train.checkpoint_every=100"]
    run_cli(
        [
            "--config",
            "configs/finetune.py:runlocal",
            "--workdir",
            str(tmp_path / "ft"),
            f"--config.init_from={tmp_path / 'bert'}",
            "--config.train.steps=3",
            "--config.train.eval_every=3",
            *short,
        ],
        env,
    )
    run_cli(
        [
            "--config",
            "configs/tinybert_general.py:runlocal",
            "--workdir",
            str(tmp_path / "general"),
            f"--config.teacher.path={tmp_path / 'bert'}",
            "--config.train.steps=3",
            "--config.train.eval_every=3",
            "--config.train.eval_steps=1",
            *short,
        ],
        env,
    )
    g_cfg, g_heads, _ = io.load_model(tmp_path / "general/model")
    assert g_cfg.num_layers == 2 and g_heads == ()
    run_cli(
        [
            "--config",
            "configs/tinybert_task.py:runlocal",
            "--workdir",
            str(tmp_path / "task"),
            f"--config.teacher.path={tmp_path / 'ft/model'}",
            f"--config.init_from={tmp_path / 'general/model'}",
            f"--config.augment.mlm_teacher.path={tmp_path / 'bert'}",
            f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.augment.max_examples=8",
            "--config.distill.intermediate_steps=2",
            "--config.distill.prediction_steps=2",
            *short,
        ],
        env,
    )
    results = json.loads((tmp_path / "task/results.json").read_text())
    assert results["step"] == 4
    assert {"accuracy", "prediction", "task_loss"} <= set(results["eval"])
    s_cfg, s_heads, _ = io.load_model(tmp_path / "task/model")
    assert s_cfg.num_layers == 2 and s_heads == ("classifier",) and s_cfg.num_labels == 6
    (augmented,) = (tmp_path / "cache").glob("augment-stdlib-*")
    rows = (augmented / "train.tsv").read_text().splitlines()
    assert len(rows) == 1 + 1452 + 8 * 2  # header, originals, N = 2 variants of 8 rows


@pytest.mark.parametrize("value", ["2,4", "[2, 4]", "[2,4]", "2 4"])
def test_an_explicit_layer_map_is_accepted_from_the_command_line(value):
    from absl import flags

    from mbert_jax.train import cli

    argv = ["--config", "configs/tinybert_general.py:runlocal", "--workdir", "unused"]
    argv.append(f"--config.distill.layer_map={value}")
    fv = flags.FlagValues()
    cli._define_common(fv, argv)
    cli._parse(fv, "mbert-jax train", argv)
    c = fv.config
    c.student = model_block("tinybert4_micro")
    c.student.overrides["num_layers"] = 2
    assert tinybert.TinyBertRecipe(c).mapping == (0, 2, 4)


@pytest.mark.parametrize(
    "value, message",
    [
        (
            "2,x",
            r"config\.distill\.layer_map='2,x': .*e\.g\. --config\.distill\.layer_map=3,6,9,12",
        ),
        (
            "2,4,6",
            r"config\.distill\.layer_map='2,4,6': .*one teacher layer per student block \(2\)",
        ),
        ("2,9", r"teacher layers are 1\.\.6 \(0 is the embedding\), got \[9\]"),
    ],
)
def test_a_bad_layer_map_names_the_field_and_the_fix(value, message):
    c = config()
    c.student.overrides["num_layers"] = 2
    c.distill.layer_map = value
    with pytest.raises(ValueError, match=message):
        tinybert.TinyBertRecipe(c)
