"""MobileBERT knowledge transfer (Sun et al., 2020): progressive, joint or auxiliary
layer-wise transfer from a teacher, then pre-training distillation.

- `stages.py`: the `config.distill` block and the stages it makes (strategy as data);
- `fit.py`: what the student needs of its teacher (`check_fit`) and what it copies;
- `recipe.py`: `MobileBertRecipe`, the losses of each stage on both forwards.
"""

from mbert_jax.distill.mobilebert.recipe import MobileBertRecipe

__all__ = ["MobileBertRecipe"]
