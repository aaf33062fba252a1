"""Recipe: MobileBERT task-agnostic distillation from an IB-BERT (or a stock BERT) teacher.

`MobileBertRecipe(config)` ("distill_mobilebert") trains `config.student`
(a MobileBERT of the zoo with MLM and NSP heads) from the teacher in the
model directory `config.teacher.path` (e.g. WORKDIR/model of
configs/pretrain_ibbert.py), following `config.distill` (PKT / JKT / AKT and
PD; the strategies, rules, schedules and the paper-vs-official options are
described in `stages.py`, which builds the stages).

Config blocks it reads:

    student   model block: {variant, overrides, fit}; vocab_size comes from the
              data; `fit=True` shapes the student after the teacher when the
              recipe starts (`fit.fit_student`: the teacher's depth, width and
              heads, a bottleneck of about a quarter of the width; the option
              student=fit of configs/mobilebert_*.py)
    teacher   `teacher.teacher_block`: {path, variant, overrides, seed, dtype}: a
              model directory, or (empty path: tests and smoke runs only, with a
              warning) a randomly initialized `variant` (`host_init`, seeded by
              `seed`); dtype "bfloat16" holds and runs it in bf16 (the copies into
              the student stay float32)
    distill   `stages.default_distill_config()`
    data      as pretraining (`train.inputs`); with a teacher directory that has
              a vocab.txt, the data uses it (and checks it) unless vocab_file is set

Fit. Before anything is built, `check_fit` (`fit.py`) requires what the
transfer needs: the same block width B (feature maps), the same number of
heads (attention maps, unless `attention_factor=0`), embeddings it can copy
(the same width E, embedding transform, token-type and position tables) or,
from a teacher with a plain per-token table (a stock BERT), factorize; an
MLM head when PD runs; a possible layer map, and the same vocabulary as the
data. Each error names the config field to change.

Initial overrides (fresh runs only). Same layout (an IB-BERT teacher): the
student's word, position and token-type tables, embedding transformation and
the whole MLM head (transform, its LayerNorm, `extra_output_weights`, output
bias) are copied from the teacher and frozen during transfer. Other layout (a
stock BERT): the embeddings are factorized from the teacher's word table
(`distill/embedding_init.py`: the rank-E approximation through the trigram's
middle slot; position and type tables copied) and train with block 1; the
MLM head keeps its initialization until PD trains it. Either way the embedding
norm is copied when both use the same normalization type; otherwise (LayerNorm
vs MobileBERT's NoNorm) copying the parameters would give different
functions, so the student keeps its own embedding norm and trains it (see
`stages.py`). A frozen copied MLM head runs with the student's activation
(relu where the teacher used gelu); that only matters for the MLM accuracy
monitored before PD, which then trains the head.

Metrics (training and `evaluate`; stable names, `LossSum` means, unweighted):

    fmt_layer_l   feature-map transfer of student layer l (1-based)
    at_layer_l    attention transfer of layer l (when attention_factor > 0)
    mean_layer_l, var_layer_l   mean / variance transfer (mean_variance_transfer)
    pd_mlm        PD loss: CE against r * onehot + (1 - r) * p_teacher (PD, AKT)
    nsp           next-sentence CE (PD, AKT; evaluation whenever the stack is full)
    mlm           the student's plain MLM CE (evaluation)
    mlm_accuracy, nsp_accuracy   the student's (when its full stack runs)
    teacher_mlm_accuracy         the teacher's MLM accuracy (evaluation, full stack,
                                 when the teacher has an MLM head)

`evaluate` reports the transfer losses of every layer trained so far (PKT
stage l: layers 1..l, so it only runs l blocks of each model), and all of
them in JKT, AKT and PD, plus the MLM/NSP figures when the stage runs the
full stack. `final_model` is the student (config, heads, params).
"""

from __future__ import annotations

import logging
from typing import Any

import jax.numpy as jnp
import numpy as np

from mbert_jax import losses
from mbert_jax.distill import embedding_init
from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.distill.mobilebert.fit import (
    COPIED_EMBEDDINGS,
    COPIED_HEAD,
    EMBEDDING_NORM,
    check_fit,
    copy_into,
    describe_student,
    student_block,
)
from mbert_jax.distill.mobilebert.stages import mobilebert_stages, validate_distill_config
from mbert_jax.losses import LossSum
from mbert_jax.models import Model
from mbert_jax.models.model import dummy_inputs
from mbert_jax.models.variants import from_block
from mbert_jax.train import inputs
from mbert_jax.train.forward import forward, masked_accuracy
from mbert_jax.train.recipe import PretrainingDataRecipe, Stage

log = logging.getLogger(__name__)

# Who needs the teacher's MLM head, for the missing-head message.
NEEDED_BY = (
    "MobileBERT (the student copies the teacher's MLM head, and pre-training distillation, "
    "config.distill.pd_steps>0, distills its MLM logits)"
)


class MobileBertRecipe(PretrainingDataRecipe):
    """MobileBERT layer-wise transfer (PKT / JKT / AKT) and pre-training distillation."""

    def __init__(self, config):
        self.config = config
        d = self.distill = config.distill
        validate_distill_config(d)
        t = config.teacher
        # 1. Structure, before any data is built: the student (fitted to the
        #    teacher when config.student.fit), and how it learns from the teacher.
        teacher_config = teacher_lib.read_config(t)
        self.student_block = student_block(config, teacher_config)
        if config.student.get("fit", False):
            log.info(
                "student fitted to the teacher (config.student.fit): %s",
                describe_student(from_block(self.student_block)),
            )
        self.fit = check_fit(
            from_block(self.student_block),
            teacher_config,
            d,
            teacher_name=teacher_lib.describe(t),
            max_seq_length=int(config.data.max_seq_length),
            teacher_heads=teacher_lib.stored_heads(t),
        )
        self.layer_map = self.fit.layer_map
        self.teacher_heads = self.fit.teacher_heads
        # 2. The data, then the vocabularies.
        self.inputs = inputs.pretraining_inputs(
            teacher_lib.teacher_data_config(config.data, t.path)
        )
        vocab = self.inputs.vocab_size
        self.teacher_spec = teacher_lib.load_teacher(
            t, heads=self.teacher_heads, vocab_size=vocab, needed_by=NEEDED_BY
        )
        self.student_config = from_block(self.student_block, vocab_size=vocab)
        self.teacher_config = self.teacher_spec.run_config
        self.use_nsp = bool(config.data.get("nsp", True))
        self.student_heads = ("mlm", "nsp") if self.use_nsp else ("mlm",)
        self.student = Model(self.student_config, heads=self.student_heads)
        self.teacher_model = self.teacher_spec.model
        self.num_layers = self.student_config.num_layers
        self.copy_norm = self.student_config.normalization == self.teacher_config.normalization
        if self.fit.embeddings == "factorized":
            log.info(
                "embeddings: factorized from the teacher's table (E %d of %d); they train with "
                "block 1%s",
                self.student_config.embed_size,
                self.teacher_config.embed_size,
                "" if self.fit.copy_head else "; the MLM head is not copied (other layout)",
            )
        if not self.copy_norm:
            log.info(
                "embedding norm: the student's %s differs from the teacher's %s, so it is not "
                "copied; it trains with block 1",
                self.student_config.normalization,
                self.teacher_config.normalization,
            )
        if self.fit.copy_head and self.student_config.hidden_act != self.teacher_config.hidden_act:
            log.info(
                "the copied MLM head runs with the student's %s (the teacher's is %s)",
                self.student_config.hidden_act,
                self.teacher_config.hidden_act,
            )
        self._stages = mobilebert_stages(
            d,
            student_layers=self.num_layers,
            teacher_map=self.layer_map,
            use_nsp=self.use_nsp,
            train_embedding_norm=not self.copy_norm,
            train_embeddings=self.fit.embeddings == "factorized",
        )

    # ------------------------------------------------------------ parameters
    def stages(self) -> list[Stage]:
        return list(self._stages)

    def init_params(self, rng):
        return self.student.init(rng, *dummy_inputs(self.student_config))["params"]

    def teacher(self):
        return self.teacher_spec.abstract()

    def _teacher_flat(self, prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
        """The teacher's float32 parameters under `prefixes`, flat ('/'-keys), on the host."""
        return self.teacher_spec.read(prefixes)

    def load_teacher_params(self):
        return self.teacher_spec.host_params()

    def initial_overrides(self, params):
        norm = (EMBEDDING_NORM,) if self.copy_norm else ()
        if self.fit.embeddings == "factorized":  # the norm too when self.copy_norm
            params, _ = embedding_init.init_embeddings(
                params,
                self._teacher_flat((embedding_init.PREFIX,)),
                self.teacher_spec.config,
                self.student_config,
            )
            log.info("embeddings factorized from the teacher's word table")
            return params
        prefixes = COPIED_EMBEDDINGS + (COPIED_HEAD if self.fit.copy_head else ()) + norm
        params, copied = copy_into(params, self._teacher_flat(prefixes), prefixes)
        log.info("copied %d embedding and MLM-head parameters from the teacher", copied)
        return params

    # ---------------------------------------------------------------- losses
    def _layer_losses(self, student, teacher, layer: int, mask) -> dict[str, LossSum]:
        d = self.distill
        s_hidden = student.hidden_states[layer - 1]
        t_index = self.layer_map[layer] - 1
        t_hidden = teacher.hidden_states[t_index]
        official = bool(d.official_padding)
        out = {
            f"fmt_layer_{layer}": losses.feature_map_transfer_loss(
                s_hidden, t_hidden, attention_mask=mask, official=official
            )
        }
        if d.attention_factor > 0:
            out[f"at_layer_{layer}"] = losses.attention_transfer_loss(
                student.attention_scores[layer - 1],
                teacher.attention_scores[t_index],
                attention_mask=mask,
                form=d.attention_form,
                official=official,
            )
        if d.mean_variance_transfer:
            kw = dict(attention_mask=mask, official=official)
            out[f"mean_layer_{layer}"] = losses.mean_transfer_loss(s_hidden, t_hidden, **kw)
            out[f"var_layer_{layer}"] = losses.variance_transfer_loss(s_hidden, t_hidden, **kw)
        return out

    def _metrics(
        self,
        params,
        teacher_params,
        batch,
        *,
        layers: tuple[int, ...],
        pd: bool,
        student_layers: int,
        teacher_layers: int | None,
        stop: int | None,
        dropout: bool,
        rng,
        report: bool,
    ) -> dict[str, LossSum]:
        """Both forwards (only as deep as needed) and the requested terms."""
        feats = bool(layers)
        student_full = student_layers == self.num_layers
        teacher_full = teacher_layers is None or teacher_layers == self.teacher_config.num_layers
        s = forward(
            self.student,
            params,
            batch,
            train=dropout,
            rng=rng,
            num_layers=student_layers,
            stop_gradient_below=stop,
            output_hidden_states=feats,
            output_attentions=feats,
            run_heads=self.student_heads if pd or (report and student_full) else (),
        )
        t = forward(
            self.teacher_model,
            teacher_params,
            batch,
            train=False,
            num_layers=teacher_layers,
            output_hidden_states=feats,
            output_attentions=feats,
            run_heads=self.teacher_heads if teacher_full and (pd or report) else (),
        )
        mask = batch["attention_mask"]
        valid = batch.get("valid")
        if valid is not None:  # padded rows of the last eval batch
            mask = mask * (valid[:, None] > 0).astype(mask.dtype)
        metrics: dict[str, LossSum] = {}
        for layer in layers:
            metrics.update(self._layer_losses(s.encoder, t.encoder, layer, mask))
        ids, weights = batch["masked_lm_ids"], batch["masked_lm_weights"]
        if pd:
            metrics["pd_mlm"] = losses.pretraining_distillation_loss(
                s.mlm_logits, t.mlm_logits, ids, weights,
                ground_truth_ratio=float(self.distill.ground_truth_ratio),
            )  # fmt: skip
        if s.mlm_logits is not None:
            metrics["mlm_accuracy"] = masked_accuracy(s.mlm_logits, ids, weights)
            if report:
                metrics["mlm"] = losses.mlm_loss(s.mlm_logits, ids, weights)
        if report and t.mlm_logits is not None:
            metrics["teacher_mlm_accuracy"] = masked_accuracy(t.mlm_logits, ids, weights)
        if s.nsp_logits is not None:
            labels = batch["next_sentence_labels"]
            rows = jnp.ones(labels.shape, jnp.float32) if valid is None else valid
            metrics["nsp"] = losses.nsp_loss(s.nsp_logits, labels, rows)
            metrics["nsp_accuracy"] = masked_accuracy(s.nsp_logits, labels, rows)
        return metrics

    def loss(self, stage: Stage, params, teacher_params, batch, rng):
        o = stage.options
        metrics = self._metrics(
            params,
            teacher_params,
            batch,
            layers=tuple(o.layers),
            pd=bool(o.pd),
            student_layers=o.student_layers,
            teacher_layers=o.teacher_layers,
            stop=o.stop_gradient_below,
            dropout=bool(o.dropout),
            rng=rng,
            report=False,
        )
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage: Stage, params, teacher_params, batch):
        o = stage.options
        layers = tuple(o.eval_layers)
        pd = bool(o.pd)
        return self._metrics(
            params,
            teacher_params,
            batch,
            layers=layers,
            pd=pd,
            student_layers=self.num_layers if pd else max(layers),
            teacher_layers=None if pd else max(self.layer_map[i] for i in layers),
            stop=None,
            dropout=False,
            rng=None,
            report=True,
        )

    # ------------------------------------------------------------------ data

    def final_model(self, params: Any):
        return self.student_config, self.student_heads, params
