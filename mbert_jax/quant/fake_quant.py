"""Fake quantization (quantize, then dequantize) with straight-through gradients.

The arithmetic is TensorFlow's `fake_quant_with_min_max_vars`, which the
TFLite converter turns into int8 tensors, so a model trained through these
functions sees the rounding and clipping its int8 file will apply:

- weights: symmetric, narrow range ([-127, 127]), one scale per output
  channel, from the current values (`weight`);
- activations: asymmetric 8-bit over a range `[lo, hi]` nudged so that 0 is
  exactly representable (`activation`); the range is a parameter whose
  "gradient" is defined to be its exponential-moving-average step towards
  the batch's range (`tracked_activation`, see below).

Gradients: the straight-through estimator: identity for weights, identity
inside the (nudged) range and zero outside for activations, as in TF.

Range tracking without mutable state: `tracked_activation(x, r, decay)`
returns the fake-quantized `x`, and its backward pass returns for `r` the
cotangent `(1 - decay) * (r - observed)`, where `observed` is
`[min(min(x), 0), max(max(x), 0)]` of the batch. A plain SGD step of rate 1
on that leaf (the optimizer's `stats` partition, `train/optimizers.py`) is
then exactly `r <- decay * r + (1 - decay) * observed`: the moving average of
MobileBERT's QAT (decay 0.999, initial range [-6, 6]). Ranges are therefore
ordinary parameters: checkpointed, resumed, sharded and saved with the model
like any other, and frozen by the same training rules.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from mbert_jax.tree import path_name

BITS = 8
QMAX = 2**BITS - 1  # activations: [0, 255]
WMAX = 2 ** (BITS - 1) - 1  # weights: [-127, 127] (narrow range)
INITIAL_RANGE = (-6.0, 6.0)
# The names of the range parameters (`<point>_range`, float32[2] = [lo, hi]).
RANGE_SUFFIX = "_range"


def is_range(path) -> bool:
    """Whether a parameter's key path names a tracked range (`*_range`)."""
    return path_name(path).endswith(RANGE_SUFFIX)


def _round(x: jax.Array) -> jax.Array:
    """Round half up, as TF's fake-quant kernels (floor(x + 0.5))."""
    return jnp.floor(x + 0.5)


def nudged_range(lo: jax.Array, hi: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(nudged_lo, nudged_hi, scale): the range moved so that 0 is a grid point (TF's rule)."""
    width = jnp.maximum(hi - lo, 1e-8)
    scale = width / QMAX
    # -lo / scale, written so that jit (which turns a division by the constant 255
    # into a product with its rounded reciprocal) and eager round alike: [-6, 6]
    # puts the zero point exactly at 127.5, whose rounding (up, as TF) moves the grid.
    zero_point = jnp.clip(_round(-lo * QMAX / width), 0, QMAX)
    return -zero_point * scale, (QMAX - zero_point) * scale, scale


def _quantize_activation(x, lo, hi):
    n_lo, n_hi, scale = nudged_range(lo, hi)
    xf = x.astype(jnp.float32)
    q = _round((jnp.clip(xf, n_lo, n_hi) - n_lo) / scale) * scale + n_lo
    inside = (xf >= n_lo) & (xf <= n_hi)
    return q.astype(x.dtype), inside


@jax.custom_vjp
def activation(x: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """`x` fake-quantized to 8 bits over the fixed range [lo, hi] (clipped STE)."""
    return _quantize_activation(x, lo, hi)[0]


def _activation_fwd(x, lo, hi):
    y, inside = _quantize_activation(x, lo, hi)
    return y, (inside, lo, hi)


def _activation_bwd(res, g):
    inside, lo, hi = res
    return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(lo), jnp.zeros_like(hi)


activation.defvjp(_activation_fwd, _activation_bwd)


def observed_range(x: jax.Array) -> jax.Array:
    """[min(min(x), 0), max(max(x), 0)] in float32: the batch's range, 0 included."""
    xf = x.astype(jnp.float32)
    return jnp.stack([jnp.minimum(jnp.min(xf), 0.0), jnp.maximum(jnp.max(xf), 0.0)])


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def tracked_activation(x: jax.Array, ranges: jax.Array, decay: float) -> jax.Array:
    """`x` fake-quantized over `ranges` ([lo, hi]); `ranges`' cotangent is its EMA step."""
    return _quantize_activation(x, ranges[0], ranges[1])[0]


def _tracked_fwd(x, ranges, decay):
    y, inside = _quantize_activation(x, ranges[0], ranges[1])
    return y, (inside, ranges, observed_range(x))


def _tracked_bwd(decay, res, g):
    inside, ranges, observed = res
    step = (1.0 - decay) * (ranges - observed)
    return jnp.where(inside, g, jnp.zeros_like(g)), step.astype(ranges.dtype)


tracked_activation.defvjp(_tracked_fwd, _tracked_bwd)


def weight(w: jax.Array, reduce_axes: tuple[int, ...]) -> jax.Array:
    """`w` fake-quantized symmetrically to [-127, 127], one scale per output channel.

    `reduce_axes`: the input (contracted) axes; the scale is max |w| over them.
    Straight-through: the gradient passes unchanged.
    """
    wf = w.astype(jnp.float32)
    bound = jnp.max(jnp.abs(wf), axis=reduce_axes, keepdims=True)
    scale = jnp.where(bound > 0, bound / WMAX, 1.0)
    q = jnp.clip(_round(wf / scale), -WMAX, WMAX) * scale
    return (wf + jax.lax.stop_gradient(q - wf)).astype(w.dtype)


def without_ranges(params: dict) -> dict:
    """A nested dict of parameters without its `*_range` leaves (the float model's tree)."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out[k] = without_ranges(v)
        elif not str(k).endswith(RANGE_SUFFIX):
            out[k] = v
    return out
