"""Per-layer quantization report: where an int8 file departs from its float graph.

    report = layer_report.compare(int8_file, float_graph, calibration, hidden_size=384)
    report.write("teacher_int8_layers")   # .md table, .csv, .png plot

Both files are run one example at a time by LiteRT's builtin kernels (no
XNNPACK delegate, which would fuse the graph away) with
`experimental_preserve_all_tensors=True`, so every intermediate tensor can
be read after `invoke`. The float reference is the float graph the int8 file
was quantized from (`tflite.convert(..., keep_calibrated=True)`, the
calibration pass's output: float32 throughout, and equal to the JAX model
to ~1e-6, which every float export's verification shows), so the two graphs
have the same ops and the same tensor names. A tensor of the int8 file is
matched to the float tensor of its name; a `QUANTIZE` / `DEQUANTIZE` output,
which exists in the int8 file only, stands for the float tensor it was made
from. So a dense layer's int8 input is compared, after dequantization, with
the float value it quantizes: the error a row shows is what int8 has done
to the value up to and including that tensor.

The tensor names are the JAX module paths the converter keeps
(`jit(fn)/Model/encoder/layers_3/ffn/ffn_0/output/...`), which name the
sites of the report:

- `embeddings`: the embedding output (the input of block 0);
- every dense layer (`FULLY_CONNECTED`): its input and its output;
- every block's attention scores (the input of its `SOFTMAX`: scaled, masked);
- every block's output (the last [1, seq_len, hidden_size] tensor of the block);
- the file's outputs (e.g. `logits`).

Per site, over the real tokens of every example (padded query and key
positions are left out: a masked score is a fill value, not a number to
compare): the relative RMS error `sqrt(sum (q - f)^2 / sum f^2)`, the largest
absolute error, the float tensor's peak-to-RMS ratio `max |f| / rms(f)` (an
outlier measure: a per-tensor int8 scale spends its 255 steps on the peak,
so a large ratio leaves few steps for the typical value) and, for an int8
tensor, its quantization step (scale).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import re
from pathlib import Path

import numpy as np

from mbert_jax.export.data import Examples
from mbert_jax.export.graph import INPUT_NAMES
from mbert_jax.export.tflite import module_of

KINDS = ("embeddings", "dense input", "dense output", "attention scores", "block output", "output")
_PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE")


@dataclasses.dataclass
class Row:
    """One site of the report."""

    index: int  # position in graph order
    kind: str
    module: str  # the JAX module path, e.g. encoder/layers_3/ffn/ffn_0/output
    tensor: str  # the float graph's tensor name
    rel_rms: float
    max_abs: float
    peak_to_rms: float
    int8_step: float | None  # the int8 file's scale for this tensor, None when it is float there

    @property
    def layer(self) -> str:
        m = re.search(r"layers_(\d+)", self.module)
        if m:
            return m.group(1)
        return "emb" if "embeddings" in self.module else "head"


@dataclasses.dataclass
class LayerReport:
    rows: list[Row]
    num_examples: int

    def worst(self, n: int = 3, kinds=("dense input", "attention scores")) -> list[Row]:
        """The `n` sites of `kinds` with the largest error added over the site before them."""
        added = []
        for prev, row in zip([None, *self.rows], self.rows, strict=False):
            if row.kind in kinds:
                base = 0.0 if prev is None else prev.rel_rms
                added.append((row.rel_rms - base, row))
        return [r for _, r in sorted(added, key=lambda t: -t[0])[:n]]

    def summary(self) -> list[str]:
        out = self.by_kind()
        lines = [
            f"per-layer int8 error over {self.num_examples} calibration examples "
            "(relative RMS against the float graph):"
        ]
        for kind, (worst, row) in out.items():
            lines.append(f"    {kind:16s} worst {worst:.3g} at {row.module}")
        return lines

    def by_kind(self) -> dict[str, tuple[float, Row]]:
        out = {}
        for row in self.rows:
            if row.kind not in out or row.rel_rms > out[row.kind][0]:
                out[row.kind] = (row.rel_rms, row)
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "layer", "kind", "module", "tensor", "rel_rms", "max_abs",
                    "peak_to_rms", "int8_step"])  # fmt: skip
        for r in self.rows:
            step = "" if r.int8_step is None else f"{r.int8_step:.6g}"
            w.writerow([r.index, r.layer, r.kind, r.module, r.tensor, f"{r.rel_rms:.6g}",
                        f"{r.max_abs:.6g}", f"{r.peak_to_rms:.4g}", step])  # fmt: skip
        return buf.getvalue()

    def to_markdown(self) -> str:
        lines = [
            f"Per-layer int8 error against the float graph, {self.num_examples} examples, real "
            "tokens only (relative RMS error; peak/RMS of the float tensor; the int8 "
            "step, blank where the tensor is float in the int8 file).",
            "",
            "| # | layer | site | module | rel. RMS error | max abs error | peak/RMS | int8 step |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            step = "" if r.int8_step is None else f"{r.int8_step:.3g}"
            lines.append(
                f"| {r.index} | {r.layer} | {r.kind} | {r.module} | {r.rel_rms:.4f} | "
                f"{r.max_abs:.3g} | {r.peak_to_rms:.1f} | {step} |"
            )
        return "\n".join(lines) + "\n"

    def plot(self, path: str | Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(8, 0.12 * len(self.rows)), 4.5))
        colors = dict(zip(KINDS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
        x = np.arange(len(self.rows))
        ax.plot(x, [max(r.rel_rms, 1e-7) for r in self.rows], color="0.7", lw=0.8, zorder=1)
        for kind in KINDS:
            pts = [(i, max(r.rel_rms, 1e-7)) for i, r in enumerate(self.rows) if r.kind == kind]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.scatter(xs, ys, s=14, label=kind, color=colors[kind], zorder=2)
        ticks = [i for i, r in enumerate(self.rows) if r.kind in ("block output", "embeddings")]
        ax.set_xticks(ticks, [f"{self.rows[i].layer}" for i in ticks])
        ax.set_xlabel("site in graph order (ticks: block outputs, by layer)")
        ax.set_yscale("log")
        ax.set_ylabel("relative RMS error, int8 vs float")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)

    def write(self, prefix: str | Path) -> list[Path]:
        """Write PREFIX.md, PREFIX.csv and PREFIX.png; returns the paths."""
        prefix = Path(prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        paths = [prefix.with_suffix(s) for s in (".md", ".csv", ".png")]
        paths[0].write_text(self.to_markdown())
        paths[1].write_text(self.to_csv())
        self.plot(paths[2])
        return paths


# ------------------------------------------------------------------ the graph
@dataclasses.dataclass
class _Graph:
    ops: list[tuple[str, list[int], list[int]]]  # (op name, inputs, outputs), in order
    names: list[str]
    shapes: list[tuple[int, ...]]
    constant: list[bool]
    scale: list[float | None]  # per-tensor quantization scale of int8 tensors
    producer: dict[int, int]

    @classmethod
    def read(cls, flatbuffer: bytes) -> _Graph:
        from ai_edge_litert.tools import flatbuffer_utils

        from mbert_jax.export.tflite import _read

        model = _read(flatbuffer)
        sg = model.subgraphs[0]
        ops = [
            (flatbuffer_utils.opcode_to_name(model, op.opcodeIndex), list(op.inputs),
             list(op.outputs))
            for op in sg.operators
        ]  # fmt: skip
        names, shapes, constant, scale = [], [], [], []
        for t in sg.tensors:
            names.append(t.name.decode() if isinstance(t.name, bytes) else str(t.name))
            shapes.append(tuple(int(s) for s in t.shape) if t.shape is not None else ())
            buf = model.buffers[t.buffer]
            constant.append(buf.data is not None and len(buf.data) > 0)
            q = t.quantization
            int8 = flatbuffer_utils.type_to_name(t.type) == "INT8"
            one = int8 and q is not None and q.scale is not None and len(q.scale) == 1
            scale.append(float(q.scale[0]) if one else None)
        producer = {o: i for i, (_, _, outs) in enumerate(ops) for o in outs}
        return cls(ops, names, shapes, constant, scale, producer)

    def step(self, t: int) -> float | None:
        """The int8 step of `t`, or of the int8 tensor a DEQUANTIZE made `t` from."""
        if self.scale[t] is None and t in self.producer:
            op, ins, _ = self.ops[self.producer[t]]
            if op == "DEQUANTIZE":
                return self.scale[ins[0]]
        return self.scale[t]

    def source(self, t: int) -> int:
        """`t`, or the tensor a chain of QUANTIZE / DEQUANTIZE ops made it from."""
        while t in self.producer and self.ops[self.producer[t]][0] in _PASS_THROUGH:
            t = self.ops[self.producer[t]][1][0]
        return t


def _sites(
    g: _Graph, hidden_size: int, seq_len: int, outputs: dict[str, int]
) -> list[tuple[str, str, int]]:
    """(kind, module, tensor of the int8 file) for every site, in graph order."""
    sites: list[tuple[float, str, str, int]] = []  # (position, kind, module, tensor)
    last_of: dict[str, tuple[int, int]] = {}  # block -> (op index, tensor): its last hidden state
    for i, (op, ins, outs) in enumerate(g.ops):
        if op == "FULLY_CONNECTED":
            module = module_of(g.names[outs[0]])
            sites.append((i - 0.25, "dense input", module, ins[0]))
            sites.append((i, "dense output", module, outs[0]))
        elif op == "SOFTMAX":
            sites.append((i - 0.25, "attention scores", module_of(g.names[outs[0]]), ins[0]))
        if op in _PASS_THROUGH:
            continue
        for o in outs:
            if g.shapes[o] != (1, seq_len, hidden_size):
                continue
            m = re.match(r"encoder/(embeddings|layers_\d+)", module_of(g.names[o]))
            if m:
                last_of[m.group(1)] = (i, o)
    for block, (i, o) in last_of.items():
        kind = "embeddings" if block == "embeddings" else "block output"
        sites.append((i + 0.5, kind, f"encoder/{block}", o))
    ordered = [(kind, module, t) for _, kind, module, t in sorted(sites, key=lambda s: s[0])]
    return ordered + [("output", name, t) for name, t in outputs.items()]


# ------------------------------------------------------------------ running
def _interpreter(flatbuffer: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    return Interpreter(
        model_content=flatbuffer,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )


def _value(interp, detail: dict, t: int) -> np.ndarray:
    x = interp.get_tensor(t)
    scale, zero = detail.get("quantization", (0.0, 0))
    if x.dtype == np.int8 and scale:
        return (x.astype(np.float32) - zero) * np.float32(scale)
    return x.astype(np.float32)


def _real_mask(shape: tuple[int, ...], mask: np.ndarray) -> np.ndarray | None:
    """Where a tensor of `shape` holds real-token values ([seq_len] 0/1 `mask`); None: all."""
    s = mask.shape[0]
    real = mask > 0
    if len(shape) >= 2 and shape[-1] == s and shape[-2] == s:  # scores [..., query, key]
        return np.broadcast_to(real[:, None] & real[None, :], shape)
    if len(shape) >= 2 and shape[0] == 1 and shape[1] == s:  # [1, seq_len, ...]
        return np.broadcast_to(real.reshape((1, s) + (1,) * (len(shape) - 2)), shape)
    if len(shape) >= 1 and shape[0] == s:  # [seq_len, ...]
        return np.broadcast_to(real.reshape((s,) + (1,) * (len(shape) - 1)), shape)
    return None


def compare(
    quantized: bytes,
    reference: bytes,
    examples: Examples,
    *,
    hidden_size: int,
    limit: int | None = None,
) -> LayerReport:
    """The per-site error of the file `quantized` against the float graph `reference`.

    Args:
      quantized: the int8 (or any) TFLite file.
      reference: the float graph it was made from (same tensor names).
      examples: the inputs, e.g. the calibration examples.
      hidden_size: the model's hidden width (to find the block outputs).
      limit: use at most this many examples.

    Returns:
      The report, one row per site of the quantized file that the reference has.
    """
    n = len(examples) if limit is None else min(limit, len(examples))
    if n < 1:
        raise ValueError("the per-layer report needs at least one example")
    gq, gf = _Graph.read(quantized), _Graph.read(reference)
    iq, iff = _interpreter(quantized), _interpreter(reference)
    run_q, run_f = iq.get_signature_runner(), iff.get_signature_runner()
    out_q = _signature_outputs(iq)
    out_f = _signature_outputs(iff)
    float_index: dict[str, int] = {}
    for t, name in enumerate(gf.names):
        if not gf.constant[t]:
            float_index[name] = -1 if name in float_index else t
    sites = []
    for kind, module, t in _sites(gq, hidden_size, examples.seq_len, out_q):
        if kind == "output":
            sites.append((kind, module, t, out_f.get(module), module))
            continue
        src = gq.source(t)
        name = gq.names[src]
        ft = float_index.get(name, -1)
        if ft >= 0 and gf.shapes[ft] == gq.shapes[t]:
            sites.append((kind, module, t, ft, name))
    dq = {d["index"]: d for d in iq.get_tensor_details()}
    sse = np.zeros(len(sites))
    ssr = np.zeros(len(sites))
    peak = np.zeros(len(sites))
    max_abs = np.zeros(len(sites))
    count = np.zeros(len(sites))
    inputs = examples.inputs()
    names = [k for k in INPUT_NAMES if k in run_q.get_input_details()]
    for e in range(n):
        feed = {k: inputs[k][e : e + 1] for k in names}
        run_q(**feed)
        run_f(**feed)
        mask = inputs["attention_mask"][e]
        for k, (_, _, tq, tf, _) in enumerate(sites):
            q = _value(iq, dq[tq], tq)
            f = iff.get_tensor(tf).astype(np.float32)
            keep = _real_mask(q.shape, mask)
            if keep is not None:
                q, f = q[keep], f[keep]
            d = q - f
            sse[k] += float(np.sum(d * d))
            ssr[k] += float(np.sum(f * f))
            count[k] += f.size
            max_abs[k] = max(max_abs[k], float(np.max(np.abs(d))) if d.size else 0.0)
            peak[k] = max(peak[k], float(np.max(np.abs(f))) if f.size else 0.0)
    rows = []
    for k, (kind, module, tq, _, name) in enumerate(sites):
        rms = math.sqrt(ssr[k] / max(count[k], 1))
        rows.append(
            Row(
                index=k,
                kind=kind,
                module=module,
                tensor=name,
                rel_rms=math.sqrt(sse[k] / ssr[k]) if ssr[k] > 0 else math.sqrt(sse[k]),
                max_abs=float(max_abs[k]),
                peak_to_rms=peak[k] / rms if rms > 0 else 0.0,
                int8_step=gq.step(tq),
            )
        )
    return LayerReport(rows, n)


def _signature_outputs(interp) -> dict[str, int]:
    """{output name: tensor index} of the file's one signature."""
    (sig,) = interp.get_signature_list().values()
    runner = interp.get_signature_runner()
    details = runner.get_output_details()
    return {name: details[name]["index"] for name in sig["outputs"]}
