"""TinyBERT (Jiao et al., 2020): general and task-specific transformer distillation.

- `recipe.py`: `TinyBertRecipe` (general and task modes, their stages);
- `losses.py`: the layer-wise and prediction terms, and the projections W_e / W_h;
- `augment.py`, `augment_words.py`: the task-data augmentation (MLM and word-vector
  candidates), `mbert-jax augment`.
"""

from mbert_jax.distill.tinybert.recipe import TinyBertRecipe

__all__ = ["TinyBertRecipe"]
