"""`LossSum` and the masks every loss shares.

Every loss of this package returns a `LossSum(total, count)` of float32
scalars rather than a mean: the mean of a padding-aware loss is
`sum over real items / number of real items`, and averaging per-device or
per-step means is wrong whenever the devices or steps hold different numbers
of real tokens. Sums and counts add up exactly: `jax.lax.psum` a `LossSum`
(it is a pytree) across devices, `merge` it across steps of a logging
window, and call `.mean()` once at the end.

Masks follow the model's convention (`mbert_jax.models.attention`): the
`attention_mask` is `[batch, length]` integers, 0 at padding; a positive value
is the id of the packed piece a token belongs to (a plain 0/1 mask is one
piece). A token is real when its value is positive. For attention maps, a
(query, key) entry is valid when the query is real and the model lets it see
the key (a real key of the same piece); every other entry holds the model's
fill value (or, for a padded query row, scores the loss should not count).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mbert_jax.models.attention import make_attention_mask


class LossSum(NamedTuple):
    """A loss as a sum over items and the (possibly weighted) item count.

    Attributes:
      total: float32 scalar, the sum of the per-item losses (times their weights).
      count: float32 scalar, the number of items (the sum of their weights).
    """

    total: jax.Array
    count: jax.Array

    def mean(self) -> jax.Array:
        """`total / count`, and 0 when `count` is 0 (a batch with nothing to count)."""
        safe = jnp.where(self.count > 0, self.count, 1.0)
        return jnp.where(self.count > 0, self.total / safe, 0.0)

    def merge(self, other: LossSum) -> LossSum:
        """The `LossSum` of the union of both sets of items."""
        return LossSum(self.total + other.total, self.count + other.count)


def combine(losses: Iterable[LossSum]) -> LossSum:
    """Merges `LossSum`s (e.g. of several steps or layers) into one.

    Args:
      losses: `LossSum`s over disjoint sets of items.

    Returns:
      The `LossSum` of all their items; with equal counts its mean is the
      average of their means.
    """
    total = count = jnp.zeros((), jnp.float32)
    for loss in losses:
        total, count = total + loss.total, count + loss.count
    return LossSum(total, count)


def weighted_sum(values: jax.Array, weights: jax.Array) -> LossSum:
    """`LossSum(sum(values * weights), sum(weights))` in float32.

    `values` may hold anything (even inf or nan) where `weights` is 0: those
    entries are selected away, not multiplied, so they cannot poison the sum
    (gradients upstream of `values` must still be finite there).

    Args:
      values: per-item losses.
      weights: per-item weights, broadcastable to `values`.

    Returns:
      The `LossSum`.
    """
    values = values.astype(jnp.float32)
    weights = jnp.broadcast_to(weights.astype(jnp.float32), values.shape)
    total = jnp.sum(jnp.where(weights != 0, values * weights, 0.0))
    return LossSum(total, jnp.sum(weights))


def token_mask(attention_mask: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    """float32 [batch, length]: 1 at real tokens, 0 at padding.

    Args:
      attention_mask: [batch, length] ints (0 at padding), or None (no padding).
      shape: the leading [batch, length] shape, used when `attention_mask` is None.

    Returns:
      The mask.
    """
    if attention_mask is None:
        return jnp.ones(shape, jnp.float32)
    if attention_mask.shape != tuple(shape):
        raise ValueError(
            f"attention_mask has shape {attention_mask.shape}, expected {tuple(shape)} "
            "([batch, length] of the hidden states)"
        )
    return (attention_mask > 0).astype(jnp.float32)


def attention_pair_mask(attention_mask: jax.Array | None, shape: tuple[int, ...]) -> jax.Array:
    """bool [batch, 1, query, key]: the (query, key) entries an attention loss counts.

    An entry is valid when the query is a real token and the model lets it
    attend to the key (`make_attention_mask`: a real key of the same packed
    piece). Padded query rows are invalid even though the model lets them see
    the real keys: their outputs are never used.

    Args:
      attention_mask: [batch, length] ints (0 at padding), or None (no padding).
      shape: the [batch, heads, query, key] shape of the maps.

    Returns:
      The mask, broadcastable over heads.
    """
    batch, _, length, length_kv = shape
    if length != length_kv:
        raise ValueError(f"attention maps must be square self-attention maps, got {shape}")
    if attention_mask is None:
        return jnp.ones((batch, 1, length, length), bool)
    if attention_mask.shape != (batch, length):
        raise ValueError(
            f"attention_mask has shape {attention_mask.shape}, expected {(batch, length)} "
            "([batch, length] of the attention maps)"
        )
    real_query = (attention_mask > 0)[:, None, :, None]
    return make_attention_mask(attention_mask) & real_query


def check_same_shape(student: jax.Array, teacher: jax.Array, what: str) -> None:
    """Raises a ValueError naming `what` when the two shapes differ."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {student.shape} != teacher shape {teacher.shape}; "
            "map layers and project widths before calling the loss"
        )
