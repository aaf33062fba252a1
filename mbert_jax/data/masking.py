"""Dynamic masked-LM masking and the per-example random streams.

Every random choice about an example (its sentence pair, truncation and
mask) comes from `example_rng(seed, epoch, index)`: a counter-based Philox
generator keyed by the run's seed, the epoch and the example's *global*
index in that epoch. So masks are drawn fresh each epoch, are reproducible
given the seed, and do not depend on how many hosts or threads build the
batch, nor on the order in which they do.

Masking follows BERT's `create_pretraining_data.py`: `num_to_predict =
min(max_predictions_per_seq, max(1, round(len(tokens) * masked_lm_prob)))`
positions are drawn among the non-special tokens (whole words when
`whole_word_mask` is on: a word is a token plus its `##` continuations, and
words that would overshoot the budget are passed over); of the chosen
positions 80% become [MASK], 10% keep their token and 10% get a random
token. One deliberate difference: the random token is drawn from the
vocabulary *without* its special tokens ([PAD], [UNK], [CLS], [SEP],
[MASK]), where BERT draws from the whole vocabulary.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from mbert_jax.data.tokenizer import CONTINUATION, WordPieceTokenizer

_INDEX_BITS = 40  # examples per epoch < 2**40, epochs < 2**24


def example_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of example `index` of `epoch` (a pure function of the arguments).

    Args:
      seed: the run's data seed, 0 <= seed < 2**62.
      epoch: 0 <= epoch < 2**24.
      index: the example's global index in the epoch, < 2**40.
      stream: separates unrelated uses (train / eval / plan) of the same seed.
    """
    return np.random.Generator(np.random.Philox(key=_key(seed, epoch, index, stream)))


def _key(seed: int, epoch: int, index: int, stream: int) -> np.ndarray:
    if not (0 <= seed < 2**62 and 0 <= epoch < 2**24 and 0 <= index < 2**_INDEX_BITS):
        raise ValueError(f"example_rng: out of range seed={seed} epoch={epoch} index={index}")
    return np.array([(stream << 62) | seed, (epoch << _INDEX_BITS) | index], dtype=np.uint64)


_local = threading.local()


def thread_example_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """`example_rng`'s generator, re-keyed in place (about 10x cheaper to make).

    The same stream as `example_rng(seed, epoch, index, stream)`, but the
    generator object is this thread's only one: the next call re-keys it, so
    finish with one example before asking for the next.
    """
    key = _key(seed, epoch, index, stream)
    gen = getattr(_local, "gen", None)
    if gen is None:
        gen = _local.gen = np.random.Generator(np.random.Philox(key=key))
        return gen
    gen.bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.zeros(4, np.uint64), "key": key},
        "buffer": np.zeros(4, np.uint64),
        "buffer_pos": 4,
        "has_uint32": 0,
        "uinteger": 0,
    }
    return gen


@dataclasses.dataclass(frozen=True, eq=False)
class Masker:
    """BERT's masked-LM corruption for one vocabulary.

    Attributes:
      mask_id: the [MASK] id.
      special: bool [vocab]: tokens never chosen for prediction.
      continuation: bool [vocab]: `##` tokens (whole-word masking).
      random_ids: the ids a "random token" is drawn from.
      masked_lm_prob: share of tokens to predict (0.15).
      max_predictions: the most predicted positions per sequence.
      whole_word: mask whole words.
    """

    mask_id: int
    special: np.ndarray
    continuation: np.ndarray
    random_ids: np.ndarray
    masked_lm_prob: float = 0.15
    max_predictions: int = 20
    whole_word: bool = False

    @classmethod
    def for_tokenizer(
        cls,
        tokenizer: WordPieceTokenizer,
        masked_lm_prob: float = 0.15,
        max_predictions: int = 20,
        whole_word: bool = False,
    ) -> Masker:
        v = tokenizer.vocab_size
        special = np.zeros(v, bool)
        special[list(tokenizer.special_ids)] = True
        continuation = np.array([t.startswith(CONTINUATION) for t in tokenizer.vocab], bool)
        return cls(
            mask_id=tokenizer.mask_id,
            special=special,
            continuation=continuation,
            random_ids=np.flatnonzero(~special).astype(np.int32),
            masked_lm_prob=masked_lm_prob,
            max_predictions=max_predictions,
            whole_word=whole_word,
        )

    def num_to_predict(self, num_tokens: int) -> int:
        """BERT's budget for a sequence of `num_tokens` tokens (specials included)."""
        return min(self.max_predictions, max(1, int(round(num_tokens * self.masked_lm_prob))))

    def choose(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sorted positions to predict in `ids` (the whole sequence, specials included)."""
        candidates = np.flatnonzero(~self.special[ids])
        budget = self.num_to_predict(len(ids))
        if len(candidates) == 0:
            return candidates
        if not self.whole_word:
            return np.sort(rng.permutation(candidates)[:budget])
        # Words: a run of candidates whose followers are `##` continuations.
        starts = np.ones(len(candidates), bool)
        starts[1:] = ~(self.continuation[ids[candidates[1:]]] & (np.diff(candidates) == 1))
        words = np.split(candidates, np.flatnonzero(starts)[1:])
        chosen: list[np.ndarray] = []
        n = 0
        for w in rng.permutation(len(words)):
            if n >= budget:
                break
            if n + len(words[w]) > budget:
                continue
            chosen.append(words[w])
            n += len(words[w])
        return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)

    def apply(
        self, ids: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mask one sequence.

        Args:
          ids: int32 [n] token ids of the whole sequence (with [CLS]/[SEP]).
          rng: the example's generator.

        Returns:
          (corrupted ids [n], positions [k] sorted, original ids at them [k]),
          k <= max_predictions.
        """
        positions = self.choose(ids, rng)
        labels = ids[positions]
        out = ids.copy()
        k = len(positions)
        u = rng.random(k)
        replace = rng.random(k) < 0.5  # among the 20% not [MASK]ed: half random, half kept
        out[positions[u < 0.8]] = self.mask_id
        rand = (u >= 0.8) & replace
        out[positions[rand]] = self.random_ids[
            rng.integers(len(self.random_ids), size=int(rand.sum()))
        ]
        return out, positions.astype(np.int32), labels.astype(np.int32)
