"""The model's weight matmuls, with an optional lower operand dtype (`ModelConfig.matmul_dtype`).

`einsum(spec, a, b, config)` is every product of activations with a weight
(all dense layers, the MLM output matrix). By default it is `jnp.einsum` in
the compute dtype (`config.dtype`), with its backward pass written out
(below) when that is float32.

With `matmul_dtype="bfloat16"` and `dtype="float32"` (mixed precision), the
two operands are rounded to bfloat16 and the product is accumulated in
float32 (`preferred_element_type`), forward and backward: the incoming
gradient is rounded to bfloat16 too, and both operand gradients are
accumulated in float32. Everything between the matmuls (norms, softmax,
activations, residual adds, dropout), the parameters and the optimizer stay
float32. That is how TPUs run float32 matmuls at default precision, and it
is what makes CPUs with AVX512-BF16 do a matmul at about twice the float32
rate.

Attention's two products (scores and context: activations with activations,
under 5% of the FLOPs at sequence 128) stay in the compute dtype: XLA:CPU
(jax 0.10.2) cannot run one of their backward products with bfloat16
operands and a float32 result ("Unsupported element type for
DotThunk::Execute: BF16 x BF16 = F32").

The backward pass is written out (`jax.custom_vjp`): each operand's
gradient is one einsum of the other operand with the incoming gradient.
With bfloat16 operands, JAX's own transpose of a float32-accumulating
product multiplies the float32 gradient by the bfloat16 operand, which XLA
computes as a float32 matmul: the backward pass, two thirds of the FLOPs,
would not get faster. In float32 the written-out pass computes the same
products, but XLA:CPU (jax 0.10.2) runs the weight-gradient products of
JAX's own transpose with its generic dot kernel and those of the written-out
pass with its YNNPACK library kernel, as it runs the forward products (the
compiled MobileBERT step: 267 generic dots -> 0): on the development CPU
the float32 MobileBERT training step got ~12% faster, BERT-base ~2%
(benchmarks/results/train_throughput.md). A `custom_vjp` has
no forward mode of its own: `jax.jvp` / `jax.jacfwd` of a model fail with a
TypeError, while Hessian-vector products (`jax.jvp` of `jax.grad`, or
`jax.grad` of a gradient) work (tests/test_matmul.py).
"""

from __future__ import annotations

import functools
import string

import jax
import jax.numpy as jnp

from mbert_jax.models.config import ModelConfig

# The parameters used only as the weight operand of `einsum`: every dense
# kernel and the MLM head's untied output part (the word table is also looked
# up, so it is not one of them).
OPERAND_ONLY = ("kernel", "extra_output_weights")


def frozen_dtype(name: str, config: ModelConfig) -> jnp.dtype:
    """The dtype a frozen model (a teacher) holds its parameter `name` in.

    Weights in `OPERAND_ONLY` in the matmul operand dtype, the rest in the
    compute dtype. Rounding a weight once on the host is what `einsum` does to
    it on every step, so a frozen model held this way gives the same outputs,
    bit for bit, without that per-step cast (and in less memory).
    """
    return config.compute_matmul_dtype if name in OPERAND_ONLY else config.compute_dtype


def einsum(spec: str, a: jax.Array, b: jax.Array, config: ModelConfig) -> jax.Array:
    """`jnp.einsum(spec, a, b)` in `config.compute_dtype`, operands in `config.matmul_dtype`.

    `spec` is a two-operand einsum ("bld,df->blf"); it may use "..." in the
    first operand and the output. Operands are cast to the compute dtype,
    which is also the result's dtype.
    """
    dtype = config.compute_dtype
    a, b = a.astype(dtype), b.astype(dtype)
    operand = config.compute_matmul_dtype
    if operand == dtype != jnp.float32:  # bfloat16 throughout: JAX's own backward pass
        return jnp.einsum(spec, a, b)
    return _product(_explicit(spec, a.ndim), operand, a, b)


def _explicit(spec: str, a_ndim: int) -> str:
    """`spec` with "..." replaced by letters, checked for a contraction `_product` can transpose."""
    if "->" not in spec or spec.count(",") != 1:
        raise ValueError(f"einsum spec {spec!r} must be 'a,b->out' (two operands, explicit output)")
    ins, out = spec.replace(" ", "").split("->")
    a, b = ins.split(",")
    if "..." in a:
        free = [c for c in string.ascii_letters if c not in spec]
        ell = "".join(free[: a_ndim - (len(a) - 3)])
        a, out = a.replace("...", ell), out.replace("...", ell)
    if "..." in b or "..." in out:
        raise ValueError(f"einsum spec {spec!r}: '...' is supported in the first operand only")
    for name, x, other in (("first", a, b), ("second", b, a)):
        if len(set(x)) != len(x):
            raise ValueError(f"einsum spec {spec!r}: repeated index in the {name} operand")
        lone = [c for c in x if c not in other and c not in out]
        if lone:
            raise ValueError(
                f"einsum spec {spec!r}: index {lone} of the {name} operand is summed alone; "
                "sum it before the product"
            )
    return f"{a},{b}->{out}"


def _accumulate(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _product(spec: str, operand: jnp.dtype, a: jax.Array, b: jax.Array) -> jax.Array:
    """The product of `a` and `b` (both of one dtype) on `operand` operands, in their dtype."""
    return _product_fwd(spec, operand, a, b)[0]


def _product_fwd(spec, operand, a, b):
    a_low, b_low = a.astype(operand), b.astype(operand)
    return _accumulate(spec, a_low, b_low).astype(a.dtype), (a_low, b_low)


def _product_bwd(spec, operand, residuals, g):
    a_low, b_low = residuals
    ins, out = spec.split("->")
    a, b = ins.split(",")
    g_low = g.astype(operand)
    da = _accumulate(f"{out},{b}->{a}", g_low, b_low)
    db = _accumulate(f"{a},{out}->{b}", a_low, g_low)
    return da.astype(g.dtype), db.astype(g.dtype)  # g has the operands' dtype


_product.defvjp(_product_fwd, _product_bwd)
