"""The real preset's non-training phases on small random models (fast): the TinyBERT
student's start (the fine-tuned teacher's blocks 0, 2, 4, with or without some of their FFN
neurons), the students' vocabulary pruning
and its dev accuracy, against an independent computation (transformers' tokenizer,
`Model.apply`, numpy)."""

import json

import jax
import numpy as np
import transformers

from mbert_jax.models import Model, io, variants
from mbert_jax.models.model import init_params
from mbert_jax.quickstart import exports, real, real_report
from mbert_jax.quickstart.phases import load_config

VOCAB = real.minilm_dir() / "vocab.txt"  # bert-base-uncased's 30,522 tokens


def classifier(path, num_layers=2):
    labels = ("original", "swapped")
    cfg = variants.get(
        "bert_base_micro",
        vocab_size=30522,
        num_layers=num_layers,
        num_labels=2,
        label_names=labels,
        max_position_embeddings=64,
    )
    params = init_params(Model(cfg, heads=("classifier",)), jax.random.PRNGKey(1))
    return io.save_model(path, cfg, ("classifier",), params, VOCAB)


def independent_accuracy(model_dir, rows, seq_len=48):
    tok = transformers.BertTokenizerFast.from_pretrained(str(model_dir), do_lower_case=True)
    enc = tok(
        [t for t, _ in rows],
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="np",
    )
    config, heads, params = io.load_model(model_dir)
    out = Model(config, heads).apply(
        {"params": params}, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    )
    gold = np.array([config.label_names.index(label) for _, label in rows])
    return float((np.asarray(out.logits).argmax(-1) == gold).mean())


def test_tinybert_init_keeps_the_teachers_blocks_0_2_4(tmp_path):
    q = load_config("quickstart", "real")
    q.tinybert_neurons = 0.0  # whole blocks (the preset's default prunes 1/4 of the neurons)
    teacher = classifier(tmp_path / "teacher_wordorder" / "model", num_layers=6)
    out = real.tinybert_init(q, "wordorder", tmp_path)
    config, heads = io.load_config(out)
    assert config.num_layers == 3 and heads == ("classifier",)
    a, b = io.read_safetensors(teacher / io.PARAMS_FILE), io.read_safetensors(out / io.PARAMS_FILE)
    for i, t in enumerate((0, 2, 4)):
        for key in (k for k in a if k.startswith(f"encoder/layers_{t}/")):
            np.testing.assert_array_equal(b[key.replace(f"layers_{t}/", f"layers_{i}/")], a[key])
    for key in ("encoder/embeddings/word_embeddings/embedding", "classifier/dense/kernel"):
        if key in a:
            np.testing.assert_array_equal(b[key], a[key])


def test_tinybert_init_removes_a_fraction_of_ffn_neurons_as_slices(tmp_path):
    """`tinybert_neurons=0.25`: each kept block keeps 3/4 of its FFN neurons, the teacher's
    own columns (in order) of the FFN input kernel and bias and rows of its output kernel;
    everything else as the teacher's. Which neurons: tests/prune/test_recipe.py."""
    q = load_config("quickstart", "real")
    q.tinybert_neurons = 0.25
    teacher = classifier(tmp_path / "teacher_wordorder" / "model", num_layers=6)
    out = real.tinybert_init(q, "wordorder", tmp_path)
    width = io.load_config(teacher)[0].intermediate_size
    config, _ = io.load_config(out)
    assert config.num_layers == 3 and config.intermediate_size == width - width // 4
    a, b = io.read_safetensors(teacher / io.PARAMS_FILE), io.read_safetensors(out / io.PARAMS_FILE)
    ffn = "encoder/layers_{}/ffn/ffn_0/intermediate/kernel"
    for i, t in enumerate((0, 2, 4)):
        full, kept = a[ffn.format(t)], b[ffn.format(i)]
        # The teacher's column each kept column is (random columns: no two alike).
        idx = [int(np.flatnonzero((full == kept[:, [j]]).all(0))[0]) for j in range(kept.shape[1])]
        assert idx == sorted(set(idx)) and len(idx) == width - width // 4
        for key in (k for k in a if k.startswith(f"encoder/layers_{t}/")):
            got, want = b[key.replace(f"layers_{t}/", f"layers_{i}/")], a[key]
            if want.shape != got.shape:
                axis = want.shape.index(width)
                want = np.take(want, idx, axis=axis)
            np.testing.assert_array_equal(got, want, err_msg=key)
    assert real_report.label("tinybert_wordorder_vocab", q) == (
        "TinyBERT student (teacher blocks 0, 2, 4, 25% of FFN neurons pruned + task)"
    )


def test_vocabulary_pruning_phase_and_its_dev_accuracy(tmp_path):
    q = load_config("quickstart", "real")
    classifier(tmp_path / "tinybert_wordorder" / "model")
    real.prune_vocabulary(q, "tinybert_wordorder", "wordorder", tmp_path)
    run = tmp_path / "tinybert_wordorder_vocab"
    results = json.loads((run / "results.json").read_text())
    v = results["vocabulary"]
    assert 1000 < v["kept"] < v["of"] == 30522
    assert io.load_config(run / "model")[0].vocab_size == v["kept"]
    assert 0 <= v["dev_unknown_rate"] <= v["dev_changed_rate"] < 0.2
    dev = exports.corpus_rows("wordorder", "dev")
    assert results["eval"]["examples"] == len(dev) == 2000
    assert abs(results["eval"]["accuracy"] - independent_accuracy(run / "model", dev)) < 1e-9
    # Done phases are skipped: the results stay as they were.
    stamp = (run / "results.json").stat().st_mtime_ns
    real.prune_vocabulary(q, "tinybert_wordorder", "wordorder", tmp_path)
    assert (run / "results.json").stat().st_mtime_ns == stamp
