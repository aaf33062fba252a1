"""A latency model of a model's pruned structures, measured on this machine: what
`prune.latency_budget` prunes to.

A latency budget needs the latency of structures not yet built. At batch 1
the TFLite latency of a BERT-family model is close to linear in what pruning
changes: a head's share of the Q/K/V/output projections and its attention
core, a neuron's two FFN matmul columns, a block's fixed work (its norms,
residual adds, the head-independent ops). So

    ms = fixed + block_ms x blocks + head_ms x heads + neuron_ms x neurons

(heads and neurons summed over the kept blocks), fitted by least squares to
float32 TFLite files of the model itself sliced to six uniform structures
(`STRUCTURES`: all or half of its blocks, all, half or a quarter of each
block's heads and neurons; `prune.structure.prune`, the first units of each
block: only the shapes matter), each exported at the budget's sequence
length, run by LiteRT's interpreter at batch 1 on `threads` threads and
timed round-robin (`export.verify.round_robin_ms`: background load hits all
six alike), the medians of `runs` runs each. The fit keeps its measurements
and its largest relative residual, and is written to a JSON file that later
runs of a model of the same shape and settings read instead of measuring.

The model is this machine's: a budget for a phone needs that phone's
figures, in the same JSON form (`LatencyModel.to_json`). With several
processes (a pod), process 0 reads or measures it and sends it to the others
(`from_lead`), so every process prunes to the same structure; on a pod, give
`prune.latency_model` a file measured on the target device.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils

from mbert_jax import files

# (share of the blocks, of each block's heads, of its FFN neurons) of the structures timed
STRUCTURES = (
    (1.0, 1.0, 1.0),
    (1.0, 0.5, 1.0),
    (1.0, 1.0, 0.5),
    (1.0, 0.5, 0.5),
    (0.5, 1.0, 1.0),
    (0.5, 0.25, 0.25),
)
# The model's shape and the timing settings a stored model must match.
SHAPE_FIELDS = (
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "vocab_size",
    "embedding_size",
    "use_bottleneck",
    "intra_bottleneck_size",
    "num_feedforward_networks",
    "key_query_shared_bottleneck",
    "use_bottleneck_attention",
    "embedding_transform",
    "normalization",
    "hidden_act",
    "layer_heads",
    "layer_intermediate_sizes",
)


@dataclasses.dataclass(frozen=True)
class LatencyModel:
    """`ms = fixed_ms + block_ms x blocks + head_ms x heads + neuron_ms x neurons`."""

    fixed_ms: float
    block_ms: float
    head_ms: float
    neuron_ms: float
    settings: dict  # what it was measured for: the model's shape, seq_len, threads, quantize
    points: tuple[dict, ...] = ()  # {"blocks", "heads", "neurons", "ms"} measured

    def predict(self, blocks: int, heads: int, neurons: int) -> float:
        return (
            self.fixed_ms + self.block_ms * blocks + self.head_ms * heads + self.neuron_ms * neurons
        )

    def predict_config(self, config) -> float:
        """The predicted latency of a model config (its per-block heads and widths)."""
        n = config.num_layers
        heads = sum(config.heads_at(i) for i in range(n))
        neurons = sum(config.intermediate_size_at(i) for i in range(n))
        return self.predict(n, heads, neurons)

    def max_residual(self) -> float:
        """The largest |measured - fitted| / measured over the points (0 with none)."""
        return max(
            (abs(p["ms"] - self.predict(p["blocks"], p["heads"], p["neurons"])) / p["ms"])
            for p in self.points
        ) if self.points else 0.0  # fmt: skip

    def summary(self) -> str:
        return (
            f"latency model: {self.fixed_ms:.3f} ms + {self.block_ms:.4f} ms/block + "
            f"{self.head_ms:.5f} ms/head + {self.neuron_ms:.3g} ms/neuron (seq "
            f"{self.settings.get('seq_len')}, {self.settings.get('threads')} thread(s); largest "
            f"residual {self.max_residual():.1%} over {len(self.points)} structures)"
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LatencyModel:
        d = json.loads(text)
        return cls(
            float(d["fixed_ms"]),
            float(d["block_ms"]),
            float(d["head_ms"]),
            float(d["neuron_ms"]),
            dict(d["settings"]),
            tuple(d.get("points", ())),
        )


def fit(points: list[dict], settings: dict) -> LatencyModel:
    """Least squares over `points` ({"blocks", "heads", "neurons", "ms"}; at least 4 that
    tell the four terms apart)."""
    a = np.array([[1.0, p["blocks"], p["heads"], p["neurons"]] for p in points], np.float64)
    y = np.array([p["ms"] for p in points], np.float64)
    if len(points) < 4 or np.linalg.matrix_rank(a) < 4:
        raise ValueError(
            "a latency model needs structures that differ in blocks, heads and neurons "
            f"independently; got {len(points)} that do not"
        )
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    return LatencyModel(*(float(c) for c in coef), settings=settings, points=tuple(points))


def settings_of(config, seq_len: int, threads: int) -> dict:
    d = config.to_dict()
    shape = json.loads(json.dumps({k: d.get(k) for k in SHAPE_FIELDS}))  # as stored: lists
    return {**shape, "seq_len": int(seq_len), "threads": int(threads), "quantize": "none"}


def structures(config) -> list[tuple[list[int], dict, dict]]:
    """(blocks kept, heads kept per block, neurons kept per block) of each of `STRUCTURES`,
    the first units of each block (block indices of the sliced model)."""
    out = []
    for b, h, n in STRUCTURES:
        blocks = list(range(max(1, round(b * config.num_layers))))
        heads = {i: list(range(max(1, round(h * config.heads_at(i))))) for i in blocks}
        neurons = {
            i: list(range(max(1, round(n * config.intermediate_size_at(i))))) for i in blocks
        }
        out.append((blocks, heads, neurons))
    return out


def measure(
    config,
    heads: tuple[str, ...],
    params,
    task: str,
    seq_len: int,
    threads: int = 1,
    runs: int = 20,
) -> LatencyModel:
    """Export `STRUCTURES` of the model to float32 TFLite, time them, fit (module docstring)."""
    from mbert_jax.export.exporter import LoadedModel, TFLiteOptions, export_tflite
    from mbert_jax.export.verify import round_robin_ms
    from mbert_jax.prune.structure import prune

    flatbuffers, points = {}, []
    with tempfile.TemporaryDirectory(prefix="latency_model.") as tmp:
        for k, (blocks, keep_heads, keep_neurons) in enumerate(structures(config)):
            cfg, p = prune(
                config, params, keep_layers=blocks, keep_heads=keep_heads, keep_neurons=keep_neurons
            )
            path = Path(tmp) / f"structure_{k}.tflite"
            export_tflite(
                LoadedModel(cfg, heads, p),
                task,
                path,
                TFLiteOptions(seq_len=seq_len, threads=(threads,), latency_runs=0, num_verify=1),
            )
            flatbuffers[k] = path.read_bytes()
            points.append(
                {
                    "blocks": len(blocks),
                    "heads": sum(len(v) for v in keep_heads.values()),
                    "neurons": sum(len(v) for v in keep_neurons.values()),
                }
            )
    times = round_robin_ms(flatbuffers, seq_len, threads, runs)
    for k, point in enumerate(points):
        point["ms"] = float(np.median(times[k]))
    return fit(points, settings_of(config, seq_len, threads))


def check_usable(model: LatencyModel, where: str) -> LatencyModel:
    """A ValueError when removing a head or a neuron would save no time under `model`."""
    bad = [n for n, v in (("head", model.head_ms), ("neuron", model.neuron_ms)) if not v > 0]
    if bad or not all(map(math.isfinite, (model.head_ms, model.neuron_ms))):
        raise ValueError(
            f"{where}: the fitted latency model gives a {' and a '.join(bad)} no cost "
            f"({model.summary()}): the timings are too noisy to prune by; raise "
            "config.prune.latency_runs or use config.prune.params_budget"
        )
    return model


def load_or_measure(
    path: str, config, heads, params, task: str, seq_len: int, threads: int, runs: int
) -> LatencyModel:
    """The latency model stored at `path` when it was measured for this model's shape and
    these settings; otherwise measured now and (with a path) written there atomically."""
    want = settings_of(config, seq_len, threads)
    where = f"config.prune.latency_model={path}" if path else "config.prune.latency_budget"
    if path and os.path.isfile(path):
        try:
            stored = LatencyModel.from_json(Path(path).read_text())
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"{where}: not a latency model ({e}); delete it to measure again"
            ) from None
        if stored.settings != want:
            keys = sorted(set(want) | set(stored.settings))
            diff = [k for k in keys if stored.settings.get(k) != want.get(k)]
            raise ValueError(
                f"{where}: measured for another model or settings ({', '.join(diff)} differ); "
                "give another path, or delete it to measure this model"
            )
        return check_usable(stored, where)
    print(
        f"prune: measuring the latency model ({len(STRUCTURES)} TFLite structures, seq "
        f"{seq_len}, {threads} thread(s), {runs} runs each)",
        flush=True,
    )
    model = measure(config, heads, params, task, seq_len, threads, runs)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        files.write_bytes(path, model.to_json().encode())
    return check_usable(model, where)


def from_lead(make) -> LatencyModel:
    """`make()` (a LatencyModel) on process 0, sent to every process; one process: `make()`.

    A ValueError on process 0 is raised on every process (none waits forever for it).
    """
    if jax.process_count() == 1:
        return make()
    text = b""
    if jax.process_index() == 0:
        try:
            text = json.dumps({"model": make().to_json()}).encode()
        except ValueError as e:
            text = json.dumps({"error": str(e)}).encode()
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(text))))
    buf = np.zeros(size, np.uint8)
    buf[: len(text)] = np.frombuffer(text, np.uint8)
    got = json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())
    if "error" in got:
        raise ValueError(got["error"])
    return LatencyModel.from_json(got["model"])
