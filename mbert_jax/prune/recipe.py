"""Recipe "prune": one-shot structured pruning of a fine-tuned classifier, then recovery
distillation from the unpruned model.

From the fine-tuned model directory `config.init_from` (a classifier, e.g.
WORKDIR/model of configs/finetune.py) on the task of `config.data`:

1. importance: head and FFN-neuron importance (`prune.importance`, Michel
   et al. 2019: mean |d loss / d gate|, normalized per layer) over the first
   `prune.importance_batches` training batches of the task, with the
   classifier's cross-entropy;
2. choice (`choose_heads`, `choose_neurons`, `layers_kept`):
   - `prune.layers`: blocks dropped first: "" none, "every_other" the
     odd-numbered blocks 1, 3, 5, ... (Fan et al. 2019, "Reducing
     Transformer Depth on Demand"), or a list of block indices ("1,3" from
     the command line);
   - `prune.heads`: the fraction of the kept blocks' heads removed,
     floor(fraction x heads), ranked globally over the blocks (normalized
     scores are comparable across layers), each block keeping its best head;
   - `prune.neurons`: the fraction of each kept block's FFN neurons removed,
     floor(fraction x width) per block, the lowest-scored ones (every block
     keeps one width, so a model pruned only in neurons and blocks still
     exports to transformers);
3. `prune.prune` slices the smaller dense model (`ModelConfig.layer_heads`,
   `layer_intermediate_sizes`); the kept heads and widths per block and the
   parameter count before / after are printed;
4. recovery: one stage of `train.steps` steps training the whole pruned
   model on `kd_weight x KD + ce_weight x CE`: KD the logit distillation of
   `losses/logits.py` against the frozen unpruned model (`prune.kd`:
   "kl", the default, or "soft_cross_entropy", at `prune.temperature`, times T^2), CE the
   hard-label cross-entropy (metric "loss").

Evaluation is fine-tuning's (the task's official metrics over the dev split)
plus the KD term; the evaluations also report `params` (the pruned model's
parameter count) and `unpruned_params`. A run with `train.steps=0` evaluates
the pruned model before recovery. WORKDIR/model is the pruned, recovered
model. One-shot only: iterative pruning (prune, recover, prune again) is a
chain of runs, each `init_from` the last one's WORKDIR/model (the teacher is
then the last pruned model, not the original).

One process only (each process would score its own training batches).
Every target is checked before anything compiles (a fraction outside [0, 1),
a block out of range, a head fraction that would empty a block, stacked FFNs
or shared layers), with one-line errors naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax import losses
from mbert_jax.distill.task_data import TaskSetup
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.models import Model
from mbert_jax.models.model import dummy_inputs
from mbert_jax.prune.importance import importance
from mbert_jax.prune.structure import prune
from mbert_jax.train.forward import evaluator_outputs, task_forward, task_metrics, task_outputs
from mbert_jax.train.recipe import Stage, TaskDataRecipe

KD_LOSSES = {"soft_cross_entropy": losses.soft_cross_entropy, "kl": losses.kl_divergence}
EVERY_OTHER = "every_other"


def fraction(value, field: str) -> float:
    """A sparsity in [0, 1), or a ValueError naming `config.<field>`."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"config.{field}={value!r}: a fraction in [0, 1)") from None
    if not 0.0 <= f < 1.0 or math.isnan(f):
        raise ValueError(f"config.{field}={value!r}: a fraction in [0, 1) (the share removed)")
    return f


def layers_kept(spec, num_layers: int) -> list[int]:
    """The blocks kept when `spec` (`prune.layers`) names those dropped.

    `spec`: "" / None (none), "every_other" (1, 3, 5, ...), a comma list "1,3",
    or a sequence of ints.
    """
    field = "config.prune.layers"
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        drop: Sequence = ()
    elif isinstance(spec, str) and spec.strip() == EVERY_OTHER:
        drop = range(1, num_layers, 2)
    else:
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        try:
            drop = [int(str(x).strip()) for x in items]
        except ValueError:
            raise ValueError(
                f"{field}={spec!r}: '', {EVERY_OTHER!r} or a list of block indices"
            ) from None
    drop = list(drop)
    bad = [i for i in drop if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{field}={spec!r}: blocks {bad} are not in [0, {num_layers})")
    if len(set(drop)) != len(drop):
        raise ValueError(f"{field}={spec!r}: a block is named twice")
    kept = [i for i in range(num_layers) if i not in set(drop)]
    if not kept:
        raise ValueError(f"{field}={spec!r}: drops all {num_layers} blocks")
    return kept


def heads_removed(head_counts: Sequence[int], heads_fraction: float) -> int:
    """floor(fraction x heads) over the kept blocks, checked to leave each block a head."""
    total = sum(head_counts)
    remove = math.floor(heads_fraction * total + 1e-9)
    most = total - len(head_counts)
    if remove > most:
        raise ValueError(
            f"config.prune.heads={heads_fraction}: removes {remove} of the {total} heads of "
            f"{len(head_counts)} blocks, but each block keeps at least one head (at most "
            f"{most}, a fraction below {(most + 1) / total:.4g}); drop blocks with "
            "config.prune.layers instead"
        )
    return remove


def choose_heads(scores: Sequence[np.ndarray], layers: Sequence[int], heads_fraction: float):
    """Block -> the heads kept (sorted): the lowest-scored heads of `layers` removed globally,
    each block keeping its best one; ties go to the earlier block and head."""
    remove = heads_removed([len(scores[layer]) for layer in layers], heads_fraction)
    candidates = []
    for layer in layers:
        s = np.asarray(scores[layer])
        best = int(np.argmax(s))
        candidates += [(float(s[h]), layer, h) for h in range(len(s)) if h != best]
    removed = {(layer, h) for _, layer, h in sorted(candidates)[:remove]}
    return {
        layer: [h for h in range(len(scores[layer])) if (layer, h) not in removed]
        for layer in layers
    }


def choose_neurons(scores: Sequence[np.ndarray], layers: Sequence[int], neurons_fraction: float):
    """Block -> the FFN neurons kept (sorted): floor(fraction x width) lowest-scored removed
    per block; ties go to the earlier neuron."""
    out = {}
    for layer in layers:
        s = np.asarray(scores[layer]).reshape(-1)
        keep = len(s) - math.floor(neurons_fraction * len(s) + 1e-9)
        order = np.argsort(-s, kind="stable")  # best first; equal scores: lower index first
        out[layer] = sorted(int(i) for i in order[:keep])
    return out


def count_params(params) -> int:
    """The number of parameters of a tree (the sum of its arrays' sizes)."""
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


class PruneRecipe(TaskDataRecipe):
    """Importance, one-shot pruning to the targets, then one recovery stage of distillation."""

    def __init__(self, config):
        self.config = config
        p = config.prune
        # Targets first: a bad one fails before any data is read or anything compiles.
        self.heads_fraction = fraction(p.heads, "prune.heads")
        self.neurons_fraction = fraction(p.neurons, "prune.neurons")
        if p.kd not in KD_LOSSES:
            raise ValueError(f"config.prune.kd={p.kd!r}: one of {sorted(KD_LOSSES)}")
        if not float(p.temperature) > 0:
            raise ValueError(f"config.prune.temperature={p.temperature}: must be > 0")
        if int(p.importance_batches) < 1:
            raise ValueError(f"config.prune.importance_batches={p.importance_batches}: >= 1")
        if float(p.kd_weight) < 0 or float(p.ce_weight) < 0 or not (p.kd_weight or p.ce_weight):
            raise ValueError(
                "config.prune.kd_weight / ce_weight: non-negative, at least one of them > 0"
            )
        if jax.process_count() > 1:
            raise ValueError(
                f"the prune recipe runs in one process (here {jax.process_count()}): each "
                "process would score its own batches and could choose another structure"
            )
        if not config.get("init_from"):
            raise ValueError(
                "config.init_from: the fine-tuned model directory to prune (WORKDIR/model of "
                "configs/finetune.py)"
            )
        self.task = TaskSetup(config.data, config.init_from)
        self.kind, self.heads = self.task.kind, (self.task.head,)
        if self.kind != "classification":
            raise ValueError(
                f"config.data.task={config.data.task}: task kind {self.kind!r}; the prune "
                "recipe distils classifier logits (classification tasks only)"
            )
        block = teacher_block(path=str(config.init_from))
        self.teacher_spec = self.task.load_teacher(block, what="init_from")
        t_cfg = self.teacher_spec.config
        if t_cfg.layer_sharing != "none":
            raise ValueError(
                f"config.init_from={config.init_from}: ModelConfig.layer_sharing="
                f"{t_cfg.layer_sharing!r}; one shared block cannot keep other heads per layer"
            )
        if self.neurons_fraction and t_cfg.num_feedforward_networks != 1:
            raise ValueError(
                f"config.prune.neurons={p.neurons}: the model has ModelConfig."
                f"num_feedforward_networks={t_cfg.num_feedforward_networks} stacked FFNs, "
                "whose neurons are unrelated; prune its heads and blocks only (neurons=0)"
            )
        self.keep_layers = layers_kept(p.get("layers", ""), t_cfg.num_layers)
        heads_removed([t_cfg.heads_at(i) for i in self.keep_layers], self.heads_fraction)

        self.teacher_model = Model(self.teacher_spec.run_config, heads=self.heads)
        teacher = self.teacher_spec.host_params("float32")
        self.unpruned_params = count_params(teacher)
        self.scores = None
        keep_heads, keep_neurons = {}, {}
        if self.heads_fraction or self.neurons_fraction:
            train = self.task.data.train
            batches = [train.batch_fn(i) for i in range(int(p.importance_batches))]
            self.scores = importance(Model(t_cfg, heads=self.heads), teacher, batches)
            if self.heads_fraction:
                keep_heads = choose_heads(self.scores.heads, self.keep_layers, self.heads_fraction)
            if self.neurons_fraction:
                keep_neurons = choose_neurons(
                    self.scores.neurons, self.keep_layers, self.neurons_fraction
                )
        self.keep_heads, self.keep_neurons = keep_heads, keep_neurons
        self.student_config, self.pruned_params = prune(
            t_cfg, teacher, keep_heads, keep_neurons, self.keep_layers
        )
        self.student = Model(self.student_config, heads=self.heads)
        self.pruned_count = count_params(self.pruned_params)
        self._report()

    def _report(self) -> None:
        c = self.student_config
        teacher = self.teacher_spec.config
        print(
            f"prune: blocks kept {self.keep_layers} of {teacher.num_layers}; heads "
            f"{[c.heads_at(i) for i in range(c.num_layers)]} (of {teacher.num_heads}); FFN widths "
            f"{[c.intermediate_size_at(i) for i in range(c.num_layers)]} (of "
            f"{teacher.intermediate_size}); parameters {self.unpruned_params:,} -> "
            f"{self.pruned_count:,} ({self.pruned_count / self.unpruned_params:.1%})",
            flush=True,
        )
        for layer, kept in self.keep_heads.items():
            print(f"  block {layer}: heads kept {kept}", flush=True)

    def stages(self) -> list[Stage]:
        p = self.config.prune
        weights = {"kd": float(p.kd_weight), "loss": float(p.ce_weight)}
        return [Stage("recover", int(self.config.train.steps), weights)]

    # ------------------------------------------------------------------ params
    def init_params(self, rng):
        return self.student.init(rng, *dummy_inputs(self.student_config))["params"]

    def initial_overrides(self, params):
        new = self.pruned_params
        if jax.tree.map(np.shape, new) != jax.tree.map(np.shape, params):
            raise ValueError("the pruned parameters do not match the pruned model's layout")
        return jax.tree.map(jnp.asarray, new)

    def teacher(self):
        return self.teacher_spec.abstract()

    def load_teacher_params(self):
        return self.teacher_spec.host_params()

    # --------------------------------------------------------------- objective
    def _metrics(self, params, teacher_params, batch, *, train, rng=None):
        out = task_outputs(
            task_forward(self.student, params, batch, train=train, rng=rng), self.kind
        )
        t_out = task_forward(self.teacher_model, teacher_params, batch, train=False)
        metrics = task_metrics(out, batch, self.kind)
        p = self.config.prune
        metrics["kd"] = KD_LOSSES[p.kd](
            out["logits"],
            t_out.logits,
            temperature=float(p.temperature),
            weights=batch["valid"].astype(jnp.float32),
            scale_by_temperature_squared=True,
        )
        return metrics

    def loss(self, stage, params, teacher_params, batch, rng):
        metrics = self._metrics(params, teacher_params, batch, train=True, rng=rng)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return self._metrics(params, teacher_params, batch, train=False)

    def predict(self, params, batch) -> dict[str, jax.Array]:
        out = task_forward(self.student, params, batch, train=False)
        return evaluator_outputs(task_outputs(out, self.kind), self.kind)

    def summarize(self, values: dict[str, float]) -> dict[str, float]:
        return {
            **values,
            "params": float(self.pruned_count),
            "unpruned_params": float(self.unpruned_params),
        }

    def final_model(self, params: Any):
        return self.student_config, self.heads, params
