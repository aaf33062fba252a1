"""Run by test_multihost.py: importance scores in one process of several (or alone).

    python multihost_importance.py OUT.npz [PORT NUM_PROCESSES PROCESS_ID]

Scores a fixed random micro classifier over three fixed batches of 8 rows,
this process taking its slice of each (rows [p*8/n, (p+1)*8/n)); the last
row of every batch is padding (`valid` 0), so the processes' slices hold
different numbers of counted rows. Process 0 writes every score to OUT.npz.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mbert_jax.losses import LossSum
from mbert_jax.models import variants
from mbert_jax.models.model import Model, init_params
from mbert_jax.prune import fisher_importance, importance, layer_importance

ROWS = 8


def summed_loss(out, batch):
    ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch["labels"])
    w = batch["valid"].astype(jnp.float32)
    return LossSum(jnp.sum(ce * w), jnp.sum(w))


def global_batches(config):
    rng = np.random.RandomState(3)
    out = []
    for _ in range(3):
        ids = rng.randint(1, config.vocab_size, (ROWS, 12)).astype(np.int32)
        mask = np.ones_like(ids)
        mask[1, 7:] = 0
        valid = np.ones(ROWS, np.int32)
        valid[-1] = 0
        labels = rng.randint(0, config.num_labels, ROWS).astype(np.int32)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels, "valid": valid})
    return out


def main():
    if len(sys.argv) > 2:  # before any computation
        port, count, index = sys.argv[2:5]
        jax.distributed.initialize(f"localhost:{port}", int(count), int(index))
    config = variants.get("tinybert4_micro", num_labels=3, hidden_dropout=0.0)
    model = Model(config, ("classifier",))
    params = jax.device_get(init_params(model, jax.random.PRNGKey(1)))
    n, p = jax.process_count(), jax.process_index()
    per = ROWS // n
    batches = [
        {k: v[p * per : (p + 1) * per] for k, v in b.items()} for b in global_batches(config)
    ]
    michel = importance(model, params, batches, summed_loss, normalize=False)
    fisher = fisher_importance(model, params, batches, summed_loss)
    layers = layer_importance(model, params, batches, summed_loss)
    if p == 0:
        arrays = {"layers": layers}
        for name, scores in (("michel", michel), ("fisher", fisher)):
            for i, (h, m) in enumerate(zip(scores.heads, scores.neurons)):
                arrays[f"{name}_heads_{i}"], arrays[f"{name}_neurons_{i}"] = h, m
        np.savez(sys.argv[1], **arrays)


if __name__ == "__main__":
    main()
