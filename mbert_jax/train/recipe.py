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
from typing import Any

import jax

from mbert_jax.losses import LossSum

Metrics = dict[str, LossSum]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of training.

    Attributes:
      name: shown in logs and progress (e.g. "pkt_layer_3", "pd").
      steps: optimizer steps in this stage.
      loss_weights: the active loss terms and their weights.
      rules: `(regex over parameter paths, lr multiplier or None = frozen)`, first match wins.
      options: static, recipe-specific settings of the forward (e.g. the layer
        being transferred); part of the compiled step.
      learning_rate: this stage's base rate (None: `config.optimizer.learning_rate`).
      schedule: a schedule block replacing `config.optimizer.schedule` (None: keep).
    """

    name: str
    steps: int
    loss_weights: Mapping[str, float]
    rules: tuple[tuple[str, float | None], ...] = ((".*", 1.0),)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    learning_rate: float | None = None
    schedule: Any = None


class Recipe:
    """Interface between a training objective and the generic trainer.

    Subclasses implement the methods below; all array functions are pure and
    are traced inside the trainer's `jax.jit`.
    """

    #: Keys of the batch this recipe reads (the data layer provides them).
    batch_keys: tuple[str, ...] = ()

    #: When True, `loss` also receives `step=` (the global optimizer step, an
    #: int32 scalar), for objectives scheduled over training (BERT-of-Theseus).
    loss_uses_step: bool = False

    def stages(self) -> list[Stage]:
        raise NotImplementedError

    def init_params(self, rng: jax.Array) -> Any:
        """Trainable parameters, boxed with logical axis names (`model.init(...)["params"]`)."""
        raise NotImplementedError

    def initial_overrides(self, params: Any) -> Any:
        """Parameters to overwrite after init (pretrained encoders, teacher copies).

        Runs once on a fresh run (not on resume), on host or device arrays.
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

    def loss(
        self,
        stage: Stage,
        params: Any,
        teacher_params: Any,
        batch: dict[str, jax.Array],
        rng: jax.Array,
    ) -> tuple[jax.Array, Metrics]:
        """The stage objective (a scalar) and metrics as `LossSum`s (training mode)."""
        raise NotImplementedError

    def evaluate(
        self, stage: Stage, params: Any, teacher_params: Any, batch: dict[str, jax.Array]
    ) -> Metrics:
        """Held-out metrics as `LossSum`s (deterministic forward)."""
        raise NotImplementedError

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

    def final_model(self, params: Any) -> tuple[Any, tuple[str, ...], Any]:
        """`(ModelConfig, heads, params)` of the model to save as WORKDIR/model."""
        raise NotImplementedError
