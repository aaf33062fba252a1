"""Small building blocks shared by every module of the zoo.

Every parameter is created through `dense` / `norm` / `embed` here so that it
carries logical axis names (`nn.with_logical_partitioning`); the trainer maps
those names onto any mesh (see `mbert_jax.parallel`). Logical names used:

- `vocab`: vocabulary rows; `embed`: the inter-block width B and the word
  embedding width E; `embed_in`: widths that stay unsharded over FSDP: the
  input side of square B x B kernels (pooler, MLM transform), of the
  embedding projection, and the width of the lookup tables; `inner`: the
  width inside a bottleneck block; `mlp`: the FFN inner width; `heads`,
  `kv`: attention heads and head width; activations: `batch`, `length`,
  `length_kv` (attention keys).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbert_jax.models import matmul
from mbert_jax.models.config import ModelConfig
from mbert_jax.quant import fake_quant

# Logical axis names, spelled once.
BATCH, LENGTH, LENGTH_KV = "batch", "length", "length_kv"
VOCAB, EMBED, INNER, MLP, HEADS, KV = "vocab", "embed", "inner", "mlp", "heads", "kv"
# The input side of the few square B x B (or 3E x B) matrices: one mesh axis
# cannot shard both dimensions of a kernel, so they get a name of their own.
EMBED_IN = "embed_in"

ACT_FNS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    return ACT_FNS[name]


def kernel_init(config: ModelConfig, names: Sequence[str | None]):
    return nn.with_logical_partitioning(
        nn.initializers.normal(stddev=config.initializer_range), tuple(names)
    )


def zeros_init(names: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), tuple(names))


def ones_init(names: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), tuple(names))


class Dense(nn.Module):
    """A dense layer contracting the last `contract` input axes, with named kernel axes.

    Like `nn.DenseGeneral`, but the kernel is created at its full shape
    ([*inputs, *features]) so its logical names apply at initialization too
    (DenseGeneral initializes a flattened kernel and reshapes it, which breaks
    a sharding constraint inside a mesh).
    """

    features: tuple[int, ...]
    names: tuple[str | None, ...]
    contract: int
    use_bias: bool
    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = tuple(x.shape[-self.contract :]) + self.features
        if len(shape) != len(self.names):
            raise ValueError(f"kernel of shape {shape} needs {len(shape)} names, got {self.names}")
        kernel = self.param("kernel", kernel_init(self.config, self.names), shape, jnp.float32)
        if self.config.fake_quant:
            x, kernel = self._fake_quant(x, kernel)
        kept = x.ndim - self.contract
        x_idx = string.ascii_lowercase[: x.ndim]
        f_idx = string.ascii_uppercase[: len(self.features)]
        spec = f"{x_idx},{x_idx[kept:]}{f_idx}->{x_idx[:kept]}{f_idx}"
        y = matmul.einsum(spec, x, kernel, self.config)
        if self.use_bias:
            out_names = self.names[-len(self.features) :]
            bias = self.param("bias", zeros_init(out_names), self.features, jnp.float32)
            y = y + bias.astype(y.dtype)
        if self.config.fake_quant:  # the int8 file's FULLY_CONNECTED writes int8 too
            y = fake_quant.tracked_activation(
                y, self._range("output"), self.config.fake_quant_decay
            )
        return y

    def _fake_quant(self, x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The input over its tracked range, the kernel per output channel (mbert_jax/quant);
        the output is fake-quantized over its own range in `__call__`."""
        x = fake_quant.tracked_activation(x, self._range("input"), self.config.fake_quant_decay)
        return x, fake_quant.weight(kernel, tuple(range(self.contract)))

    def _range(self, point: str) -> jax.Array:
        return self.param(
            point + fake_quant.RANGE_SUFFIX,
            nn.with_logical_partitioning(range_init, (None,)),
            (2,),
            jnp.float32,
        )


def range_init(key, shape, dtype=jnp.float32):
    """MobileBERT's initial activation range, [-6, 6]."""
    del key
    return jnp.broadcast_to(jnp.asarray(fake_quant.INITIAL_RANGE, dtype), shape)


def dense(
    config: ModelConfig,
    features: int | tuple[int, ...],
    names: Sequence[str | None],
    *,
    axis: int | tuple[int, ...] = -1,
    use_bias: bool = True,
    name: str | None = None,
) -> Dense:
    """A `Dense` whose kernel has logical axis names `names` (inputs then outputs).

    `axis` is -1 (contract the last input axis) or (-2, -1) (the last two).
    """
    contract = 1 if isinstance(axis, int) else len(axis)
    return Dense(
        features=(features,) if isinstance(features, int) else tuple(features),
        names=tuple(names),
        contract=contract,
        use_bias=use_bias,
        config=config,
        name=name,
    )


class NoNorm(nn.Module):
    """MobileBERT's NoNorm: an elementwise affine map `x * scale + bias`, no statistics."""

    width_name: str = EMBED
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", ones_init((self.width_name,)), (features,), jnp.float32)
        bias = self.param("bias", zeros_init((self.width_name,)), (features,), jnp.float32)
        return x * scale.astype(self.dtype) + bias.astype(self.dtype)


def norm(
    config: ModelConfig, width_name: str, *, kind: str | None = None, name: str | None = None
) -> nn.Module:
    """The configured normalization (`kind` overrides it, e.g. the MLM head's real LayerNorm)."""
    kind = kind or config.normalization
    if kind == "no_norm":
        return NoNorm(width_name=width_name, dtype=config.compute_dtype, name=name)
    return nn.LayerNorm(
        epsilon=config.layer_norm_eps,
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        scale_init=ones_init((width_name,)),
        bias_init=zeros_init((width_name,)),
        name=name,
    )


def embed(
    config: ModelConfig, num: int, features: int, names: Sequence[str | None], name: str
) -> nn.Embed:
    return nn.Embed(
        num_embeddings=num,
        features=features,
        dtype=config.compute_dtype,
        param_dtype=jnp.float32,
        embedding_init=kernel_init(config, names),
        name=name,
    )


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Logical sharding constraint on an activation (a no-op outside a mesh with rules)."""
    return nn.with_logical_constraint(x, tuple(names))
