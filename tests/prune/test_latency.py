"""Pruning to a latency budget (`prune.latency_budget`, mbert_jax/prune/latency.py).

The latency model's fit against coefficients written here; its measurement
exports real TFLite files of every structure (their shapes read back from the
files) but takes its timings from a stub, so that no test depends on this
machine's speed (the real figures: BENCHMARKS.md); the recipe's choice under
a hand-written latency model against a greedy choice written here; bad
inputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_recipe import config_of, run, task  # noqa: F401 (the fixture)

from mbert_jax.distill.task_data import TaskSetup
from mbert_jax.models import Model, io
from mbert_jax.prune import importance, latency

COEF = {"fixed_ms": 2.0, "block_ms": 0.5, "head_ms": 0.25, "neuron_ms": 0.01}


def linear(point: dict, coef=COEF) -> float:
    return (
        coef["fixed_ms"]
        + coef["block_ms"] * point["blocks"]
        + coef["head_ms"] * point["heads"]
        + coef["neuron_ms"] * point["neurons"]
    )


def stored_model(config, seq_len, coef=COEF, **settings) -> latency.LatencyModel:
    want = {**latency.settings_of(config, seq_len, 1), **settings}
    return latency.LatencyModel(**coef, settings=want)


def test_the_fit_recovers_a_linear_latency(task):  # noqa: F811
    _, bert, _, _ = task
    config = io.load_config(bert)[0]
    points = []
    for blocks, heads, neurons in latency.structures(config):
        p = {
            "blocks": len(blocks),
            "heads": sum(map(len, heads.values())),
            "neurons": sum(map(len, neurons.values())),
        }
        points.append({**p, "ms": linear(p)})
    model = latency.fit(points, {})
    for key, value in COEF.items():
        assert getattr(model, key) == pytest.approx(value, rel=1e-9, abs=1e-9)
    assert model.max_residual() < 1e-9
    assert latency.LatencyModel.from_json(model.to_json()) == model
    # A config's prediction: its blocks' own heads and widths.
    small = config.replace(num_layers=2, layer_heads=(1, 3), layer_intermediate_sizes=(10, 20))
    assert model.predict_config(small) == pytest.approx(linear(dict(blocks=2, heads=4, neurons=30)))
    with pytest.raises(ValueError, match="structures that differ in blocks, heads and neurons"):
        latency.fit(points[:3], {})


def test_measuring_exports_each_structure_and_fits_its_timings(task, tmp_path, monkeypatch):  # noqa: F811
    """Real exports of the six structures; timings from a stub linear in what each file holds
    (its FULLY_CONNECTED kernels' widths, read from the file); the fit is written where
    `prune.latency_model` says (its directory made) and read back."""
    from ai_edge_litert.tools import flatbuffer_utils as fu

    from mbert_jax.export.tflite import _read

    _, bert, _, _ = task
    config, heads, params = io.load_model(bert)
    head_dim = config.hidden_size // config.num_heads
    seen = []

    def structure_of(flatbuffer: bytes) -> dict:
        model = _read(flatbuffer)
        sg = model.subgraphs[0]
        shapes = [
            [int(d) for d in sg.tensors[op.inputs[1]].shape]
            for op in sg.operators
            if fu.opcode_to_name(model, op.opcodeIndex) == "FULLY_CONNECTED"
        ]
        # Per block: Q, K, V [heads x head_dim, hidden], attention output, FFN in [width, hidden]
        # and out; then the pooler and the classifier.
        blocks = (len(shapes) - 2) // 6
        per_block = [shapes[6 * b : 6 * b + 6] for b in range(blocks)]
        return {
            "blocks": blocks,
            "heads": sum(s[0][0] // head_dim for s in per_block),
            "neurons": sum(s[4][0] for s in per_block),
        }

    def round_robin_ms(files, seq_len, threads, runs):
        assert (seq_len, threads, runs) == (16, 1, 3)
        out = {}
        for key, flatbuffer in files.items():
            s = structure_of(flatbuffer)
            seen.append(s)
            out[key] = [linear(s) + d for d in (-0.1, 0.0, 0.3)]  # median: exact
        return out

    monkeypatch.setattr("mbert_jax.export.verify.round_robin_ms", round_robin_ms)
    path = tmp_path / "new" / "latency.json"
    model = latency.load_or_measure(str(path), config, heads, params, "classification", 16, 1, 3)
    assert latency.LatencyModel.from_json(path.read_text()) == model
    want = []
    for blocks, kept_heads, kept_neurons in latency.structures(config):
        want.append(
            {
                "blocks": len(blocks),
                "heads": sum(map(len, kept_heads.values())),
                "neurons": sum(map(len, kept_neurons.values())),
            }
        )
    assert seen == want  # each file holds the structure it stands for
    assert [{k: p[k] for k in ("blocks", "heads", "neurons")} for p in model.points] == want
    for key, value in COEF.items():
        assert getattr(model, key) == pytest.approx(value, rel=1e-6, abs=1e-9)
    assert model.settings == latency.settings_of(config, 16, 1)


def test_a_stored_model_is_used_only_for_its_model_and_settings(task, tmp_path, monkeypatch):  # noqa: F811
    _, bert, _, _ = task
    config, heads, params = io.load_model(bert)
    path = tmp_path / "latency.json"

    def no_measuring(*a, **k):
        raise AssertionError("measured although a latency model was stored")

    monkeypatch.setattr(latency, "measure", no_measuring)
    path.write_text(stored_model(config, 16).to_json())
    got = latency.load_or_measure(str(path), config, heads, params, "classification", 16, 1, 5)
    assert got.head_ms == COEF["head_ms"]
    with pytest.raises(ValueError, match=r"measured for another model or settings \(seq_len"):
        latency.load_or_measure(str(path), config, heads, params, "classification", 32, 1, 5)
    other = config.replace(hidden_size=2 * config.hidden_size)
    with pytest.raises(ValueError, match=r"\(hidden_size differ\)"):
        latency.load_or_measure(str(path), other, heads, params, "classification", 16, 1, 5)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a latency model"):
        latency.load_or_measure(str(path), config, heads, params, "classification", 16, 1, 5)
    free = stored_model(config, 16, coef={**COEF, "head_ms": -0.01})
    path.write_text(free.to_json())
    with pytest.raises(ValueError, match="gives a head no cost .* raise config.prune.latency_runs"):
        latency.load_or_measure(str(path), config, heads, params, "classification", 16, 1, 5)


def greedy(scores, layers, total, target):
    """Heads and neurons by raw score per ms, each block keeping its best of each."""
    units = []
    for layer in layers:
        for kind, s, cost in (
            ("h", scores.heads[layer], COEF["head_ms"]),
            ("n", scores.neurons[layer], COEF["neuron_ms"]),
        ):
            best = int(np.argmax(s))
            units += [(s[i] / cost, layer, kind, i, cost) for i in range(len(s)) if i != best]
    gone = set()
    for _, layer, kind, i, cost in sorted(units, key=lambda u: (u[0], u[1], u[2] == "n", u[3])):
        if total <= target:
            break
        gone.add((layer, kind, i))
        total -= cost
    return gone, total


def test_a_latency_budget_is_met_under_the_latency_model(task, tmp_path):  # noqa: F811
    _, bert, _, _ = task
    config, heads, params = io.load_model(bert)
    seq = config_of(task).data.max_seq_length
    path = tmp_path / "latency.json"
    path.write_text(stored_model(config, seq).to_json())
    extra = {
        "prune.heads": 0.0,
        "prune.neurons": 0.0,
        "prune.latency_budget": 0.6,
        "prune.latency_model": str(path),
        "prune.budget_allocation": "greedy",
        "train.steps": 2,
        "train.eval_every": 2,
        "train.checkpoint_every": 2,
    }
    values, model_dir = run(task, tmp_path / "w", **extra)
    n = config.num_layers
    unpruned = linear(
        dict(blocks=n, heads=n * config.num_heads, neurons=n * config.intermediate_size)
    )
    small = io.load_config(model_dir)[0]
    got = linear(
        dict(
            blocks=n,
            heads=sum(small.heads_at(i) for i in range(n)),
            neurons=sum(small.intermediate_size_at(i) for i in range(n)),
        )
    )
    assert values["unpruned_predicted_ms"] == pytest.approx(unpruned)
    assert values["predicted_ms"] == pytest.approx(got)
    # The greedy choice written here, from the same importance scores.
    c = config_of(task, **extra)
    setup = TaskSetup(c.data, str(bert))
    batches = [setup.data.train.batch_fn(i) for i in range(c.prune.importance_batches)]
    raw = importance(Model(config, heads), params, batches, normalize=False)
    gone, total = greedy(raw, range(n), unpruned, 0.6 * unpruned)
    assert got == pytest.approx(total) and got <= 0.6 * unpruned
    for i in range(n):
        assert small.heads_at(i) == config.num_heads - sum(1 for g in gone if g[:2] == (i, "h"))
        assert small.intermediate_size_at(i) == config.intermediate_size - sum(
            1 for g in gone if g[:2] == (i, "n")
        )
    assert json.loads(path.read_text())["head_ms"] == COEF["head_ms"]  # read, not re-measured


def test_the_uniform_allocation_meets_a_latency_budget_with_one_width(task, tmp_path):  # noqa: F811
    _, bert, _, _ = task
    config = io.load_config(bert)[0]
    path = tmp_path / "latency.json"
    path.write_text(stored_model(config, config_of(task).data.max_seq_length).to_json())
    values, model_dir = run(
        task,
        tmp_path / "w",
        **{
            "prune.heads": 0.0,
            "prune.neurons": 0.0,
            "prune.latency_budget": 0.6,
            "prune.latency_model": str(path),
            "prune.budget_allocation": "uniform",
            "train.steps": 2,
            "train.eval_every": 2,
            "train.checkpoint_every": 2,
        },
    )
    small = io.load_config(model_dir)[0]
    n = config.num_layers
    widths = {small.intermediate_size_at(i) for i in range(n)}
    heads = sum(small.heads_at(i) for i in range(n))
    assert len(widths) == 1  # one fraction of every block's neurons
    # ... and about the same fraction of the heads (floors: within one unit)
    removed = 1 - widths.pop() / config.intermediate_size
    assert abs((n * config.num_heads - heads) - removed * n * config.num_heads) < 1 + 1e-9
    assert values["predicted_ms"] <= 0.6 * values["unpruned_predicted_ms"] + 1e-9


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"prune.latency_budget": 1.2}, r"config.prune.latency_budget=1.2: a fraction in \(0, 1\)"),
        (
            {"prune.latency_budget": 0.5, "prune.budget_allocation": "even"},
            r"config.prune.budget_allocation='even': one of fisher, greedy, uniform",
        ),
        (
            {"prune.latency_budget": 0.5, "prune.params_budget": 0.5},
            r"config.prune.latency_budget=0.5 with prune.heads / prune.neurons / prune.params",
        ),
        (
            {"prune.latency_budget": 0.1},
            r"config.prune.latency_budget: \d+\.\d{3} ms \(predicted\), but with every block "
            r"keeping one head and one FFN neuron the model still has",
        ),
    ],
)
def test_bad_latency_budgets_are_one_line_config_errors(task, tmp_path, extra, message):  # noqa: F811
    from mbert_jax.train.cli import run_config

    _, bert, _, _ = task
    config = io.load_config(bert)[0]
    path = tmp_path / "latency.json"
    path.write_text(stored_model(config, config_of(task).data.max_seq_length).to_json())
    extra = {"prune.heads": 0.0, "prune.neurons": 0.0, "prune.latency_model": str(path), **extra}
    with pytest.raises(SystemExit, match=message) as e:
        run_config(config_of(task, **extra), str(tmp_path / "w"))
    assert str(e.value).startswith("config error: ") and "\n" not in str(e.value)
    assert not (tmp_path / "w").exists()
