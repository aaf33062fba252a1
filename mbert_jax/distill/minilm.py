"""MiniLM (Wang et al., 2020) and MiniLMv2 (2021): self-attention (relation) distillation.

One teacher layer (`distill.teacher_layer`) teaches the student's last layer,
on plain pretraining text (the data's masked tokens are restored: both models
read the original ids), with no prediction loss:

    minilm:    L = w_attention KL(A_T || A_S) + w_value KL(VR_T || VR_S)
               A the attention distributions per head, VR = softmax(V V^T / sqrt(d_head))
    minilmv2:  L = w_qq KL(QQ_T || QQ_S) + w_kk KL(KK_T || KK_S) + w_vv KL(VV_T || VV_S)
               XX = softmax(X_r X_r^T / sqrt(d / R)) per relation head r of R
               (`distill.relation_heads`), X the layer's heads concatenated

each KL averaged over (relation) heads and real query rows, padding excluded
as rows and columns (`mbert_jax.losses.minilm`). MiniLM needs the same head
count in both models; MiniLMv2 only needs R to divide both widths
(heads x head_dim); widths and depths are free in both.

`distill.teacher_layer` is 1-based (1 .. L_T) or negative from the top (-1,
the default: the last layer, as in MiniLM); MiniLMv2 distils an upper-middle
layer of large teachers. The teacher runs only up to that layer.
The teacher is `config.teacher` (`teacher.teacher_block`: a model directory,
a transformers directory or a random micro model for tests), frozen; the
student (`config.student`, any variant) is saved as WORKDIR/model (encoder,
no heads), like TinyBERT's general distillation, for fine-tuning.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from mbert_jax import losses
from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.models import Model
from mbert_jax.models.model import dummy_inputs
from mbert_jax.models.variants import from_block
from mbert_jax.train import inputs
from mbert_jax.train.forward import task_forward
from mbert_jax.train.recipe import PretrainingDataRecipe, Stage

# The loss terms of each variant (`distill.loss_weights` holds them all).
VARIANTS = {"minilm": ("attention", "value"), "minilmv2": ("qq", "kk", "vv")}
# Each MiniLMv2 term: the `EncoderOutput` field it relates.
RELATIONS = {"qq": "queries", "kk": "keys", "vv": "values"}


def resolve_layer(layer: int, depth: int) -> int:
    """The 1-based teacher layer of `distill.teacher_layer` (negative: from the top)."""
    index = depth + 1 + layer if layer < 0 else layer
    if not 1 <= index <= depth:
        raise ValueError(
            f"config.distill.teacher_layer={layer}: the teacher has layers 1..{depth} "
            f"(or -1..-{depth} from the top)"
        )
    return index


def unmasked_ids(batch) -> jax.Array:
    """`input_ids` with the masked positions' original tokens put back."""
    ids, positions = batch["input_ids"], batch["masked_lm_positions"]
    rows = jnp.arange(ids.shape[0])[:, None]
    originals = jnp.where(
        batch["masked_lm_weights"] > 0, batch["masked_lm_ids"], ids[rows, positions]
    )
    return ids.at[rows, positions].set(originals.astype(ids.dtype))


class MiniLMRecipe(PretrainingDataRecipe):
    """One stage of `config.train.steps` of MiniLM or MiniLMv2 relation distillation."""

    def __init__(self, config):
        self.config = config
        d = config.distill
        if d.variant not in VARIANTS:
            raise ValueError(f"config.distill.variant={d.variant!r}: one of {sorted(VARIANTS)}")
        self.variant = d.variant
        known = {t for terms in VARIANTS.values() for t in terms}
        unknown = sorted(set(dict(d.loss_weights)) - known)
        if unknown:
            raise ValueError(
                f"config.distill.loss_weights: unknown terms {unknown}; the terms are "
                f"{dict(VARIANTS)}"
            )
        self.weights = {
            k: float(d.loss_weights[k])
            for k in VARIANTS[self.variant]
            if float(d.loss_weights.get(k, 0.0)) != 0.0
        }
        if not self.weights:
            raise ValueError(
                f"config.distill.loss_weights: no active {self.variant} term "
                f"{VARIANTS[self.variant]}"
            )
        self.inputs = inputs.pretraining_inputs(
            teacher_lib.teacher_data_config(config.data, config.teacher.path)
        )
        vocab_size = self.inputs.vocab_size
        self.teacher_spec = teacher_lib.load_teacher(
            config.teacher, heads=(), vocab_size=vocab_size
        )
        self.teacher_model = self.teacher_spec.model
        self.student_config = from_block(config.student, vocab_size=vocab_size)
        self.student = Model(self.student_config, heads=())
        s, t = self.student_config, self.teacher_spec.config
        self.teacher_layer = resolve_layer(int(d.teacher_layer), t.num_layers)
        self.relation_heads = int(d.relation_heads)
        # The blocks compared: the teacher's chosen one and the student's last (a pruned
        # model's blocks keep their own head counts, ModelConfig.layer_heads).
        s_heads = s.heads_at(s.num_layers - 1)
        t_heads = t.heads_at(self.teacher_layer - 1)
        if self.variant == "minilm" and s_heads != t_heads:
            which = (
                f"the student has {s_heads} heads and the teacher {t_heads}"
                if s.layer_heads is None and t.layer_heads is None
                else f"the student's last block has {s_heads} heads and teacher layer "
                f"{self.teacher_layer} {t_heads} (ModelConfig.layer_heads: a pruned model)"
            )
            raise ValueError(
                f"config.distill.variant='minilm' compares heads one to one: {which}; match "
                "config.student.overrides.num_heads or use variant='minilmv2'"
            )
        if self.variant == "minilmv2":
            for who, c, heads in (("student", s, s_heads), ("teacher", t, t_heads)):
                width = heads * c.head_dim
                if self.relation_heads < 1 or width % self.relation_heads:
                    raise ValueError(
                        f"config.distill.relation_heads={self.relation_heads} must divide the "
                        f"{who}'s attention width {width} ({heads} heads x {c.head_dim})"
                    )

    def stages(self) -> list[Stage]:
        return [Stage("minilm", int(self.config.train.steps), self.weights)]

    def init_params(self, rng):
        return self.student.init(rng, *dummy_inputs(self.student_config))["params"]

    def teacher(self):
        return self.teacher_spec.abstract()

    def load_teacher_params(self):
        return self.teacher_spec.host_params()

    # ------------------------------------------------------------------ losses
    def compute_losses(self, params, teacher_params, batch, *, train, rng=None):
        batch = {**batch, "input_ids": unmasked_ids(batch)}
        feats = dict(output_attentions=self.variant == "minilm", output_qkv=True, run_heads=())
        s = task_forward(self.student, params, batch, train=train, rng=rng, **feats).encoder
        t = task_forward(
            self.teacher_model,
            teacher_params,
            batch,
            train=False,
            num_layers=self.teacher_layer,
            **feats,
        ).encoder
        mask = batch["attention_mask"]
        out = {}
        if self.variant == "minilm":
            if "attention" in self.weights:
                out["attention"] = losses.minilm_attention_loss(
                    s.attention_scores[-1], t.attention_scores[-1], attention_mask=mask
                )
            if "value" in self.weights:
                out["value"] = losses.minilm_value_relation_loss(
                    s.values[-1], t.values[-1], attention_mask=mask
                )
            return out
        for term in self.weights:
            field = RELATIONS[term]
            out[term] = losses.minilmv2_relation_loss(
                getattr(s, field)[-1],
                getattr(t, field)[-1],
                relation_heads=self.relation_heads,
                attention_mask=mask,
            )
        return out

    def loss(self, stage, params, teacher_params, batch, rng):
        metrics = self.compute_losses(params, teacher_params, batch, train=True, rng=rng)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        metrics = self.compute_losses(params, teacher_params, batch, train=False)
        # The weighted sum as one held-out figure (the trained objective).
        total = sum(w * metrics[k].mean() for k, w in stage.loss_weights.items())
        metrics["relation"] = losses.LossSum(total, jnp.ones((), jnp.float32))
        return metrics

    # -------------------------------------------------------------------- data

    def final_model(self, params: Any):
        return self.student_config, (), params
