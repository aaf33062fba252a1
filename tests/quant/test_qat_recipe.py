"""The "qat" recipe (configs/qat.py) end to end on a micro classifier and a tiny task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import task_files as tf

from mbert_jax.models import io
from mbert_jax.train.config import apply_overrides, load_config_module
from mbert_jax.tree import flat

LABELS = tuple(sorted(tf.TOPICS))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat_task")
    bert, train, dev = tf.topic_task_and_classifier(root, num_layers=2)
    return root, bert, train, dev


def config_of(task, **extra):
    root, bert, train, dev = task
    module, a = load_config_module("configs/qat.py:runlocal,task=custom")
    overrides = {
        "init_from": str(bert),
        "data.train_file": str(train),
        "data.eval_file": str(dev),
        "data.text_column": "text",
        "data.label_column": "label",
        "data.cache_dir": str(root / "cache"),
        "data.max_seq_length": tf.SEQ,
        "qat.calibration_batches": 2,
        "train.steps": 20,
        "train.eval_every": 20,
        "train.checkpoint_every": 20,
        "train.log_every": 10,
    }
    overrides.update(extra)
    return apply_overrides(module.get_config(a), overrides)


def run(task, workdir, **extra):
    from mbert_jax.train.cli import run_config

    run_config(config_of(task, **extra), str(workdir))
    return json.loads((workdir / "results.json").read_text())["eval"], workdir / "model"


def test_qat_trains_the_ranges_and_saves_a_fake_quant_model(task, tmp_path):
    """From MobileBERT's initial ranges [-6, 6], which clip the classifier's large logits,
    the ranges follow the batches and the fake-quant model learns its float model back."""
    _, bert, _, _ = task
    uncalibrated = {"qat.calibration_batches": 0, "qat.decay": 0.9}
    before, _ = run(task, tmp_path / "initial", **uncalibrated, **{"train.steps": 0})
    after, model_dir = run(task, tmp_path / "qat", **uncalibrated)
    cfg, heads, params = io.load_model(model_dir)
    assert cfg.fake_quant and cfg.fake_quant_decay == 0.9 and heads == ("classifier",)
    float_cfg, _, float_params = io.load_model(bert)
    assert cfg.replace(fake_quant=False, fake_quant_decay=0.999) == float_cfg
    ranges = {k: np.asarray(v) for k, v in flat(params).items() if k.endswith("_range")}
    kernels = [k for k in flat(float_params) if k.endswith("/kernel")]
    assert len(ranges) == 2 * len(kernels)  # each dense layer's input and output
    assert all(r[0] <= 0 <= r[1] and r[1] - r[0] > 0 for r in ranges.values())
    assert not any(np.array_equal(r, [-6, 6]) for r in ranges.values())  # they moved
    # KD is a soft cross-entropy: the float model's entropy (~0.8566 here, the calibrated
    # model's value) is its floor; training closes most of the initial ranges' 0.0034 gap.
    assert after["kd"] < before["kd"] - 0.002
    assert after["float_agreement"] >= before["float_agreement"]


def test_bad_settings_fail_before_anything_compiles(task, tmp_path):
    from mbert_jax.quant.recipe import QATRecipe

    for field, value, message in [
        ("qat.decay", 1.0, r"config.qat.decay=1.0: a moving-average decay in \[0, 1\)"),
        ("qat.calibration_batches", -1, "config.qat.calibration_batches=-1: >= 0"),
        ("qat.kd_weight", 0.0, "at least one of them > 0"),
        ("init_from", "", "config.init_from: the fine-tuned model directory"),
    ]:
        extra = {field: value}
        if field == "qat.kd_weight":
            extra["qat.ce_weight"] = 0.0
        with pytest.raises(ValueError, match=message):
            QATRecipe(config_of(task, **extra))
