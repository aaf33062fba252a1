"""DistilBERT (Sanh et al., 2019): a half-depth student trained on the teacher's soft MLM targets.

Objective, with T = 2 and the weights of the official `train.py`:

    5.0 * T^2 * KL(softmax(z_T / T) || softmax(z_S / T))   per token, mean over tokens
  + 2.0 * MLM(z_S at the masked positions)
  + 1.0 * (1 - cos(h_S, h_T))                               last hidden layer, real tokens

on MLM batches without NSP (dynamic masking, 15%, 80/10/10; packing is
allowed: the losses follow the packed attention mask). The KL runs over
every real token (`distill.kl_positions="all"`, the official
`restrict_ce_to_mask=False`; the paper does not say) or only the masked
positions ("masked", cheaper: both models score only P positions).

Initialization (official `extract_distilbert.py`): the student takes the
teacher's word and position embeddings and embedding norm, its MLM head,
and one teacher layer per student layer (`distill.init_layers`, 0-based,
default 0, 2, 4, 7, 9, 11 of a 12-layer BERT-base). The student has no
token-type embeddings and no pooler (`distilbert6`: type_vocab_size=0,
use_pooler=False). The teacher adds its segment-A (type 0) embedding to
every input; by default that vector is folded into the student's position
embeddings, so that the initialized student's embedding output equals the
teacher's on single-segment input. The official extraction drops it
(`distill.fold_token_type=False`). An empty `init_layers` starts from a
random student.

The teacher is `config.teacher` (`teacher.teacher_block`, with an MLM head);
`dtype="bfloat16"` holds and runs it in bf16 (the copies stay float32).

Not reproduced from the official code: the frequency-smoothed choice of
masked tokens (`mlm_smoothing=0.7`), and the optional causal-LM and logit
MSE terms (weight 0 in the published run).
"""

from __future__ import annotations

import logging
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax import losses
from mbert_jax.distill import layer_init
from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.losses import token_mask
from mbert_jax.models import Model, param_shapes
from mbert_jax.models.heads import gather_positions
from mbert_jax.models.model import dummy_inputs
from mbert_jax.models.variants import from_block
from mbert_jax.train import inputs
from mbert_jax.train.forward import masked_accuracy
from mbert_jax.train.recipe import PretrainingDataRecipe, Stage

log = logging.getLogger(__name__)

KL_POSITIONS = ("all", "masked")
# Who needs the teacher's MLM head, for the missing-head message.
NEEDED_BY = (
    "DistilBERT (its soft targets, config.distill.loss_weights.kl, and the student's MLM "
    "head, config.distill.init_layers)"
)
BERT_BASE_LAYERS = (0, 2, 4, 7, 9, 11)


def init_student_from_teacher(
    student: dict, teacher: dict, layers: tuple[int, ...], *, fold_token_type: bool = True
) -> dict:
    """Student parameters with embeddings, chosen layers and the MLM head copied from the teacher.

    Args:
      student: the student's parameters (host or device arrays), `{"encoder", "mlm"}`.
      teacher: the teacher's, with the same heads.
      layers: for student layer i, the 0-based teacher layer it copies.
      fold_token_type: add the teacher's type-0 embedding to the student's
        position embeddings when the student has no token types.

    Returns:
      A new tree; leaves of the student the teacher lacks (e.g. its own token
      types when the teacher has none) keep their values.

    Raises:
      ValueError: naming the first parameters whose shapes differ.
    """
    s_enc, t_enc = student["encoder"], teacher["encoder"]
    enc = layer_init.copy_layers(s_enc, t_enc, layers)
    same = layer_init.copied
    emb = dict(s_enc["embeddings"])
    t_emb = t_enc["embeddings"]
    for name in emb:
        if name in t_emb:
            emb[name] = same(emb[name], t_emb[name], f"embeddings/{name}")
        else:
            log.info("student embeddings/%s has no teacher counterpart: kept as initialized", name)
    if fold_token_type and "token_type_embeddings" not in emb and "token_type_embeddings" in t_emb:
        type0 = np.asarray(t_emb["token_type_embeddings"]["embedding"])[0]
        pos = np.asarray(emb["position_embeddings"]["embedding"])
        emb["position_embeddings"] = {"embedding": pos + type0[None, :]}
    enc["embeddings"] = emb
    if "pooler" in s_enc and "pooler" in t_enc:
        enc["pooler"] = same(s_enc["pooler"], t_enc["pooler"], "pooler")
    out = {**student, "encoder": enc}
    if "mlm" in student:
        out["mlm"] = same(student["mlm"], teacher["mlm"], "MLM head")
    return out


class DistilBertRecipe(PretrainingDataRecipe):
    """One stage of `config.train.steps` of DistilBERT's triple loss."""

    def __init__(self, config):
        self.config = config
        d = config.distill
        if config.data.get("nsp", True):
            raise ValueError("DistilBERT trains without NSP: set config.data.nsp=False")
        if d.kl_positions not in KL_POSITIONS:
            raise ValueError(
                f"config.distill.kl_positions={d.kl_positions!r}: one of {KL_POSITIONS}"
            )
        self.kl_positions = d.kl_positions
        self.temperature = float(d.temperature)
        self.weights = {k: float(v) for k, v in dict(d.loss_weights).items() if float(v) != 0.0}
        unknown = set(self.weights) - {"kl", "mlm", "cosine"}
        if unknown or not self.weights:
            raise ValueError(
                f"config.distill.loss_weights {dict(d.loss_weights)}: terms are kl, mlm, cosine"
            )
        # The teacher's MLM head, before the data is built.
        teacher_lib.read_config(config.teacher, heads=("mlm",), needed_by=NEEDED_BY)
        self.inputs = inputs.pretraining_inputs(
            teacher_lib.teacher_data_config(config.data, config.teacher.path)
        )
        vocab_size = self.inputs.vocab_size
        self.teacher_spec = teacher_lib.load_teacher(
            config.teacher, heads=("mlm",), vocab_size=vocab_size, needed_by=NEEDED_BY
        )
        self.teacher_model = self.teacher_spec.model
        self.student_config = from_block(config.student, vocab_size=vocab_size)
        self.student = Model(self.student_config, heads=("mlm",))
        self.init_layers = tuple(int(i) for i in d.init_layers)
        t, s = self.teacher_spec.config, self.student_config
        if "cosine" in self.weights and s.hidden_size != t.hidden_size:
            raise ValueError(
                f"the cosine loss compares hidden states: student width {s.hidden_size} != "
                f"teacher width {t.hidden_size}"
            )
        if self.init_layers:  # fail at config time, before anything compiles
            init_student_from_teacher(
                param_shapes(self.student),
                param_shapes(self.teacher_model),
                self.init_layers,
                fold_token_type=False,
            )

    def stages(self) -> list[Stage]:
        return [Stage("distil", int(self.config.train.steps), self.weights)]

    def init_params(self, rng):
        return self.student.init(rng, *dummy_inputs(self.student_config))["params"]

    def initial_overrides(self, params):
        if not self.init_layers:
            return params
        student = init_student_from_teacher(
            params,
            self.teacher_spec.host_params("float32"),
            self.init_layers,
            fold_token_type=bool(self.config.distill.fold_token_type),
        )
        log.info("student initialized from teacher layers %s", list(self.init_layers))
        return jax.tree.map(jnp.asarray, student)

    def teacher(self):
        return self.teacher_spec.abstract()

    def load_teacher_params(self):
        return self.teacher_spec.host_params()

    def compute_losses(self, params, teacher_params, batch, *, train, rng=None):
        positions = batch["masked_lm_positions"] if self.kl_positions == "masked" else None
        types = batch["token_type_ids"] if self.student_config.type_vocab_size else None
        s = self.student.apply(
            {"params": params},
            batch["input_ids"],
            batch["attention_mask"],
            types,
            batch.get("position_ids"),
            positions,
            deterministic=not train,
            rngs={"dropout": rng} if train else None,
        )
        t = self.teacher_model.apply(
            {"params": teacher_params},
            batch["input_ids"],
            batch["attention_mask"],
            batch["token_type_ids"],
            batch.get("position_ids"),
            positions,
        )
        if self.kl_positions == "all":
            kl_weights = token_mask(batch["attention_mask"], batch["input_ids"].shape)
            mlm_logits = gather_positions(s.mlm_logits, batch["masked_lm_positions"])
        else:
            kl_weights = batch["masked_lm_weights"]
            mlm_logits = s.mlm_logits
        labels, weights = batch["masked_lm_ids"], batch["masked_lm_weights"]
        return {
            "kl": losses.kl_divergence(
                s.mlm_logits,
                t.mlm_logits,
                temperature=self.temperature,
                weights=kl_weights,
                scale_by_temperature_squared=True,
            ),
            "mlm": losses.mlm_loss(mlm_logits, labels, weights),
            "cosine": losses.cosine_embedding_loss(
                s.encoder.last_hidden_state,
                t.encoder.last_hidden_state,
                attention_mask=batch["attention_mask"],
            ),
            "mlm_accuracy": masked_accuracy(mlm_logits, labels, weights),
        }

    def loss(self, stage, params, teacher_params, batch, rng):
        metrics = self.compute_losses(params, teacher_params, batch, train=True, rng=rng)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return self.compute_losses(params, teacher_params, batch, train=False)

    def final_model(self, params: Any):
        return self.student_config, ("mlm",), params
