"""The registry of recipes: `config.recipe` names what a run trains."""

from __future__ import annotations

import importlib

from mbert_jax.train.recipe import Recipe

RECIPES = {
    "pretrain": "mbert_jax.train.pretrain:PretrainRecipe",
    "finetune": "mbert_jax.train.finetune:FinetuneRecipe",
    "distill_mobilebert": "mbert_jax.distill.mobilebert:MobileBertRecipe",
    "distill_tinybert": "mbert_jax.distill.tinybert:TinyBertRecipe",
    "distill_distilbert": "mbert_jax.distill.distilbert:DistilBertRecipe",
    "distill_theseus": "mbert_jax.distill.theseus:TheseusRecipe",
}


def build(config) -> Recipe:
    """The recipe named by `config.recipe`, built (and its config checked) without compiling."""
    name = config.get("recipe")
    if name not in RECIPES:
        raise ValueError(f"config.recipe={name!r}: must be one of {sorted(RECIPES)}")
    module, cls = RECIPES[name].split(":")
    return getattr(importlib.import_module(module), cls)(config)
