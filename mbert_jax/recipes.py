"""The registry of recipes: `config.recipe` names what a run trains.

It sits above `train/` and `distill/` because it imports from both: the
generic trainer (`train/loop.py`) knows only the `Recipe` interface
(`train/recipe.py`); the recipes are the pretraining, fine-tuning and
evaluation ones of `train/`, the distillation strategies of `distill/` and structured
pruning (`prune/`) and quantization-aware training (`quant/`).
"""

from __future__ import annotations

from mbert_jax.distill.distilbert import DistilBertRecipe
from mbert_jax.distill.minilm import MiniLMRecipe
from mbert_jax.distill.mobilebert.recipe import MobileBertRecipe
from mbert_jax.distill.theseus import TheseusRecipe
from mbert_jax.distill.tinybert.recipe import TinyBertRecipe
from mbert_jax.prune.recipe import PruneRecipe
from mbert_jax.quant.recipe import QATRecipe
from mbert_jax.train.evaluate import EvaluateRecipe
from mbert_jax.train.finetune import FinetuneRecipe
from mbert_jax.train.pretrain import PretrainRecipe
from mbert_jax.train.recipe import Recipe

RECIPES: dict[str, type[Recipe]] = {
    "pretrain": PretrainRecipe,
    "finetune": FinetuneRecipe,
    "evaluate": EvaluateRecipe,
    "distill_mobilebert": MobileBertRecipe,
    "distill_tinybert": TinyBertRecipe,
    "distill_distilbert": DistilBertRecipe,
    "distill_theseus": TheseusRecipe,
    "distill_minilm": MiniLMRecipe,
    "prune": PruneRecipe,
    "qat": QATRecipe,
}


def build(config) -> Recipe:
    """The recipe named by `config.recipe`, built (and its config checked) without compiling."""
    name = config.get("recipe")
    if name not in RECIPES:
        raise ValueError(f"config.recipe={name!r}: must be one of {sorted(RECIPES)}")
    return RECIPES[name](config)
