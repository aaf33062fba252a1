"""What a training run is made of: a recipe and its stages.

The trainer (`loop.py`) is generic; a *recipe* says what runs: teacher
pretraining (MLM + NSP), fine-tuning, or a distillation strategy. A recipe
owns the trainable parameters (for distillation: the student plus any
projections), an optional frozen teacher, and a list of `Stage`s. A stage is
data: its length, its loss weights, its training rules (regex -> learning
rate multiplier or frozen; see `labels.py`) and static forward options. The
step is compiled once per stage, with that stage's optimizer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mbert_jax.losses import LossSum

Metrics = dict[str, LossSum]

#: The batch-key prefix of stored teacher outputs (`Recipe.teacher_terms`).
STORED = "teacher/"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of training.

    Attributes:
      name: shown in logs and progress (e.g. "pkt_layer_3", "pd").
      steps: optimizer steps in this stage.
      loss_weights: the active loss terms and their weights.
      rules: `(regex over parameter paths, lr multiplier or None = frozen)`, first match wins.
      options: static, recipe-specific settings of the forward, as the
        recipe's own frozen dataclass (e.g. `distill.mobilebert.stages.
        TransferOptions`: the layer being transferred); part of the compiled
        step, so it must be hashable.
      learning_rate: this stage's base rate (None: `config.optimizer.learning_rate`).
      schedule: a schedule block replacing `config.optimizer.schedule` (None: keep).
    """

    name: str
    steps: int
    loss_weights: Mapping[str, float]
    rules: tuple[tuple[str, float | None], ...] = ((".*", 1.0),)
    options: Any = None
    learning_rate: float | None = None
    schedule: Any = None


class Recipe:
    """Interface between a training objective and the generic trainer.

    Every method a trainer calls is declared here, with its default where it
    has one; subclasses override what they need. Array functions are pure and
    are traced inside the trainer's `jax.jit`.
    """

    #: When True, `loss` also receives `step=` (the global optimizer step, an
    #: int32 scalar), for objectives scheduled over training (BERT-of-Theseus).
    loss_uses_step: bool = False

    # ------------------------------------------------------------ structure
    def stages(self) -> list[Stage]:
        """The stages in order (a run with zero steps only evaluates its initial model)."""
        raise NotImplementedError

    def init_params(self, rng: jax.Array) -> Any:
        """Trainable parameters, boxed with logical axis names (`model.init(...)["params"]`)."""
        raise NotImplementedError

    def initial_overrides(self, params: Any) -> Any:
        """Parameters to overwrite after init (pretrained encoders, teacher copies).

        Runs once on a fresh run (not on resume), on host or device arrays.
        """
        return params

    def begin_stage(self, index: int, stage: Stage, params: Any, teacher_params: Any) -> Any:
        """The parameters a stage starts from, given those the last one ended with.

        Called when stage `index` >= 1 begins (not when a run resumes inside
        it: what it returns is then in the checkpoint), on device arrays; it
        must be a function of its arguments alone, so that a run resumed from
        the checkpoint at the end of the last stage starts this one exactly
        as an uninterrupted run does (iterative pruning removes more units
        here). Default: unchanged.
        """
        return params

    def teacher(self) -> Any | None:
        """The frozen teacher's boxed abstract parameters (for their shardings), or None.

        `jax.eval_shape` of the teacher model's `init(...)["params"]`: the
        trainer shards the teacher with the same logical rules as the
        trainable parameters and keeps no optimizer state for it.
        """
        return None

    def load_teacher_params(self) -> Any:
        """The teacher's parameters as a host (numpy) tree; called when `teacher()` is not None."""
        raise NotImplementedError

    # ------------------------------------------------------ teacher outputs
    def teacher_outputs(
        self, stage: Stage, teacher_params: Any, batch: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """What the stage's losses read from the teacher for `batch`: name -> [B, ...] array.

        A deterministic function of the teacher and the batch's inputs (no
        dropout), so it can be computed once and stored (`train/teacher_store.py`,
        `config.distill.teacher_store`). A recipe that implements it (with
        `teacher_settings`) reads its teacher terms through `teacher_terms`,
        so that live and stored outputs go through the same losses. Names are
        plain (no "/"); an empty dict: the stage needs nothing of the teacher.
        """
        raise NotImplementedError

    #: True when the losses read the teacher's values at padded positions (a store then
    #: builds every row at the full length; otherwise at the training data's padding).
    stored_at_full_length: bool = False

    def teacher_settings(self) -> dict:
        """JSON settings that change `teacher_outputs` besides the teacher's parameters
        (its model config, dtypes, heads): part of a store's fingerprint."""
        raise NotImplementedError

    def teacher_terms(
        self, stage: Stage, teacher_params: Any, batch: dict[str, jax.Array]
    ) -> dict[str, jax.Array]:
        """The stage's `teacher_outputs`: the batch's stored ones (`teacher/<name>` keys,
        added by the store) when it has them, else computed from the live teacher."""
        stored = {k.split("/", 1)[1]: v for k, v in batch.items() if k.startswith(STORED)}
        if stored:
            return stored
        return self.teacher_outputs(stage, teacher_params, batch)

    # ------------------------------------------------------------ objective
    def loss(
        self,
        stage: Stage,
        params: Any,
        teacher_params: Any,
        batch: dict[str, jax.Array],
        rng: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        """The stage objective (a scalar) and metrics as `LossSum`s (training mode).

        The objective must be `self.objective(stage, metrics)`: gradient
        accumulation (`step.py`) recomputes it from each micro-batch's metrics.
        """
        raise NotImplementedError

    def objective(self, stage: Stage, metrics: Metrics) -> jax.Array:
        """The stage objective: `sum(w * metrics[k].mean())` over `stage.loss_weights`.

        An override must stay linear in the metrics' totals (a weighted sum
        of means with constant weights): gradient accumulation (`step.py`)
        calls it on each micro-batch's totals over the whole batch's counts
        and sums the results, which is exact only then.
        """
        objective = jnp.zeros((), jnp.float32)
        for name, weight in stage.loss_weights.items():
            objective = objective + weight * metrics[name].mean()
        return objective

    def evaluate(
        self, stage: Stage, params: Any, teacher_params: Any, batch: dict[str, jax.Array]
    ) -> Metrics:
        """Held-out metrics as `LossSum`s (deterministic forward)."""
        raise NotImplementedError

    def evaluator(self) -> Any | None:
        """A fresh host-side evaluator of the official metrics over the whole held-out split
        (`data.tasks.Evaluator`: `add(batch, **predict(...))`, then `result()`), or None.

        When there is one, every evaluation runs over the whole split and
        `predict` gives its inputs.
        """
        return None

    def predict(self, params: Any, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        """The outputs `evaluator().add` takes (`{"logits": ...}`); needed with an evaluator."""
        raise NotImplementedError

    def summarize(self, values: dict[str, float]) -> dict[str, float]:
        """The held-out values of one evaluation, with any the recipe derives (e.g. perplexity)."""
        return values

    # ------------------------------------------------------------------ data
    def train_data(self, process_index: int, process_count: int):
        """This process's endless iterator of training batches (numpy dicts).

        It must have `get_state()` / `set_state(state)` (JSON-serializable) so
        that resume continues from the exact position.
        """
        raise NotImplementedError

    def eval_data(self, process_index: int, process_count: int):
        """A fresh, finite iterable of held-out batches (the same ones at every evaluation),
        or None when the recipe has no held-out data."""
        return None

    # -------------------------------------------------------------- outputs
    def vocab_file(self) -> str | Path | None:
        """The vocabulary to copy into WORKDIR/model (None: none)."""
        return None

    def final_model(self, params: Any) -> tuple[Any, tuple[str, ...], Any] | None:
        """`(ModelConfig, heads, params)` of the model to save as WORKDIR/model (None: none)."""
        raise NotImplementedError


class PretrainingDataRecipe(Recipe):
    """A recipe that trains on `self.inputs`, a `train.inputs.PretrainingInputs`
    (pretraining, MobileBERT, DistilBERT, MiniLM): its batches, held-out batches
    and vocabulary come from there."""

    inputs: Any

    def train_data(self, process_index: int, process_count: int):
        return self.inputs.train(process_index, process_count)

    def eval_data(self, process_index: int, process_count: int):
        return self.inputs.eval(process_index, process_count)

    def vocab_file(self) -> str | Path | None:
        return self.inputs.vocab_file


class TaskDataRecipe(Recipe):
    """A recipe that trains on a labelled task, `self.task` (a `distill.task_data.TaskSetup`:
    the task's data and vocabulary; BERT-of-Theseus, pruning): its batches, dev batches,
    official-metric evaluator and vocabulary come from there."""

    task: Any

    def evaluator(self):
        return self.task.data.evaluator()

    def train_data(self, process_index: int, process_count: int):
        return self.task.data.train

    def eval_data(self, process_index: int, process_count: int):
        return self.task.data.eval_iterator()

    def vocab_file(self) -> str | Path | None:
        return self.task.vocab
