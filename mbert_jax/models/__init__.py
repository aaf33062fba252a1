"""The model zoo: one configurable encoder family, named variants, heads."""

from mbert_jax.models.config import ConfigError, ModelConfig
from mbert_jax.models.encoder import Encoder, EncoderOutput, check_inputs
from mbert_jax.models.model import (
    HEADS,
    PRETRAINING_HEADS,
    Model,
    ModelOutput,
    init_params,
    logical_axes,
    param_shapes,
)
from mbert_jax.models.variants import names as variant_names

__all__ = [
    "HEADS",
    "PRETRAINING_HEADS",
    "ConfigError",
    "Encoder",
    "EncoderOutput",
    "Model",
    "ModelConfig",
    "ModelOutput",
    "check_inputs",
    "init_params",
    "logical_axes",
    "param_shapes",
    "variant_names",
]
