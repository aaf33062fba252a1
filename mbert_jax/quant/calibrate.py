"""Initial activation ranges of a fake-quantized model, measured on a few batches.

A range's cotangent at decay 0 is `r - observed` (`fake_quant.tracked_activation`),
so one backward pass of any function of the outputs gives every quantization
point's observed range of a batch at once: `observed = r - grad`. Batch k sets
each range to the mean of the first k batches' observed ranges, measured with
the ranges of batch k - 1 in place, so every point sees inputs quantized
nearly as they will be in training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from mbert_jax.quant.fake_quant import is_range


def observed_ranges(outputs: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
    """`(params, batch) -> observed`, a tree like params: each range leaf's observed range.

    `outputs(params, batch)`: a tree of the outputs of the model configured
    with `fake_quant_decay=0` (their sum is differentiated; the values do not
    matter, only that every quantization point reaches them). Non-range
    leaves of the result are meaningless zeros.
    """

    def total(params, batch):
        return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(outputs(params, batch)))

    def observed(params, batch):
        grads = jax.grad(total)(params, batch)
        return jax.tree_util.tree_map_with_path(
            lambda path, p, g: p - g if is_range(path) else jnp.zeros_like(p), params, grads
        )

    return jax.jit(observed)


def calibrate(outputs: Callable[[Any, dict], Any], params: Any, batches: Sequence[dict]) -> Any:
    """`params` with every range leaf set to the mean observed range over `batches`."""
    observe = observed_ranges(outputs)
    total = None
    for k, batch in enumerate(batches, start=1):
        obs = observe(params, batch)
        total = obs if total is None else jax.tree.map(jnp.add, total, obs)
        params = jax.tree_util.tree_map_with_path(
            lambda path, p, t, k=k: t / k if is_range(path) else p, params, total
        )
    return params
