"""Student blocks copied from teacher layers (`distill/layer_init.py`): TinyBERT's
`config.distill.init_layers`, alone and with factorized embeddings.

The expected student is built by hand: the teacher's flat parameters with
layers 0, 2, 4 renamed 0, 1, 2, run as a 3-layer model of the teacher's shape.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mbert_jax import tree
from mbert_jax.distill.teacher import host_init, teacher_block
from mbert_jax.distill.tinybert import recipe as tinybert
from mbert_jax.models import Model, io, variants
from mbert_jax.train.config import base_config, model_block
from mbert_jax.train.inputs import synthetic_data_config

LAYERS = (0, 2, 4)
RNG = np.random.default_rng(0)
IDS = jnp.asarray(RNG.integers(0, 2048, (2, 12)))
MASK = jnp.asarray(np.array([[1] * 12, [1] * 7 + [0] * 5], np.int32))


def config(init_layers=LAYERS, init="random", **overrides):
    c = base_config("distill_tinybert")
    c.teacher = teacher_block("bert_base_micro")  # 6 layers, 64 wide
    fields = dict(num_layers=3, hidden_dropout=0.0, attention_dropout=0.0)
    c.student = model_block("bert_base_micro", **{**fields, **overrides})
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
            init_layers=tuple(init_layers),
        )
    )
    c.data = synthetic_data_config(nsp=False, global_batch_size=4, max_seq_length=16)
    return c


def initialized(recipe):
    shapes = nn.meta.unbox(jax.eval_shape(recipe.init_params, jax.random.PRNGKey(0)))
    fresh = host_init(shapes, 0.02, seed=5)
    return fresh, recipe.initial_overrides(fresh)


def hidden_states(model_config, flat_params):
    params = io.unflatten(flat_params)
    out = Model(model_config, heads=()).apply(
        {"params": params}, IDS, MASK, jnp.zeros_like(IDS), output_hidden_states=True
    )
    return [np.asarray(h) for h in out.encoder.hidden_states]


def test_student_layers_are_the_chosen_teacher_layers():
    recipe = tinybert.TinyBertRecipe(config())
    fresh, params = initialized(recipe)
    teacher = recipe.teacher_spec.read(("encoder/",))
    student = tree.flat(params["student"])
    for i, t in enumerate(LAYERS):
        keys = [k for k in teacher if k.startswith(f"encoder/layers_{t}/")]
        assert keys
        for key in keys:
            mine = key.replace(f"layers_{t}/", f"layers_{i}/")
            np.testing.assert_array_equal(student[mine], teacher[key])
    # Embeddings stay as initialized (init_embeddings="random").
    key = "encoder/embeddings/word_embeddings/embedding"
    np.testing.assert_array_equal(student[key], tree.flat(fresh["student"])[key])


def test_with_full_rank_factorized_embeddings_the_student_is_the_layer_dropped_teacher():
    recipe = tinybert.TinyBertRecipe(config(init="factorized"))  # E = H = 64
    _, params = initialized(recipe)
    teacher = recipe.teacher_spec.read(("encoder/",))
    dropped = {k: v for k, v in teacher.items() if not k.startswith("encoder/layers_")}
    for i, t in enumerate(LAYERS):
        prefix = f"encoder/layers_{t}/"
        dropped.update(
            {
                f"encoder/layers_{i}/" + k[len(prefix) :]: v
                for k, v in teacher.items()
                if k.startswith(prefix)
            }
        )
    shape = variants.get("bert_base_micro").replace(num_layers=3)
    want = hidden_states(shape, dropped)
    have = hidden_states(recipe.student_config, tree.flat(params["student"]))
    assert len(have) == len(want) == 3
    for h, w in zip(have, want):
        np.testing.assert_allclose(h, w, atol=1e-4)


@pytest.mark.parametrize(
    "init_layers, overrides, message",
    [
        ((0, 2), {}, r"init_layers has 2 entries for a 3-layer student"),
        ((0, 2, 6), {}, r"the teacher has layers 0\.\.5"),
        (LAYERS, dict(hidden_size=48, intermediate_size=192), r"layers_0 from the teacher's"),
    ],
)
def test_bad_init_layers_fail_at_construction(init_layers, overrides, message):
    with pytest.raises(ValueError, match=message):
        tinybert.TinyBertRecipe(config(init_layers, **overrides))


def test_init_layers_with_init_from_is_refused():
    c = config()
    c.init_from = "runs/general/model"
    with pytest.raises(ValueError, match=r"config\.distill\.init_layers=\[0, 2, 4\].*init_from"):
        tinybert.TinyBertRecipe(c)
