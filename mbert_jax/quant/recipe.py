"""Recipe "qat": quantization-aware training of a fine-tuned model on its task.

From the model directory `config.init_from` (fine-tuned on the task of
`config.data`, e.g. WORKDIR/model of configs/finetune.py, any task kind):

1. the same model with `fake_quant=True` (`ModelConfig.fake_quant`): every
   dense layer's input fake-quantized to 8 bits over a tracked range, its
   kernel per output channel (`fake_quant.py`), as the int8 TFLite file
   quantizes them;
2. the ranges start from the mean observed range over the first
   `qat.calibration_batches` training batches (`calibrate.py`; 0: MobileBERT's
   [-6, 6]), then follow a moving average of decay `qat.decay` (0.999 in
   MobileBERT) during training;
3. one stage of `train.steps` steps on `kd_weight x KD + ce_weight x CE`: KD
   the prediction-layer loss of the task kind (`distill/prediction.py`, at
   `qat.temperature`) against the frozen float model, CE the hard-label loss
   (metric "loss"); with `kd_weight=0` the float model is not run.
   Classifiers also report `float_agreement`: the share of rows whose
   predicted class is the float model's.

WORKDIR/model is the QAT model: its config has `fake_quant=True` and its
parameters hold the ranges (`*/input_range`). A directory that is already a
QAT model continues from its own ranges (no calibration).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax.distill.prediction import prediction_loss
from mbert_jax.distill.task_data import TaskSetup
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.losses import LossSum
from mbert_jax.models import Model
from mbert_jax.models.model import dummy_inputs
from mbert_jax.quant.calibrate import calibrate
from mbert_jax.quant.fake_quant import RANGE_SUFFIX
from mbert_jax.train.forward import evaluator_outputs, task_forward, task_metrics, task_outputs
from mbert_jax.train.recipe import Stage, TaskDataRecipe
from mbert_jax.tree import flat, path_name, shape_mismatch


def graft(params: Any, stored: Any) -> Any:
    """`params` (the QAT model's fresh tree) with every leaf `stored` has taken from it.

    Range leaves missing from `stored` (a float model) keep their initial
    value; any other difference is an error naming the parameters.
    """
    want = {k: v for k, v in flat(params).items() if not k.endswith(RANGE_SUFFIX)}
    have = {k: v for k, v in flat(stored).items() if not k.endswith(RANGE_SUFFIX)}
    problems = shape_mismatch(want, have, want_name="QAT model", have_name="stored model")
    if problems:
        raise ValueError(
            "config.init_from does not fit its QAT model:\n  " + "\n  ".join(problems[:20])
        )
    stored_flat = flat(stored)

    def one(path, p):
        key = path_name(path)
        return jnp.asarray(stored_flat[key]) if key in stored_flat else p

    return jax.tree_util.tree_map_with_path(one, params)


class QATRecipe(TaskDataRecipe):
    """Fake-quant training of a fine-tuned model, distilled from its float self."""

    def __init__(self, config):
        self.config = config
        q = config.qat
        if not 0.0 <= float(q.decay) < 1.0:
            raise ValueError(f"config.qat.decay={q.decay}: a moving-average decay in [0, 1)")
        if int(q.calibration_batches) < 0:
            raise ValueError(
                f"config.qat.calibration_batches={q.calibration_batches}: >= 0 (0: the initial "
                "range [-6, 6])"
            )
        if not float(q.temperature) > 0 or math.isnan(float(q.temperature)):
            raise ValueError(f"config.qat.temperature={q.temperature}: must be > 0")
        if float(q.kd_weight) < 0 or float(q.ce_weight) < 0 or not (q.kd_weight or q.ce_weight):
            raise ValueError(
                "config.qat.kd_weight / ce_weight: non-negative, at least one of them > 0"
            )
        if not config.get("init_from"):
            raise ValueError(
                "config.init_from: the fine-tuned model directory to train with fake "
                "quantization (WORKDIR/model of configs/finetune.py)"
            )
        self.task = TaskSetup(config.data, config.init_from)
        self.kind, self.heads = self.task.kind, (self.task.head,)
        self.float_spec = self.task.load_teacher(
            teacher_block(path=str(config.init_from)), what="init_from"
        )
        stored = self.float_spec.config
        self.resumed_ranges = stored.fake_quant
        float_config = self.float_spec.run_config.replace(fake_quant=False)
        self.float_model = Model(float_config, heads=self.heads)
        self.model_config = stored.replace(fake_quant=True, fake_quant_decay=float(q.decay))
        self.model = Model(self.model_config, heads=self.heads)

    def stages(self) -> list[Stage]:
        q = self.config.qat
        weights = {"kd": float(q.kd_weight), "loss": float(q.ce_weight)}
        return [Stage("qat", int(self.config.train.steps), weights)]

    # ------------------------------------------------------------------ params
    def init_params(self, rng):
        return self.model.init(rng, *dummy_inputs(self.model_config))["params"]

    def initial_overrides(self, params):
        stored = self.float_spec.host_params("float32")
        params = graft(params, stored)
        n = int(self.config.qat.calibration_batches)
        if n and not self.resumed_ranges:
            train = self.task.data.train
            batches = [train.batch_fn(i) for i in range(n)]
            observing = Model(self.model_config.replace(fake_quant_decay=0.0), heads=self.heads)

            def outputs(p, batch):
                out = task_forward(observing, p, batch, train=False)
                return task_outputs(out, self.kind)

            params = calibrate(outputs, params, batches)
            self._report_ranges(params)
        return params

    def _report_ranges(self, params) -> None:
        ranges = [np.asarray(v) for k, v in flat(params).items() if k.endswith(RANGE_SUFFIX)]
        widths = [float(r[1] - r[0]) for r in ranges]
        print(
            f"qat: {len(ranges)} activation ranges calibrated; widths "
            f"{min(widths):.3g} .. {max(widths):.3g} (median {float(np.median(widths)):.3g})",
            flush=True,
        )

    def teacher(self):
        return self.float_spec.abstract() if float(self.config.qat.kd_weight) else None

    def load_teacher_params(self):
        return self.float_spec.host_params()

    # --------------------------------------------------------------- objective
    def _metrics(self, params, teacher_params, batch, *, train, rng=None):
        out = task_outputs(task_forward(self.model, params, batch, train=train, rng=rng), self.kind)
        metrics = task_metrics(out, batch, self.kind)
        if teacher_params is not None:
            t_out = task_outputs(
                task_forward(self.float_model, teacher_params, batch, train=False), self.kind
            )
            metrics["kd"] = prediction_loss(
                self.kind, out, t_out, batch, temperature=float(self.config.qat.temperature)
            )
            if self.kind == "classification":
                valid = batch["valid"].astype(jnp.float32)
                same = jnp.argmax(out["logits"], -1) == jnp.argmax(t_out["logits"], -1)
                metrics["float_agreement"] = LossSum(jnp.sum(same * valid), jnp.sum(valid))
        return metrics

    def loss(self, stage, params, teacher_params, batch, rng):
        metrics = self._metrics(params, teacher_params, batch, train=True, rng=rng)
        return self.objective(stage, metrics), metrics

    def evaluate(self, stage, params, teacher_params, batch):
        return self._metrics(params, teacher_params, batch, train=False)

    def predict(self, params, batch) -> dict[str, jax.Array]:
        out = task_forward(self.model, params, batch, train=False)
        return evaluator_outputs(task_outputs(out, self.kind), self.kind)

    def final_model(self, params: Any):
        return self.model_config, self.heads, params
