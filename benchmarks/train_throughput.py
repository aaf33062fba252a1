"""Training-step throughput: our jitted steps vs a standard PyTorch loop, side by side.

For each model, on this CPU, side by side in one process per row (a fresh
one for each, so no row inherits the heap of the rows before it):
- ours: the trainer's own MLM + NSP step (`mbert_jax.train.step.make_train_step`
  with the pretraining recipe: forward, backward, AdamW, clipping), and a
  pre-training-distillation step (frozen teacher forward + student step on
  MobileBERT's PD loss);
- PyTorch: transformers' `BertForPreTraining` / `MobileBertForPreTraining` of
  the same config, AdamW, `loss.backward()`, clipping, `optimizer.step()` —
  the standard loop, labels -100 everywhere but the masked positions;
- the matmul peak: a large matmul in JAX, and the fraction of it that our
  step reaches (analytic FLOPs of the step / time).

Each precision in `--precisions` is a pair of equivalents:
- float32: both sides in float32;
- bfloat16 (mixed precision): ours with `matmul_dtype="bfloat16"` (bf16
  operands, float32 accumulation, everything else float32; the teacher too),
  PyTorch with the standard `torch.autocast("cpu", dtype=torch.bfloat16)`
  around the forward and the loss. The peak is then a bf16 x bf16 -> f32 matmul.

    python benchmarks/train_throughput.py --models bert_base,mobilebert --batch 8 --seq 128

Results (with the command) go to benchmarks/results/train_throughput.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from mbert_jax import host_memory
from mbert_jax.distill.mobilebert.recipe import MobileBertRecipe
from mbert_jax.distill.teacher import host_init
from mbert_jax.models import variants
from mbert_jax.models.summary import encoder_flops_per_token, mlm_flops_per_prediction
from mbert_jax.train.config import base_config, model_block
from mbert_jax.train.inputs import synthetic_data_config
from mbert_jax.train.labels import make_labels
from mbert_jax.train.optimizers import make_optimizer
from mbert_jax.train.pretrain import PretrainRecipe
from mbert_jax.train.step import TrainState, make_train_step


def timeit(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(precision: str, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a jitted n x n matmul on `precision` operands, float32 result."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(precision)
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    t = timeit(lambda: f(a).block_until_ready(), repeats)
    return 2 * n**3 / t / 1e9


def step_flops(cfg, batch: int, seq: int, predictions: int) -> float:
    """Analytic FLOPs of one training step (3x forward: forward + 2x backward)."""
    fwd = batch * seq * encoder_flops_per_token(cfg, seq)
    fwd += batch * predictions * mlm_flops_per_prediction(cfg)
    return 3.0 * fwd


def data_config(cfg, batch, seq, predictions):
    return synthetic_data_config(
        vocab_size=cfg.vocab_size,
        global_batch_size=batch,
        max_seq_length=seq,
        max_predictions_per_seq=predictions,
    )


def mixed(precision: str) -> dict:
    """The `ModelConfig` overrides of a precision."""
    return {} if precision == "float32" else {"matmul_dtype": precision}


def ours_pretraining_step(variant: str, batch: int, seq: int, predictions: int, precision: str):
    config = base_config("pretrain")
    config.model = model_block(variant, **mixed(precision))
    config.data = data_config(variants.get(variant), batch, seq, predictions)
    recipe = PretrainRecipe(config)
    stage = recipe.stages()[0]
    params = nn.meta.unbox(recipe.init_params(jax.random.key(0)))
    tx, _ = make_optimizer(config.optimizer, make_labels(params, stage.rules), 1000)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.PRNGKey(1))
    step = jax.jit(make_train_step(recipe, stage, tx), donate_argnums=(0,))
    host = next(recipe.train_data(0, 1))
    data = {k: jnp.asarray(v) for k, v in host.items()}
    holder = [state]

    def run():
        holder[0], m = step(holder[0], data, None)
        jax.block_until_ready(m)

    run.lower = lambda: step.lower(holder[0], data, None)  # for profile_step.py
    return run, host


# transformers' MobileBERT cannot express IB-BERT's attention (queries and keys
# projected from the 512-wide block input while values come from the 1024-wide
# bottleneck: a shape error there), so both sides run the teacher with queries,
# keys and values from the 1024-wide bottleneck (`use_bottleneck_attention`),
# which transformers has; it costs a little more than IB-BERT's attention.
TEACHER_OVERRIDES = {"use_bottleneck_attention": True}


def ours_distillation_step(
    teacher: str, student: str, batch: int, seq: int, predictions: int, precision: str
):
    """The MobileBERT recipe's own PD stage: frozen teacher forward + student MLM-KD + NSP.

    `configs/mobilebert_pkt.py` at full size with synthetic data and a random
    teacher (the cost does not depend on the values), built as the trainer
    builds it; the teacher is the recipe's (`teacher` must be its variant).
    """
    config = common.mobilebert("pkt", f"data=synthetic,student={student}")
    if config.teacher.variant != teacher:
        raise SystemExit(f"the PD recipe's teacher is {config.teacher.variant}, not {teacher}")
    config.teacher.overrides.update(TEACHER_OVERRIDES)
    config.teacher.overrides.update(mixed(precision))
    config.student.overrides.update(mixed(precision))
    config.data.update(
        global_batch_size=batch, max_seq_length=seq, max_predictions_per_seq=predictions
    )
    recipe = MobileBertRecipe(config)
    stage = recipe.stages()[-1]
    assert stage.name == "pd", stage.name
    shapes = nn.meta.unbox(jax.eval_shape(recipe.init_params, jax.random.key(0)))
    params = jax.tree.map(jnp.asarray, recipe.initial_overrides(host_init(shapes, 0.02, seed=0)))
    t_params = jax.tree.map(jnp.asarray, recipe.load_teacher_params())
    tx, _ = make_optimizer(config.optimizer, make_labels(params, stage.rules), stage.steps)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key(1))
    step = jax.jit(make_train_step(recipe, stage, tx), donate_argnums=(0,))
    host = next(recipe.train_data(0, 1))
    data = {k: jnp.asarray(v) for k, v in host.items()}
    holder = [state]

    def run():
        holder[0], m = step(holder[0], data, t_params)
        jax.block_until_ready(m)

    return run, host


def torch_model(variant: str, **overrides):
    import torch
    import transformers

    from mbert_jax.models import hf

    # transformers has no -6 mask value; the large negative costs the same.
    cfg = variants.get(variant, attention_mask_value=None, **overrides)
    d = hf.config_to_hf(cfg, heads=("mlm", "nsp"))
    mobile = d.pop("model_type") == "mobilebert"
    d.pop("architectures")
    hf_config = (transformers.MobileBertConfig if mobile else transformers.BertConfig)(**d)
    cls = transformers.MobileBertForPreTraining if mobile else transformers.BertForPreTraining
    torch.manual_seed(0)
    return cls(hf_config)


def torch_batch(host):
    import torch

    ids = torch.as_tensor(host["input_ids"], dtype=torch.long)
    labels = torch.full_like(ids, -100)
    rows = np.repeat(np.arange(ids.shape[0])[:, None], host["masked_lm_positions"].shape[1], 1)
    w = host["masked_lm_weights"] > 0
    labels[rows[w], host["masked_lm_positions"][w]] = torch.as_tensor(
        host["masked_lm_ids"][w], dtype=torch.long
    )
    return dict(
        input_ids=ids,
        attention_mask=torch.as_tensor(host["attention_mask"], dtype=torch.long),
        token_type_ids=torch.as_tensor(host["token_type_ids"], dtype=torch.long),
        labels=labels,
        next_sentence_label=torch.as_tensor(host["next_sentence_labels"], dtype=torch.long),
    )


def autocast(precision: str):
    """PyTorch's standard mixed precision for `precision` (none for float32)."""
    import torch

    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=getattr(torch, precision))


def torch_pretraining_step(variant: str, host, precision: str):
    import torch

    model = torch_model(variant)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    b = torch_batch(host)

    def run():
        opt.zero_grad(set_to_none=True)
        with autocast(precision):
            loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return run


def torch_distillation_step(teacher: str, student: str, host, precision: str):
    import torch

    t = torch_model(teacher, **TEACHER_OVERRIDES).eval()
    s = torch_model(student).train()
    opt = torch.optim.AdamW(s.parameters(), lr=1e-4, weight_decay=0.01)
    b = torch_batch(host)
    mask = b["labels"] != -100

    def run():
        opt.zero_grad(set_to_none=True)
        with autocast(precision):
            with torch.no_grad():
                t_logits = t(
                    **{k: v for k, v in b.items() if k not in ("labels", "next_sentence_label")}
                ).prediction_logits[mask]
            out = s(**{k: v for k, v in b.items() if k != "labels"})
            target = 0.5 * torch.nn.functional.one_hot(
                b["labels"][mask], t_logits.shape[-1]
            ) + 0.5 * t_logits.float().softmax(-1)
            kd = -(target * out.prediction_logits[mask].float().log_softmax(-1)).sum(-1).mean()
            nsp = torch.nn.functional.cross_entropy(
                out.seq_relationship_logits, b["next_sentence_label"]
            )
        (kd + nsp).backward()
        torch.nn.utils.clip_grad_norm_(s.parameters(), 1.0)
        opt.step()

    return run


def measure(row: tuple[str, str, str], args) -> tuple[float, float, float]:
    """One row, (ours s, PyTorch s, analytic FLOPs of our step), in this process.

    `row` is (precision, "MLM+NSP" or "PD distillation", variant or
    "teacher:student"). `main` calls it in a fresh process per row.
    """
    host_memory.keep_freed_memory(default=True)  # before JAX starts its backend
    import torch

    torch.set_num_threads(args.threads)
    precision, kind, name = row
    sizes = (args.batch, args.seq, args.predictions)
    if kind == "MLM+NSP":
        ours, host = ours_pretraining_step(name, *sizes, precision)
        theirs = lambda: torch_pretraining_step(name, host, precision)
        flops = step_flops(variants.get(name), *sizes)
    else:
        teacher, student = name.split(":")
        ours, host = ours_distillation_step(teacher, student, *sizes, precision)
        theirs = lambda: torch_distillation_step(teacher, student, host, precision)
        # The teacher runs forward only: a third of a training step's FLOPs.
        flops = (
            step_flops(variants.get(student), *sizes)
            + step_flops(variants.get(teacher), *sizes) / 3
        )
    t_ours = timeit(ours, args.repeats)  # before PyTorch's model exists, as it always was
    return t_ours, timeit(theirs(), args.repeats), flops


def in_fresh_process(fn, *fn_args):
    """`fn(*fn_args)` in a new Python process (spawned: nothing inherited)."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *fn_args).result()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="bert_base,mobilebert")
    p.add_argument("--distill", default="ibbert_large:mobilebert")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--predictions", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default="benchmarks/results/train_throughput.md")
    args = p.parse_args()
    precisions = args.precisions.split(",")
    if set(precisions) - {"float32", "bfloat16"}:
        p.error(f"--precisions: float32 and/or bfloat16, got {args.precisions!r}")
    # Every row gets it in its own process (MBERT_JAX_KEEP_HOST_MEMORY=0: none does).
    kept = host_memory.keep_freed_memory(default=True)
    import torch

    peaks = {precision: matmul_peak(precision) for precision in precisions}
    tokens = args.batch * args.seq
    rows = []
    for precision in precisions:
        todo = [(precision, "MLM+NSP", v) for v in args.models.split(",") if v]
        if args.distill:
            todo.append((precision, "PD distillation", args.distill))
        for row in todo:
            # A fresh process per row: with freed memory kept (one arena, never
            # trimmed), a row's heap would otherwise depend on the rows before it.
            t_ours, t_torch, flops = in_fresh_process(measure, row, args)
            name = row[2].replace(":", " -> ")
            rows.append((precision, row[1], name, t_ours, t_torch, flops))
            print(f"{precision} {row[1]} {name}: ours {t_ours:.3f} s, PyTorch {t_torch:.3f} s")

    peak_text = ", ".join(
        f"{'f32' if k == 'float32' else 'bf16 x bf16 -> f32'} {v:.1f}" for k, v in peaks.items()
    )
    lines = [
        f"Command: `python benchmarks/train_throughput.py --models {args.models} "
        f"--distill {args.distill} --precisions {args.precisions} "
        f"--batch {args.batch} --seq {args.seq}`",
        "",
        f"CPU: {os.cpu_count()} cores, {args.threads} threads; jax {jax.__version__}, "
        f"torch {torch.__version__}; matmul peak (2048^3, JAX), GFLOP/s: {peak_text}; "
        f"freed host memory kept for reuse (`mbert_jax.host_memory`): {'yes' if kept else 'no'}.",
        f"Batch {args.batch} x {args.seq} tokens, {args.predictions} masked positions per row; "
        "median step time. bfloat16: ours bf16 matmul operands with float32 accumulation, "
        "PyTorch `torch.autocast`; % of peak against that precision's peak.",
        "",
        "| precision | step | model | ours (s) | ours tokens/s | PyTorch (s) | PyTorch tokens/s "
        "| speed-up | ours GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for precision, kind, name, t_o, t_t, flops in rows:
        lines.append(
            f"| {precision} | {kind} | {name} | {t_o:.3f} | {tokens / t_o:,.0f} | {t_t:.3f} | "
            f"{tokens / t_t:,.0f} | {t_t / t_o:.2f}x | {flops / t_o / 1e9:.1f} | "
            f"{100 * flops / t_o / 1e9 / peaks[precision]:.0f}% |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
