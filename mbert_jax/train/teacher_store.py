"""Teacher outputs computed once: a store on disk of what a recipe's losses read from its teacher.

    config.distill.teacher_store = DIR      (empty: the live teacher, the default)

When the teacher's inputs repeat (task distillation over a fixed, possibly
augmented, task set: every epoch shows the teacher the same rows), the
teacher need not run at every step. With a store, the trainer first runs
the teacher once over every training row (`Recipe.teacher_outputs` of
every stage, one jitted forward, the rows in one pass sorted by length,
each batch padded as the training data pads its batches) and writes the
outputs to DIR at the full `max_seq_length` (zeros past a row's batch); the steps then read
each batch's rows from DIR (`teacher/<name>` batch keys, which
`Recipe.teacher_terms` hands to the losses instead of running the teacher).
The student's steps are the same as with the live teacher: the same data
stream (its position is checkpointed as always, so a resumed run continues
exactly), the same losses, on outputs equal to the live ones at every real
token (float tolerance: the teacher ran on other padding). Losses that mask
padding see no difference; a recipe whose losses read the teacher's values
at padding (TinyBERT's `official_losses`) sets `Recipe.stored_at_full_length`,
and its rows are then built at the full length, where every position holds
the teacher's own value.

Layout (every file written to a temporary name and renamed: a killed build
leaves whole shards only):

    DIR/store.json            the fingerprint, the stored names, shapes and dtypes,
                              the rows per shard, and `complete` once every shard is there
    DIR/shard_00000/          rows of the build order [0, R), R = rows per shard:
        index.npy             int32 [n] the training rows (`example_index`, SQuAD: `feature_index`)
        <name>.npy            [n, ...] one stored output at the full length

A build that is killed resumes at the next start: the shards already
written are kept, a half-written one (a left-over temporary directory) is
redone. Progress is logged per shard.

The fingerprint: a hash of the teacher's parameters, the recipe's
`teacher_settings()` (the teacher's model config, dtypes, heads), a hash of
every training row the teacher reads (ids, masks, types, positions, labels),
the sequence length, and the stored names with their shapes. A store made
from another teacher, data or settings is refused with a one-line error
naming what differs and the way out (another or an empty directory, or
deleting DIR to rebuild it).

Only data that names its rows can be stored (task data: `example_index` or
`feature_index`; the pretraining stream re-masks every epoch and has no
row index); single host only. Outputs are stored in float32 (a
bfloat16 teacher's are exact in float32). Size: per row, the sum over the
stored outputs of their per-row sizes (e.g. TinyBERT's intermediate stage:
the mapped layers' [heads, S, S] attention scores and [S, hidden] states).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax.parallel import sharding as sharding_lib
from mbert_jax.train.recipe import STORED, Recipe, Stage
from mbert_jax.tree import flat

log = logging.getLogger(__name__)

VERSION = 1
INDEX_KEYS = ("example_index", "feature_index")
SHARD_BYTES = 256 << 20  # rows per shard: about this many bytes (`teacher_store_shard_rows`: 0)
FIELD = "config.distill.teacher_store"


class TeacherStoreError(ValueError):
    """A store that cannot be used (another teacher, data or settings; unsupported data)."""


def store_dir(config) -> str:
    """`config.distill.teacher_store` ("" when the config has no such field)."""
    distill = config.get("distill") if hasattr(config, "get") else None
    return str(distill.get("teacher_store", "") or "") if distill is not None else ""


def shard_rows_setting(config) -> int:
    distill = config.get("distill")
    rows = int(distill.get("teacher_store_shard_rows", 0) or 0)
    if rows < 0:
        raise ValueError(
            f"config.distill.teacher_store_shard_rows={rows}: rows per shard, >= 0 (0: automatic)"
        )
    return rows


# ------------------------------------------------------------------- hashing
def _hash_arrays(h, arrays: dict[str, Any]) -> None:
    for k in sorted(arrays):
        a = np.ascontiguousarray(np.asarray(arrays[k]))
        h.update(f"{k}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())


def params_hash(teacher_params) -> str:
    """sha256 of the teacher's parameters (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    _hash_arrays(h, {k: jax.device_get(v) for k, v in flat(teacher_params).items()})
    return h.hexdigest()


def index_key(spec: dict) -> str:
    for k in INDEX_KEYS:
        if k in spec:
            return k
    raise TeacherStoreError(
        f"{FIELD} stores the teacher's outputs per training row, but this recipe's training "
        f"data has no row index ({' or '.join(INDEX_KEYS)}: task data has one, the pretraining "
        f"stream does not); set {FIELD}='' (the live teacher)"
    )


def one_pass(train_data, batch_size: int, full_length: bool):
    """A `loader.BatchFn` over every training row once, sorted by length, padded as
    the training data pads (`full_length`: to `max_seq_length`).

    `train_data` is the recipe's training `DataIterator` (its `batch_fn` has the
    source and the batch layout).
    """
    import dataclasses

    fn = getattr(train_data, "batch_fn", None)
    if fn is None or not hasattr(fn, "source"):
        raise TeacherStoreError(
            f"{FIELD}: this recipe's training data is not a row source the store can read "
            f"once; set {FIELD}='' (the live teacher)"
        )
    index_key(fn.spec)
    if jax.process_count() > 1:
        raise TeacherStoreError(f"{FIELD}: the store is single-host; set {FIELD}='' on pods")
    order = None
    if hasattr(fn.source, "lengths"):
        order = np.argsort(np.asarray(fn.source.lengths), kind="stable")
    return dataclasses.replace(
        fn,
        global_batch_size=batch_size,
        process_index=0,
        process_count=1,
        endless=False,
        pad_multiple=0 if full_length else fn.pad_multiple,
        grouping=None,
        order=order,
    )


def data_hash(batch_fn, steps: int) -> str:
    """sha256 of every batch of the one pass (the rows the teacher reads, in build order)."""
    h = hashlib.sha256()
    for step in range(steps):
        _hash_arrays(h, batch_fn(step))
    return h.hexdigest()


# ------------------------------------------------------------------- layout
def _shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _describe_mismatch(have: dict, want: dict, directory: Path) -> str:
    names = {
        "version": "the store format",
        "teacher_params": "the teacher's parameters",
        "teacher_settings": "the teacher's settings (model config, dtypes, heads)",
        "data": "the training data (its rows, tokenization or augmentation)",
        "seq_len": "the sequence length (config.data.max_seq_length)",
        "build_padding": "the padding (config.data.pad_to_multiple, official losses)",
        "outputs": "what is stored (the stages' teacher outputs: loss terms, layer map)",
    }
    differ = [names.get(k, k) for k in names if have.get(k) != want.get(k)]
    what = ", ".join(differ) or "its fingerprint"
    return (
        f"{FIELD}={directory} was built with other {what} than this run; give another (or an "
        f"empty) directory, or delete {directory} to rebuild it"
    )


class TeacherStore:
    """An opened, complete store: the rows' stored outputs, gathered per batch."""

    def __init__(self, directory: Path, meta: dict):
        self.directory = directory
        self.meta = meta
        self.outputs = meta["outputs"]  # name -> {"shape", "dtype", "seq_axes"}
        self._arrays: dict[str, list[np.ndarray]] = {n: [] for n in self.outputs}
        where_shard, where_row = {}, {}
        for k in range(meta["shards"]):
            d = directory / _shard_name(k)
            index = np.load(d / "index.npy")
            for r, i in enumerate(index):
                where_shard[int(i)], where_row[int(i)] = k, r
            for n in self.outputs:
                self._arrays[n].append(np.load(d / f"{n}.npy", mmap_mode="r"))
        size = max(where_shard) + 1 if where_shard else 0
        self._shard = np.full(size, -1, np.int64)
        self._row = np.full(size, -1, np.int64)
        for i, k in where_shard.items():
            self._shard[i], self._row[i] = k, where_row[i]

    def gather(self, names, index: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """`teacher/<name>` arrays of the rows `index`, cut to the batch's `length`."""
        index = np.asarray(index)
        if index.size and (index.max() >= len(self._shard) or (self._shard[index] < 0).any()):
            raise TeacherStoreError(
                f"{FIELD}={self.directory} has no outputs for some training rows; delete it to "
                "rebuild it"
            )
        shard, row = self._shard[index], self._row[index]
        out = {}
        for n in names:
            spec = self.outputs[n]
            cut = tuple(
                slice(0, length) if a in spec["seq_axes"] else slice(None)
                for a in range(len(spec["shape"]))
            )
            shape = [length if a in spec["seq_axes"] else s for a, s in enumerate(spec["shape"])]
            arr = np.empty((len(index), *shape), np.dtype(spec["dtype"]))
            for k in np.unique(shard):
                at = np.flatnonzero(shard == k)
                arr[at] = self._arrays[n][k][row[at]][(slice(None), *cut)]
            out[STORED + n] = arr
        return out


class StoredTeacherData:
    """The recipe's training iterator with each batch's stored teacher outputs added.

    `use_stage(stage)` selects the names the stage's losses read; the stream's
    state (`get_state` / `set_state`) is the wrapped iterator's, so resume is exact.
    """

    def __init__(self, data, store: TeacherStore, names_by_stage: dict[str, list[str]], key: str):
        self.data, self.store, self.names_by_stage, self.key = data, store, names_by_stage, key
        self.names: list[str] = []

    def use_stage(self, stage: Stage) -> None:
        self.names = self.names_by_stage[stage.name]

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.data)
        if self.names:
            length = batch["input_ids"].shape[1]
            batch = {**batch, **self.store.gather(self.names, batch[self.key], length)}
        return batch

    def get_state(self):
        return self.data.get_state()

    def set_state(self, state):
        self.data.set_state(state)


# -------------------------------------------------------------------- build
def _output_specs(fn, teacher_params, batch_fn, batch_size: int) -> dict:
    """name -> {"shape" (per row, full length), "dtype", "seq_axes"}: `jax.eval_shape` at
    two lengths; the axes that follow the length are the sequence axes."""
    full = batch_fn.spec["input_ids"][0][0]

    def abstract(length):
        out = {}
        for k, (shape, dtype) in batch_fn.spec.items():
            shape = tuple(shape)
            if shape and shape[0] == full:
                shape = (length, *shape[1:])
            out[k] = jax.ShapeDtypeStruct((batch_size, *shape), dtype)
        return out

    at_full = jax.eval_shape(fn, teacher_params, abstract(full))
    other = max(1, full // 2) if full > 1 else 2
    at_other = jax.eval_shape(fn, teacher_params, abstract(other))
    specs = {}
    for n, s in at_full.items():
        shape = s.shape[1:]
        seq = [a for a, (x, y) in enumerate(zip(shape, at_other[n].shape[1:])) if x != y]
        specs[n] = {"shape": list(shape), "dtype": "float32", "seq_axes": seq}
    return specs


def open_or_build(
    config, recipe: Recipe, stages: list[Stage], train_data, teacher_params, mesh, rules
) -> StoredTeacherData:
    """The training data with stored teacher outputs: DIR opened, built or resumed first.

    Raises:
      TeacherStoreError: a store of another teacher, data or settings; data without a
        row index; a recipe that cannot store its teacher's outputs.
    """
    directory = Path(store_dir(config))
    batch_size = int(config.data.get("eval_global_batch_size") or 0) or int(
        config.data.global_batch_size
    )
    full_length = bool(getattr(recipe, "stored_at_full_length", False))
    batch_fn = one_pass(train_data, batch_size, full_length)
    key = index_key(batch_fn.spec)
    rows = len(batch_fn.source)
    steps = -(-rows // batch_size)

    def outputs(teacher_params, batch):
        merged = {}
        for stage in stages:
            merged.update(recipe.teacher_outputs(stage, teacher_params, batch))
        return {k: v.astype(jnp.float32) for k, v in merged.items()}

    try:
        settings = recipe.teacher_settings()
        names_by_stage = {
            s.name: sorted(
                jax.eval_shape(
                    lambda t, b, s=s: recipe.teacher_outputs(s, t, b),
                    teacher_params,
                    _abstract_batch(batch_fn, batch_size),
                )
            )
            for s in stages
        }
    except NotImplementedError:
        raise TeacherStoreError(
            f"{FIELD}: this recipe ({type(recipe).__name__}) does not declare its teacher's "
            f"outputs (Recipe.teacher_outputs); set {FIELD}='' (the live teacher)"
        ) from None
    specs = _output_specs(outputs, teacher_params, batch_fn, batch_size)
    t0 = time.time()
    fingerprint = {
        "version": VERSION,
        "teacher_params": params_hash(teacher_params),
        "teacher_settings": json.loads(json.dumps(settings, sort_keys=True, default=str)),
        "data": data_hash(batch_fn, steps),
        "seq_len": int(batch_fn.spec["input_ids"][0][0]),
        "build_padding": 0 if full_length else int(batch_fn.pad_multiple),
        "outputs": specs,
    }
    log.info("teacher store %s: fingerprint in %.1fs", directory, time.time() - t0)
    meta_path = directory / "store.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fingerprint:
            raise TeacherStoreError(
                _describe_mismatch(meta.get("fingerprint", {}), fingerprint, directory)
            )
    else:
        if directory.is_dir() and any(directory.iterdir()):
            raise TeacherStoreError(
                f"{FIELD}={directory} is not empty and holds no store.json; give an empty or "
                "new directory"
            )
        per_row = sum(4 * int(np.prod(s["shape"])) for s in specs.values()) or 1
        shard_rows = shard_rows_setting(config) or max(1, SHARD_BYTES // per_row)
        shard_rows = -(-shard_rows // batch_size) * batch_size  # whole build batches
        meta = {
            "fingerprint": fingerprint,
            "outputs": specs,
            "rows": rows,
            "rows_per_shard": shard_rows,
            "shards": -(-rows // shard_rows),
            "batch_size": batch_size,
            "complete": False,
        }
        directory.mkdir(parents=True, exist_ok=True)
        _write_json(meta_path, meta)
    if not meta["complete"]:
        _build(directory, meta, batch_fn, outputs, teacher_params, mesh, rules)
        meta["complete"] = True
        _write_json(meta_path, meta)
    return StoredTeacherData(train_data, TeacherStore(directory, meta), names_by_stage, key)


def _abstract_batch(batch_fn, batch_size):
    return {
        k: jax.ShapeDtypeStruct((batch_size, *shape), dtype)
        for k, (shape, dtype) in batch_fn.spec.items()
    }


def _pad_to(a: np.ndarray, shape) -> np.ndarray:
    """[n, ...] rows zero-padded to the full per-row `shape` (sequence axes of a shorter batch)."""
    if tuple(a.shape[1:]) == tuple(shape):
        return a
    return np.pad(a, [(0, 0)] + [(0, full - have) for have, full in zip(a.shape[1:], shape)])


def _build(directory, meta, batch_fn, outputs, teacher_params, mesh, rules) -> None:
    """Every missing shard: the teacher over its build batches, written whole."""
    run = jax.jit(outputs)
    batch_size, shard_rows = meta["batch_size"], meta["rows_per_shard"]
    rows, shards = meta["rows"], meta["shards"]
    per_shard = shard_rows // batch_size
    done = sum((directory / _shard_name(k)).is_dir() for k in range(shards))
    if done:
        log.info("teacher store %s: resuming, %d of %d shards written", directory, done, shards)
    start = time.time()
    for k in range(shards):
        final = directory / _shard_name(k)
        if final.is_dir():
            continue
        tmp = directory / f".{_shard_name(k)}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # a build killed while writing it
        tmp.mkdir()
        first, last = k * shard_rows, min(rows, (k + 1) * shard_rows)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in meta["outputs"]}
        index = []
        for step in range(k * per_shard, min((k + 1) * per_shard, -(-rows // batch_size))):
            host = batch_fn(step)
            valid = host["valid"] > 0
            batch = sharding_lib.global_batch(host, mesh, rules)
            out = jax.device_get(run(teacher_params, batch))
            for n in parts:
                parts[n].append(_pad_to(np.asarray(out[n])[valid], meta["outputs"][n]["shape"]))
            index.append(host[index_key(batch_fn.spec)][valid])
        index = np.concatenate(index).astype(np.int32)
        assert len(index) == last - first, (len(index), first, last)
        for n, chunks in parts.items():
            np.save(tmp / f"{n}.npy", np.concatenate(chunks))
        np.save(tmp / "index.npy", index)
        os.replace(tmp, final)
        elapsed = time.time() - start
        log.info(
            "teacher store %s: shard %d/%d written (rows %d-%d, %.1fs)",
            directory,
            k + 1,
            shards,
            first,
            last,
            elapsed,
        )
