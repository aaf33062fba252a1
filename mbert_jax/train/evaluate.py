"""Evaluate a model directory without training: `config.recipe = "evaluate"`.

- Pretraining data (`config.data` a pretraining block): held-out masked-LM
  accuracy, cross-entropy and perplexity (exp of the mean cross-entropy over
  every masked position of the held-out split), and NSP accuracy when the
  model has an NSP head.
- A task (`config.data` a task block): the task's official metrics on its
  dev split, for a model directory that has the task head.

The numbers are written to WORKDIR/results.json like a training run's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import ml_collections

from mbert_jax.models import Model, io
from mbert_jax.train import metrics as metrics_lib
from mbert_jax.train.pretrain import forward, pretraining_metrics


def evaluate_pretraining(model_dir: str | Path, data_cfg) -> dict[str, float]:
    """Held-out MLM (and NSP) metrics of a model directory over the whole held-out split."""
    from mbert_jax.data import build_pretraining_data

    config, heads, params = io.load_model(model_dir)
    if "mlm" not in heads:
        raise ValueError(f"{model_dir} has no MLM head (heads: {heads}); it cannot be scored")
    data_cfg = ml_collections.ConfigDict(data_cfg.to_dict())
    vocab = io.vocab_path(model_dir)
    if vocab is not None and not data_cfg.vocab_file:
        data_cfg.vocab_file = str(vocab)
    use_nsp = "nsp" in heads and bool(data_cfg.nsp)
    data_cfg.nsp = use_nsp
    data = build_pretraining_data(
        data_cfg, process_index=jax.process_index(), process_count=jax.process_count()
    )
    if data.tokenizer.vocab_size != config.vocab_size:
        raise ValueError(
            f"{model_dir} has vocab_size {config.vocab_size} but the data's vocabulary has "
            f"{data.tokenizer.vocab_size}; evaluate with the vocabulary the model was trained on"
        )
    model = Model(config, heads)
    score = jax.jit(lambda p, b: pretraining_metrics(forward(model, p, b, train=False), b, use_nsp))
    results = [score(params, batch) for batch in data.eval_iterator()]
    values = metrics_lib.reduce(results)
    out = {"mlm_accuracy": values["mlm_accuracy"], "mlm_loss": values["mlm"]}
    out["perplexity"] = math.exp(values["mlm"])
    if use_nsp:
        out["nsp_accuracy"] = values["nsp_accuracy"]
    return out


def run_evaluation(config, workdir: str | Path) -> dict[str, float]:
    """`config.init_from` (a model directory) on `config.data`; writes WORKDIR/results.json."""
    if not config.get("init_from"):
        raise ValueError("config.init_from: the model directory to evaluate")
    if "task" in config.data:
        from mbert_jax.train.finetune import FinetuneRecipe

        recipe = FinetuneRecipe(config)
        if set(recipe.heads) - set(io.load_model(config.init_from)[1]):
            raise ValueError(f"{config.init_from} has no {recipe.heads[0]} head for this task")
        _, _, params = io.load_model(config.init_from)
        evaluator = recipe.evaluator()
        predict = jax.jit(recipe.predict)
        for batch in recipe.eval_data(0, 1):
            evaluator.add(batch, **jax.device_get(predict(params, batch)))
        values = {k: float(v) for k, v in evaluator.result().items()}
    else:
        values = evaluate_pretraining(config.init_from, config.data)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "results.json").write_text(json.dumps({"eval": values}, indent=2) + "\n")
    return values
