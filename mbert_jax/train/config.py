"""The experiment config skeleton every `configs/*.py` file starts from.

    recipe           what runs: "pretrain", "finetune", "distill_mobilebert", ...
    model / student  model blocks (`model_block`, recipe-specific)
    teacher          a distillation recipe's frozen teacher (`distill.teacher.teacher_block`)
    data             the data layer's block (`mbert_jax.data.config`)
    optimizer        `mbert_jax.train.optimizers.default_optimizer_config`
    train            steps, seed, logging, evaluation, checkpoints
    mesh             device mesh axis sizes (`data`, `fsdp`, `tensor`)
    sharding_rules   overrides of the logical-to-mesh rules

Configs are locked after `get_config`, so a misspelled `--config.x=y`
override fails before anything compiles, naming the field.
`load_config_module` reads a `configs/X.py[:arg]` file and `apply_overrides`
sets `field.path: value` pairs on a locked copy (sweeps, quickstart, tests).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from typing import Any

import ml_collections

from mbert_jax.parallel.mesh import default_mesh_config
from mbert_jax.train.optimizers import default_optimizer_config


def default_train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "steps": 1000,  # single-stage recipes; staged recipes take steps per stage
            "seed": 0,
            "accum_steps": 1,  # gradient accumulation: micro-batches per step
            "log_every": 50,
            "eval_every": 500,  # 0: only at the end
            "eval_steps": 20,  # held-out batches per periodic evaluation (0: all)
            "final_eval_steps": 0,  # held-out batches of the final evaluation (0: all)
            "checkpoint_every": 1000,
            "keep_checkpoints": 3,
            "nan_policy": "stop",  # "stop": fail naming the step and term; "skip": drop the step
            "max_skipped_steps": 10,  # "skip": stop after this many in a row (0: no limit)
        }
    )


def _field_type(field: dataclasses.Field) -> type:
    hint = str(field.type)
    for name, t in (("bool", bool), ("int", int), ("float", float)):
        if hint.startswith(name):
            return t
    return str


def model_block(variant: str, **overrides) -> ml_collections.ConfigDict:
    """`{variant: ..., overrides: {...}}`: a named variant with `ModelConfig` field overrides.

    `overrides` holds every `ModelConfig` field, unset (None) unless given, so
    any of them can be changed from the command line, typed:
    `--config.model.overrides.remat=True`. `label_names` is not among them:
    the task data decides it.
    """
    from mbert_jax.models.config import ModelConfig

    names = [f for f in dataclasses.fields(ModelConfig) if f.name != "label_names"]
    unknown = set(overrides) - {f.name for f in names}
    if unknown:
        raise ValueError(f"unknown ModelConfig field(s) {sorted(unknown)}")
    fields = {
        f.name: ml_collections.FieldReference(overrides.get(f.name), field_type=_field_type(f))
        for f in names
    }
    return ml_collections.ConfigDict({"variant": variant, "overrides": fields})


def base_config(recipe: str) -> ml_collections.ConfigDict:
    """The shared blocks; the caller adds its model and data blocks."""
    config = ml_collections.ConfigDict()
    config.recipe = recipe
    config.optimizer = default_optimizer_config()
    config.train = default_train_config()
    config.mesh = default_mesh_config()
    config.sharding_rules = ()
    return config


def parse_arg(arg: str | None, **defaults):
    """Parse `configs/X.py:a=1,b,c=x` arguments into typed options (big_vision's `parse_arg`).

    Each option has a default whose type converts the string; a bare name sets
    a boolean to True. An unknown option is an error listing the valid ones.
    """
    options = ml_collections.ConfigDict(defaults)
    if not arg:
        return options
    for item in arg.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"unknown config option {key!r}; options: {sorted(defaults)}")
        default = defaults[key]
        if not eq:
            if not isinstance(default, bool):
                raise ValueError(f"config option {key!r} needs a value ({key}=...)")
            options[key] = True
        elif isinstance(default, bool):
            options[key] = value.lower() in ("1", "true", "yes", "y")
        else:
            options[key] = type(default)(value)
    return options


def load_config_module(spec: str):
    """(module, arg) of `path/to/config.py[:arg]`."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise SystemExit(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, (arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
    """A locked copy of `config` with the `field.path: value` overrides (`name` ignored)."""
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    for key, value in overrides.items():
        if key == "name":
            continue
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node:
                raise SystemExit(f"sweep override {key!r}: config has no field {p!r}")
            node = node[p]
        if leaf not in node:
            raise SystemExit(f"sweep override {key!r}: config has no field {leaf!r}")
        node[leaf] = value
    config.lock()
    return config
