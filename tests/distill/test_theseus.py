"""BERT-of-Theseus: the mixed forward, its gradients, the schedule, and a run through the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbert_jax.distill import theseus
from mbert_jax.losses import LossSum
from mbert_jax.models import Model, init_params, io, variants
from mbert_jax.models.model import HEAD_OUTPUTS, head_outputs
from mbert_jax.train.forward import task_metrics_from_logits
from mbert_jax.train.labels import make_labels
from mbert_jax.train.optimizers import default_optimizer_config, make_optimizer
from mbert_jax.train.recipe import Recipe, Stage
from mbert_jax.train.step import TrainState, make_train_step

ROOT = Path(__file__).resolve().parents[2]
N_MODULES = 3  # bert_base_micro: 6 layers -> 3 modules of 2


def models():
    cfg = variants.get("bert_base_micro", vocab_size=64, num_labels=3, hidden_dropout=0.0)
    cfg = cfg.replace(attention_dropout=0.0)
    predecessor = Model(cfg, heads=("classifier",))
    successor = Model(cfg.replace(num_layers=N_MODULES), heads=("classifier",))
    return predecessor, successor


@pytest.fixture(scope="module")
def setup():
    predecessor, successor = models()
    pred_params = init_params(predecessor, jax.random.PRNGKey(1))
    init = theseus.successor_init_layers("module_last", N_MODULES, 2)
    params = theseus.successor_from_predecessor(pred_params, init)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 64, (4, 12)).astype(np.int32)
    mask = np.ones((4, 12), np.int32)
    mask[1, 8:] = 0
    batch = {
        "input_ids": jnp.asarray(ids),
        "attention_mask": jnp.asarray(mask),
        "token_type_ids": jnp.zeros((4, 12), jnp.int32),
        "position_ids": jnp.broadcast_to(jnp.arange(12), (4, 12)),
        "labels": jnp.asarray([0, 1, 2, 1], jnp.int32),
        "valid": jnp.ones((4,), jnp.float32),
    }
    replacer = theseus.ModuleReplacer(successor, predecessor)
    logits = jax.jit(lambda p, pp, b, c: replacer.logits(p, pp, b, c, train=False))
    return predecessor, successor, pred_params, params, batch, replacer, logits


def same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def plain_logits(model, params, batch):
    return model.apply(
        {"params": params},
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        batch["position_ids"],
    ).logits


def test_init_layers_choices():
    assert theseus.successor_init_layers("first", 6, 2) == (0, 1, 2, 3, 4, 5)
    assert theseus.successor_init_layers("module_first", 6, 2) == (0, 2, 4, 6, 8, 10)
    assert theseus.successor_init_layers("module_last", 6, 2) == (1, 3, 5, 7, 9, 11)
    assert theseus.successor_init_layers((0, 5, 11, 1, 2, 3), 6, 2) == (0, 5, 11, 1, 2, 3)
    with pytest.raises(ValueError, match="need 6 predecessor layers"):
        theseus.successor_init_layers((0, 12, 1, 2, 3, 4), 6, 2)


def test_successor_copies_the_chosen_predecessor_layers(setup):
    _, _, pred_params, params, *_ = setup
    for i, j in enumerate((1, 3, 5)):
        a = jax.tree.leaves(params["encoder"][f"layers_{i}"])
        b = jax.tree.leaves(pred_params["encoder"][f"layers_{j}"])
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert set(params["encoder"]) == {"embeddings", "pooler", "layers_0", "layers_1", "layers_2"}


def test_p1_is_the_successor_alone_and_p0_the_predecessor(setup):
    predecessor, successor, pred_params, params, batch, _, logits = setup
    all_successor = logits(params, pred_params, batch, jnp.ones(N_MODULES, bool))
    np.testing.assert_allclose(
        all_successor, plain_logits(successor, params, batch), rtol=1e-5, atol=1e-6
    )
    all_predecessor = logits(params, pred_params, batch, jnp.zeros(N_MODULES, bool))
    np.testing.assert_allclose(
        all_predecessor, plain_logits(predecessor, pred_params, batch), rtol=1e-5, atol=1e-6
    )
    # A mixed draw differs from both (the successor layers are not the modules they replace).
    mixed = logits(params, pred_params, batch, jnp.asarray([True, False, True]))
    assert not np.allclose(mixed, all_successor, atol=1e-4)
    assert not np.allclose(mixed, all_predecessor, atol=1e-4)


def test_mixed_forward_equals_a_hand_assembled_stack(setup):
    """Module 1 from the predecessor (its layers 2 and 3), modules 0 and 2 from the successor."""
    predecessor, _, pred_params, params, batch, _, logits = setup
    enc = dict(pred_params["encoder"])
    stack = {
        **{k: v for k, v in enc.items() if not k.startswith("layers_")},
        "layers_0": params["encoder"]["layers_0"],
        "layers_1": enc["layers_2"],
        "layers_2": enc["layers_3"],
        "layers_3": params["encoder"]["layers_2"],
    }
    four = Model(predecessor.config.replace(num_layers=4), heads=("classifier",))
    expected = plain_logits(four, {"encoder": stack, "classifier": params["classifier"]}, batch)
    got = logits(params, pred_params, batch, jnp.asarray([True, False, True]))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["token_classifier", "qa"])
def test_the_task_head_of_any_kind_runs_on_the_mixed_stack(setup, head):
    """Tagging and span heads: p = 1 is the successor alone, p = 0 the predecessor."""
    predecessor, successor, _, _, batch, _, _ = setup
    predecessor = Model(predecessor.config, heads=(head,))
    successor = Model(successor.config, heads=(head,))
    pred_params = init_params(predecessor, jax.random.PRNGKey(2))
    params = theseus.successor_from_predecessor(pred_params, (0, 2, 4), head)
    assert set(params) == {"encoder", head}
    replacer = theseus.ModuleReplacer(successor, predecessor)
    outputs = jax.jit(lambda p, pp, c: replacer.outputs(p, pp, batch, c, train=False))
    for model, p, choose in (
        (successor, params, jnp.ones(N_MODULES, bool)),
        (predecessor, pred_params, jnp.zeros(N_MODULES, bool)),
    ):
        got = outputs(params, pred_params, choose)
        out = model.apply(
            {"params": p}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        )
        expected = head_outputs(out, head)
        assert set(got) == set(expected) == set(HEAD_OUTPUTS[head])
        for field in expected:
            np.testing.assert_allclose(got[field], expected[field], rtol=1e-5, atol=1e-6)


def test_gradients_reach_only_the_drawn_successor_modules(setup):
    _, _, pred_params, params, batch, replacer, _ = setup

    def loss(p, pp):
        out = replacer.logits(p, pp, batch, jnp.asarray([True, False, True]), train=False)
        return task_metrics_from_logits(out, batch, regression=False)["loss"].mean()

    g_params, g_pred = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, pred_params)
    assert all(not np.any(x) for x in jax.tree.leaves(g_pred))
    norm = lambda t: float(optax.tree.norm(t))
    assert norm(g_params["encoder"]["layers_0"]) > 0
    assert norm(g_params["encoder"]["layers_2"]) > 0
    assert norm(g_params["encoder"]["layers_1"]) == 0.0  # module 1 ran the predecessor


def test_replace_rate_schedules():
    lin = dict(schedule="linear", k=0.0006, b=0.3, rate=0.0, replace_steps=0)
    assert float(theseus.replace_rate(0, **lin)) == pytest.approx(0.3)
    assert float(theseus.replace_rate(500, **lin)) == pytest.approx(0.6)
    assert float(theseus.replace_rate(1167, **lin)) == 1.0
    assert float(theseus.replace_rate(5000, **lin)) == 1.0
    const = dict(schedule="constant", k=0.0, b=0.0, rate=0.5, replace_steps=100)
    assert float(theseus.replace_rate(99, **const)) == 0.5
    assert float(theseus.replace_rate(100, **const)) == 1.0


def test_module_draws_follow_p():
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    draws = jax.vmap(lambda k: theseus.draw_modules(k, 0.3, 6))(keys)
    assert draws.shape == (4000, 6)
    assert float(draws.mean()) == pytest.approx(0.3, abs=0.02)
    assert bool(theseus.draw_modules(keys[0], 1.0, 6).all())
    assert not bool(theseus.draw_modules(keys[0], 0.0, 6).any())


def test_a_step_on_the_successor_lowers_the_task_loss(setup):
    _, _, pred_params, params, batch, replacer, _ = setup
    choose = jnp.asarray([True, False, True])

    def loss(p):
        out = replacer.logits(p, pred_params, batch, choose, train=False)
        return task_metrics_from_logits(out, batch, regression=False)["loss"].mean()

    tx = optax.adam(1e-3)

    @jax.jit
    def step(p, s):
        value, g = jax.value_and_grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, value

    state = tx.init(params)
    first = None
    for _ in range(4):
        params, state, value = step(params, state)
        first = value if first is None else first
    assert float(loss(params)) < float(first)


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_runlocal_through_the_cli_freezes_all_but_the_successor_layers(tmp_path):
    """configs/theseus.py:runlocal with a (random) fine-tuned predecessor directory."""
    from mbert_jax.data import config as data_config
    from mbert_jax.data import pipeline

    tok = pipeline.get_tokenizer(data_config.pretraining_data_defaults())
    vocab = tok.save(tmp_path / "vocab")
    cfg = variants.get("bert_base_micro", vocab_size=tok.vocab_size, num_labels=6)
    pred_model = Model(cfg, heads=("classifier",))
    pred_params = init_params(pred_model, jax.random.PRNGKey(3))
    io.save_model(tmp_path / "teacher", cfg, ("classifier",), pred_params, vocab)
    env = dict(os.environ, MBERT_JAX_COMPILE_CACHE="", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "mbert_jax",
        "train",
        "--config",
        "configs/theseus.py:runlocal",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.teacher.path={tmp_path / 'teacher'}",
        "--config.theseus.k=0.25",  # p: 0.3, 0.55, 0.8, 1.0
        "--config.theseus.successor_steps=2",
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["step"] == 5
    assert "accuracy" in results["eval"]  # the official metric, from the successor alone
    cfg_out, heads, params = io.load_model(tmp_path / "run/model")
    assert cfg_out.num_layers == 3 and heads == ("classifier",)
    enc = pred_params["encoder"]
    assert same(params["encoder"]["embeddings"], enc["embeddings"])
    assert same(params["encoder"]["pooler"], enc["pooler"])
    assert same(params["classifier"], pred_params["classifier"])
    for i in range(3):  # "first": successor layer i started as predecessor layer i
        assert not same(params["encoder"][f"layers_{i}"], enc[f"layers_{i}"])


class _StepProbe(Recipe):
    """A recipe whose objective is (w - step)^2: its metric records the step it was given."""

    loss_uses_step = True

    def loss(self, stage, params, teacher_params, batch, rng, step=None):
        one = jnp.ones(())
        value = jnp.square(params["w"] - step.astype(jnp.float32))
        metrics = {"loss": LossSum(value, one), "seen_step": LossSum(step.astype(jnp.float32), one)}
        return self.objective(stage, metrics), metrics


@pytest.mark.parametrize("accum", [1, 2])
def test_the_trainer_passes_the_global_step_to_recipes_that_ask(accum):
    stage = Stage("probe", 5, {"loss": 1.0})
    tx = optax.sgd(0.0)
    step = jax.jit(make_train_step(_StepProbe(), stage, tx, accum))
    params = {"w": jnp.zeros(())}
    state = TrainState(jnp.asarray(7, jnp.int32), params, tx.init(params), jax.random.PRNGKey(0))
    state, metrics = step(state, {"x": jnp.zeros((4, 1))}, None)
    assert float(metrics["seen_step"].mean()) == 7.0
    state, metrics = step(state, {"x": jnp.zeros((4, 1))}, None)
    assert float(metrics["seen_step"].mean()) == 8.0


class _Replacing(Recipe):
    """The recipe's "replace" objective with a fixed draw, for the trainer's own step."""

    def __init__(self, replacer, choose):
        self.replacer, self.choose = replacer, choose

    def loss(self, stage, params, teacher_params, batch, rng):
        out = self.replacer.logits(params, teacher_params, batch, self.choose, train=True, rng=rng)
        metrics = task_metrics_from_logits(out, batch, regression=False)
        return metrics["loss"].mean(), metrics


def test_frozen_parameters_stay_bit_identical_across_trainer_steps(setup):
    _, _, pred_params, params, batch, replacer, _ = setup
    stage = Stage("replace", 3, {"loss": 1.0}, theseus.SUCCESSOR_RULES)
    labels = make_labels(params, stage.rules)
    assert labels["encoder"]["layers_1"]["attention"]["output_norm"]["scale"] == "x1"
    assert labels["classifier"]["dense"]["kernel"] == "frozen"
    tx, _ = make_optimizer(default_optimizer_config(), labels, stage.steps)
    step = jax.jit(
        make_train_step(_Replacing(replacer, jnp.asarray([True, True, False])), stage, tx)
    )
    state = TrainState(jnp.asarray(0, jnp.int32), params, tx.init(params), jax.random.PRNGKey(0))
    for _ in range(2):
        state, _ = step(state, batch, pred_params)
    new = state.params
    for name in ("embeddings", "pooler"):
        assert same(new["encoder"][name], params["encoder"][name]), name
    assert same(new["classifier"], params["classifier"])
    assert not same(new["encoder"]["layers_0"], params["encoder"]["layers_0"])
    # layers_2 trains (its rule) but got no gradient: module 2 ran the predecessor; AdamW's
    # weight decay still moves its matrices, so only its gradient-free status is checked above.
