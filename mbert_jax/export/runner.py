"""Run an exported TFLite file from Python, with its inputs checked first.

    runner = Runner("model.tflite")
    outputs = runner(input_ids, attention_mask, token_type_ids)   # [n, seq_len] int arrays

A TFLite graph cannot refuse an input: its builtin ops have no assertion,
the embedding lookup (`GATHER`) wraps a negative id to the end of the table
(id -1 gives exactly the output of the last vocabulary entry, token type -1
the last type) and an id past the table fails inside the interpreter as
`gather_nd index out of bounds Node number 16`. So the check lives where the
file is run: every exported file records the valid range of each input in
its metadata (`input_ranges`, half-open `[low, high)`, read by
`tflite.task_metadata`), and `Runner` checks the inputs against it, and
against the file's sequence length, before the interpreter sees them. An
app that runs the file elsewhere (Android, iOS) reads the same metadata to
do the same. A file without the metadata (exported before it was written)
gets the shape checks only.

`Runner` runs one example at a time (the files are exported at batch 1) in
LiteRT's `Interpreter` with its default XNNPACK delegate, as verification
does (`verify.run_tflite` is this runner).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mbert_jax.export import tflite
from mbert_jax.export.graph import INPUT_NAMES
from mbert_jax.models.config import ModelConfig

# What each input's range means, for the error message.
_MEANING = {
    "input_ids": "ids index the model's vocabulary of {high} tokens (its vocab.txt)",
    "attention_mask": "1 marks a real token, 0 padding",
    "token_type_ids": "the model has {high} token type(s) (segments A and B of a pair)",
}


class InputError(ValueError):
    """An input the exported file cannot take (out of range, wrong shape or type)."""


def input_ranges(config: ModelConfig) -> dict[str, list[int]]:
    """The valid `[low, high)` of each input of a file exported from `config` (its metadata)."""
    ranges = {"input_ids": [0, config.vocab_size], "attention_mask": [0, 2]}
    if config.type_vocab_size > 0:  # without token types (DistilBERT) the graph ignores them
        ranges["token_type_ids"] = [0, config.type_vocab_size]
    return ranges


def check_inputs(
    inputs: dict[str, np.ndarray], seq_len: int, ranges: dict[str, list[int]]
) -> dict[str, np.ndarray]:
    """`inputs` as [n, seq_len] int32 arrays; `InputError` naming the input otherwise.

    Args:
      inputs: input name -> [seq_len] or [n, seq_len] integer array.
      seq_len: the file's static sequence length.
      ranges: input name -> its valid `[low, high)` (`input_ranges`).
    """
    out = {}
    for name, value in inputs.items():
        a = np.asarray(value)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != seq_len:
            raise InputError(
                f"{name} has shape {np.shape(value)}; this file takes [n, {seq_len}] (or "
                f"[{seq_len}]): pad or truncate to {seq_len} tokens"
            )
        whole = a.dtype.kind in "iub" or (
            a.dtype.kind == "f" and bool(np.all(np.isfinite(a) & (a == np.round(a))))
        )
        if not whole:
            raise InputError(f"{name} holds {a.dtype} values that are not integers; give ints")
        if name in ranges and a.size:
            low, high = ranges[name]
            bad = np.argwhere((a < low) | (a >= high))
            if len(bad):
                i, j = (int(x) for x in bad[0])
                raise InputError(
                    f"{name}[{i}, {j}] = {a[i, j]} is outside the valid range [{low}, {high}): "
                    + _MEANING[name].format(high=high)
                )
        out[name] = a.astype(np.int32)
    if out and not next(iter(out.values())).shape[0]:
        raise InputError("no examples: give at least one row")
    shapes = {a.shape for a in out.values()}
    if len(shapes) > 1:
        raise InputError(
            "the inputs differ in shape ("
            + ", ".join(f"{k} {v.shape}" for k, v in out.items())
            + "); give one row per example in each"
        )
    return out


class Runner:
    """An exported file, runnable on [n, seq_len] inputs that it checks first."""

    def __init__(self, model: str | os.PathLike | bytes, num_threads: int = 1):
        from mbert_jax.export.verify import interpreter

        flatbuffer = model if isinstance(model, bytes) else Path(model).read_bytes()
        self.metadata = tflite.task_metadata(flatbuffer) or {}
        self.ranges: dict[str, list[int]] = self.metadata.get("input_ranges") or {}
        self._runner = interpreter(flatbuffer, num_threads).get_signature_runner()
        details = self._runner.get_input_details()
        self.input_names = [k for k in INPUT_NAMES if k in details]
        self.seq_len = int(details["input_ids"]["shape"][-1])

    def __call__(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        token_type_ids: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """{output name: [n, ...]} of the file (token types default to 0)."""
        if token_type_ids is None:
            token_type_ids = np.zeros(np.shape(input_ids), np.int32)
        given = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        inputs = check_inputs(given, self.seq_len, self.ranges)
        outs: dict[str, list] = {}
        for i in range(inputs["input_ids"].shape[0]):
            res = self._runner(**{k: inputs[k][i : i + 1] for k in self.input_names})
            for k, v in res.items():
                outs.setdefault(k, []).append(np.asarray(v)[0])
        return {k: np.stack(v) for k, v in outs.items()}
