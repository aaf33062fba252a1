"""Train the same few steps on several meshes in one process; print the losses as JSON.

Run by tests/train/test_trainer.py with 8 forced host devices.
"""

import json
import sys
import tempfile

import jax

from mbert_jax import recipes
from mbert_jax.train import loop
from mbert_jax.train.config import base_config, model_block
from mbert_jax.train.inputs import synthetic_data_config

LAYOUTS = {
    "single": ((1, 1, 1), 1),
    "data": ((8, 1, 1), 8),
    "fsdp": ((1, 8, 1), 8),
    "tensor": ((2, 1, 4), 8),
    "mixed": ((2, 2, 2), 8),
}


def config(variant: str, accum: int = 1, **overrides):
    c = base_config("pretrain")
    c.model = model_block(variant, **overrides)
    c.data = synthetic_data_config(global_batch_size=16, max_seq_length=16)
    c.train.steps = 3
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.accum_steps = accum
    c.optimizer.learning_rate = 1e-3
    return c


def main(
    variant: str, layouts: list[str], num_layers: int | None = None, matmul_dtype: str | None = None
) -> None:
    out = {}
    for name in layouts:
        (d, f, t), n = LAYOUTS[name]
        c = config(variant, num_layers=num_layers, matmul_dtype=matmul_dtype)
        c.mesh.data, c.mesh.fsdp, c.mesh.tensor = d, f, t
        with tempfile.TemporaryDirectory() as workdir:
            loop.run(c, recipes.build(c), workdir, devices=jax.devices()[:n])
            from mbert_jax.train.logs import read_metrics

            out[name] = [r["objective"] for r in read_metrics(workdir, "train")]
    print("LOSSES " + json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), *map(int, sys.argv[3:4]), *sys.argv[4:5])
