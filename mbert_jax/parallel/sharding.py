"""Logical-to-mesh axis rules and the shardings of parameters, state and batches.

Models name every parameter dimension logically (`vocab`, `embed`, `mlp`,
`heads`, ...; see `mbert_jax.models.layers`). The rules map each logical name
to mesh axes; the default is FSDP over `embed`, tensor parallelism over
`mlp` / `heads` / `vocab`, and the batch over `data` and `fsdp`:

    batch -> (data, fsdp)   embed, inner -> fsdp    mlp, heads, vocab -> tensor
    length, length_kv, kv, embed_in -> replicated

An axis is used once per array, in rule order: a [embed, inner] kernel is
sharded on `embed`, an [inner, mlp] kernel on both, and activations, whose
batch already takes `fsdp`, keep their widths whole.

A dimension whose size the mesh axes do not divide (say 4 MobileBERT heads
over `tensor=8`) is replicated instead, and the choice is logged once per
parameter, so any variant runs on any mesh.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mbert_jax.models import layers
from mbert_jax.tree import path_name

log = logging.getLogger(__name__)

Rules = tuple[tuple[str, Any], ...]

DEFAULT_RULES: Rules = (
    (layers.BATCH, ("data", "fsdp")),
    (layers.LENGTH, None),
    (layers.LENGTH_KV, None),
    (layers.VOCAB, "tensor"),
    (layers.EMBED, "fsdp"),
    (layers.EMBED_IN, None),
    # After `embed`: a kernel with both dimensions (bottleneck projections)
    # shards its `embed` side; the FFN kernels of a bottleneck block (inner x
    # mlp) shard `inner`, so IB-BERT's 200M FFN parameters are FSDP-sharded.
    (layers.INNER, "fsdp"),
    (layers.MLP, "tensor"),
    (layers.HEADS, "tensor"),
    (layers.KV, None),
)
KNOWN_NAMES = {name for name, _ in DEFAULT_RULES}


def rules_from_config(overrides: Sequence[Sequence[Any]] | None = None) -> Rules:
    """The default rules with `overrides` ([(logical name, mesh axes or None), ...]) first."""
    rules = tuple(
        (str(n), a if a is None or isinstance(a, str) else tuple(a)) for n, a in overrides or ()
    )
    for name, _ in rules:
        if name not in KNOWN_NAMES:
            raise ValueError(
                f"config.sharding_rules names {name!r}, which no model uses; "
                f"logical names are {sorted(KNOWN_NAMES)}"
            )
    return rules + tuple(r for r in DEFAULT_RULES if r[0] not in dict(rules))


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_sharding(
    logical: PartitionSpec, shape: Sequence[int], mesh: Mesh, rules: Rules, path: str = ""
) -> NamedSharding:
    """The `NamedSharding` of one array from its logical spec.

    Raises:
      ValueError: when the spec uses a logical name that has no rule.
    """
    names = tuple(logical)
    for name in names:
        if name is not None and name not in dict(rules):
            raise ValueError(
                f"parameter {path or '?'} has logical axis {name!r} with no sharding rule; "
                f"add it to config.sharding_rules (known: {sorted(dict(rules))})"
            )
    spec = list(nn.logical_to_mesh_axes(names, rules))
    for i, axes in enumerate(spec):
        size = _axis_size(mesh, axes)
        if size > 1 and shape[i] % size:
            log.info(
                "%s: dimension %d (%s, size %d) is not divisible by mesh axes %s (%d); "
                "replicating it",
                path,
                i,
                names[i],
                shape[i],
                axes,
                size,
            )
            spec[i] = None
    return NamedSharding(mesh, PartitionSpec(*spec))


def tree_shardings(abstract_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """Shardings for a tree of (possibly boxed) abstract arrays.

    Leaves boxed with `nn.LogicallyPartitioned` use their names; unboxed
    leaves (optimizer counters, the step) are replicated. Returns a tree of the
    unboxed structure.
    """

    def one(path, leaf):
        if isinstance(leaf, nn.Partitioned):
            value = leaf.value
            return logical_to_sharding(
                PartitionSpec(*leaf.names), value.shape, mesh, rules, path_name(path)
            )
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(
        one, abstract_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
    """Shard the leading (batch) dimension over the batch's mesh axes."""
    axes = dict(rules)[layers.BATCH]
    return NamedSharding(mesh, PartitionSpec(axes, *([None] * (ndim - 1))))


def batch_axis_size(mesh: Mesh, rules: Rules) -> int:
    return _axis_size(mesh, dict(rules)[layers.BATCH])


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
    """Assemble each process's slice of the batch into global sharded arrays."""
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, rules, np.ndim(v)), v)
        for k, v in local.items()
    }


def unbox(tree: Any) -> Any:
    """Remove `nn.Partitioned` boxes without adding sharding constraints (for abstract trees)."""
    return jax.tree.map(
        lambda x: x.value if isinstance(x, nn.Partitioned) else x,
        tree,
        is_leaf=lambda x: isinstance(x, nn.Partitioned),
    )
