"""Per-head and per-neuron gates: the multiplicative masks of a gated forward.

The model takes them as optional inputs (`Model.__call__(head_gates=...,
neuron_gates=...)`, through the encoder to every block) rather than as a
second model: the gates are one [heads] vector and one [width] vector per
block (`[num_feedforward_networks, width]` with stacked FFNs, MobileBERT). A
head gate scales the head's context before the attention output projection
(so 0 leaves only the projection's bias and the residual path, exactly as
the head's removal does); a neuron gate scales the neuron's activation
before the FFN output projection. With every gate 1 the forward equals the
ungated one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp

from mbert_jax.models.config import ModelConfig

Gates = tuple[tuple[jnp.ndarray, ...], tuple[jnp.ndarray, ...]]


def neuron_gate_shape(config: ModelConfig, layer: int) -> tuple[int, ...]:
    """The shape of block `layer`'s neuron gate: [width], or [F, width] with F stacked FFNs."""
    width = config.intermediate_size_at(layer)
    count = config.num_feedforward_networks
    return (width,) if count == 1 else (count, width)


def ones_gates(config: ModelConfig) -> Gates:
    """`(head_gates, neuron_gates)`, every gate 1: per block a [heads] and a [width] vector."""
    layers = range(config.num_layers)
    heads = tuple(jnp.ones((config.heads_at(i),), jnp.float32) for i in layers)
    neurons = tuple(jnp.ones(neuron_gate_shape(config, i), jnp.float32) for i in layers)
    return heads, neurons


def gates_from_keep(
    config: ModelConfig,
    keep_heads: Mapping[int, Sequence[int]] | None = None,
    keep_neurons: Mapping[int, Sequence[int]] | None = None,
) -> Gates:
    """Gates that are 1 on the kept heads / neurons and 0 elsewhere.

    Args:
      config: the model's config.
      keep_heads: block index -> indices of the heads it keeps; blocks not
        named keep every head.
      keep_neurons: block index -> indices of the FFN neurons it keeps (in
        every stacked FFN); blocks not named keep every neuron.

    Returns:
      `(head_gates, neuron_gates)`, as `Model.__call__` takes them: the
      gated forward equals that of `prune(config, params, keep_heads,
      keep_neurons)`.
    """
    heads, neurons = ones_gates(config)

    def mask(gates, keep):
        gates = list(gates)
        for layer, kept in (keep or {}).items():
            g = jnp.zeros_like(gates[layer])
            gates[layer] = g.at[..., jnp.asarray(list(kept), jnp.int32)].set(1.0)
        return tuple(gates)

    return mask(heads, keep_heads), mask(neurons, keep_neurons)
