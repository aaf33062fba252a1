"""The shared teacher loader: subtree reads, checks naming the field, dtype, mesh context."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbert_jax import tree
from mbert_jax.data import config as data_config
from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.distill import theseus
from mbert_jax.models import Model, init_params, io, param_shapes, variants
from mbert_jax.parallel import mesh as mesh_lib
from mbert_jax.parallel import sharding as sharding_lib

BF16 = jnp.dtype(jnp.bfloat16)


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A micro BERT directory with MLM and NSP heads (host-drawn parameters, nothing compiles)."""
    d = tmp_path_factory.mktemp("teacher")
    cfg = variants.get("bert_base_micro")
    params = teacher_lib.host_init(param_shapes(Model(cfg, ("mlm", "nsp"))), 0.02, seed=1)
    io.save_model(d / "bert", cfg, ("mlm", "nsp"), params)
    io.save_model(d / "narrow", cfg.replace(intermediate_size=128), ("mlm",), params)
    return d, cfg, params


def test_a_directory_teacher_reads_only_the_subtrees_it_needs(stored):
    d, cfg, params = stored
    assert io.load_config(d / "bert") == (cfg, ("mlm", "nsp"))
    block = teacher_lib.teacher_block(path=str(d / "bert"), dtype="bfloat16")
    t = teacher_lib.load_teacher(block, heads=("mlm",), vocab_size=cfg.vocab_size)
    flat = t.read()
    assert {k.split("/")[0] for k in flat} == {"encoder", "mlm"}
    want = tree.flat(params)
    assert all(v.dtype == np.float32 and np.array_equal(v, want[k]) for k, v in flat.items())
    assert set(t.read(("encoder/embeddings/",))) == {
        k for k in want if k.startswith("encoder/embeddings/")
    }
    held = t.host_params()
    assert set(held) == {"encoder", "mlm"}
    assert {x.dtype for x in jax.tree.leaves(held)} == {BF16}
    boxed = jax.tree.leaves(t.abstract(), is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert all(isinstance(x, nn.Partitioned) for x in boxed)  # logical axes, for sharding
    assert {x.value.dtype for x in boxed} == {BF16}
    assert t.model.config.dtype == "bfloat16" and t.config.dtype == "float32"


def test_errors_name_the_config_field(stored):
    d, cfg, _ = stored
    block = teacher_lib.teacher_block(path=str(d / "bert"))
    with pytest.raises(ValueError, match=r"config\.teacher\.path=.*needs \['classifier'\]"):
        teacher_lib.load_teacher(block, heads=("classifier",))
    with pytest.raises(ValueError, match=r"config\.data: .*7 tokens.*mlm_teacher\.path="):
        teacher_lib.load_teacher(block, heads=("mlm",), what="augment.mlm_teacher", vocab_size=7)
    narrow = teacher_lib.teacher_block(path=str(d / "narrow"))
    with pytest.raises(ValueError, match=r"config\.teacher\.path=.*do not match.*other shapes"):
        teacher_lib.load_teacher(narrow, heads=("mlm",)).read()
    with pytest.raises(ValueError, match=r"config\.teacher\.path=.*not a model directory"):
        teacher_lib.read_config(teacher_lib.teacher_block(path=str(d / "missing")))
    with pytest.raises(ValueError, match=r"config\.teacher\.dtype='float16'"):
        teacher_lib.load_teacher(teacher_lib.teacher_block(dtype="float16"), heads=())
    both = teacher_lib.teacher_block("bert_base_micro", dtype="bfloat16")
    both.overrides.dtype = "float32"
    with pytest.raises(ValueError, match=r"config\.teacher\.overrides\.dtype"):
        teacher_lib.read_config(both)
    with pytest.raises(ValueError, match=r"config\.teacher\.path=.*not a model directory"):
        teacher_lib.teacher_data_config(data_config.pretraining_data_defaults(), str(d / "missing"))


def test_a_random_teacher_is_drawn_on_the_host_even_inside_the_trainers_mesh(caplog):
    block = teacher_lib.teacher_block("bert_base_micro", seed=3, dtype="bfloat16")
    t = teacher_lib.load_teacher(block, heads=("mlm",), vocab_size=100)
    assert "RANDOMLY INITIALIZED" in caplog.text
    assert t.path is None and t.config.vocab_size == 100
    mesh = mesh_lib.make_mesh(mesh_lib.default_mesh_config(), jax.devices())
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding_lib.rules_from_config(())):
        held = t.host_params()
    assert {x.dtype for x in jax.tree.leaves(held)} == {BF16}
    copy = t.read()  # float32, the same draws
    np.testing.assert_array_equal(
        copy["mlm/output_bias"], np.zeros(100, np.float32)
    )  # biases are zeros
    table = copy["encoder/embeddings/word_embeddings/embedding"]
    assert table.dtype == np.float32 and abs(table.std() - 0.02) < 0.002
    np.testing.assert_array_equal(
        held["encoder"]["embeddings"]["word_embeddings"]["embedding"], table.astype(BF16)
    )


def test_a_bf16_predecessor_runs_in_the_mixed_forward():
    cfg = variants.get("bert_base_micro", vocab_size=64, num_labels=3)
    predecessor = Model(cfg.replace(dtype="bfloat16"), heads=("classifier",))
    successor = Model(cfg.replace(num_layers=3), heads=("classifier",))
    pred_params = init_params(Model(cfg, heads=("classifier",)), jax.random.PRNGKey(1))
    params = theseus.successor_from_predecessor(pred_params, (1, 3, 5))
    held = jax.tree.map(lambda x: x.astype(jnp.bfloat16), pred_params)
    replacer = theseus.ModuleReplacer(successor, predecessor)
    ids = jnp.ones((2, 8), jnp.int32)
    batch = {"input_ids": ids, "attention_mask": ids, "token_type_ids": jnp.zeros_like(ids)}
    choose = jnp.asarray([True, False, True])
    logits = jax.jit(lambda p, q: replacer.logits(p, q, batch, choose, train=False))(params, held)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


def test_a_truncated_teacher_file_is_one_line_naming_it_and_no_run_starts(stored, tmp_path):
    import shutil

    from mbert_jax.train import cli
    from mbert_jax.train import config as config_lib

    d, cfg, _ = stored
    damaged = tmp_path / "bert"
    shutil.copytree(d / "bert", damaged)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(cfg.vocab_size - len(specials))]
    (damaged / io.VOCAB_FILE).write_text("\n".join(specials + words) + "\n")
    params = damaged / io.PARAMS_FILE
    params.write_bytes(params.read_bytes()[:-1000])
    block = teacher_lib.teacher_block(path=str(damaged))
    with pytest.raises(io.UnreadableFileError, match=r"params\.safetensors: cannot be read \("):
        teacher_lib.load_teacher(block, heads=("mlm",)).read()
    module, arg = config_lib.load_config_module("configs/tinybert_general.py:runlocal")
    config = config_lib.apply_overrides(module.get_config(arg), {"teacher.path": str(damaged)})
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.run_config(config, str(workdir))
    text = str(exit_info.value.code)
    assert text.startswith(f"error: {params}: cannot be read (") and "\n" not in text, text
    # The teacher is read once the run starts: no step is saved and no model written.
    ckpts = workdir / "checkpoints"
    assert not (ckpts.exists() and any(ckpts.iterdir())) and not (workdir / "model").exists()
