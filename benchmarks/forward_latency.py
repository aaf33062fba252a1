"""Forward latency of our jitted encoders vs transformers' PyTorch models, on this CPU.

For each full-size variant, the same architecture runs three ways, side by side
in one process: our `Model(config, heads=())` under `jax.jit`, and
transformers' PyTorch model of the same config with eager attention and with
its default SDPA attention (`torch.inference_mode`, `model.eval()`). Both get
every core: torch via `torch.set_num_threads(os.cpu_count())`, XLA through its
default intra-op pool (one thread per core). Inputs: random ids, a full
attention mask and token types, sequence 128, batch 1 and 8. The timed
forward returns the last hidden state and the pooled output (where the model
has one) on the host. Each implementation runs in blocks (warm-up calls, then
timed calls), and the blocks cycle (ours, eager, sdpa, ours, eager, sdpa) so
that load from other processes hits all three alike; the median over all timed
calls is reported. Blocks rather than call-by-call interleaving: torch's
OpenMP workers spin for a while after each call and would steal the cores
from the next XLA call (and XLA's pool from torch), slowing both.

Usage (the command that wrote benchmarks/results/forward_latency.md):

    python benchmarks/forward_latency.py --output benchmarks/results/forward_latency.md

Transformers' classes: BertModel (bert_*, tinybert*), MobileBertModel
(mobilebert*, `classifier_activation=False`), DistilBertModel (distilbert6),
AlbertModel (albert_base). ibbert_large has no transformers counterpart (its
MobileBERT class projects queries/keys from the intra-block width, a shape
error for IB-BERT's 512 -> 1024 block), so only ours is timed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import traverse_util

from mbert_jax.models import hf, variants
from mbert_jax.models.model import Model, param_shapes

VARIANTS = (
    "bert_base",
    "bert_large",
    "ibbert_large",
    "mobilebert",
    "mobilebert_tiny",
    "mobilebert_qat",
    "tinybert4",
    "tinybert6",
    "distilbert6",
    "albert_base",
)
IMPLS = ("ours", "eager", "sdpa")


def our_forward(config):
    """A jitted forward of our bare encoder and its random float32 params."""
    model = Model(config, heads=())
    rng = np.random.RandomState(0)
    flat = traverse_util.flatten_dict(param_shapes(model))
    params = {
        k: jnp.asarray((k[-1] == "scale") + 0.02 * rng.standard_normal(v.shape).astype(np.float32))
        for k, v in flat.items()
    }
    params = traverse_util.unflatten_dict(params)

    @jax.jit
    def forward(params, ids, mask, types):
        out = model.apply({"params": params}, ids, mask, types).encoder
        return out.last_hidden_state, out.pooled_output

    def run(ids, mask, types):
        return jax.device_get(forward(params, ids, mask, types))

    return run


def torch_model(name: str, config, attn: str):
    """transformers' model of the same architecture (random init), or None."""
    if name == "ibbert_large":
        return None
    if name == "distilbert6":
        cfg = transformers.DistilBertConfig(
            vocab_size=config.vocab_size,
            max_position_embeddings=config.max_position_embeddings,
            n_layers=config.num_layers,
            n_heads=config.num_heads,
            dim=config.hidden_size,
            hidden_dim=config.intermediate_size,
            activation="gelu",
            attn_implementation=attn,
        )
        return transformers.DistilBertModel(cfg).eval()
    if name == "albert_base":
        cfg = transformers.AlbertConfig(
            vocab_size=config.vocab_size,
            embedding_size=config.embed_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads,
            intermediate_size=config.intermediate_size,
            hidden_act="gelu_new",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            attn_implementation=attn,
        )
        return transformers.AlbertModel(cfg).eval()
    with warnings.catch_warnings():  # the -6 mask value does not change the cost
        warnings.simplefilter("ignore")
        fields = hf.config_to_hf(config, ())
    cls = transformers.MobileBertModel if fields["model_type"] == "mobilebert" else None
    cls = cls or transformers.BertModel
    cfg_cls = transformers.MobileBertConfig if cls is transformers.MobileBertModel else None
    cfg = (cfg_cls or transformers.BertConfig)(**fields, attn_implementation=attn)
    return cls(cfg).eval()


def torch_forward(model, uses_types: bool):
    def run(ids, mask, types):
        kw = dict(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        if uses_types:
            kw["token_type_ids"] = torch.from_numpy(types)
        with torch.inference_mode():
            out = model(**kw)
        return out[0].numpy(), (out[1].numpy() if len(out) > 1 else None)

    return run


def bench(name: str, batch_sizes, seq_len: int, warmup: int, repeats: int, cycles: int):
    config = variants.get(name)
    runs = {"ours": our_forward(config)}
    for attn in ("eager", "sdpa"):
        model = torch_model(name, config, attn)
        if model is not None:
            runs[attn] = torch_forward(model, uses_types=name != "distilbert6")
    rows = []
    for batch in batch_sizes:
        rng = np.random.RandomState(batch)
        ids = rng.randint(1, config.vocab_size, (batch, seq_len)).astype(np.int64)
        mask = np.ones_like(ids)
        types = np.zeros_like(ids)
        jax_ids = [x.astype(np.int32) for x in (ids, mask, types)]
        t0 = time.perf_counter()
        runs["ours"](*jax_ids)
        compile_s = time.perf_counter() - t0
        times = {k: [] for k in runs}
        for _ in range(cycles):
            for impl, run in runs.items():
                args = jax_ids if impl == "ours" else (ids, mask, types)
                for r in range(warmup + repeats):
                    t0 = time.perf_counter()
                    run(*args)
                    if r >= warmup:
                        times[impl].append(time.perf_counter() - t0)
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        spread = {k: 1000 * (max(v) - min(v)) for k, v in times.items()}
        rows.append((name, batch, med, spread, compile_s))
        print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row) -> str:
    name, batch, med, spread, compile_s = row
    cells = [name, str(batch)]
    for impl in IMPLS:
        cells.append(f"{med[impl]:.1f} (±{spread[impl] / 2:.0f})" if impl in med else "n/a")
    torch_best = min((med[k] for k in ("eager", "sdpa") if k in med), default=None)
    cells.append(f"{torch_best / med['ours']:.2f}x" if torch_best else "n/a")
    cells.append(f"{compile_s:.1f}")
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| variant | batch | ours jit (ms) | torch eager (ms) | torch sdpa (ms) "
    "| best torch / ours | our first call (s) |\n"
    "|---|---|---|---|---|---|---|"
)


def machine() -> str:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores; Python {platform.python_version()}, "
        f"jax {jax.__version__}, torch {torch.__version__}, transformers {transformers.__version__}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per block")
    parser.add_argument("--cycles", type=int, default=2, help="blocks per implementation")
    parser.add_argument("--output", type=Path, default=None, help="write a markdown table here")
    parser.add_argument(
        "--cpus",
        type=int,
        nargs="+",
        default=None,
        help="pin the process to these CPU ids (XLA's pool and torch then use that many "
        "threads); default: every core",
    )
    parser.add_argument(
        "--torch-threads", type=int, default=None, help="default: as many as usable cores, as XLA"
    )
    args = parser.parse_args(argv)
    if args.cpus:  # before XLA's CPU client exists, so that its pool fits the mask
        os.sched_setaffinity(0, args.cpus)
    cores = len(os.sched_getaffinity(0))
    args.torch_threads = args.torch_threads or cores
    torch.set_num_threads(args.torch_threads)
    command = "python benchmarks/forward_latency.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    load_before = os.getloadavg()
    start = datetime.datetime.now(datetime.UTC)
    print(machine())
    print(HEADER)
    rows = []
    for name in args.variants:
        rows += bench(name, args.batch_sizes, args.seq_len, args.warmup, args.repeats, args.cycles)
    load_after = os.getloadavg()
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        text = [
            "# Forward latency: ours (JAX, jit) vs transformers (PyTorch), CPU",
            "",
            f"Command: `{command.strip()}`",
            "",
            f"- Machine: {machine()}.",
            f"- Run: {start:%Y-%m-%d %H:%M} UTC; sequence {args.seq_len}; median of "
            f"{args.cycles} blocks x {args.repeats} timed calls per implementation (each block "
            f"after {args.warmup} warm-up calls, blocks cycling ours / eager / sdpa); ± is half "
            f"the range. Usable cores: {cores}"
            + (f" (pinned to CPUs {args.cpus})" if args.cpus else "")
            + f"; torch threads: {args.torch_threads}; XLA: its default pool (one thread per "
            f"usable core, {cores}).",
            f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in load_before)}; "
            f"after: {', '.join(f'{x:.1f}' for x in load_after)}. Other processes share this "
            "machine, so absolute figures are noisy; cycling the blocks spreads it over all three.",
            "- Forward = embeddings + all blocks + pooler, outputs fetched to the host; random "
            "weights; full attention mask; no heads. ibbert_large has no transformers "
            "counterpart (shape error in its MobileBERT class), so only ours is timed.",
            "",
            HEADER,
            *[format_row(r) for r in rows],
            "",
        ]
        args.output.write_text("\n".join(text))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
