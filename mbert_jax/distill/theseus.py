"""BERT-of-Theseus (Xu et al., 2020): progressive module replacing.

The predecessor (a model directory fine-tuned on the task, with the head of
its kind: the classifier for classification, regression and pairs, the
token classifier for tagging, the span head for SQuAD; `TaskSetup`) is cut
into `n` modules of `c = L / n` consecutive layers (12 -> 6 modules of 2).
The successor has one layer per module, each initialized from a predecessor
layer, and shares the predecessor's embeddings, pooler and task head
(copied, frozen). For every batch and module i a draw r_i ~ Bernoulli(p)
picks the successor's layer (r_i = 1) or the predecessor's c layers:

    y_i = r_i * scc_i(y_{i-1}) + (1 - r_i) * prd_i(y_{i-1})

written as one `jax.lax.cond` per module, so only the chosen branch runs
(a select would run both); the task head runs on the last module's output
(`Model.apply_heads`). The objective is the task loss alone, the kind's
fine-tuning loss (`train.forward.TASK_KINDS`: cross-entropy, MSE for
regression, per-word cross-entropy for tagging, start/end cross-entropy for
SQuAD). Gradients reach only the successor layers: the predecessor is the
trainer's teacher argument, passed through `stop_gradient`, and the shared
embeddings, pooler and head are frozen by the stage rules (they get no
update and carry no optimizer state).

Replacement rate, with t the global step:
- "linear" (the paper's curriculum): p(t) = min(1, k t + b), k = 6e-4, b = 0.3;
- "constant": p(t) = p0 while t < `replace_steps`, then 1.
Stage "replace" runs `replace_steps` steps (for "linear", 0 means until p
reaches 1: ceil((1 - b) / k)); stage "successor" fine-tunes the successor
alone (p = 1: no predecessor runs at all). Evaluation (the task's official
metrics, as in fine-tuning), prediction and the saved model are the
successor alone: a plain `Model` with `n` layers and the shared embeddings
and head.

The predecessor is `config.teacher` (`teacher.teacher_block`, a fine-tuned
model directory); `dtype="bfloat16"` holds it and runs its modules in bf16
(the successor computes in its own dtype: the stored config's, or
`theseus.successor_overrides.dtype`; the copies it starts from are float32).

Successor initialization (`theseus.init_layers`): "first" copies
predecessor layers 0..n-1 (the official `run_glue.py`), "module_first" /
"module_last" the first / last layer of each module, or an explicit list of
0-based predecessor layers.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax.distill.task_data import TaskSetup
from mbert_jax.losses import LossSum
from mbert_jax.models import Model
from mbert_jax.models.attention import make_attention_mask
from mbert_jax.models.config import TUNABLE_FIELDS
from mbert_jax.models.model import dummy_inputs
from mbert_jax.train.forward import evaluator_outputs, task_forward, task_metrics, task_outputs
from mbert_jax.train.recipe import Stage, TaskDataRecipe

SCHEDULES = ("linear", "constant")
INIT_KINDS = ("first", "module_first", "module_last")
SUCCESSOR_LAYERS = r"encoder/layers_\d+/.*"
# Only the successor layers train; the shared embeddings, pooler and task head are frozen.
SUCCESSOR_RULES = ((SUCCESSOR_LAYERS, 1.0), (".*", None))


@dataclasses.dataclass(frozen=True)
class ModuleOptions:
    """`Stage.options` of a Theseus stage: whether predecessor modules are drawn (True) or the
    successor runs alone (False)."""

    replace: bool


def successor_init_layers(spec, num_modules: int, per_module: int) -> tuple[int, ...]:
    """0-based predecessor layer copied into each successor layer."""
    if isinstance(spec, str):
        if spec not in INIT_KINDS:
            raise ValueError(f"config.theseus.init_layers={spec!r}: one of {INIT_KINDS} or a list")
        if spec == "first":
            return tuple(range(num_modules))
        offset = 0 if spec == "module_first" else per_module - 1
        return tuple(i * per_module + offset for i in range(num_modules))
    layers = tuple(int(x) for x in spec)
    total = num_modules * per_module
    if len(layers) != num_modules or any(not 0 <= x < total for x in layers):
        raise ValueError(
            f"config.theseus.init_layers={list(layers)}: need {num_modules} predecessor layers "
            f"in 0..{total - 1}"
        )
    return layers


def replace_rate(step, schedule: str, *, k: float, b: float, rate: float, replace_steps: int):
    """p(t): "linear" min(1, k t + b), or "constant" `rate` before `replace_steps`, then 1."""
    t = jnp.asarray(step, jnp.float32)
    if schedule == "linear":
        return jnp.minimum(1.0, k * t + b)
    return jnp.where(t < replace_steps, rate, 1.0)


class ModuleReplacer:
    """The mixed forward: successor modules where drawn, predecessor modules elsewhere.

    Args:
      successor: a `Model` with the task head and one layer per module.
      predecessor: the predecessor `Model` (same config, `num_modules * c` layers).
      head: the task head (default: the successor's only head).
    """

    def __init__(self, successor: Model, predecessor: Model, head: str | None = None):
        n, total = successor.config.num_layers, predecessor.config.num_layers
        if total % n:
            raise ValueError(f"{total} predecessor layers do not split into {n} modules")
        self.successor, self.predecessor = successor, predecessor
        self.num_modules, self.per_module = n, total // n
        self.head = head or successor.heads[0]

    def logits(self, params, predecessor_params, batch, choose, *, train, rng=None):
        """The classifier's logits of `outputs` (a successor with the "classifier" head)."""
        return self.outputs(params, predecessor_params, batch, choose, train=train, rng=rng)[
            "logits"
        ]

    def outputs(self, params, predecessor_params, batch, choose, *, train, rng=None):
        """The head's outputs (by `ModelOutput` field, e.g. `{"logits": ...}`) with module i
        from the successor where `choose[i]`, else from the predecessor.

        Args:
          params: successor parameters (a `Model` with `num_modules` layers).
          predecessor_params: the predecessor's (no gradient flows into them).
          batch: task batch.
          choose: [num_modules] bool.
          train: dropout on (needs `rng`).
        """
        pred_params = jax.lax.stop_gradient(predecessor_params)
        det = not train
        rng = jax.random.PRNGKey(0) if rng is None else rng

        def run(model, p, fn, *args, key):
            return model.apply(
                {"params": p}, *args, method=fn, rngs={"dropout": key} if train else None
            )

        x = run(
            self.successor,
            params,
            lambda m, ids, types, pos: m.encoder.embeddings(ids, types, pos, det),
            batch["input_ids"],
            batch["token_type_ids"],
            batch.get("position_ids"),
            key=jax.random.fold_in(rng, 1000),
        )
        mask = make_attention_mask(batch["attention_mask"])
        for i in range(self.num_modules):
            key = jax.random.fold_in(rng, i)

            def successor_module(h, i=i, key=key):
                fn = lambda m, h, mask: m.encoder.layers[i](h, mask, det)[0]
                return run(self.successor, params, fn, h, mask, key=key)

            def predecessor_module(h, i=i, key=key):
                out = h
                for j in range(i * self.per_module, (i + 1) * self.per_module):
                    fn = lambda m, h, mask, j=j: m.encoder.layers[j](h, mask, det)[0]
                    out = run(
                        self.predecessor, pred_params, fn, out, mask, key=jax.random.fold_in(key, j)
                    )
                # A bf16 predecessor (config.teacher.dtype): both branches give the stream's dtype.
                return out.astype(h.dtype)

            x = jax.lax.cond(choose[i], successor_module, predecessor_module, x)
        return run(
            self.successor,
            params,
            lambda m, h: m.apply_heads(h, m.encoder.pool(h), (self.head,), deterministic=det),
            x,
            key=jax.random.fold_in(rng, 1001),
        )


def draw_modules(rng: jax.Array, p, num_modules: int) -> jax.Array:
    """[num_modules] bool: r_i ~ Bernoulli(p), True = the successor module."""
    return jax.random.bernoulli(rng, p, (num_modules,))


def successor_from_predecessor(
    predecessor: dict, init_layers: tuple[int, ...], head: str = "classifier"
) -> dict:
    """Successor parameters: the predecessor's embeddings, pooler and task `head`, and
    `layers_i` = predecessor `layers_{init_layers[i]}`."""
    enc = {k: v for k, v in predecessor["encoder"].items() if not k.startswith("layers_")}
    for i, j in enumerate(init_layers):
        enc[f"layers_{i}"] = predecessor["encoder"][f"layers_{j}"]
    return {"encoder": enc, head: predecessor[head]}


class TheseusRecipe(TaskDataRecipe):
    """Stages "replace" (module replacing) and "successor" (successor-only fine-tuning)."""

    loss_uses_step = True

    def __init__(self, config):
        self.config = config
        t = config.theseus
        if t.schedule not in SCHEDULES:
            raise ValueError(f"config.theseus.schedule={t.schedule!r}: one of {SCHEDULES}")
        self.task = TaskSetup(config.data, config.teacher.path)
        self.kind, self.heads = self.task.kind, (self.task.head,)
        self.predecessor_spec = self.task.load_teacher(config.teacher)
        p_cfg = self.predecessor_spec.config
        n = int(t.num_modules)
        if p_cfg.layer_sharing != "none":
            raise ValueError("the predecessor's layers are shared (ALBERT): nothing to replace")
        if n < 1 or p_cfg.num_layers % n:
            raise ValueError(
                f"config.theseus.num_modules={n} does not divide the predecessor's "
                f"{p_cfg.num_layers} layers into equal modules"
            )
        self.num_modules, self.per_module = n, p_cfg.num_layers // n
        self.init_layers = successor_init_layers(
            t.init_layers if isinstance(t.init_layers, str) else tuple(t.init_layers),
            n,
            self.per_module,
        )
        overrides = dict(t.get("successor_overrides", {}) or {})
        bad = sorted(set(overrides) - set(TUNABLE_FIELDS))
        if bad:
            raise ValueError(f"config.theseus.successor_overrides may set only {TUNABLE_FIELDS}")
        self.successor_config = p_cfg.replace(num_layers=n, **overrides)
        self.successor = Model(self.successor_config, heads=self.heads)
        # The predecessor runs in config.teacher.dtype (its parameters are held in it).
        run = {k: v for k, v in overrides.items() if k != "dtype"}
        self.predecessor = Model(self.predecessor_spec.run_config.replace(**run), self.heads)
        self.replacer = ModuleReplacer(self.successor, self.predecessor)
        self.schedule = dict(
            schedule=t.schedule,
            k=float(t.k),
            b=float(t.b),
            rate=float(t.rate),
            replace_steps=self.replace_steps(),
        )

    def replace_steps(self) -> int:
        t = self.config.theseus
        if int(t.replace_steps) > 0:
            return int(t.replace_steps)
        if t.schedule == "linear":
            if float(t.k) <= 0:
                raise ValueError("config.theseus.k must be > 0 for the linear schedule")
            return max(1, math.ceil((1.0 - float(t.b)) / float(t.k)))
        raise ValueError("config.theseus.replace_steps: the constant schedule needs a length")

    def stages(self) -> list[Stage]:
        t = self.config.theseus
        rules = SUCCESSOR_RULES
        stages = [Stage("replace", self.replace_steps(), {"loss": 1.0}, rules, ModuleOptions(True))]
        if int(t.successor_steps) > 0:
            last = ((".*", 1.0),) if t.train_all_in_successor_stage else rules
            stages.append(
                Stage(
                    "successor", int(t.successor_steps), {"loss": 1.0}, last, ModuleOptions(False)
                )
            )
        return stages

    # ------------------------------------------------------------------ params
    def init_params(self, rng):
        return self.successor.init(rng, *dummy_inputs(self.successor_config))["params"]

    def initial_overrides(self, params):
        new = successor_from_predecessor(
            self.predecessor_spec.host_params("float32"), self.init_layers, self.task.head
        )
        if jax.tree.map(np.shape, new) != jax.tree.map(np.shape, params):
            raise ValueError("the successor's parameters do not match the predecessor's layout")
        return jax.tree.map(jnp.asarray, new)

    def teacher(self):
        return self.predecessor_spec.abstract()

    def load_teacher_params(self):
        return self.predecessor_spec.host_params()

    def successor_outputs(self, params, batch, *, train, rng=None):
        out = task_forward(self.successor, params, batch, train=train, rng=rng)
        return task_outputs(out, self.kind)

    def loss(self, stage, params, teacher_params, batch, rng, step=0):
        if stage.options.replace:
            draw_key, rng = jax.random.split(rng)
            p = replace_rate(step, **self.schedule)
            choose = draw_modules(draw_key, p, self.num_modules)
            outputs = self.replacer.outputs(
                params, teacher_params, batch, choose, train=True, rng=rng
            )
        else:
            p, choose = jnp.ones(()), jnp.ones((self.num_modules,), bool)
            outputs = self.successor_outputs(params, batch, train=True, rng=rng)
        metrics = task_metrics(outputs, batch, self.kind)
        one = jnp.ones((), jnp.float32)
        metrics["replace_rate"] = LossSum(jnp.asarray(p, jnp.float32), one)
        metrics["replaced_modules"] = LossSum(
            jnp.sum(choose.astype(jnp.float32)), jnp.asarray(self.num_modules, jnp.float32)
        )
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return task_metrics(self.successor_outputs(params, batch, train=False), batch, self.kind)

    def predict(self, params, batch) -> dict[str, jax.Array]:
        return evaluator_outputs(self.successor_outputs(params, batch, train=False), self.kind)

    def final_model(self, params: Any):
        return self.successor_config, self.heads, params
