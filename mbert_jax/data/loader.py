"""Deterministic, host-sharded, checkpointable batches (grain under the hood).

The global batch at step t is a pure function of (seed, t): it is made of
the examples at positions g = t * G ... (t + 1) * G - 1 of an endless
stream, where position g is example `shuffle_e(g mod N)` of epoch
e = g div N (N examples per epoch, a fresh permutation per epoch: a cached
numpy permutation up to 4M examples, beyond that grain's O(1)-memory Feistel
`grain.experimental.index_shuffle`). Process p of n builds
only rows [p * G / n, (p + 1) * G / n) of it, so every host reads only its
shard and 1, 2 or 4 hosts together produce exactly the same global batch.
Epochs run into each other without dropping a remainder.

An eval pass is finite and unshuffled: ceil(N / G) global batches, the
rows past N are padding with `valid = 0`, so nothing is dropped or counted
twice and every host runs the same number of steps.

Each element of the grain pipeline is one host batch (step t), built by
`BatchFn` from preallocated numpy arrays; `grain`'s thread pool (or worker
processes) prefetch upcoming steps while the accelerator works. The
iterator's state is the next step, `{"step": t, "fingerprint": ...}`:
JSON-serializable, independent of the host count and of prefetching (the
state counts batches handed out, not batches prefetched), and restored by
rebuilding the pipeline from step t. The fingerprint hashes what decides the
stream (data, plan settings, seed, global batch size); restoring a state
with another fingerprint is an error.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable
from typing import Protocol

import grain
import numpy as np
from grain.experimental import index_shuffle

STATE_VERSION = 1
ENDLESS = 2**40  # steps of an endless (training) stream


class Source(Protocol):
    """Examples with random access (pretraining rows, task features)."""

    def __len__(self) -> int: ...

    def write_into(self, out: dict[str, np.ndarray], b: int, index: int, epoch: int) -> None: ...


def check_batch_size(global_batch_size: int, process_count: int, name: str = "global_batch_size"):
    if global_batch_size < 1:
        raise ValueError(f"data.{name}={global_batch_size} must be positive")
    if global_batch_size % process_count:
        raise ValueError(
            f"data.{name}={global_batch_size} is not divisible by the number of processes "
            f"({process_count}); each process gets an equal slice of the global batch, so use a "
            f"multiple of {process_count}"
        )


def resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """`(jax.process_index(), jax.process_count())` unless given (tests simulate hosts)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    return process_index, process_count


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 32-bit permutation seed per (seed, epoch, stream), well mixed."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{stream}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little")


# Up to this many examples per epoch the permutation is a cached numpy array
# (fast lookups, 4 bytes per example); beyond it, grain's O(1)-memory Feistel
# `index_shuffle` computes each position on demand.
PERMUTATION_CACHE_MAX = 1 << 22


@functools.lru_cache(maxsize=4)
def _permutation(num_examples: int, seed: int, epoch: int, stream: int) -> np.ndarray:
    rng = np.random.default_rng([epoch_seed(seed, epoch, stream), num_examples])
    return rng.permutation(num_examples).astype(np.int32)


def stream_position(g: int, num_examples: int, seed: int, stream: int) -> tuple[int, int]:
    """(example index, epoch) at position `g` of the shuffled endless stream."""
    epoch, k = divmod(g, num_examples)
    if num_examples <= PERMUTATION_CACHE_MAX:
        return int(_permutation(num_examples, seed, epoch, stream)[k]), epoch
    s = epoch_seed(seed, epoch, stream)
    return index_shuffle(k, max_index=num_examples - 1, seed=s, rounds=4), epoch


@dataclasses.dataclass(frozen=True)
class BatchFn:
    """Builds the host batch of one step: a picklable grain map function.

    Attributes:
      source: the examples.
      spec: name -> (shape without batch, dtype) of each output array.
      global_batch_size: G.
      process_index, process_count: this host's slice of each global batch.
      seed, stream: the shuffle's seed (training) and stream id.
      endless: shuffle and repeat (training) or one padded pass (eval).
    """

    source: Source
    spec: dict
    global_batch_size: int
    process_index: int
    process_count: int
    seed: int
    stream: int
    endless: bool

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        per_host = self.global_batch_size // self.process_count
        out = {k: np.zeros((per_host, *shape), dtype) for k, (shape, dtype) in self.spec.items()}
        n = len(self.source)
        first = step * self.global_batch_size + self.process_index * per_host
        for b in range(per_host):
            g = first + b
            if self.endless:
                index, epoch = stream_position(g, n, self.seed, self.stream)
            elif g < n:
                index, epoch = g, 0
            else:
                continue  # padding row: valid stays 0
            self.source.write_into(out, b, index, epoch)
            out["valid"][b] = 1.0
        return out


class DataIterator:
    """An iterator of host batches with `get_state()` / `set_state()`.

    Args:
      batch_fn: builds the batch of a step.
      num_steps: steps in the stream (`ENDLESS` for training).
      fingerprint: identifies the stream (see the module docstring).
      num_threads: grain prefetch threads (0: build batches in the caller).
      prefetch: batches prefetched ahead.
      worker_count: grain worker processes (0: threads only).
    """

    def __init__(
        self,
        batch_fn: BatchFn,
        num_steps: int,
        fingerprint: str,
        *,
        num_threads: int = 2,
        prefetch: int = 4,
        worker_count: int = 0,
    ):
        self.batch_fn = batch_fn
        self.num_steps = num_steps
        self.fingerprint = fingerprint
        self._options = (num_threads, prefetch, worker_count)
        self._step = 0
        self._it = None

    @property
    def step(self) -> int:
        """The step of the next batch."""
        return self._step

    def _start(self):
        threads, prefetch, workers = self._options
        ds = grain.MapDataset.range(self._step, self.num_steps).map(self.batch_fn)
        ids = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch if threads else 0)
        )
        if workers:
            _absl_flags_parsed()  # grain's workers read absl flags
            ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
        return iter(ids)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._step >= self.num_steps:
            raise StopIteration
        if self._it is None:
            self._it = self._start()
        batch = next(self._it)
        self._step += 1
        return batch

    def get_state(self) -> dict:
        """The position as a JSON-serializable dict (save it in the checkpoint)."""
        return {"version": STATE_VERSION, "step": self._step, "fingerprint": self.fingerprint}

    def set_state(self, state: dict) -> None:
        """Continue from a position saved by `get_state` (on any number of hosts)."""
        if not isinstance(state, dict) or "step" not in state:
            raise ValueError(f"not a data iterator state: {state!r}")
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                "the checkpoint's data iterator state belongs to another data stream "
                f"(fingerprint {state.get('fingerprint')} != {self.fingerprint}): the corpus, "
                "vocabulary, example settings, seed or global batch size changed since it was "
                "saved. Restore with the same data config, or start the data stream afresh"
            )
        self.close()
        self._step = int(state["step"])

    def close(self) -> None:
        """Stop prefetching (threads or worker processes)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()

    def __del__(self):
        # Nothing may raise here: a failed __init__ leaves no `_it`, and at interpreter
        # shutdown module globals (an import, a helper) can already be None.
        try:
            it = getattr(self, "_it", None)
            self._it = None
            if it is not None and hasattr(it, "close"):
                it.close()
        except Exception:
            pass


def _absl_flags_parsed() -> None:
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def fingerprint(parts: dict) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_iterator(
    source: Source,
    spec: dict,
    *,
    global_batch_size: int,
    process_index: int,
    process_count: int,
    seed: int,
    stream: int,
    endless: bool,
    fingerprint_parts: dict,
    options: dict,
) -> DataIterator:
    """A `DataIterator` over `source` (see the module docstring for the order)."""
    check_batch_size(global_batch_size, process_count)
    if len(source) == 0:
        raise ValueError("no examples to iterate over")
    fn = BatchFn(
        source, spec, global_batch_size, process_index, process_count, seed, stream, endless
    )
    steps = ENDLESS if endless else -(-len(source) // global_batch_size)
    fp = fingerprint(
        {**fingerprint_parts, "G": global_batch_size, "seed": seed, "endless": endless}
    )
    return DataIterator(fn, steps, fp, **options)


Log = Callable[[str], None]
