"""`prune`: slice kept heads, FFN neurons and blocks out of a model into a smaller dense one.

The result is an ordinary model of the zoo: its config records each block's
head count and FFN width (`ModelConfig.layer_heads`,
`layer_intermediate_sizes`), its parameters are the kept slices, and it runs,
saves, reloads and exports like any other. Per block (every variant without
layer sharing, BERT and the IB-BERT / MobileBERT bottleneck alike):

- heads: the query, key and value kernels `[in, heads, head_dim]` and biases
  `[heads, head_dim]` keep the kept heads, and so do the rows of the
  attention output kernel `[heads, head_dim, out]`; the head width stays.
- neurons: the FFN input kernel `[in, width]` and bias keep the kept columns,
  the FFN output kernel `[width, out]` the kept rows (one FFN per block only:
  MobileBERT's stacked FFNs have unrelated neurons).
- blocks: the kept blocks are renumbered `layers_0, layers_1, ...` in order.

Indices are those of the model given, so pruning a pruned model again
(iterative pruning) indexes its remaining heads and neurons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from mbert_jax import tree
from mbert_jax.models.config import ConfigError, ModelConfig

ATTENTION = "attention/self_attention"


class PruneError(ConfigError):
    """What `prune` was asked cannot be done; the message names the field or argument."""


def _indices(what: str, kept: Sequence[int], size: int) -> np.ndarray:
    idx = [int(i) for i in kept]
    if not idx:
        raise PruneError(
            f"{what}: keeps nothing; a block must keep at least one head and one neuron "
            "(drop the whole block with keep_layers instead)"
        )
    if len(set(idx)) != len(idx) or any(not 0 <= i < size for i in idx):
        raise PruneError(f"{what}: {idx} must be distinct indices in [0, {size})")
    return np.asarray(sorted(idx))


def _layers(what: str, keys, num_layers: int) -> None:
    bad = [k for k in keys if not (isinstance(k, int) and 0 <= k < num_layers)]
    if bad:
        raise PruneError(f"{what}: blocks {bad} are not in [0, {num_layers})")


def _check(config: ModelConfig, keep_neurons) -> None:
    if config.layer_sharing != "none":
        raise PruneError(
            f"ModelConfig.layer_sharing={config.layer_sharing!r}: one block shared by every "
            "layer cannot keep other heads or neurons per layer; pruning needs "
            "layer_sharing='none'"
        )
    if keep_neurons and config.num_feedforward_networks != 1:
        raise PruneError(
            f"ModelConfig.num_feedforward_networks={config.num_feedforward_networks}: "
            "keep_neurons prunes the FFN of a block with one FFN; the stacked FFNs of this "
            "model have unrelated neurons (prune its heads and blocks only)"
        )


def prune(
    config: ModelConfig,
    params: Mapping,
    keep_heads: Mapping[int, Sequence[int]] | None = None,
    keep_neurons: Mapping[int, Sequence[int]] | None = None,
    keep_layers: Sequence[int] | None = None,
) -> tuple[ModelConfig, dict]:
    """The smaller dense model that keeps the given heads, neurons and blocks.

    Args:
      config: the model's config (no layer sharing).
      params: its parameter tree (any heads; `{"encoder": ...}` at least).
      keep_heads: block index -> the indices of the heads it keeps (at least
        one); blocks not named keep all of theirs.
      keep_neurons: block index -> the indices of the FFN neurons it keeps (at
        least one); blocks not named keep all of theirs.
      keep_layers: the indices of the blocks kept, in any order (they run in
        their original order); None keeps every block. What `keep_heads` and
        `keep_neurons` say of a dropped block is ignored.

    Returns:
      `(config, params)` of the pruned model, numpy parameters. The config
      has `layer_heads` unless every block keeps all its heads, and
      `layer_intermediate_sizes` unless every block has the same FFN width
      (which becomes `intermediate_size`, so a model pruned to one width is
      still expressible in transformers).

    Raises:
      PruneError: a block that would keep no head or neuron, an index out of
        range, or a config that cannot express it (layer sharing; stacked FFNs).
    """
    keep_heads = dict(keep_heads or {})
    keep_neurons = dict(keep_neurons or {})
    _check(config, keep_neurons)
    n = config.num_layers
    _layers("keep_heads", keep_heads, n)
    _layers("keep_neurons", keep_neurons, n)
    if keep_layers is None:
        layers = list(range(n))
    else:
        _layers("keep_layers", keep_layers, n)
        layers = [int(i) for i in _indices("keep_layers", keep_layers, n)]

    flat = {k: np.asarray(jax.device_get(v)) for k, v in tree.flat(params).items()}
    out = {k: v for k, v in flat.items() if not k.startswith("encoder/layers_")}
    heads, widths = [], []
    for new, old in enumerate(layers):
        prefix, new_prefix = f"encoder/layers_{old}/", f"encoder/layers_{new}/"
        block = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
        if not block:
            raise PruneError(f"params have no {prefix[:-1]}; pass the parameters of `config`")
        h, w = config.heads_at(old), config.intermediate_size_at(old)
        if old in keep_heads:
            idx = _indices(f"keep_heads[{old}]", keep_heads[old], h)
            for name in ("query", "key", "value"):
                block[f"{ATTENTION}/{name}/kernel"] = block[f"{ATTENTION}/{name}/kernel"][:, idx]
                block[f"{ATTENTION}/{name}/bias"] = block[f"{ATTENTION}/{name}/bias"][idx]
            block["attention/output/kernel"] = block["attention/output/kernel"][idx]
            h = len(idx)
        if old in keep_neurons:
            idx = _indices(f"keep_neurons[{old}]", keep_neurons[old], w)
            ffn = "ffn/ffn_0"
            block[f"{ffn}/intermediate/kernel"] = block[f"{ffn}/intermediate/kernel"][:, idx]
            block[f"{ffn}/intermediate/bias"] = block[f"{ffn}/intermediate/bias"][idx]
            block[f"{ffn}/output/kernel"] = block[f"{ffn}/output/kernel"][idx]
            w = len(idx)
        heads.append(h)
        widths.append(w)
        out.update({new_prefix + k: np.ascontiguousarray(v) for k, v in block.items()})

    changes: dict = {
        "num_layers": len(layers),
        "layer_heads": None if all(h == config.num_heads for h in heads) else tuple(heads),
        "layer_intermediate_sizes": None,
    }
    if len(set(widths)) == 1:
        changes["intermediate_size"] = widths[0]
    else:
        changes["layer_intermediate_sizes"] = tuple(widths)
    return config.replace(**changes), tree.unflat(out)
