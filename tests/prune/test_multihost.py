"""The prune recipe in two processes (`jax.distributed` on localhost) matches one process.

Each process scores its own slice of the importance batches; the recipe adds
the sums over processes, takes process 0's latency model and gathers the
sharded gates between iterative steps. The run here uses all of that (Fisher
allocation of a latency budget, read from a latency model file, in two
prune-then-recover steps) and must end with the structure, losses and dev
metrics of the same run in one process over the same two devices.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import task_files as tf
from processes import run_processes
from xla_flags import with_devices

from mbert_jax.models import io
from mbert_jax.prune import latency
from mbert_jax.train.logs import read_metrics

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow]


def prune_cmd(workdir, bert, train, dev, model_file, *extra):
    return [
        sys.executable,
        "-m",
        "mbert_jax",
        "train",
        "--config",
        "configs/prune.py:runlocal,task=custom,heads=0,neurons=0",
        "--workdir",
        str(workdir),
        f"--config.init_from={bert}",
        f"--config.data.train_file={train}",
        f"--config.data.eval_file={dev}",
        "--config.data.text_column=text",
        "--config.data.label_column=label",
        f"--config.data.cache_dir={workdir}_cache",
        f"--config.data.max_seq_length={tf.SEQ}",
        "--config.data.global_batch_size=8",
        "--config.prune.importance_batches=3",
        "--config.prune.latency_budget=0.6",
        f"--config.prune.latency_model={model_file}",
        f"--config.prune.latency_seq_len={tf.SEQ}",
        "--config.prune.budget_allocation=fisher",
        "--config.prune.iterations=2",
        "--config.train.steps=8",
        "--config.train.log_every=1",
        "--config.train.eval_every=8",
        "--config.train.checkpoint_every=8",
        *extra,
    ]


def test_two_processes_prune_to_the_model_of_one(tmp_path):
    bert, train, dev = tf.topic_task_and_classifier(tmp_path, num_layers=2)
    cfg, _, _ = io.load_model(bert)
    settings = latency.settings_of(cfg.replace(dtype="float32", matmul_dtype=None), tf.SEQ, 1)
    model_file = tmp_path / "latency.json"  # made up: no timing in a test
    model_file.write_text(latency.LatencyModel(0.5, 0.01, 0.2, 0.002, settings).to_json())
    env = dict(os.environ, PYTHONUNBUFFERED="1")

    one = tmp_path / "one"
    p = subprocess.run(
        prune_cmd(one, bert, train, dev, model_file),
        cwd=ROOT,
        env=dict(env, XLA_FLAGS=with_devices(2)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    one_lines = [line for line in p.stdout.splitlines() if line.startswith("prune")]

    two = tmp_path / "two"
    outs = run_processes(
        lambda port, i: prune_cmd(
            two,
            bert,
            train,
            dev,
            model_file,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        ),
        2,
        dict(env, XLA_FLAGS=with_devices(1)),
        cwd=ROOT,
    )
    assert "process 0 of 2, 1 local / 2 global devices" in outs[0][1]
    two_lines = [line for line in outs[0][0].splitlines() if line.startswith("prune")]
    # Process 0 reports; the other process says nothing of the choice it made alike.
    assert not [line for line in outs[1][0].splitlines() if line.startswith("prune")]

    # The same report: latency model, then the structure of each of the two steps.
    assert len(one_lines) == 3 and "latency model" in one_lines[0]
    assert two_lines == one_lines
    small_one, _, _ = io.load_model(one / "model")
    small_two, _, _ = io.load_model(two / "model")
    assert small_two == small_one
    assert small_one.layer_heads or small_one.layer_intermediate_sizes  # it did prune

    def objective(workdir):
        return {r["step"]: r["objective"] for r in read_metrics(workdir, "train")}

    want, got = objective(one), objective(two)
    assert sorted(got) == sorted(want) == list(range(1, 9))
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=1e-4, abs=1e-5), step
    eval_one = json.loads((one / "results.json").read_text())["eval"]
    eval_two = json.loads((two / "results.json").read_text())["eval"]
    assert eval_two.keys() == eval_one.keys()
    for key, value in eval_one.items():
        assert eval_two[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_importance_over_two_processes_equals_one_process(tmp_path):
    """Michel, Fisher and block-skip scores, each process scoring its slice of the batches
    (with unequal counted rows), equal the scores of one process over the whole batches."""
    script = [sys.executable, str(Path(__file__).with_name("multihost_importance.py"))]
    env = dict(os.environ, XLA_FLAGS=with_devices(1))
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    p = subprocess.run([*script, str(one)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    run_processes(lambda port, i: [*script, str(two), str(port), "2", str(i)], 2, env)
    want, got = np.load(one), np.load(two)
    assert sorted(got.files) == sorted(want.files) and len(want.files) == 9
    for key in want.files:
        scale = np.abs(want[key]).max()
        assert scale > 0, key
        # Block scores are differences of two float32 losses of about 1: 1e-6 absolute.
        atol = 1e-6 if key == "layers" else 1e-6 * scale
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=atol, err_msg=key)
