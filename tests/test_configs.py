"""Every experiment config builds at its defaults and with each of its options, and every
declared sweep expands into overrides its locked config accepts.

The options of a config are whatever its `parse_arg` declares (read from the
error an unknown option raises), so a new option is covered as soon as it
exists; `EXAMPLE_VALUES` gives a valid value for each non-boolean option, and
the test fails naming an option that has none.
"""

from __future__ import annotations

import re
from pathlib import Path

import ml_collections
import pytest

from mbert_jax.train.config import apply_overrides, load_config_module
from mbert_jax.train.sweep import Metric, expand, run_config_of, sweep_runs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOT_EXPERIMENTS = {"__init__.py", "common.py"}
FILES = sorted(p.name for p in CONFIGS.glob("*.py") if p.name not in NOT_EXPERIMENTS)

# A valid value of every non-boolean option, by option name (or "file:option").
EXAMPLE_VALUES = {
    "variant": "bert_base",
    "data": "synthetic",
    "student": "tiny",
    "mobilebert_pkt.py:student": "tiny",
    "tinybert_general.py:student": "albert_base",
    "tinybert_task.py:student": "tinybert6",
    "minilm.py:student": "tinybert4",
    "minilm.py:variant": "minilm",
    "teacher": "/tmp/some/teacher/model",
    "model": "/tmp/some/model",
    "lower": "reduced",
    "layers": "2",
    "task": "stsb",
    "schedule": "constant",
    "kl": "masked",
    "augment": "0",
    "heads": "0.25",
    "neurons": "0.25",
    "prune.py:sweep": "allocation",
}


def load(name):
    module, _ = load_config_module(str(CONFIGS / name))
    return module


def options(name) -> dict[str, object]:
    """The options `parse_arg` declares in `name`, with their defaults' types."""
    module = load(name)
    with pytest.raises(ValueError, match="unknown config option") as e:
        module.get_config("no_such_option_xyz")
    names = re.search(r"options: \[(.*)\]", str(e.value)).group(1)
    declared = [n.strip().strip("'") for n in names.split(",") if n.strip()]
    defaults = {}
    for opt in declared:
        try:
            module.get_config(opt)  # a bare name: a boolean flag
            defaults[opt] = True
        except ValueError as err:
            assert "needs a value" in str(err), err
            defaults[opt] = None
    return defaults


@pytest.mark.parametrize("name", FILES)
def test_builds_at_its_defaults(name):
    config = load(name).get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    config.lock()  # as `--config` locks it
    with pytest.raises(AttributeError):
        config.no_such_field = 1
    if name != "quickstart.py":  # the quickstart's settings are not a run config
        assert config.recipe
        with pytest.raises(AttributeError):
            config.train.no_such_field = 1


@pytest.mark.parametrize("name", FILES)
def test_builds_with_each_option(name):
    module = load(name)
    for opt, flag in options(name).items():
        if flag:
            arg = opt
        else:
            value = EXAMPLE_VALUES.get(f"{name}:{opt}", EXAMPLE_VALUES.get(opt))
            assert value is not None, f"{name}: option {opt!r} has no example value in this test"
            arg = f"{opt}={value}"
        config = module.get_config(arg)
        assert isinstance(config, ml_collections.ConfigDict), (name, arg)
        if "runlocal" in options(name) and opt != "runlocal":
            module.get_config(f"runlocal,{arg}")  # options combine with runlocal


SWEEPS = [n for n in FILES if hasattr(load(n), "sweep")]


def test_the_sweeping_configs_are_the_expected_ones():
    assert len(SWEEPS) >= 7, SWEEPS  # a config whose sweep disappears is noticed


@pytest.mark.parametrize("name", SWEEPS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_sweep_run_is_accepted_by_the_locked_config(name, arg):
    module = load(name)
    base = module.get_config(arg)  # every sweeping config has a runlocal option
    runs = sweep_runs(module, arg)
    assert runs
    names = set()
    for overrides in runs:
        config = apply_overrides(base, overrides)  # SystemExit on an unknown field
        assert config.is_locked
        for key, value in overrides.items():
            if key == "name":
                continue
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value or tuple(node) == tuple(value), (name, key)
        names.add(overrides.get("name", str(sorted(overrides.items()))))
    assert len(names) == len(runs), f"{name}: two sweep runs share a name"
    # Seeds keep the settings apart and raise both seeds; the headline metrics parse.
    seeded = expand(runs, seeds=2)
    assert len({r.name for r in seeded}) == 2 * len(runs)
    config = run_config_of(base, seeded[1])
    assert config.train.seed == base.train.seed + 1 and config.data.seed == base.data.seed + 1
    declared = getattr(module, "sweep_metrics", None)
    assert declared and all(Metric.parse(m).name.startswith("eval_") for m in declared), name


def test_the_prune_config_sweeps_the_budget_allocations_too():
    module = load("prune.py")
    base = module.get_config("runlocal,sweep=allocation")
    runs = sweep_runs(module, "runlocal,sweep=allocation")
    assert [r["name"] for r in runs] == [
        "latency_0.5_fisher", "latency_0.5_uniform", "latency_0.5_greedy",
    ]  # fmt: skip
    for overrides in runs:
        config = apply_overrides(base, overrides)
        assert config.prune.latency_budget == 0.5 and config.prune.heads == 0.0
        assert config.prune.budget_allocation == overrides["name"].split("_")[-1]
    with pytest.raises(ValueError, match="sweep=even: one of sparsity, allocation"):
        sweep_runs(module, "sweep=even")


def test_a_sweep_override_of_a_missing_field_is_refused():
    module = load("pretrain_ibbert.py")
    with pytest.raises(SystemExit, match="no field"):
        apply_overrides(module.get_config("runlocal"), {"optimizer.no_such_rate": 1.0})


def test_per_layer_fields_are_given_as_comma_lists_in_a_config_block():
    """`--config.teacher.overrides.layer_heads=4,2,4,4` (the block holds the string)."""
    from mbert_jax.models.variants import block_overrides, from_block
    from mbert_jax.train.config import model_block

    block = model_block("bert_base_micro", num_layers=4)
    block.overrides.layer_heads = "4,2,4,4"
    block.overrides.layer_intermediate_sizes = "(64, 32, 64, 16)"
    assert block_overrides(block) == {
        "num_layers": 4,
        "layer_heads": (4, 2, 4, 4),
        "layer_intermediate_sizes": (64, 32, 64, 16),
    }
    assert from_block(block).heads_at(1) == 2
    block.overrides.layer_heads = "4,two"
    with pytest.raises(ValueError, match=r"overrides.layer_heads='4,two': whole numbers"):
        block_overrides(block)
