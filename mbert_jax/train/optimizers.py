"""Optimizers (AdamW, LAMB), learning-rate schedules and the per-stage optax chain.

The chain for one stage, from the stage's label tree (see `labels.py`):

    masked(set_to_zero, frozen)   frozen gradients leave the clipping norm
    clip_by_global_norm(c)        over the trained leaves only
    partition({"frozen": set_to_zero(),
               "x1": base(lr * 1), "x0.1": base(lr * 0.1), ...}, labels)

so frozen leaves carry no optimizer state and get no update, and a rate
multiplier is a separate partition with the same base optimizer. Weight decay
(and LAMB's trust ratio, as in the BERT/MobileBERT LAMB) skips 1-D
parameters: norms and biases.

The activation ranges of quantization-aware training (leaves named
`*_range`, `mbert_jax/quant/fake_quant.py`) are statistics, not weights:
unless frozen they form the `stats` partition, a plain step of rate 1 on
their "gradient" (which is their moving-average step), outside the clipping
norm, the schedule and the base optimizer.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import ml_collections
import optax

from mbert_jax.quant.fake_quant import is_range
from mbert_jax.train.labels import FROZEN, multiplier

OPTIMIZERS = ("adamw", "lamb")
STATS = "stats"  # the partition of tracked quantization ranges
SCHEDULES = ("constant", "linear", "polynomial", "cosine")


def default_optimizer_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": 1e-4,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-6,
            "weight_decay": 0.01,
            "clip_norm": 1.0,  # 0 disables clipping
            "schedule": {
                "kind": "linear",  # constant | linear | polynomial | cosine
                "warmup_steps": 0,
                "warmup_fraction": 0.1,  # used when warmup_steps is 0
                "end_factor": 0.0,  # final rate as a fraction of the peak
                "power": 1.0,  # polynomial decay power (0.5: sqrt decay)
            },
        }
    )


def validate_optimizer_config(cfg) -> None:
    if cfg.name not in OPTIMIZERS:
        raise ValueError(f"config.optimizer.name={cfg.name!r}: must be one of {OPTIMIZERS}")
    if cfg.schedule.kind not in SCHEDULES:
        raise ValueError(
            f"config.optimizer.schedule.kind={cfg.schedule.kind!r}: must be one of {SCHEDULES}"
        )
    if not cfg.learning_rate > 0:
        raise ValueError(f"config.optimizer.learning_rate must be > 0, got {cfg.learning_rate}")
    if not 0 <= cfg.schedule.warmup_fraction <= 1:
        raise ValueError("config.optimizer.schedule.warmup_fraction must be in [0, 1]")
    if cfg.clip_norm < 0:
        raise ValueError("config.optimizer.clip_norm must be >= 0 (0 disables clipping)")


def make_schedule(peak: float, steps: int, schedule) -> optax.Schedule:
    """Linear warm-up to `peak`, then the configured decay over the remaining steps."""
    warmup = int(schedule.warmup_steps) or int(math.floor(schedule.warmup_fraction * steps))
    warmup = min(warmup, steps)
    decay_steps = max(steps - warmup, 1)
    end = peak * schedule.end_factor
    if schedule.kind == "constant":
        decay = optax.constant_schedule(peak)
    elif schedule.kind == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif schedule.kind == "polynomial":
        decay = optax.polynomial_schedule(peak, end, schedule.power, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=schedule.end_factor)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """Weight decay (and LAMB adaptation) only for matrices, not norms and biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def base_optimizer(cfg, learning_rate: optax.Schedule) -> optax.GradientTransformation:
    if cfg.name == "adamw":
        return optax.adamw(
            learning_rate,
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=decay_mask,
        )
    # LAMB as in BERT / MobileBERT: no decay and no layer adaptation for norms and biases.
    return optax.chain(
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask),
        optax.masked(optax.scale_by_trust_ratio(), decay_mask),
        optax.scale_by_learning_rate(learning_rate),
    )


def with_stats(labels: Any) -> Any:
    """`labels` with every trained range leaf relabelled `stats`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, label: STATS if label != FROZEN and is_range(path) else label, labels
    )


def make_optimizer(
    cfg, labels: Any, steps: int, schedule_override=None, peak: float | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain for one stage of `steps` steps.

    Args:
      cfg: the `config.optimizer` block.
      labels: a tree of partition labels like the params (`labels.make_labels`).
      steps: the stage's length (the schedule restarts at each stage).
      schedule_override: a schedule block replacing `cfg.schedule` for this stage.
      peak: the stage's base rate, default `cfg.learning_rate`.

    Returns:
      The transformation and the base-rate schedule (for logging).
    """
    schedule = make_schedule(
        cfg.learning_rate if peak is None else peak, steps, schedule_override or cfg.schedule
    )
    labels = with_stats(labels)
    names = sorted(set(jax.tree.leaves(labels)))
    transforms = {}
    for name in names:
        if name == FROZEN:
            transforms[name] = optax.set_to_zero()
        elif name == STATS:
            transforms[name] = optax.sgd(1.0)  # r - (1 - decay)(r - observed): the EMA
        else:
            m = multiplier(name)
            transforms[name] = base_optimizer(cfg, lambda step, m=m: m * schedule(step))
    frozen = jax.tree.map(lambda label: label == FROZEN, labels)
    chain = [optax.masked(optax.set_to_zero(), frozen)]
    if cfg.clip_norm and STATS in names:
        weights = jax.tree.map(lambda label: label != STATS, labels)
        chain.append(optax.masked(optax.clip_by_global_norm(cfg.clip_norm), weights))
    elif cfg.clip_norm:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain.append(optax.partition(transforms, labels))
    return optax.chain(*chain), schedule
