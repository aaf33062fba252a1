"""`mbert-jax plan`: per-device memory and FLOPs of one train step on a mesh that is not here.

    mbert-jax plan --config configs/pretrain_ibbert.py --devices 256 \\
        --config.mesh.data=16 --config.mesh.fsdp=16

The step is compiled ahead of time for `--devices` simulated CPU devices
(`--xla_force_host_platform_device_count`), from abstract inputs only: no
parameter is allocated and no data is read (the data block is replaced by
random batches of the same shapes). XLA's SPMD partitioner splits the step
exactly as it would on the pod: the per-device argument sizes (parameters,
optimizer state, teacher, batch) and the FLOPs are those of the real job.
The temporaries are XLA:CPU's buffer assignment, an upper bound for a TPU or
GPU: its scheduler does not exploit rematerialization (measured here: with
`--config.model.overrides.remat=True` the FLOPs grow by the recomputation
while the CPU temp size stays put; a plain `jax.checkpoint` MLP shows the
same), so read it as the no-remat activation memory. This is how to size a
pod job before paying for it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import ml_collections

CHILD_ENV = "MBERT_JAX_PLAN_CHILD"


def _gib(n: float) -> str:
    return f"{n / 2**30:10.3f} GiB"


def _flops(n: float) -> str:
    from mbert_jax.models.summary import format_flops

    return f"  {format_flops(n)}"


def plan_config(config) -> ml_collections.ConfigDict:
    """The config with its data replaced by synthetic batches of the same shapes."""
    from mbert_jax.distill.teacher import read_config
    from mbert_jax.models.variants import from_block
    from mbert_jax.train.inputs import synthetic_data_config

    c = ml_collections.ConfigDict(config.to_dict())
    model_block = c.get("student") or c.get("model")
    vocab = from_block(model_block).vocab_size
    if c.get("teacher") and c.teacher.get("path"):  # the data must use the teacher's vocabulary
        vocab = read_config(c.teacher).vocab_size
    d = c.data
    c.data = synthetic_data_config(
        vocab_size=vocab,
        global_batch_size=d.global_batch_size,
        max_seq_length=d.max_seq_length,
        max_predictions_per_seq=d.get("max_predictions_per_seq", 20),
        nsp=d.get("nsp", True),
    )
    return c


def plan(config, stage_index: int = 0) -> dict:
    """Compile one train step of `stage_index` on all devices; return the figures."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from mbert_jax import recipes
    from mbert_jax.parallel import sharding as sharding_lib
    from mbert_jax.train.loop import Trainer

    config = plan_config(config)
    recipe = recipes.build(config)
    trainer = Trainer(config, recipe, workdir=None)
    stage = trainer.stages[stage_index]
    with jax.set_mesh(trainer.mesh), nn.logical_axis_rules(trainer.rules):
        boxed, param_shardings = trainer._abstract_params()
        teacher = recipe.teacher()
        teacher_abstract = teacher_shardings = None
        if teacher is not None:
            teacher_shardings = sharding_lib.tree_shardings(teacher, trainer.mesh, trainer.rules)
            teacher_abstract = jax.tree.map(
                lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                sharding_lib.unbox(teacher),
                teacher_shardings,
            )
        fns = trainer.stage_functions(stage, boxed, param_shardings, teacher_shardings)
        abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            jax.eval_shape(lambda: trainer._fresh_state(boxed, fns.tx)),
            fns.state_shardings,
        )
        host_batch = next(recipe.train_data(0, 1))
        batch = {
            k: jax.ShapeDtypeStruct(
                v.shape,
                v.dtype,
                sharding=sharding_lib.batch_sharding(trainer.mesh, trainer.rules, v.ndim),
            )
            for k, v in host_batch.items()
        }
        compiled = fns.train_step.lower(abstract_state, batch, teacher_abstract).compile()
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    params = sum(x.size for x in jax.tree.leaves(sharding_lib.unbox(boxed)))
    tokens = int(jnp.prod(jnp.array(host_batch["input_ids"].shape)))
    args = mem.argument_size_in_bytes
    temp = mem.temp_size_in_bytes
    out = mem.output_size_in_bytes - mem.alias_size_in_bytes
    return {
        "devices": jax.device_count(),
        "mesh": dict(trainer.mesh.shape),
        "stage": stage.name,
        "trainable_and_frozen_params": params,
        "tokens_per_step": tokens,
        "argument_bytes_per_device": args,
        "temp_bytes_per_device": temp,
        "output_bytes_per_device": out,
        "peak_bytes_per_device": args + temp + out,
        "flops_per_device": float(cost.get("flops", float("nan"))),
    }


def report(figures: dict) -> str:
    f = figures
    return "\n".join(
        [
            f"plan: stage {f['stage']!r} on {f['devices']} devices, mesh {f['mesh']}",
            f"  parameters (student + extras)   {f['trainable_and_frozen_params'] / 1e6:10.2f} M",
            f"  tokens per step                 {f['tokens_per_step']:>12,}",
            "  per device:",
            f"    arguments (params, optimizer, batch)      {_gib(f['argument_bytes_per_device'])}",
            f"    temporaries (activations, gradients)      {_gib(f['temp_bytes_per_device'])}",
            f"    outputs not aliased to inputs             {_gib(f['output_bytes_per_device'])}",
            f"    peak estimate                             {_gib(f['peak_bytes_per_device'])}",
            f"    FLOPs per step                            {_flops(f['flops_per_device'])}",
        ]
    )


def plan_main(argv: list[str]) -> int:
    from absl import flags

    from mbert_jax.train.cli import _parse, define_config_flag, normalize_argv

    argv = normalize_argv(argv)
    fv = flags.FlagValues()
    define_config_flag(fv, argv)
    flags.DEFINE_integer("devices", None, "number of (simulated) devices", flag_values=fv)
    flags.DEFINE_integer("stage", 0, "index of the stage to compile", flag_values=fv)
    _parse(fv, "mbert-jax plan", argv, required=("config", "devices"), doc=__doc__)
    if os.environ.get(CHILD_ENV) != "1":
        # Devices must be forced before JAX starts: run again in a child process.
        env = dict(os.environ, **{CHILD_ENV: "1"})
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={fv.devices}"
        ).strip()
        env["JAX_PLATFORMS"] = "cpu"
        return subprocess.call([sys.executable, "-m", "mbert_jax", "plan", *argv], env=env)
    import jax

    if jax.device_count() != fv.devices:
        raise SystemExit(f"expected {fv.devices} devices, JAX has {jax.device_count()}")
    print(report(plan(fv.config, fv.stage)))
    return 0
