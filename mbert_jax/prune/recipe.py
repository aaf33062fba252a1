"""Recipe "prune": structured pruning of a fine-tuned model, then recovery
distillation from the unpruned model, in one shot or iteratively.

From the fine-tuned model directory `config.init_from` (e.g. WORKDIR/model
of configs/finetune.py) on the task of `config.data`, of any kind
fine-tuning has (classification, regression, tagging, SQuAD-style QA):

1. blocks: `prune.layers` drops a fixed set ("" none, "every_other" the
   odd-numbered blocks 1, 3, 5, ..., Fan et al. 2019, "Reducing Transformer
   Depth on Demand", or a list "1,3"), or `prune.drop_layers` (a fraction in
   [0, 1) or a count) drops the blocks whose skipping raises the training
   loss least (`layer_importance`, one jitted pass per batch);
2. importance: head and FFN-neuron importance (`prune.importance`, Michel
   et al. 2019: mean |d loss / d gate|) over the first
   `prune.importance_batches` training batches, with the kind's fine-tuning
   loss (cross-entropy over rows, tagged words or answer spans; squared error);
3. choice (`prune/choose.py`), for one of two kinds of target:
   - fractions: `prune.heads` of the kept blocks' heads, ranked globally
     on per-layer normalized scores, each block keeping its best head;
     `prune.neurons` of each block's FFN neurons (one width for all blocks);
   - `prune.params_budget` (a fraction in (0, 1] of the parameters, or a
     count): heads and neurons removed until the model fits;
   - `prune.latency_budget` (a fraction in (0, 1) of the unpruned model's
     latency): the same until its predicted latency fits, under a latency
     model of the model's TFLite file on this machine (`prune/latency.py`:
     measured on six sliced structures and fitted, or read from
     `prune.latency_model`);
   - with either budget, `prune.budget_allocation` says how the cuts are
     spread: "uniform" (the default) removes one fraction of the heads and
     of the neurons, the smallest that fits, chosen as the fractions are;
     "fisher" scores units by Fisher importance and searches the split
     between heads and neurons that keeps the most of it (Kwon et al. 2022);
     "greedy" removes units in increasing raw score per parameter (or ms)
     saved, which on the real teacher put nearly every cut on heads;
4. recovery: `kd_weight x KD + ce_weight x CE + hidden_weight x hidden`: KD
   the logit distillation of `losses/logits.py` against the frozen unpruned
   model (`prune.kd`: "kl", the default, or "soft_cross_entropy", at
   `prune.temperature`, times T^2; per row, per tagged word, or over each
   window's real positions for the start and end of a span, as
   `distill/prediction.py` counts them; regression: the squared error to the
   unpruned model's score), CE the kind's hard-label loss (metric "loss"),
   hidden the MSE of each kept block's output against the unpruned
   model's same block (`losses.tinybert_hidden_loss` without projection:
   pruning keeps the hidden width), averaged over blocks and tokens.

`prune.iterations = N > 1` prunes iteratively in one run: N stages
`prune_1..N` of `train.steps / N` steps each; stage k removes units up to
k/N of the target (fractions k/N x the targets; a budget k/N of the way
from the full size), scored on the model as stage k-1 left it, then
recovers, always distilling from the unpruned model. During the run the
student keeps its full width and the removed units are gates at 0 (frozen
parameters `gates/...`, so a checkpoint holds the structure and a resumed
run continues exactly; a zero gate is exactly the removed unit); the next
stage's pruning runs in `Recipe.begin_stage`, and WORKDIR/model is sliced to
the real, smaller model at the end. `N = 1` (default) prunes at once and
trains the smaller model itself.

Evaluation is fine-tuning's (the task's official metrics over the dev split)
plus the KD term; the evaluations also report `params` (the pruned model's
parameter count at that point) and `unpruned_params`. A run with
`train.steps=0` evaluates the (first step's) pruned model before recovery.

Multi-host: every process scores its own slice of the same importance
batches and the sums are added over processes (`prune/importance.py`), the
latency model is process 0's (`latency.from_lead`), and the gates of
iterative pruning are gathered from the sharded parameters, so every process
chooses the same structure and the run matches one process.
Every target is checked before anything compiles (a fraction outside [0, 1),
a block out of range, a head fraction that would empty a block, a budget the
model cannot reach, stacked FFNs or shared layers), with one-line errors
naming the field.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mbert_jax import losses
from mbert_jax.distill import prediction
from mbert_jax.distill.task_data import TaskSetup
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.losses import LossSum
from mbert_jax.models import Model
from mbert_jax.models.model import dummy_inputs
from mbert_jax.prune import latency
from mbert_jax.prune.choose import (  # noqa: F401 (re-exported: the recipe's choices)
    EVERY_OTHER,
    budget_target,
    choose_budget,
    choose_heads,
    choose_layers,
    choose_neurons,
    choose_search,
    choose_uniform,
    count_params,
    fraction,
    heads_removed,
    layer_count,
    layers_kept,
    unit_costs,
)
from mbert_jax.prune.gates import gates_from_keep, ones_gates
from mbert_jax.prune.importance import (
    Importance,
    fisher_importance,
    importance,
    layer_importance,
    normalized,
)
from mbert_jax.prune.structure import prune
from mbert_jax.train.forward import evaluator_outputs, task_forward, task_metrics, task_outputs
from mbert_jax.train.recipe import Stage, TaskDataRecipe

KD_LOSSES = {"soft_cross_entropy": losses.soft_cross_entropy, "kl": losses.kl_divergence}
# The TFLite task each kind's model exports as (the latency model's structures).
EXPORT_TASKS = {
    "classification": "classification",
    "regression": "classification",
    "tagging": "token_classification",
    "qa": "qa",
}


def task_loss(kind: str):
    """The kind's fine-tuning loss as importance scores it: `(ModelOutput, batch) ->
    LossSum` (its sum and item count, so that processes' slices add up exactly)."""

    def loss(out, batch):
        return task_metrics(task_outputs(out, kind), batch, kind)["loss"]

    return loss


ALLOCATIONS = ("fisher", "greedy", "uniform")  # how a budget is spread (prune/choose.py)


def _gate_tree(gates) -> dict:
    heads, neurons = gates
    return {
        "heads": {f"layers_{i}": jnp.asarray(g) for i, g in enumerate(heads)},
        "neurons": {f"layers_{i}": jnp.asarray(g) for i, g in enumerate(neurons)},
    }


def _gate_tuples(tree: dict) -> tuple:
    n = len(tree["heads"])
    return (
        tuple(tree["heads"][f"layers_{i}"] for i in range(n)),
        tuple(tree["neurons"][f"layers_{i}"] for i in range(n)),
    )


def _say(line: str) -> None:
    """A line of the pruning report, from process 0 only (every process chooses alike)."""
    if jax.process_index() == 0:
        print(line, flush=True)


def _kept(gate) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(jax.device_get(gate)).reshape(-1) > 0.5)]


class PruneRecipe(TaskDataRecipe):
    """Block choice, importance, pruning to the targets (once or in N steps), recovery."""

    def __init__(self, config):
        self.config = config
        p = config.prune
        # Targets first: a bad one fails before any data is read or anything compiles.
        self.heads_fraction = fraction(p.heads, "prune.heads")
        self.neurons_fraction = fraction(p.neurons, "prune.neurons")
        self.budget = p.get("params_budget", 0.0) or 0.0
        if self.budget:
            budget_target(self.budget, 10**12)  # the value's form; the count is checked below
            if self.heads_fraction or self.neurons_fraction:
                raise ValueError(
                    f"config.prune.params_budget={self.budget} with prune.heads / prune.neurons: "
                    "set a budget or fractions, not both (heads=0, neurons=0 with a budget)"
                )
        self.latency_budget = float(p.get("latency_budget", 0.0) or 0.0)
        if self.latency_budget:
            if not 0.0 < self.latency_budget < 1.0:
                raise ValueError(
                    f"config.prune.latency_budget={self.latency_budget}: a fraction in (0, 1) of "
                    "the unpruned model's predicted latency (0.5: twice as fast)"
                )
            if self.heads_fraction or self.neurons_fraction or self.budget:
                raise ValueError(
                    f"config.prune.latency_budget={self.latency_budget} with prune.heads / "
                    "prune.neurons / prune.params_budget: one target (heads=0, neurons=0, no "
                    "params_budget with a latency budget)"
                )
        self.budgeted = bool(self.budget or self.latency_budget)
        self.allocation = str(p.get("budget_allocation", "uniform"))
        if self.allocation not in ALLOCATIONS:
            raise ValueError(
                f"config.prune.budget_allocation={self.allocation!r}: "
                f"one of {', '.join(ALLOCATIONS)}"
            )
        self.iterations = int(p.get("iterations", 1))
        steps = int(config.train.steps)
        if self.iterations < 1:
            raise ValueError(f"config.prune.iterations={self.iterations}: >= 1")
        if 0 < steps < self.iterations:
            raise ValueError(
                f"config.train.steps={steps} with config.prune.iterations={self.iterations}: "
                "each iteration recovers at least one step"
            )
        self.hidden_weight = float(p.get("hidden_weight", 0.0))
        if p.kd not in KD_LOSSES:
            raise ValueError(f"config.prune.kd={p.kd!r}: one of {sorted(KD_LOSSES)}")
        if not float(p.temperature) > 0:
            raise ValueError(f"config.prune.temperature={p.temperature}: must be > 0")
        if int(p.importance_batches) < 1:
            raise ValueError(f"config.prune.importance_batches={p.importance_batches}: >= 1")
        weights = (float(p.kd_weight), float(p.ce_weight), self.hidden_weight)
        if min(weights) < 0 or not any(weights):
            raise ValueError(
                "config.prune.kd_weight / ce_weight / hidden_weight: non-negative, at least "
                "one of them > 0"
            )
        if not config.get("init_from"):
            raise ValueError(
                "config.init_from: the fine-tuned model directory to prune (WORKDIR/model of "
                "configs/finetune.py)"
            )
        self.task = TaskSetup(config.data, config.init_from)
        self.kind, self.heads = self.task.kind, (self.task.head,)
        self.loss_fn = task_loss(self.kind)
        block = teacher_block(path=str(config.init_from))
        self.teacher_spec = self.task.load_teacher(block, what="init_from")
        t_cfg = self.teacher_spec.config
        if t_cfg.layer_sharing != "none":
            raise ValueError(
                f"config.init_from={config.init_from}: ModelConfig.layer_sharing="
                f"{t_cfg.layer_sharing!r}: one block shared by every layer cannot keep other "
                "heads, neurons or blocks per layer; prune a model with layer_sharing='none'"
            )
        if (self.neurons_fraction or self.budgeted) and t_cfg.num_feedforward_networks != 1:
            field = "neurons" if self.neurons_fraction else self._budget_field()
            raise ValueError(
                f"config.prune.{field}: the model has ModelConfig.num_feedforward_networks="
                f"{t_cfg.num_feedforward_networks} stacked FFNs, whose neurons are unrelated; "
                "prune its heads and blocks only (prune.neurons=0, no budget)"
            )
        drop = p.get("drop_layers", 0.0) or 0.0
        drop_count = layer_count(drop, t_cfg.num_layers) if drop else 0
        if drop_count and str(p.get("layers", "") or "").strip():
            raise ValueError(
                f"config.prune.drop_layers={drop} with config.prune.layers={p.layers!r}: "
                "blocks by importance or a fixed set, not both"
            )
        fixed = layers_kept(p.get("layers", ""), t_cfg.num_layers)
        if not drop_count:
            heads_removed([t_cfg.heads_at(i) for i in fixed], self.heads_fraction)

        self.teacher_model = Model(self.teacher_spec.run_config, heads=self.heads)
        teacher = self.teacher_spec.host_params("float32")
        self.unpruned_params = count_params(teacher)
        train = self.task.data.train
        self.batches = [train.batch_fn(i) for i in range(int(p.importance_batches))]
        self.layer_scores = None
        if drop_count:
            t_model = Model(t_cfg, heads=self.heads)
            self.layer_scores = layer_importance(t_model, teacher, self.batches, self.loss_fn)
            self.keep_layers = choose_layers(self.layer_scores, drop_count)
            heads_removed([t_cfg.heads_at(i) for i in self.keep_layers], self.heads_fraction)
        else:
            self.keep_layers = fixed

        # The blocks dropped, every unit kept: what heads and neurons are cut from.
        self.base_config, self.base_params = prune(t_cfg, teacher, keep_layers=self.keep_layers)
        self.base_count = count_params(self.base_params)
        self.base_model = Model(self.base_config, heads=self.heads)
        self.costs = unit_costs(
            self.base_params, range(self.base_config.num_layers), self.base_config
        )
        if self.budget:
            self.budget_count = budget_target(self.budget, self.unpruned_params)
        self.latency = None
        if self.latency_budget:
            self.latency = latency.from_lead(
                lambda: latency.load_or_measure(
                    str(p.get("latency_model", "") or ""),
                    t_cfg.replace(dtype="float32", matmul_dtype=None),
                    self.heads,
                    teacher,
                    EXPORT_TASKS[self.kind],
                    int(p.get("latency_seq_len", 0) or config.data.max_seq_length),
                    int(p.get("latency_threads", 1)),
                    int(p.get("latency_runs", 20)),
                )
            )
            _say(f"prune: {self.latency.summary()}")
            self.unpruned_ms = self.latency.predict_config(t_cfg)
            self.latency_target = self.latency_budget * self.unpruned_ms
            self.base_ms = self.latency.predict_config(self.base_config)
        self.scores = None
        gates = self.choose(1, self.base_params, ones_gates(self.base_config))
        # What each block of the unpruned model keeps (its own block indices).
        self.keep_heads, self.keep_neurons = (
            {self.keep_layers[j]: _kept(g) for j, g in enumerate(part)} if on else {}
            for part, on in zip(
                gates,
                (self.heads_fraction or self.budgeted, self.neurons_fraction or self.budgeted),
            )
        )
        if self.iterations == 1:
            keep_heads, keep_neurons = self._keeps(gates)
            self.student_config, self.pruned_params = prune(
                self.base_config, self.base_params, keep_heads, keep_neurons
            )
            self.student = Model(self.student_config, heads=self.heads)
            self.pruned_count = count_params(self.pruned_params)
        else:
            self.student_config, self.student = self.base_config, self.base_model
            self.first_gates = gates
        self._report(gates)

    # ----------------------------------------------------------------- choice
    def _active(self) -> bool:
        return bool(self.heads_fraction or self.neurons_fraction or self.budgeted)

    def _budget_field(self) -> str:
        return "latency_budget" if self.latency_budget else "params_budget"

    def choose(self, k: int, params, gates):
        """The gates of step k (1..N): units removed up to k/N of the target, scored on the
        base model `params` gated by `gates` (the last step's), removed units at -inf."""
        if not self._active():
            return gates
        heads_g, neurons_g = (tuple(np.asarray(jax.device_get(g)) for g in t) for t in gates)

        def off(scores, g):
            return tuple(np.where(gi > 0.5, s, -np.inf) for s, gi in zip(scores, g))

        def removed_off(scores: Importance) -> Importance:
            return Importance(
                off(scores.heads, heads_g), off(scores.neurons, neurons_g), scores.batches
            )

        layers = list(range(self.base_config.num_layers))
        if self.budgeted and self.allocation == "fisher":
            raw = fisher_importance(
                self.base_model, params, self.batches, self.loss_fn, gates=gates
            )
            self.scores = removed_off(raw)
            keep_heads, keep_neurons = choose_search(self.scores, *self._budget(k, layers))
            return gates_from_keep(self.base_config, keep_heads, keep_neurons)
        raw = importance(
            self.base_model, params, self.batches, self.loss_fn, normalize=False, gates=gates
        )
        raw = removed_off(raw)
        self.scores = raw
        n = self.iterations
        norm = normalized(
            Importance(
                tuple(np.where(np.isfinite(s), s, 0.0) for s in raw.heads),
                tuple(np.where(np.isfinite(s), s, 0.0) for s in raw.neurons),
                raw.batches,
            )
        )
        norm = removed_off(norm)
        if self.budgeted:
            budget = self._budget(k, layers)
            if self.allocation == "uniform":
                keep_heads, keep_neurons = choose_uniform(norm, *budget)
            else:
                keep_heads, keep_neurons = choose_budget(raw, *budget)
        else:
            keep_heads = keep_neurons = {}
            if self.heads_fraction:
                keep_heads = choose_heads(norm.heads, layers, self.heads_fraction * k / n)
            if self.neurons_fraction:
                keep_neurons = choose_neurons(norm.neurons, layers, self.neurons_fraction * k / n)
        return gates_from_keep(self.base_config, keep_heads, keep_neurons)

    def _budget(self, k: int, layers: list[int]) -> tuple:
        """`(costs, layers, total, target, field, unit)` of step k for the budget choosers:
        the budget k/N of the way from the base model's size (or predicted ms)."""
        n = self.iterations
        if self.latency is not None:
            costs = tuple(
                {i: ms for i in layers} for ms in (self.latency.head_ms, self.latency.neuron_ms)
            )
            total, cut = self.base_ms, self.base_ms - self.latency_target
            target = total - cut * k / n if cut > 0 else total
            return costs, layers, total, target, "prune.latency_budget", "ms (predicted)"
        total = self.base_count
        cut = self.base_count - self.budget_count
        target = total - (cut * k) // n if cut > 0 else total
        return self.costs, layers, total, target, "prune.params_budget", "parameters"

    def _keeps(self, gates) -> tuple[dict, dict]:
        heads, neurons = gates
        keep_heads = {i: _kept(g) for i, g in enumerate(heads) if len(_kept(g)) < np.size(g)}
        keep_neurons = {i: _kept(g) for i, g in enumerate(neurons) if len(_kept(g)) < np.size(g)}
        return keep_heads, keep_neurons

    def _count(self, gates) -> int:
        heads, neurons = gates
        h_cost, n_cost = self.costs
        removed = sum(
            h_cost[i] * (np.size(h) - len(_kept(h))) + n_cost[i] * (np.size(w) - len(_kept(w)))
            for i, (h, w) in enumerate(zip(heads, neurons))
        )
        return self.base_count - int(removed)

    def _report(self, gates, step: int = 1) -> None:
        teacher = self.teacher_spec.config
        heads, neurons = gates
        kept = [len(_kept(h)) for h in heads]
        widths = [len(_kept(w)) for w in neurons]
        count = self._count(gates)
        where = f" (step {step}/{self.iterations})" if self.iterations > 1 else ""
        if self.layer_scores is not None:
            shown = ", ".join(f"{s:.4g}" for s in self.layer_scores)
            _say(f"prune: loss increase without each block: [{shown}]")
        ms = ""
        if self.latency is not None:
            predicted = self.latency.predict(len(kept), sum(kept), sum(widths))
            ms = (
                f"; predicted latency {self.unpruned_ms:.3f} -> {predicted:.3f} ms "
                f"({predicted / self.unpruned_ms:.1%}; budget {self.latency_budget:.1%})"
            )
        _say(
            f"prune{where}: blocks kept {self.keep_layers} of {teacher.num_layers}; heads "
            f"{kept} (of {teacher.num_heads}); FFN widths {widths} (of "
            f"{teacher.intermediate_size}); parameters {self.unpruned_params:,} -> "
            f"{count:,} ({count / self.unpruned_params:.1%}){ms}"
        )

    # ----------------------------------------------------------------- stages
    def stages(self) -> list[Stage]:
        p = self.config.prune
        weights = {"kd": float(p.kd_weight), "loss": float(p.ce_weight)}
        if self.hidden_weight:
            weights["hidden"] = self.hidden_weight
        steps = int(self.config.train.steps)
        if self.iterations == 1:
            return [Stage("recover", steps, weights)]
        n = self.iterations
        rules = (("gates/.*", None), (".*", 1.0))
        lengths = [steps // n + (1 if k < steps % n else 0) for k in range(n)]
        return [Stage(f"prune_{k + 1}", lengths[k], weights, rules) for k in range(n)]

    def begin_stage(self, index, stage, params, teacher_params):
        if self.iterations == 1:
            return params
        host = multihost_utils.process_allgather(params, tiled=True)  # numpy, every process
        gates = self.choose(index + 1, host["model"], _gate_tuples(host["gates"]))
        self._report(gates, index + 1)
        return {"model": host["model"], "gates": _gate_tree(gates)}

    # ------------------------------------------------------------------ params
    def init_params(self, rng):
        params = self.student.init(rng, *dummy_inputs(self.student_config))["params"]
        if self.iterations == 1:
            return params
        return {"model": params, "gates": _gate_tree(ones_gates(self.base_config))}

    def initial_overrides(self, params):
        if self.iterations == 1:
            new = self.pruned_params
        else:
            new = {"model": self.base_params, "gates": _gate_tree(self.first_gates)}
        if jax.tree.map(np.shape, new) != jax.tree.map(np.shape, params):
            raise ValueError("the pruned parameters do not match the pruned model's layout")
        return jax.tree.map(jnp.asarray, new)

    def teacher(self):
        return self.teacher_spec.abstract()

    def load_teacher_params(self):
        return self.teacher_spec.host_params()

    # --------------------------------------------------------------- objective
    def _forward(self, params, batch, *, train, rng=None, **kwargs):
        if self.iterations == 1:
            return task_forward(self.student, params, batch, train=train, rng=rng, **kwargs)
        heads, neurons = _gate_tuples(params["gates"])
        return task_forward(
            self.student,
            params["model"],
            batch,
            train=train,
            rng=rng,
            head_gates=heads,
            neuron_gates=neurons,
            **kwargs,
        )

    def _metrics(self, params, teacher_params, batch, *, train, rng=None):
        hidden = bool(self.hidden_weight)
        s_out = self._forward(params, batch, train=train, rng=rng, output_hidden_states=hidden)
        t_out = task_forward(
            self.teacher_model, teacher_params, batch, train=False, output_hidden_states=hidden
        )
        out = task_outputs(s_out, self.kind)
        metrics = task_metrics(out, batch, self.kind)
        p = self.config.prune
        metrics["kd"] = prediction.logit_distillation(
            self.kind,
            out,
            task_outputs(t_out, self.kind),
            batch,
            divergence=KD_LOSSES[p.kd],
            temperature=float(p.temperature),
        )
        if hidden:
            # Student block j is the unpruned model's block keep_layers[j] (same hidden width).
            mask = (
                batch["attention_mask"]
                * batch["valid"].astype(batch["attention_mask"].dtype)[:, None]
            )
            metrics["hidden"] = losses.combine(
                losses.tinybert_hidden_loss(
                    s_out.encoder.hidden_states[j],
                    t_out.encoder.hidden_states[old],
                    attention_mask=mask,
                )
                for j, old in enumerate(self.keep_layers)
            )
        return metrics

    def loss(self, stage, params, teacher_params, batch, rng):
        metrics = self._metrics(params, teacher_params, batch, train=True, rng=rng)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        metrics = self._metrics(params, teacher_params, batch, train=False)
        if self.iterations > 1:
            metrics["params"] = LossSum(self._traced_count(params["gates"]), jnp.float32(1.0))
        return metrics

    def _traced_count(self, gate_tree) -> jax.Array:
        heads, neurons = _gate_tuples(gate_tree)
        h_cost, n_cost = self.costs
        count = jnp.float32(self.base_count)
        for i, (h, w) in enumerate(zip(heads, neurons)):
            count = count - h_cost[i] * jnp.sum(h <= 0.5) - n_cost[i] * jnp.sum(w <= 0.5)
        return count

    def predict(self, params, batch) -> dict[str, jax.Array]:
        out = self._forward(params, batch, train=False)
        return evaluator_outputs(task_outputs(out, self.kind), self.kind)

    def summarize(self, values: dict[str, float]) -> dict[str, float]:
        values = {**values, "unpruned_params": float(self.unpruned_params)}
        if self.iterations == 1:
            values["params"] = float(self.pruned_count)
            if self.latency is not None:  # the latency model's, not a timing
                values["predicted_ms"] = self.latency.predict_config(self.student_config)
                values["unpruned_predicted_ms"] = self.unpruned_ms
        return values

    def final_model(self, params: Any):
        if self.iterations == 1:
            return self.student_config, self.heads, params
        keep_heads, keep_neurons = self._keeps(_gate_tuples(params["gates"]))
        config, pruned = prune(self.base_config, params["model"], keep_heads, keep_neurons)
        return config, self.heads, pruned
