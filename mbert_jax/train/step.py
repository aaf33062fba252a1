"""The train and eval steps: pure functions assembled from named pieces.

`make_train_step` returns `step(state, batch, teacher_params) -> (state,
metrics)`; the loop jits it once per stage with shardings and the state
donated. Pieces, in order:

- `compute_grads`: value-and-grad of the recipe's stage objective over the
  trainable params only (the teacher is an argument, never differentiated),
  accumulated over `accum_steps` micro-batches with a `lax.scan`;
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


def all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


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
        micro = split_microbatches(batch, accum_steps)

        def body(carry, xs):
            mb, i = xs
            grads = grad_fn(params, teacher_params, mb, jax.random.fold_in(rng, i), step)
            return tree_add(carry, grads), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(grad_fn, params, teacher_params, first, rng, step)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        ((obj, metrics), grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))
        # Mean of the micro-batch objectives and gradients; metric sums stay sums.
        scale = 1.0 / accum_steps
        return (obj * scale, metrics), jax.tree.map(lambda g: g * scale, grads)

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
