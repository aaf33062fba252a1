"""Mixed-precision matmuls (`ModelConfig.matmul_dtype`), checked against numpy.

Expected values: numpy float64 products of the operands rounded to bfloat16
(`ml_dtypes`), i.e. what "bf16 operands, float32 accumulation" means, for the
forward product and for both gradients (the incoming gradient rounded too).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util

from mbert_jax.distill.teacher import load_teacher, teacher_block
from mbert_jax.export.exporter import load_for_export
from mbert_jax.models import Model, io, variants
from mbert_jax.models.config import ConfigError
from mbert_jax.models.matmul import einsum
from mbert_jax.models.model import init_params
from mbert_jax.parallel import sharding as sharding_lib

MIXED = variants.get("bert_base", matmul_dtype="bfloat16")
FULL = variants.get("bert_base")


def bf16(x) -> np.ndarray:
    """`x` rounded to bfloat16 (round to nearest even), as float64."""
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)


def rand(key, shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


@pytest.mark.parametrize(
    "spec, a_shape, b_shape",
    [
        ("bld,df->blf", (2, 5, 16), (16, 24)),  # a dense layer
        ("bld,dhk->blhk", (2, 5, 16), (16, 3, 8)),  # a head-split projection
        ("blhk,hkd->bld", (2, 5, 3, 8), (3, 8, 16)),  # the attention output
        ("...d,vd->...v", (2, 5, 16), (40, 16)),  # the MLM output matrix
    ],
)
def test_mixed_product_and_gradients_round_operands_and_accumulate_in_float32(
    spec, a_shape, b_shape
):
    a, b = rand(0, a_shape), rand(1, b_shape)
    out, pullback = jax.vjp(lambda a, b: einsum(spec, a, b, MIXED), a, b)
    g = rand(2, out.shape)
    da, db = pullback(g)
    assert out.dtype == da.dtype == db.dtype == jnp.float32

    ins, outs = spec.replace("...", "xy").split("->")
    sa, sb = ins.split(",")
    np.testing.assert_allclose(out, np.einsum(spec, bf16(a), bf16(b)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        da, np.einsum(f"{outs},{sb}->{sa}", bf16(g), bf16(b)), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        db, np.einsum(f"{sa},{outs}->{sb}", bf16(a), bf16(g)), rtol=1e-5, atol=1e-5
    )
    # ... and is not the float32 product: bfloat16 keeps 8 bits of mantissa.
    full = np.einsum(spec, np.float64(a), np.float64(b))
    assert np.abs(np.asarray(out) - full).max() > 1e-4


@pytest.mark.parametrize(
    "spec, a_shape, b_shape",
    [("bld,df->blf", (2, 5, 16), (16, 24)), ("...d,vd->...v", (2, 5, 16), (40, 16))],
)
def test_default_is_the_plain_product_in_the_compute_dtype(spec, a_shape, b_shape):
    a, b = rand(0, a_shape), rand(1, b_shape)
    out, pullback = jax.vjp(lambda a, b: einsum(spec, a, b, FULL), a, b)
    np.testing.assert_array_equal(out, jnp.einsum(spec, a, b))
    # Its written-out backward pass: the float32 gradients of the product.
    g = rand(2, out.shape)
    da, db = pullback(g)
    ins, outs = spec.replace("...", "xy").split("->")
    sa, sb = ins.split(",")
    a64, b64, g64 = (np.asarray(x, np.float64) for x in (a, b, g))
    np.testing.assert_allclose(da, np.einsum(f"{outs},{sb}->{sa}", g64, b64), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, np.einsum(f"{sa},{outs}->{sb}", a64, g64), rtol=1e-5, atol=1e-5)
    assert da.dtype == db.dtype == jnp.float32
    low = variants.get("bert_base", dtype="bfloat16")
    assert einsum(spec, a, b, low).dtype == jnp.bfloat16


def test_hessian_vector_products_go_through_the_written_out_backward_pass():
    a, w, v = rand(0, (2, 5, 16)), rand(1, (16, 24)) * 0.1, rand(2, (16, 24))

    def hvp(product):
        grad = jax.grad(lambda w: jnp.sum(jnp.tanh(product(w))))
        return jax.jvp(grad, (w,), (v,))[1]

    ours = hvp(lambda w: einsum("bld,df->blf", a, w, FULL))
    np.testing.assert_allclose(
        ours, hvp(lambda w: jnp.einsum("bld,df->blf", a, w)), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("ij,jk", "two operands, explicit output"),
        ("ij,jk,kl->il", "two operands, explicit output"),
        ("ii,ij->j", "repeated index"),
        ("ij,jk->k", "summed alone"),
        ("ij,...->i", "first operand only"),
    ],
)
def test_a_spec_it_cannot_transpose_is_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        einsum(spec, jnp.ones((3, 3)), jnp.ones((3, 3)), MIXED)


def test_config_names_a_bad_matmul_dtype():
    with pytest.raises(ConfigError, match=r"ModelConfig.matmul_dtype: must be None or one of"):
        variants.get("bert_base", matmul_dtype="int8")


def test_mixed_model_is_close_to_float32_and_its_gradients_agree():
    cfg = variants.get("mobilebert_micro")
    ids = jax.random.randint(jax.random.key(3), (2, 16), 0, cfg.vocab_size)
    full = Model(cfg, heads=("mlm", "nsp"))
    mixed = Model(cfg.replace(matmul_dtype="bfloat16"), heads=("mlm", "nsp"))
    params = init_params(full, jax.random.key(0))

    def loss(model, p):
        out = model.apply({"params": p}, ids, jnp.ones_like(ids))
        return jnp.mean(jax.nn.log_softmax(out.mlm_logits)[..., 0]) + jnp.mean(out.nsp_logits)

    l_full, g_full = jax.value_and_grad(lambda p: loss(full, p))(params)
    l_mixed, g_mixed = jax.value_and_grad(lambda p: loss(mixed, p))(params)
    assert l_mixed != l_full  # the bf16 path ran
    np.testing.assert_allclose(l_mixed, l_full, rtol=1e-3)
    flat_full = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_full)])
    flat_mixed = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_mixed)])
    cosine = flat_full @ flat_mixed / np.linalg.norm(flat_full) / np.linalg.norm(flat_mixed)
    assert cosine > 0.9999


def test_teacher_block_sets_the_matmul_dtype_of_the_run():
    block = teacher_block("bert_base_micro", matmul_dtype="bfloat16")
    teacher = load_teacher(block, heads=("mlm",))
    assert teacher.run_config.matmul_dtype == "bfloat16"
    assert teacher.config.matmul_dtype is None
    assert (
        load_teacher(teacher_block("bert_base_micro"), heads=("mlm",)).run_config == teacher.config
    )
    block.matmul_dtype = "int4"
    with pytest.raises(ValueError, match=r"config.teacher.matmul_dtype='int4'"):
        load_teacher(block, heads=("mlm",))


def test_a_model_trained_in_mixed_precision_is_exported_in_float32(tmp_path):
    cfg = variants.get("mobilebert_micro", matmul_dtype="bfloat16")
    params = init_params(Model(cfg, heads=("mlm",)), jax.random.key(0))
    io.save_model(tmp_path / "model", cfg, ("mlm",), params)
    assert io.load_config(tmp_path / "model")[0].matmul_dtype == "bfloat16"  # kept on disk
    loaded = load_for_export(tmp_path / "model")
    assert (loaded.config.dtype, loaded.config.matmul_dtype) == ("float32", None)


def test_a_mixed_teacher_holds_its_matmul_weights_in_bf16_with_the_same_outputs():
    block = teacher_block("mobilebert_micro", matmul_dtype="bfloat16")
    teacher = load_teacher(block, heads=("mlm", "nsp"))
    held = teacher.host_params()
    dtypes = {k: v.dtype for k, v in traverse_util.flatten_dict(held, sep="/").items()}
    abstract = traverse_util.flatten_dict(sharding_lib.unbox(teacher.abstract()), sep="/")
    assert {k: s.dtype for k, s in abstract.items()} == dtypes
    matmul_only = {k for k in dtypes if k.endswith(("/kernel", "/extra_output_weights"))}
    assert any(k.endswith("extra_output_weights") for k in matmul_only)
    assert {k for k, d in dtypes.items() if d == jnp.bfloat16} == matmul_only
    assert dtypes["encoder/embeddings/word_embeddings/embedding"] == np.float32  # also looked up
    full = teacher.host_params("float32")
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(full))

    ids = jax.random.randint(jax.random.key(3), (2, 16), 0, teacher.config.vocab_size)
    apply = jax.jit(
        lambda p: teacher.model.apply(
            {"params": p}, ids, jnp.ones_like(ids), output_hidden_states=True
        )
    )
    out_held, out_full = apply(held), apply(full)
    for a, b in zip(jax.tree.leaves(out_held), jax.tree.leaves(out_full), strict=True):
        np.testing.assert_array_equal(a, b)
    # A teacher without mixed matmuls holds everything in its dtype.
    plain = load_teacher(teacher_block("mobilebert_micro"), heads=("mlm",)).host_params()
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(plain))
