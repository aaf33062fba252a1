"""Structured pruning: remove attention heads, FFN neurons and whole blocks.

- `gates`: per-head and per-neuron gates, the multiplicative masks that the
  model's forward takes (`Model.__call__(head_gates=..., neuron_gates=...)`);
  a gate of 0 acts as the removed head or neuron.
- `importance`: Michel et al. (2019) first-order importance of each head and
  neuron, the expected |d loss / d gate| over a data set;
  `fisher_importance` the diagonal Fisher information of each gate (Kwon et
  al. 2022), an estimate of the loss increase when the unit is removed.
- `importance.layer_importance`: the loss increase when each block is
  skipped (`Model.__call__(layer_gates=...)`, one jitted pass per batch).
- `choose`: what a target removes (fractions, blocks, a parameter budget).
- `structure`: `prune`, which slices the kept heads, neurons and blocks out of
  a model into a real, smaller dense model (`ModelConfig.layer_heads`,
  `layer_intermediate_sizes`, a smaller `num_layers`).

- `recipe`: the "prune" recipe (configs/prune.py): importance, pruning to
  targets in one shot or N steps, recovery distilling the unpruned model's
  logits (and hidden states).

docs/pruning.md says what exists and what is still to come.
"""

from mbert_jax.prune.gates import gates_from_keep, ones_gates
from mbert_jax.prune.importance import (
    Importance,
    classification_loss,
    fisher_importance,
    importance,
    layer_importance,
)
from mbert_jax.prune.structure import PruneError, prune

__all__ = [
    "Importance",
    "PruneError",
    "classification_loss",
    "fisher_importance",
    "gates_from_keep",
    "importance",
    "layer_importance",
    "ones_gates",
    "prune",
]
