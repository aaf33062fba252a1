"""Synthetic pretraining batches: random tokens, deterministic in (seed, step).

For benchmarks, AOT planning and trainer tests that must not depend on a
corpus. Same batch schema as the real pipeline (`mbert_jax.data`), with
`get_state` / `set_state` so resume can be tested exactly.
"""

from __future__ import annotations

import numpy as np


class SyntheticPretrainingData:
    """An endless iterator of this process's slice of random MLM + NSP batches.

    Row r of the global batch at step t is drawn from a generator seeded with
    (seed, t, r), so the global batch does not depend on the process count.
    """

    def __init__(
        self,
        vocab_size: int,
        global_batch_size: int,
        seq_len: int,
        max_predictions: int,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        first_token: int = 5,
    ):
        if global_batch_size % process_count:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by "
                f"{process_count} processes"
            )
        self.vocab_size, self.seq_len, self.max_predictions = vocab_size, seq_len, max_predictions
        self.seed, self.first_token = seed, first_token
        per = global_batch_size // process_count
        self.rows = range(process_index * per, (process_index + 1) * per)
        self.step = 0

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])

    def __iter__(self):
        return self

    def _row(self, r: int) -> dict[str, np.ndarray]:
        g = np.random.default_rng([self.seed, self.step, r])
        s, p = self.seq_len, self.max_predictions
        length = int(g.integers(s // 2, s + 1))
        ids = np.zeros(s, np.int32)
        ids[:length] = g.integers(self.first_token, self.vocab_size, length)
        mask = (np.arange(s) < length).astype(np.int32)
        types = (np.arange(s) >= length // 2).astype(np.int32) * mask
        n = min(p, max(1, int(round(0.15 * length))))
        positions = np.zeros(p, np.int32)
        positions[:n] = np.sort(g.choice(np.arange(1, length), n, replace=False))
        labels = np.zeros(p, np.int32)
        labels[:n] = ids[positions[:n]]
        weights = (np.arange(p) < n).astype(np.float32)
        masked = ids.copy()
        masked[positions[:n]] = self.first_token - 1  # a stand-in [MASK] id
        return {
            "input_ids": masked,
            "attention_mask": mask,
            "token_type_ids": types,
            "position_ids": np.arange(s, dtype=np.int32),
            "masked_lm_positions": positions,
            "masked_lm_ids": labels,
            "masked_lm_weights": weights,
            "next_sentence_labels": np.int32(g.integers(0, 2)),
        }

    def __next__(self) -> dict[str, np.ndarray]:
        rows = [self._row(r) for r in self.rows]
        self.step += 1
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}
