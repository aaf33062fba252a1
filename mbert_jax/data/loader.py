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

Two options cut the padding of task batches (sources that know their rows'
lengths): `pad_multiple = m` pads each global batch only to its longest row,
rounded up to a multiple of m (at most the spec's length), so a step costs
what its rows need and each distinct length compiles once; `group = K`
makes the rows of a batch similar in length: each epoch's permutation is cut
into windows of K global batches, each window sorted by length (ties by
position), cut into batches, and those batches shuffled within the window
(the "group by length" sampler of the usual trainers). A batch that spans an
epoch boundary (N not a multiple of G) mixes two windows' lengths. In an
eval pass, `group` sorts the whole split by length (rows keep their
`example_index`, so what is computed does not change, only the padding). Both are
pure functions of (seed, step), like the plain order, and the same on every
host: each host reads the lengths of the whole global batch to pick its length.

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


class SizedSource(Source, Protocol):
    """A source that knows each example's length in tokens (for `pad_multiple`, `group`)."""

    @property
    def lengths(self) -> np.ndarray: ...


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


@functools.lru_cache(maxsize=4)
def _grouped_permutation(grouping: LengthGrouping, epoch: int) -> np.ndarray:
    g = grouping
    lengths = g.lengths
    n = len(lengths)
    perm = _permutation(n, g.seed, epoch, g.stream)
    out = perm.copy()
    window = g.windows * g.batch
    rng = np.random.default_rng([epoch_seed(g.seed, epoch, g.stream + 1000), n])
    for start in range(0, n, window):
        ids = perm[start : start + window]
        ids = ids[np.argsort(lengths[ids], kind="stable")]
        full = len(ids) // g.batch  # a last partial batch stays last
        order = rng.permutation(full)
        blocks = ids[: full * g.batch].reshape(full, g.batch)[order].reshape(-1)
        out[start : start + len(ids)] = np.concatenate([blocks, ids[full * g.batch :]])
    return out


class LengthGrouping:
    """The `group` order of a source's rows (see the module docstring); hashed by identity."""

    def __init__(self, lengths: np.ndarray, windows: int, batch: int, seed: int, stream: int):
        if len(lengths) > PERMUTATION_CACHE_MAX:
            raise ValueError(
                f"data.group_by_length needs the cached shuffle (at most {PERMUTATION_CACHE_MAX:,} "
                f"rows, have {len(lengths):,}): set data.group_by_length=0"
            )
        self.lengths = np.asarray(lengths)
        self.windows, self.batch, self.seed, self.stream = windows, batch, seed, stream

    def position(self, g: int) -> tuple[int, int]:
        """(example index, epoch) at position `g` of the endless stream."""
        epoch, k = divmod(g, len(self.lengths))
        return int(_grouped_permutation(self, epoch)[k]), epoch


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
      pad_multiple: 0, or pad each batch only to its longest row rounded up to
        a multiple of this (the source must have `lengths`).
      grouping: None, or the length-grouped order of an endless stream.
      order: None, or the order of an eval pass's rows (sorted by length).
    """

    source: Source
    spec: dict
    global_batch_size: int
    process_index: int
    process_count: int
    seed: int
    stream: int
    endless: bool
    pad_multiple: int = 0
    grouping: LengthGrouping | None = None
    order: np.ndarray | None = None

    def position(self, g: int) -> tuple[int, int] | None:
        """(example index, epoch) of global position `g`; None for an eval pass's padding."""
        if self.grouping is not None:
            return self.grouping.position(g)
        if self.endless:
            return stream_position(g, len(self.source), self.seed, self.stream)
        if g >= len(self.source):
            return None
        return (g if self.order is None else int(self.order[g])), 0

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        G = self.global_batch_size
        per_host = G // self.process_count
        out = {k: np.zeros((per_host, *shape), dtype) for k, (shape, dtype) in self.spec.items()}
        first = self.process_index * per_host
        if self.pad_multiple:  # the width is the longest row's of the whole global batch
            rows = [self.position(g) for g in range(step * G, (step + 1) * G)]
            mine = rows[first : first + per_host]
        else:
            mine = [self.position(step * G + first + b) for b in range(per_host)]
        for b, row in enumerate(mine):
            if row is None:
                continue  # padding row: valid stays 0
            self.source.write_into(out, b, *row)
            out["valid"][b] = 1.0
        if self.pad_multiple:
            full = self.spec["input_ids"][0][0]
            longest = max((int(self.source.lengths[r[0]]) for r in rows if r), default=1)
            length = min(full, -(-longest // self.pad_multiple) * self.pad_multiple)
            for k, (shape, _) in self.spec.items():
                if length < full and shape and shape[0] == full:
                    out[k] = np.ascontiguousarray(out[k][:, :length])
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
    pad_multiple: int = 0,
    group: int = 0,
) -> DataIterator:
    """A `DataIterator` over `source` (see the module docstring for the order and
    for `pad_multiple` / `group`, which need a `SizedSource`; `group` only
    reorders an endless stream)."""
    check_batch_size(global_batch_size, process_count)
    if len(source) == 0:
        raise ValueError("no examples to iterate over")
    grouping = order = None
    if group and endless:
        grouping = LengthGrouping(source.lengths, group, global_batch_size, seed, stream)
    elif group:
        order = np.argsort(source.lengths, kind="stable")
    fn = BatchFn(
        source,
        spec,
        global_batch_size,
        process_index,
        process_count,
        seed,
        stream,
        endless,
        pad_multiple,
        grouping,
        order,
    )
    steps = ENDLESS if endless else -(-len(source) // global_batch_size)
    parts = {**fingerprint_parts, "G": global_batch_size, "seed": seed, "endless": endless}
    if group:
        parts["group"] = group  # the order; pad_multiple changes shapes, not rows
    return DataIterator(fn, steps, fingerprint(parts), **options)


Log = Callable[[str], None]
