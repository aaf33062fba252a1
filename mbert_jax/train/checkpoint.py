"""Training checkpoints: one orbax `CheckpointManager` per run.

Each checkpoint (WORKDIR/checkpoints/<step>/) holds three items:
- `state`: the `TrainState` (params, optimizer state, step, RNG), sharded;
- `meta`: JSON with the stage index and name and the global step (the
  resolved config is WORKDIR/config.json, beside the checkpoints, not in them);
- `data`: JSON with the data iterator's position.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), so a run killed at any moment restores from the
last complete checkpoint. `max_to_keep` keeps the last K.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from mbert_jax.tree import shape_mismatch

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not match the model being restored."""


def make_manager(directory: str | Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=True
    )
    # Handlers named up front, so that a fresh process can read a checkpoint's
    # metadata (shapes) before restoring it.
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(
        Path(directory).absolute(), options=options, item_handlers=handlers
    )


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict, data_state: dict) -> None:
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta),
            data=ocp.args.JsonSave(data_state),
        ),
        force=True,
    )


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_state) -> None:
    """Raise `CheckpointMismatchError` naming the parameters whose shapes differ."""
    stored = manager.item_metadata(step)["state"]
    tree = getattr(stored, "tree", stored)
    have = tree["params"] if isinstance(tree, dict) else tree.params
    problems = shape_mismatch(
        abstract_state.params, have, want_name="config", have_name="checkpoint"
    )
    if problems:
        lines = [f"checkpoint {manager.directory}/{step} does not match this config:"]
        lines += [f"  {line}" for line in problems]
        lines.append(
            "use a fresh --workdir for a different model, or the config the checkpoint was "
            "written with (WORKDIR/config.json)"
        )
        raise CheckpointMismatchError("\n".join(lines))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state) -> tuple[Any, dict, dict]:
    """Restore `(state, meta, data_state)` of `step` into the shardings of `abstract_state`.

    `abstract_state` is a tree of `jax.ShapeDtypeStruct` with `.sharding` set,
    so every array lands directly in its target sharding.
    """
    # Resume order: (1) the caller picked the step (latest complete one);
    # (2) the stage comes from `meta` and rebuilds that stage's optimizer, which
    # fixes the structure of the optimizer state; (3) parameter shapes are
    # checked against the config; (4) the state is read into its shardings;
    # (5) the data iterator is moved to the saved position by the caller.
    check_compatible(manager, step, abstract_state)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            meta=ocp.args.JsonRestore(),
            data=ocp.args.JsonRestore(),
        ),
    )
    return restored["state"], restored["meta"], restored["data"]


def abstract_with_shardings(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )
