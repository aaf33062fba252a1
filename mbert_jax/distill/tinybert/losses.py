"""TinyBERT's losses between a student and a teacher forward, and its projections.

`intermediate_losses` sums the layer-wise terms over the layer map (student
layer m learns from teacher layer g(m); layer 0 is the embedding output):

    L_attn = sum_{m=1..L_S} MSE(A_S^m, A_T^g(m))        pre-softmax scores, mean over heads
    L_hidn = sum_{m=1..L_S} MSE(H_S^m W_h, H_T^g(m))
    L_embd = MSE(E_S W_e, E_T)

and `prediction_losses` the prediction-layer term of the task's kind (the
table in `distill/prediction.py`: soft cross-entropy at a temperature per
example, per tagged token or over span positions; MSE for regression) and
the optional hard-label loss. Each MSE is the mean over its real entries
(`mbert_jax.losses.tinybert`).
`Projections` holds W_h and W_e (or the official code's one shared
`fit_dense`). The recipe is `recipe.py`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbert_jax import losses
from mbert_jax.distill.layer_map import all_hidden
from mbert_jax.distill.prediction import prediction_loss
from mbert_jax.losses import LossSum
from mbert_jax.models.layers import EMBED, EMBED_IN
from mbert_jax.train.forward import task_metrics

INTERMEDIATE_LOSSES = ("attention", "hidden", "embedding")
PREDICTION_LOSSES = ("prediction", "hard_label")


class Projections(nn.Module):
    """W_h (and W_e) mapping student widths to the teacher's: [d_S, d_T] (+ bias).

    Parameters: `hidden` and `embedding`, or one `shared` (official `fit_dense`).
    """

    student_width: int
    teacher_width: int
    shared: bool = False
    use_bias: bool = False
    init_range: float = 0.02

    @nn.compact
    def __call__(self):
        init = nn.with_logical_partitioning(
            nn.initializers.normal(self.init_range), (EMBED_IN, EMBED)
        )
        bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), (EMBED,))
        out = {}
        for name in ("shared",) if self.shared else ("hidden", "embedding"):
            kernel = self.param(
                f"{name}_kernel", init, (self.student_width, self.teacher_width), jnp.float32
            )
            bias = None
            if self.use_bias:
                bias = self.param(f"{name}_bias", bias_init, (self.teacher_width,), jnp.float32)
            out[name] = (kernel, bias)
        return out


def projection(proj_params: dict, which: str) -> tuple[jax.Array, jax.Array | None]:
    """(kernel, bias) of W_h ("hidden") or W_e ("embedding"); shared ones serve both."""
    name = "shared" if "shared_kernel" in proj_params else which
    return proj_params[f"{name}_kernel"], proj_params.get(f"{name}_bias")


def layer_sum(per_layer: list[LossSum]) -> LossSum:
    """Sum of the layers' means as one `LossSum` (the layers count the same items)."""
    total = sum(x.total for x in per_layer)
    return LossSum(total, per_layer[0].count)


def teacher_layers(teacher_out, mapping, weights) -> dict[str, jax.Array]:
    """What `intermediate_losses` reads of a teacher `EncoderOutput` (with hidden states
    and attentions): `attention_<j>` (the scores of teacher layer j) and `hidden_<j>`
    (layer j's output, 0: the embedding output) of the mapped layers and active terms."""
    out = {}
    s_layers = range(1, len(mapping))
    if "attention" in weights:
        for m in s_layers:
            out[f"attention_{mapping[m]}"] = teacher_out.attention_scores[mapping[m] - 1]
    hidden = all_hidden(teacher_out)
    if "hidden" in weights:
        for m in s_layers:
            out[f"hidden_{mapping[m]}"] = hidden[mapping[m]]
    if "embedding" in weights:
        out["hidden_0"] = hidden[0]
    return out


def intermediate_losses(
    student_out, teacher, proj_params, mapping, attention_mask, weights, official
) -> dict[str, LossSum]:
    """The active layer-wise losses between a student `EncoderOutput` and the teacher's
    layers (see the module docstring).

    Args:
      student_out: the student's encoder output with hidden states and attentions.
      teacher: the teacher's mapped layers, `teacher_layers` (live or stored).
      proj_params: the `Projections` parameters.
      mapping: `layer_map(...)`: teacher layer of each student layer 0..L_S.
      attention_mask: [batch, length] ints, 0 at padding.
      weights: the stage's loss weights (only their keys matter here).
      official: the official code's reductions.
    """
    out = {}
    s_layers = range(1, len(mapping))
    if "attention" in weights:
        out["attention"] = layer_sum(
            [
                losses.tinybert_attention_loss(
                    student_out.attention_scores[m - 1],
                    teacher[f"attention_{mapping[m]}"],
                    attention_mask=attention_mask,
                    official=official,
                )
                for m in s_layers
            ]
        )
    s_hidden = all_hidden(student_out)
    if "hidden" in weights:
        kernel, bias = projection(proj_params, "hidden")
        out["hidden"] = layer_sum(
            [
                losses.tinybert_hidden_loss(
                    s_hidden[m],
                    teacher[f"hidden_{mapping[m]}"],
                    projection=kernel,
                    projection_bias=bias,
                    attention_mask=attention_mask,
                    official=official,
                )
                for m in s_layers
            ]
        )
    if "embedding" in weights:
        kernel, bias = projection(proj_params, "embedding")
        out["embedding"] = losses.tinybert_embedding_loss(
            s_hidden[0],
            teacher["hidden_0"],
            projection=kernel,
            projection_bias=bias,
            attention_mask=attention_mask,
            official=official,
        )
    return out


def prediction_losses(
    kind, student_outputs, teacher_outputs, batch, weights, *, temperature, official
) -> dict[str, LossSum]:
    """Prediction-layer distillation (and the optional hard-label loss) of any task kind.

    Args:
      kind: the `TaskData.kind`.
      student_outputs, teacher_outputs: the task head's outputs (`train.forward.task_outputs`).
      batch: the task batch.
      weights: the stage's loss weights (only their keys matter here).
      temperature, official: see `distill.prediction`.

    Returns:
      `prediction` (`distill.prediction.PREDICTION_LOSSES[kind]`) and
      `hard_label` (the kind's fine-tuning loss on the gold labels), where active.
    """
    out = {}
    if "prediction" in weights:
        out["prediction"] = prediction_loss(
            kind,
            student_outputs,
            teacher_outputs,
            batch,
            temperature=temperature,
            official=official,
        )
    if "hard_label" in weights:
        out["hard_label"] = task_metrics(student_outputs, batch, kind)["loss"]
    return out
