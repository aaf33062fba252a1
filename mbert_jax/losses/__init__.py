"""Losses of pretraining and distillation: small pure functions.

Each takes the student's and the teacher's tensors (as the models return
them, any float dtype; computed in float32) and the padding mask, and
returns a `LossSum(total, count)` so means stay exact across devices and
logging windows. Padding is excluded by default; `official=True` (where the
official code differs) reproduces the published code's behaviour.

- `base`: `LossSum`, `combine`, the token and attention-pair masks.
- `mlm`: masked LM and next-sentence cross-entropy.
- `logits`: soft cross-entropy, KL with temperature, MobileBERT's target mix.
- `mobilebert`: feature-map, attention, mean and variance transfer.
- `tinybert`: attention MSE, projected hidden and embedding MSE, prediction CE.
- `cosine`: DistilBERT's cosine loss and loss weights.
- `minilm`: MiniLM's attention and value-relation KL, MiniLMv2's Q-Q / K-K / V-V relations.
"""

from mbert_jax.losses.base import LossSum, attention_pair_mask, combine, token_mask
from mbert_jax.losses.cosine import (
    DISTILBERT_COSINE_WEIGHT,
    DISTILBERT_KL_WEIGHT,
    DISTILBERT_MLM_WEIGHT,
    DISTILBERT_TEMPERATURE,
    cosine_embedding_loss,
)
from mbert_jax.losses.logits import (
    MOBILEBERT_GROUND_TRUTH_RATIO,
    kl_divergence,
    pretraining_distillation_loss,
    soft_cross_entropy,
)
from mbert_jax.losses.minilm import (
    minilm_attention_loss,
    minilm_value_relation_loss,
    minilmv2_relation_loss,
)
from mbert_jax.losses.mlm import cross_entropy, mlm_loss, nsp_loss
from mbert_jax.losses.mobilebert import (
    ATTENTION_TRANSFER_FACTOR,
    FEATURE_MAP_TRANSFER_FACTOR,
    MEAN_TRANSFER_FACTOR,
    VARIANCE_TRANSFER_FACTOR,
    attention_transfer_loss,
    feature_map_transfer_loss,
    layer_norm,
    mean_transfer_loss,
    variance_transfer_loss,
)
from mbert_jax.losses.tinybert import (
    tinybert_attention_loss,
    tinybert_embedding_loss,
    tinybert_hidden_loss,
    tinybert_prediction_loss,
)

__all__ = [
    "ATTENTION_TRANSFER_FACTOR",
    "DISTILBERT_COSINE_WEIGHT",
    "DISTILBERT_KL_WEIGHT",
    "DISTILBERT_MLM_WEIGHT",
    "DISTILBERT_TEMPERATURE",
    "FEATURE_MAP_TRANSFER_FACTOR",
    "MEAN_TRANSFER_FACTOR",
    "MOBILEBERT_GROUND_TRUTH_RATIO",
    "VARIANCE_TRANSFER_FACTOR",
    "LossSum",
    "attention_pair_mask",
    "attention_transfer_loss",
    "combine",
    "cosine_embedding_loss",
    "cross_entropy",
    "feature_map_transfer_loss",
    "kl_divergence",
    "layer_norm",
    "mean_transfer_loss",
    "minilm_attention_loss",
    "minilm_value_relation_loss",
    "minilmv2_relation_loss",
    "mlm_loss",
    "nsp_loss",
    "pretraining_distillation_loss",
    "soft_cross_entropy",
    "tinybert_attention_loss",
    "tinybert_embedding_loss",
    "tinybert_hidden_loss",
    "tinybert_prediction_loss",
    "token_mask",
    "variance_transfer_loss",
]
