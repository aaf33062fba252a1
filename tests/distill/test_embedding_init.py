"""Factorized embedding initialization (`distill/embedding_init.py`) against numpy, and its
TinyBERT hook (`config.distill.init_embeddings="factorized"`).

Expected values come from the eigenvectors of the teacher table's Gram
matrix (not from an SVD, as the code under test), compared through
quantities that do not depend on the signs of singular vectors: the rank-k
approximation W_k and the projector P P^T onto the student's width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mbert_jax import tree
from mbert_jax.distill import embedding_init
from mbert_jax.distill.teacher import host_init, teacher_block
from mbert_jax.distill.tinybert import recipe as tinybert
from mbert_jax.models import Model, io, param_shapes, variants
from mbert_jax.models.embeddings import Embeddings
from mbert_jax.train.config import base_config, model_block
from mbert_jax.train.inputs import synthetic_data_config

E = "encoder/embeddings/"
RNG = np.random.default_rng(0)
IDS = RNG.integers(0, 2048, (3, 10))
TYPES = (RNG.random((3, 10)) < 0.5).astype(np.int32)


def top_vectors(table, k):
    """The top-k eigenvectors of table^T table (the top right singular vectors of the table)."""
    _, vectors = np.linalg.eigh(table.T @ table)  # ascending
    return vectors[:, ::-1][:, :k]


def rank_k(table, k):
    top = top_vectors(table, k)
    return table @ top @ top.T


def teacher_params(config, seed=1):
    shapes = param_shapes(Model(config))
    return tree.flat(host_init(shapes, 0.02, seed=seed))


def embed(config, leaves, ids=IDS, types=TYPES):
    """The student's embedding output (its own Embeddings module) for `leaves` (flat, E-keys)."""
    params = io.unflatten({k[len(E) :]: v for k, v in leaves.items() if k.startswith(E)})
    out = Embeddings(config).apply({"params": params}, jnp.asarray(ids), jnp.asarray(types))
    return np.asarray(out, np.float64)


def pre_norm(teacher, ids=IDS, types=TYPES, k=None, student_types=True):
    """The teacher's pre-norm embedding, its word table replaced by its rank-k approximation."""
    word = teacher[E + "word_embeddings/embedding"].astype(np.float64)
    word = rank_k(word, k) if k else word
    x = word[ids] + teacher[E + "position_embeddings/embedding"][None, : ids.shape[1]]
    type_table = teacher[E + "token_type_embeddings/embedding"]
    return x + (type_table[types] if student_types else type_table[0])


TEACHER = variants.get("bert_base_micro")  # 64 wide, LayerNorm, vocab 2048


@pytest.mark.parametrize("transform", ["trigram", "dense"])
def test_student_as_wide_as_the_teacher_starts_from_the_rank_k_approximation(transform):
    student = variants.get(
        "mobilebert_micro", embedding_size=16, embedding_transform=transform, num_heads=4
    )
    teacher = teacher_params(TEACHER)
    leaves, basis = embedding_init.factorized_embeddings(teacher, TEACHER, student)
    np.testing.assert_array_equal(basis, np.eye(64))  # same width: the teacher's coordinates
    assert leaves[E + "word_embeddings/embedding"].shape == (2048, 16)
    assert not any("norm" in k for k in leaves)  # NoNorm student, LayerNorm teacher
    leaves[E + "norm/scale"], leaves[E + "norm/bias"] = np.ones(64), np.zeros(64)  # identity
    np.testing.assert_allclose(embed(student, leaves), pre_norm(teacher, k=16), atol=1e-6)


def test_full_rank_reproduces_the_teacher_and_copies_a_same_kind_norm():
    student = variants.get(
        "mobilebert_micro", embedding_size=64, normalization="layer_norm", num_heads=4
    )
    teacher = teacher_params(TEACHER)
    teacher[E + "norm/scale"] = RNG.normal(1.0, 0.1, 64).astype(np.float32)
    leaves, _ = embedding_init.factorized_embeddings(teacher, TEACHER, student)
    np.testing.assert_array_equal(leaves[E + "norm/scale"], teacher[E + "norm/scale"])
    teacher_out = embed(TEACHER, teacher)  # the teacher's own embedding output
    np.testing.assert_allclose(embed(student, leaves), teacher_out, atol=2e-5)


def test_narrower_student_projects_on_the_teachers_principal_subspace():
    # ALBERT-style: E = 8, a dense projection to 48 < 64; no token types (folded into positions).
    student = variants.get(
        "tinybert4_micro", embedding_size=8, embedding_transform="dense", type_vocab_size=0
    )
    teacher = teacher_params(TEACHER)
    leaves, basis = embedding_init.factorized_embeddings(teacher, TEACHER, student)
    assert basis.shape == (64, 48)
    np.testing.assert_allclose(basis.T @ basis, np.eye(48), atol=1e-5)
    word = teacher[E + "word_embeddings/embedding"].astype(np.float64)
    top = top_vectors(word, 48)
    np.testing.assert_allclose(basis @ basis.T, top @ top.T, atol=1e-4)  # the PCA subspace
    leaves[E + "norm/scale"], leaves[E + "norm/bias"] = np.ones(48), np.zeros(48)
    student = student.replace(normalization="no_norm")  # read the pre-norm output
    x = embed(student, leaves)
    # Mapped back by P^T, the student's embedding is the teacher's rank-8 one on that subspace.
    want = pre_norm(teacher, k=8, student_types=False) @ top @ top.T
    np.testing.assert_allclose(x @ basis.T, want, atol=1e-5)


def test_a_teacher_without_token_types_gives_zero_type_tables():
    teacher_cfg = TEACHER.replace(type_vocab_size=0)
    teacher = teacher_params(teacher_cfg)
    student = variants.get("tinybert4_micro", hidden_size=64)
    leaves, _ = embedding_init.factorized_embeddings(teacher, teacher_cfg, student)
    np.testing.assert_array_equal(leaves[E + "token_type_embeddings/embedding"], 0.0)
    np.testing.assert_allclose(
        leaves[E + "word_embeddings/embedding"], teacher[E + "word_embeddings/embedding"], atol=1e-5
    )


@pytest.mark.parametrize(
    "teacher, student, message",
    [
        (variants.get("ibbert_large_micro"), variants.get("mobilebert_micro"), "trigram"),
        (TEACHER, variants.get("bert_base_micro", hidden_size=128), r"hidden_size=128"),
        (
            TEACHER,
            variants.get("albert_base_micro", embedding_size=96, hidden_size=128),
            r"hidden_size=128",
        ),
        (
            TEACHER.replace(hidden_size=32, num_heads=4),
            variants.get("albert_base_micro", hidden_size=32, embedding_size=48),
            r"embedding_size=48.*rank at most 32",
        ),
        (TEACHER, variants.get("tinybert4_micro", max_position_embeddings=256), "positions"),
        (TEACHER, variants.get("tinybert4_micro", type_vocab_size=3), "token types"),
    ],
)
def test_impossible_factorizations_fail_naming_the_field(teacher, student, message):
    with pytest.raises(ValueError, match=message):
        embedding_init.check(student, teacher, teacher_name="config.teacher.variant=x")


# ------------------------------------------------------------------- TinyBERT hook
def tinybert_config(student, init="factorized", **overrides):
    c = base_config("distill_tinybert")
    c.teacher = teacher_block("bert_base_micro")
    c.student = model_block(student, **overrides)
    c.init_from = ""
    c.distill = ml_collections.ConfigDict(
        dict(
            mode="general",
            layer_map="uniform",
            loss_weights=dict(attention=1.0, hidden=1.0, embedding=1.0),
            official_losses=False,
            shared_projection=False,
            projection_bias=False,
            init_embeddings=init,
        )
    )
    c.data = synthetic_data_config(nsp=False, global_batch_size=4, max_seq_length=16)
    return c


def fresh_overridden(recipe):
    shapes = nn.meta.unbox(jax.eval_shape(recipe.init_params, jax.random.PRNGKey(0)))
    fresh = host_init(shapes, 0.02, seed=5)
    return fresh, recipe.initial_overrides(fresh)


def test_tinybert_factorized_init_of_an_albert_style_student():
    # E = 16 with a dense projection to 48, from the 64-wide teacher.
    c = tinybert_config("tinybert4_micro", embedding_size=16, embedding_transform="dense")
    recipe = tinybert.TinyBertRecipe(c)
    fresh, params = fresh_overridden(recipe)
    teacher = recipe.teacher_spec.read((E,))
    student = tree.flat(params["student"])
    w_e = np.asarray(params["proj"]["embedding_kernel"], np.float64)
    assert w_e.shape == (48, 64)
    np.testing.assert_allclose(w_e @ w_e.T, np.eye(48), atol=1e-5)  # W_e = P^T
    # The student's norm (48 wide) keeps its initialization; read the output before it.
    np.testing.assert_array_equal(student[E + "norm/scale"], np.ones(48))
    x = embed(recipe.student_config.replace(normalization="no_norm"), student)
    word = teacher[E + "word_embeddings/embedding"].astype(np.float64)
    top = top_vectors(word, 48)
    np.testing.assert_allclose(x @ w_e, pre_norm(teacher, k=16) @ top @ top.T, atol=1e-5)
    # Blocks and the hidden projection keep their initialization.
    flat_fresh = tree.flat(fresh)
    for key in (
        "student/encoder/layers_0/attention/self_attention/query/kernel",
        "proj/hidden_kernel",
    ):
        np.testing.assert_array_equal(tree.flat(params)[key], flat_fresh[key])


def test_tinybert_factorized_init_at_the_teachers_width_copies_the_norm():
    c = tinybert_config("albert_base_micro", num_layers=3)  # 64 wide, E = 16, LayerNorm
    recipe = tinybert.TinyBertRecipe(c)
    _, params = fresh_overridden(recipe)
    teacher = recipe.teacher_spec.read((E,))
    student = tree.flat(params["student"])
    np.testing.assert_array_equal(student[E + "norm/scale"], teacher[E + "norm/scale"])
    np.testing.assert_array_equal(params["proj"]["embedding_kernel"], np.eye(64))
    x = embed(recipe.student_config.replace(normalization="no_norm"), student)
    np.testing.assert_allclose(x, pre_norm(teacher, k=16), atol=1e-5)


def test_tinybert_default_and_bad_settings():
    c = tinybert_config("tinybert4_micro", init="random")
    recipe = tinybert.TinyBertRecipe(c)
    fresh, params = fresh_overridden(recipe)
    assert params is fresh
    with pytest.raises(ValueError, match=r"config\.distill\.init_embeddings='svd'"):
        tinybert.TinyBertRecipe(tinybert_config("tinybert4_micro", init="svd"))
    c = tinybert_config("tinybert4_micro")
    c.init_from = "runs/general/model"
    with pytest.raises(ValueError, match=r"init_embeddings='factorized'.*config\.init_from"):
        tinybert.TinyBertRecipe(c)
