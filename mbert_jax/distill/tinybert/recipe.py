"""TinyBERT (Jiao et al., 2020): general and task-specific transformer distillation.

Student layer m learns from teacher layer g(m) (`layer_map`, default
"uniform": g(m) = k m, k = L_T / L_S, the embedding output is layer 0):

    L_attn = sum_{m=1..L_S} MSE(A_S^m, A_T^g(m))        pre-softmax scores, mean over heads
    L_hidn = sum_{m=1..L_S} MSE(H_S^m W_h, H_T^g(m))
    L_embd = MSE(E_S W_e, E_T)
    L_pred = CE(z_T / t, z_S / t)                         (regression: MSE(z_S, z_T))

each MSE the mean over its real entries (`mbert_jax.losses.tinybert`; the
terms are assembled in `losses.py`), L_pred the task kind's prediction loss
(`distill/prediction.py`: per example, per tagged token, or over the span
positions of the start and end logits), and the objective
`sum_k w_k L_k` over the stage's active terms. The teacher is
`config.teacher` (`teacher.teacher_block`; `dtype="bfloat16"` holds and runs
it in bf16).

Modes (`config.distill.mode`):
- "general": one stage of attention + hidden + embedding losses on
  pretraining text, from a pre-trained (not fine-tuned) teacher; no
  prediction loss. Trainable: `{"student": ..., "proj": ...}`; the saved
  model is the student alone (encoder, no heads).
- "task": a fine-tuned teacher on (augmented, see `augment.py`) task data
  of any kind fine-tuning supports (classification, regression, pairs,
  tagging, SQuAD; the teacher has the kind's head, `TaskSetup`). Stage
  "intermediate": attention + hidden + embedding losses (the student's task
  head and pooler frozen); stage
  "prediction": the soft cross-entropy at temperature t (projections frozen;
  `hard_label` adds the ground-truth loss, used by the "w/o prediction"
  ablation). The student starts from a general-distilled student
  (`config.init_from`, a model or transformers directory) or fresh.
  Evaluation reports the task's official metrics, those of fine-tuning
  (`data.tasks.Evaluator`); the saved student carries the task's label names.

Paper vs official code (paper default, official as an option):
- Projections: the paper has W_e for the embeddings and one W_h for every
  layer, without bias; the official code uses one `fit_dense` (with bias)
  for both (`distill.shared_projection`, `distill.projection_bias`).
- `distill.official_losses` reproduces the official loss reductions (scores
  <= -100 zeroed in both maps instead of masking, averages over padding, the
  prediction CE divided by the number of classes); the default counts only
  real tokens and valid attention entries.
- Official attention index i*k + k - 1 and hidden index i*k (0-based) are the
  uniform map (`layer_map.py`).

Embeddings (`distill.init_embeddings`): "random" (default) leaves a fresh
student's as initialized; "factorized" starts them from the teacher's
word table (`embedding_init.py`: ALBERT-style U_k S_k and V_k^T P for a
student with embedding width k and a projection, position and type tables
projected by P, the teacher's PCA basis or the identity at equal width),
with W_e = P^T; not with `config.init_from`, which brings trained ones.
Blocks (`distill.init_layers`): empty (default) leaves them random; a list
copies teacher layer `init_layers[i]` (0-based) into student layer i
(`layer_init.py`; the student needs the teacher's width, heads and FFN
size), DistilBERT's initialization, e.g. (0, 2, 4) of a 6-layer teacher
under the uniform map, so that student layer i starts as the first of the
two teacher layers it learns to imitate.

Teacher outputs computed once (task mode): `distill.teacher_store=DIR` runs
the teacher once over the task data and trains from its stored outputs
(`teacher_outputs`, `mbert_jax/train/teacher_store.py`).

Layer-wise losses need the same number of heads in student and teacher
(checked at construction); widths may differ (the projections).
ALBERT-style students (shared layers) work unchanged: each application of
the shared block is a layer with its own outputs.
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp

from mbert_jax.distill import embedding_init, layer_init, layer_map
from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.distill.task_data import TaskSetup
from mbert_jax.distill.tinybert.losses import (
    INTERMEDIATE_LOSSES,
    PREDICTION_LOSSES,
    Projections,
    intermediate_losses,
    prediction_losses,
    teacher_layers,
)
from mbert_jax.models import Model, io, param_shapes, resolve
from mbert_jax.models.config import TUNABLE_FIELDS
from mbert_jax.models.model import dummy_inputs
from mbert_jax.models.variants import block_overrides, from_block
from mbert_jax.train import inputs
from mbert_jax.train.forward import evaluator_outputs, task_forward, task_metrics, task_outputs
from mbert_jax.train.recipe import Recipe, Stage

log = logging.getLogger(__name__)

MODES = ("general", "task")


def active(weights) -> dict[str, float]:
    return {k: float(v) for k, v in dict(weights).items() if float(v) != 0.0}


class TinyBertRecipe(Recipe):
    """General (`distill.mode="general"`) or task-specific (`"task"`) TinyBERT distillation."""

    def __init__(self, config):
        self.config = config
        d = config.distill
        if d.mode not in MODES:
            raise ValueError(f"config.distill.mode={d.mode!r}: one of {MODES}")
        self.mode = d.mode
        self.official = bool(d.official_losses)
        self.stored_at_full_length = self.official  # its reductions count padding
        self.temperature = float(d.get("temperature", 1.0))
        self.init_embeddings = d.get("init_embeddings", "random")
        if self.init_embeddings not in embedding_init.INIT_EMBEDDINGS:
            raise ValueError(
                f"config.distill.init_embeddings={self.init_embeddings!r}: one of "
                f"{embedding_init.INIT_EMBEDDINGS}"
            )
        if self.init_embeddings == "factorized" and config.get("init_from"):
            raise ValueError(
                "config.distill.init_embeddings='factorized' initializes a fresh student from "
                f"the teacher, but config.init_from={config.init_from} brings trained "
                "embeddings; set one of them"
            )
        self.init_layers = tuple(int(i) for i in d.get("init_layers", ()))
        if self.init_layers and config.get("init_from"):
            raise ValueError(
                f"config.distill.init_layers={list(self.init_layers)} initializes a fresh "
                f"student from teacher layers, but config.init_from={config.init_from} "
                "brings trained ones; set one of them"
            )
        self.task = None
        if self.mode == "general" and d.get("teacher_store"):
            raise ValueError(
                "config.distill.teacher_store: general distillation re-masks its pretraining "
                "stream and has no row index, so its teacher outputs cannot be stored; set "
                "config.distill.teacher_store=''"
            )
        if self.mode == "general":
            data = teacher_lib.teacher_data_config(config.data, config.teacher.path)
            self.inputs = inputs.pretraining_inputs(data)
            vocab_size, num_labels, heads = self.inputs.vocab_size, None, ()
        else:
            from mbert_jax.distill.tinybert import augment

            prepare = None
            if config.augment.enabled:
                prepare = lambda data, tok: augment.augmented_data_config(data, config.augment, tok)
            self.task = TaskSetup(config.data, config.teacher.path, prepare=prepare)
            vocab_size, num_labels = self.task.tokenizer.vocab_size, self.task.num_labels
            heads = (self.task.head,)
        self.heads = heads
        if self.task is not None:  # the task's head, label count and order checked
            self.teacher_spec = self.task.load_teacher(config.teacher)
        else:
            self.teacher_spec = teacher_lib.load_teacher(
                config.teacher, heads=heads, vocab_size=vocab_size, num_labels=num_labels
            )
        self.teacher_model = self.teacher_spec.model
        self.student_config = self._student_config(vocab_size, num_labels)
        self.student = Model(self.student_config, heads=heads)
        s, t = self.student_config, self.teacher_spec.config
        self.mapping = layer_map.from_config(d.layer_map, s.num_layers, t.num_layers)
        if active(d.loss_weights).get("attention"):
            layer_map.check_heads(
                s,
                t,
                self.mapping,
                "match them or set config.distill.loss_weights.attention=0 (MiniLMv2 relations, "
                "configs/minilm.py, leave the head counts free)",
            )
        self.projections = Projections(
            s.hidden_size,
            t.hidden_size,
            shared=bool(d.shared_projection),
            use_bias=bool(d.projection_bias),
            init_range=s.initializer_range,
        )
        if self.init_embeddings == "factorized":
            embedding_init.check(s, t, teacher_name=teacher_lib.describe(config.teacher))
        if self.init_layers:
            layer_init.copy_layers(  # fail at config time, before anything compiles
                param_shapes(self.student)["encoder"],
                param_shapes(self.teacher_model)["encoder"],
                self.init_layers,
            )

    def _student_config(self, vocab_size, num_labels):
        cfg = self.config
        overrides = block_overrides(cfg.student)
        if self.task is not None:  # the head's size and the label names saved with the student
            overrides["num_labels"] = num_labels
            overrides["label_names"] = self.task.label_names
        if cfg.get("init_from"):
            stored, _ = io.load_config(resolve.model_dir(cfg.init_from, "config.init_from"))
            bad = sorted(set(overrides) - set(TUNABLE_FIELDS))
            if bad:
                raise ValueError(
                    f"config.student.overrides {bad} would change the architecture of "
                    f"config.init_from={cfg.init_from}; only {TUNABLE_FIELDS} may be set"
                )
            if stored.vocab_size != vocab_size:
                raise ValueError(
                    f"config.init_from={cfg.init_from} has vocab_size {stored.vocab_size}, the "
                    f"data {vocab_size}"
                )
            return stored.replace(**overrides)
        return from_block(
            {"variant": cfg.student.variant, "overrides": overrides}, vocab_size=vocab_size
        )

    # ------------------------------------------------------------------ stages
    def stages(self) -> list[Stage]:
        d = self.config.distill
        weights = active(d.loss_weights)
        inter = {k: w for k, w in weights.items() if k in INTERMEDIATE_LOSSES}
        pred = {k: w for k, w in weights.items() if k in PREDICTION_LOSSES}
        if self.mode == "general":
            if pred:
                raise ValueError(
                    f"general distillation has no task head: set {sorted(pred)} weights to 0"
                )
            if not inter:
                raise ValueError("config.distill.loss_weights: no active loss")
            return [Stage("general", int(self.config.train.steps), inter, self._rules(inter))]
        frozen_heads = [f"student/{self.task.head}/.*"]
        if self.student_config.use_pooler:
            frozen_heads.append("student/encoder/pooler/.*")
        stages = []
        if inter and d.intermediate_steps > 0:
            rules = tuple((p, None) for p in frozen_heads) + self._rules(inter)
            stages.append(
                Stage(
                    "intermediate",
                    int(d.intermediate_steps),
                    inter,
                    rules,
                    learning_rate=float(d.intermediate_learning_rate),
                )
            )
        if pred and d.prediction_steps > 0:
            stages.append(
                Stage(
                    "prediction",
                    int(d.prediction_steps),
                    pred,
                    (("proj/.*", None), (".*", 1.0)),
                    learning_rate=float(d.prediction_learning_rate),
                )
            )
        if not stages:
            raise ValueError("config.distill: every stage has zero steps or no active loss")
        return stages

    def _rules(self, weights) -> tuple:
        """Train the student and the projections its active losses use; freeze the others."""
        if self.config.distill.shared_projection:
            used = "hidden" in weights or "embedding" in weights
            return (("proj/.*", 1.0 if used else None), (".*", 1.0))
        return (
            ("proj/hidden_.*", 1.0 if "hidden" in weights else None),
            ("proj/embedding_.*", 1.0 if "embedding" in weights else None),
            (".*", 1.0),
        )

    # ------------------------------------------------------------------ params
    def init_params(self, rng):
        r_student, r_proj = jax.random.split(rng)
        return {
            "student": self.student.init(r_student, *dummy_inputs(self.student_config))["params"],
            "proj": self.projections.init(r_proj)["params"],
        }

    def initial_overrides(self, params):
        if self.init_layers:
            params = self._teacher_layers(params)
        if self.init_embeddings == "factorized":
            return self._factorized_embeddings(params)
        if self.init_layers:
            return params
        path = self.config.get("init_from")
        if not path:
            return params
        stored = resolve.model_dir(path, "config.init_from")
        stored = io.unflatten(teacher_lib.read_params(stored, ("encoder/",)))
        student = dict(params["student"])
        want = jax.tree.map(jnp.shape, student["encoder"])
        have = jax.tree.map(jnp.shape, stored["encoder"])
        if want != have:
            raise ValueError(f"config.init_from={path}: its encoder does not fit the student")
        student["encoder"] = jax.tree.map(jnp.asarray, stored["encoder"])
        log.info("student encoder initialized from %s", path)
        return {**params, "student": student}

    def _teacher_layers(self, params):
        """The student's blocks copied from teacher layers `distill.init_layers`."""
        teacher = io.unflatten(self.teacher_spec.read(("encoder/layers_",)))["encoder"]
        student = dict(params["student"])
        encoder = layer_init.copy_layers(student["encoder"], teacher, self.init_layers)
        student["encoder"] = jax.tree.map(jnp.asarray, encoder)
        log.info("student layers initialized from teacher layers %s", list(self.init_layers))
        return {**params, "student": student}

    def _factorized_embeddings(self, params):
        """The student's embeddings from the teacher's table (`embedding_init.py`), and W_e = P^T.

        W_e (or the shared projection) maps the student's width back to the
        teacher's: P^T undoes the projection P of the initialized embeddings.
        """
        student, basis = embedding_init.init_embeddings(
            params["student"],
            self.teacher_spec.read((embedding_init.PREFIX,)),
            self.teacher_spec.config,
            self.student_config,
        )
        proj = dict(params["proj"])
        proj["shared_kernel" if "shared_kernel" in proj else "embedding_kernel"] = basis.T
        log.info("student embeddings factorized from the teacher's word table")
        return {**params, "student": student, "proj": proj}

    def teacher(self):
        return self.teacher_spec.abstract()

    def load_teacher_params(self):
        return self.teacher_spec.host_params()

    # ------------------------------------------------------------------ losses
    FEATURES = dict(output_hidden_states=True, output_attentions=True)

    def teacher_outputs(self, stage, teacher_params, batch):
        """The teacher's mapped layers (`losses.teacher_layers`) the stage's intermediate
        terms read, and its task-head outputs (`task_<field>`) when it has a prediction term."""
        weights = stage.loss_weights
        need_task = self.task is not None and "prediction" in weights
        if not any(k in weights for k in INTERMEDIATE_LOSSES) and not need_task:
            return {}
        feats = dict(self.FEATURES, run_heads=self.heads)
        t_out = task_forward(self.teacher_model, teacher_params, batch, train=False, **feats)
        out = teacher_layers(t_out.encoder, self.mapping, weights)
        if need_task:
            out.update({f"task_{k}": v for k, v in task_outputs(t_out, self.task.kind).items()})
        return out

    def teacher_settings(self):
        return {"config": self.teacher_spec.run_config.to_dict(), "heads": list(self.heads)}

    def compute_losses(self, stage, params, teacher_params, batch, *, train, rng=None):
        feats = dict(self.FEATURES, run_heads=self.heads)
        s_out = task_forward(self.student, params["student"], batch, train=train, rng=rng, **feats)
        teacher = self.teacher_terms(stage, teacher_params, batch)
        metrics = intermediate_losses(
            s_out.encoder,
            teacher,
            params["proj"],
            self.mapping,
            batch["attention_mask"],
            stage.loss_weights,
            self.official,
        )
        if self.task is not None:
            kind = self.task.kind
            s_task = task_outputs(s_out, kind)
            t_task = {k[len("task_") :]: v for k, v in teacher.items() if k.startswith("task_")}
            metrics.update(
                prediction_losses(
                    kind,
                    s_task,
                    t_task,
                    batch,
                    stage.loss_weights,
                    temperature=self.temperature,
                    official=self.official,
                )
            )
            if not train:
                task = task_metrics(s_task, batch, kind)
                metrics.update({f"task_{k}": v for k, v in task.items()})
        return metrics

    def loss(self, stage, params, teacher_params, batch, rng):
        metrics = self.compute_losses(stage, params, teacher_params, batch, train=True, rng=rng)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return self.compute_losses(stage, params, teacher_params, batch, train=False)

    def evaluator(self):
        return self.task.data.evaluator() if self.task is not None else None

    def predict(self, params, batch) -> dict[str, jax.Array]:
        out = task_forward(self.student, params["student"], batch, train=False)
        return evaluator_outputs(task_outputs(out, self.task.kind), self.task.kind)

    # -------------------------------------------------------------------- data
    def train_data(self, process_index, process_count):
        if self.task is not None:
            return self.task.data.train
        return self.inputs.train(process_index, process_count)

    def eval_data(self, process_index, process_count):
        if self.task is not None:
            return self.task.data.eval_iterator()
        return self.inputs.eval(process_index, process_count)

    def vocab_file(self):
        return self.task.vocab if self.task is not None else self.inputs.vocab_file

    def final_model(self, params: Any):
        return self.student_config, self.heads, params["student"]
