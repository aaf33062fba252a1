"""The train and eval steps: pure functions assembled from named pieces.

`make_train_step` returns `step(state, batch, teacher_params) -> (state,
metrics)`; the loop jits it once per stage with shardings and the state
donated. Pieces, in order:

- `compute_grads`: value-and-grad of the recipe's stage objective over the
  trainable params only (the teacher is an argument, never differentiated),
  accumulated over `accum_steps` micro-batches with a `lax.scan`, exactly:
  the result is the whole batch's objective and its gradient, however the
  real (unpadded, masked) items fall into the micro-batches. A first scan
  takes the whole batch's metric counts (they depend only on the batch's
  masks; XLA drops the forward, whose outputs it does not use); each
  micro-batch's objective is then `Recipe.objective` of its metric totals
  over those counts (held constant), and these sum to the whole batch's;
- `apply_updates`: the stage's optax chain; a non-finite objective or
  gradient never enters the state (the update is dropped and the step is
  flagged in the metrics, so the loop can stop or skip);
- metrics are `LossSum`s, summed exactly across micro-batches, devices and
  logging windows.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from mbert_jax.losses import LossSum
from mbert_jax.quant import fake_quant
from mbert_jax.train.recipe import Recipe, Stage


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; checkpointed whole (with the data position beside it)."""

    step: jax.Array  # global optimizer step, int32
    params: Any
    opt_state: Any
    rng: jax.Array  # base PRNG key (uint32[2]); step keys are fold_in(rng, step)


def split_microbatches(batch: dict[str, jax.Array], k: int) -> dict[str, jax.Array]:
    """[B, ...] -> [k, B/k, ...], micro-batch i = rows i, i+k, ... (balanced across data shards)."""

    def one(x):
        if x.shape[0] % k:
            raise ValueError(f"batch of {x.shape[0]} rows does not split into {k} micro-batches")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

    return jax.tree.map(one, batch)


def tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def zeros_like_shapes(shapes):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def average_range_steps(grads, accum_steps: int):
    """Each micro-batch gave a fake-quant range its whole moving-average step: average them."""
    return jax.tree_util.tree_map_with_path(
        lambda path, g: g / accum_steps if fake_quant.is_range(path) else g, grads
    )


def make_train_step(recipe: Recipe, stage: Stage, tx: optax.GradientTransformation, accum_steps=1):
    """The pure train step of one stage."""

    def objective(params, teacher_params, batch, rng, step):
        if recipe.loss_uses_step:
            return recipe.loss(stage, params, teacher_params, batch, rng, step=step)
        return recipe.loss(stage, params, teacher_params, batch, rng)

    grad_fn = jax.value_and_grad(objective, has_aux=True)

    def compute_grads(params, teacher_params, batch, rng, step):
        if accum_steps == 1:
            return grad_fn(params, teacher_params, batch, rng, step)
        micro = (split_microbatches(batch, accum_steps), jnp.arange(accum_steps))
        first = jax.tree.map(lambda x: x[0], micro[0])

        def counts(mb, i):
            _, metrics = objective(params, teacher_params, mb, jax.random.fold_in(rng, i), step)
            return {k: m.count for k, m in metrics.items()}

        def add_counts(total, xs):
            return tree_add(total, counts(*xs)), None

        whole, _ = jax.lax.scan(
            add_counts, zeros_like_shapes(jax.eval_shape(counts, first, 0)), micro
        )
        whole = jax.lax.stop_gradient(whole)

        def share(params, mb, i):
            """This micro-batch's share of the whole batch's objective."""
            _, metrics = objective(params, teacher_params, mb, jax.random.fold_in(rng, i), step)
            parts = {k: LossSum(m.total, whole[k]) for k, m in metrics.items()}
            return recipe.objective(stage, parts), metrics

        share_grad = jax.value_and_grad(share, has_aux=True)

        def body(carry, xs):
            return tree_add(carry, share_grad(params, *xs)), None

        # Sums: the shares add up to the objective, metric sums stay exact sums.
        zeros = zeros_like_shapes(jax.eval_shape(share_grad, params, first, 0))
        (obj, metrics), grads = jax.lax.scan(body, zeros, micro)[0]
        return (obj, metrics), average_range_steps(grads, accum_steps)

    def apply_updates(state: TrainState, grads, finite):
        def update(_):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return optax.apply_updates(state.params, updates), opt_state

        # A conditional rather than a per-leaf select: same semantics, and XLA
        # compiles it several times faster on CPU.
        params, opt_state = jax.lax.cond(
            finite, update, lambda _: (state.params, state.opt_state), None
        )
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state)

    def step(state: TrainState, batch: dict[str, jax.Array], teacher_params: Any):
        rng = jax.random.fold_in(state.rng, state.step)
        (obj, metrics), grads = compute_grads(state.params, teacher_params, batch, rng, state.step)
        finite = jnp.isfinite(obj) & all_finite(grads)
        new_state = apply_updates(state, grads, finite)
        metrics = dict(metrics)
        metrics["objective"] = LossSum(obj, jnp.ones((), jnp.float32))
        metrics["grad_norm"] = LossSum(optax.global_norm(grads), jnp.ones((), jnp.float32))
        metrics["nonfinite"] = LossSum(1.0 - finite.astype(jnp.float32), jnp.ones((), jnp.float32))
        return new_state, metrics

    return step


def make_eval_step(recipe: Recipe, stage: Stage):
    def step(params, teacher_params, batch):
        return recipe.evaluate(stage, params, teacher_params, batch)

    return step
