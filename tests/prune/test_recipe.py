"""The "prune" recipe (configs/prune.py) end to end on a micro classifier and a tiny task.

The expected structure is recomputed here: the importance scores with
`prune.importance` on the same first training batches, the heads and
neurons kept by a ranking written here (not the recipe's `choose_*`), and
the saved weights compared with the slices of the original ones.
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
import task_files as tf

from mbert_jax.distill.task_data import TaskSetup
from mbert_jax.models import Model, io
from mbert_jax.prune import importance
from mbert_jax.prune.recipe import PruneRecipe
from mbert_jax.train.config import apply_overrides, load_config_module

LABELS = tuple(sorted(tf.TOPICS))
Q = "encoder/layers_{}/attention/self_attention/query/kernel"
FFN = "encoder/layers_{}/ffn/ffn_0/intermediate/kernel"


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune_task")
    bert, train, dev = tf.topic_task_and_classifier(root, num_layers=4)
    return root, bert, train, dev


def config_of(task, arg="runlocal,task=custom", **extra):
    root, bert, train, dev = task
    module, a = load_config_module(f"configs/prune.py:{arg}")
    overrides = {
        "init_from": str(bert),
        "data.train_file": str(train),
        "data.eval_file": str(dev),
        "data.text_column": "text",
        "data.label_column": "label",
        "data.cache_dir": str(root / "cache"),
        "data.max_seq_length": tf.SEQ,
        "prune.importance_batches": 3,
        "train.steps": 30,
        "train.eval_every": 30,
        "train.checkpoint_every": 30,
        "train.log_every": 10,
    }
    overrides.update(extra)
    return apply_overrides(module.get_config(a), overrides)


def run(task, workdir, **extra):
    from mbert_jax.train.cli import run_config

    config = config_of(task, **extra)
    run_config(config, str(workdir))
    return json.loads((workdir / "results.json").read_text())["eval"], workdir / "model"


def expected_keep(task, config):
    """Heads and neurons kept, from importance recomputed here and ranked by hand."""
    _, bert, _, _ = task
    cfg, heads, params = io.load_model(bert)
    setup = TaskSetup(config.data, str(bert))
    batches = [setup.data.train.batch_fn(i) for i in range(config.prune.importance_batches)]
    layers = [0, 2]  # every_other of 4 blocks
    # Scored on the model being pruned: blocks 1 and 3 dropped (renamed here by hand).
    dropped = {k: v for k, v in params.items() if k != "encoder"}
    dropped["encoder"] = {k: v for k, v in params["encoder"].items() if not k.startswith("layers_")}
    for new, old in enumerate(layers):
        dropped["encoder"][f"layers_{new}"] = params["encoder"][f"layers_{old}"]
    raw = importance(Model(cfg.replace(num_layers=2), heads), dropped, batches)
    scores = type(raw)(
        heads={old: raw.heads[new] for new, old in enumerate(layers)},
        neurons={old: raw.neurons[new] for new, old in enumerate(layers)},
        batches=raw.batches,
    )
    # Heads: remove the lowest one at a time, never the last of a block.
    alive = {(layer, h) for layer in layers for h in range(cfg.num_heads)}
    remove = math.floor(config.prune.heads * len(alive))
    best = {layer: int(np.argmax(scores.heads[layer])) for layer in layers}
    for _ in range(remove):
        victim = min(
            (p for p in alive if p[1] != best[p[0]]),
            key=lambda p: (scores.heads[p[0]][p[1]], p),
        )
        alive.remove(victim)
    keep_heads = {layer: sorted(h for l2, h in alive if l2 == layer) for layer in layers}
    width = cfg.intermediate_size
    n_keep = width - math.floor(config.prune.neurons * width)
    keep_neurons = {
        layer: sorted(np.argsort(-scores.neurons[layer], kind="stable")[:n_keep].tolist())
        for layer in layers
    }
    return cfg, params, keep_heads, keep_neurons


@pytest.mark.slow
def test_prunes_to_the_requested_structure_and_recovery_lowers_kd(task, tmp_path):
    extra = {"prune.heads": 0.5, "prune.neurons": 0.5, "prune.layers": "every_other"}
    before, _ = run(task, tmp_path / "before", **{**extra, "train.steps": 0})
    after, model_dir = run(task, tmp_path / "after", **extra)

    config = config_of(task, **extra)
    cfg, params, keep_heads, keep_neurons = expected_keep(task, config)
    small, heads, small_params = io.load_model(model_dir)
    assert heads == ("classifier",)
    assert small.num_layers == 2
    want_heads = tuple(len(keep_heads[layer]) for layer in (0, 2))
    assert sum(want_heads) == 4  # half of the two kept blocks' 8 heads
    if set(want_heads) == {cfg.num_heads}:
        assert small.layer_heads is None
    else:
        assert small.layer_heads == want_heads
    assert small.intermediate_size == 128 and small.layer_intermediate_sizes is None

    # The recipe keeps those heads and neurons: its pruned model (before recovery) holds the
    # original weights' slices.
    recipe = PruneRecipe(config)
    assert recipe.keep_heads == keep_heads and recipe.keep_neurons == keep_neurons
    flat0, flat = io.flatten(params), io.flatten(recipe.pruned_params)
    for new, old in enumerate((0, 2)):
        np.testing.assert_array_equal(flat[Q.format(new)], flat0[Q.format(old)][:, keep_heads[old]])
        np.testing.assert_array_equal(
            flat[FFN.format(new)], flat0[FFN.format(old)][:, keep_neurons[old]]
        )

    # Parameter counts: the saved arrays, smaller than the original's.
    count = sum(np.size(x) for x in jax.tree.leaves(small_params))
    original = sum(np.size(x) for x in jax.tree.leaves(params))
    assert after["params"] == count < original == after["unpruned_params"]

    # Recovery distils toward the teacher: the dev KD loss goes down.
    assert after["kd"] < before["kd"], (before, after)
    assert 0.0 <= after["accuracy"] <= 1.0


def test_unpruned_zero_step_run_matches_the_teacher(task, tmp_path):
    """heads=0, neurons=0: the same model, KL 0 to the teacher."""
    values, _ = run(
        task, tmp_path / "w", **{"prune.heads": 0.0, "prune.neurons": 0.0, "train.steps": 0}
    )
    assert values["params"] == values["unpruned_params"]
    assert abs(values["kd"]) < 1e-5


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"prune.heads": 1.0}, r"config.prune.heads=1.0: a fraction in \[0, 1\)"),
        ({"prune.neurons": -0.1}, r"config.prune.neurons=-0.1: a fraction in \[0, 1\)"),
        ({"prune.layers": "1,7"}, r"config.prune.layers='1,7': blocks \[7\] are not in \[0, 4\)"),
        ({"prune.layers": "0,1,2,3"}, r"drops all 4 blocks"),
        ({"prune.layers": "one"}, r"config.prune.layers='one'"),
        ({"prune.heads": 0.9}, r"config.prune.heads=0.9: removes 14 of the 16 heads"),
        ({"prune.kd": "mse"}, r"config.prune.kd='mse'"),
        ({"init_from": ""}, r"config.init_from: the fine-tuned model directory"),
    ],
)
def test_bad_targets_are_one_line_config_errors(task, tmp_path, extra, message):
    from mbert_jax.train.cli import run_config

    config = config_of(task, **extra)
    with pytest.raises(SystemExit, match=message) as e:
        run_config(config, str(tmp_path / "w"))
    assert str(e.value).startswith("config error: ") and "\n" not in str(e.value)
    assert not (tmp_path / "w").exists()
