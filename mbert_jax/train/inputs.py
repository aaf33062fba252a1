"""Bridge from a config's `data` block to the iterators a recipe hands the trainer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import ml_collections

from mbert_jax.data.synthetic import SyntheticPretrainingData


def synthetic_data_config(**overrides) -> ml_collections.ConfigDict:
    """Random-token pretraining batches (benchmarks, AOT planning, trainer tests)."""
    cfg = ml_collections.ConfigDict(
        {
            "source": "synthetic",
            "vocab_size": 2048,
            "global_batch_size": 8,
            "max_seq_length": 32,
            "max_predictions_per_seq": 5,
            "seed": 0,
            "nsp": True,
            "eval_batches": 2,
        }
    )
    cfg.update(overrides)
    return cfg


def pretraining_data_config(kind: str, **fields) -> ml_collections.ConfigDict:
    """The `data` block of a pretraining config: `kind` is a config file's `data=` option.

    Args:
      kind: "default" (the data layer's config: the embedded corpus unless its
        `source` is changed) or "synthetic" (random tokens).
      **fields: values set on the block (`nsp`, batch and sequence sizes, ...).

    Returns:
      The block.
    """
    from mbert_jax.data import config as data_config

    if kind not in ("default", "synthetic"):
        raise ValueError(f"config option data={kind!r}: use data=default or data=synthetic")
    cfg = (
        synthetic_data_config() if kind == "synthetic" else data_config.pretraining_data_defaults()
    )
    cfg.update(fields)
    return cfg


@dataclasses.dataclass
class PretrainingInputs:
    vocab_size: int
    vocab_file: Path | None
    train: Callable  # (process_index, process_count) -> endless iterator with get/set_state
    eval: Callable  # (process_index, process_count) -> finite iterable


def pretraining_inputs(data_cfg) -> PretrainingInputs:
    """Iterators and vocabulary of a `config.data` block (synthetic or `mbert_jax.data`)."""
    if data_cfg.source == "synthetic":

        def make(seed, pi, pc):
            return SyntheticPretrainingData(
                data_cfg.vocab_size,
                data_cfg.global_batch_size,
                data_cfg.max_seq_length,
                data_cfg.max_predictions_per_seq,
                seed=seed,
                process_index=pi,
                process_count=pc,
            )

        def evaluation(pi, pc):
            it = make(data_cfg.seed + 10_000, pi, pc)
            return [next(it) for _ in range(data_cfg.eval_batches)]

        return PretrainingInputs(
            vocab_size=data_cfg.vocab_size,
            vocab_file=None,
            train=lambda pi, pc: make(data_cfg.seed, pi, pc),
            eval=evaluation,
        )
    import jax

    from mbert_jax.data import build_pretraining_data

    data = build_pretraining_data(
        data_cfg, process_index=jax.process_index(), process_count=jax.process_count()
    )

    def train(pi, pc):
        if (pi, pc) != (jax.process_index(), jax.process_count()):
            raise ValueError("the data was built for another process layout")
        return data.train

    def evaluation(pi, pc):
        return data.eval_iterator() if data.eval_examples else None

    return PretrainingInputs(
        vocab_size=data.tokenizer.vocab_size,
        vocab_file=data.vocab_file,
        train=train,
        eval=evaluation,
    )
