"""TinyBERT augmentation on a hand-built vocabulary and a tiny teacher with known answers.

The teacher's MLM output bias is set so that its top tokens do not depend
on the context (dog > red > big, after [UNK] and ##s, which must be
skipped), and its word embeddings are set so that the nearest whole-word
tokens of the mean of `un` + `##happy` are known: sad, glum, happy, un.
"""

import json
import types
from pathlib import Path

import jax
import numpy as np
import pytest

from mbert_jax.data import build_task_data, task_data_defaults
from mbert_jax.data.report import InputReport
from mbert_jax.data.tables import Table
from mbert_jax.data.tasks import glue
from mbert_jax.data.tokenizer import WordPieceTokenizer
from mbert_jax.distill.teacher import teacher_block
from mbert_jax.distill.tinybert import augment, augment_custom
from mbert_jax.models import Model, init_params, io, variants

VOCAB_TEXT = "[PAD] [UNK] [CLS] [SEP] [MASK] the cat sat on mat dog red big happy sad glum un"
VOCAB = [*VOCAB_TEXT.split(), "##happy", "##s", ".", ",", "a"]
SENTENCE = "The cat sat on the mat, unhappy 42."
WORDS = ["the", "cat", "sat", "on", "the", "mat", ",", "unhappy", "42", "."]
MLM_TOP = ["dog", "red", "big"]
TABLE_TOP = ["sad", "glum", "happy"]


def teacher():
    cfg = variants.get(
        "bert_base_micro",
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    model = Model(cfg, heads=("mlm",))
    params = jax.device_get(init_params(model, jax.random.PRNGKey(0)))
    bias = np.zeros(len(VOCAB), np.float32)
    for tok, value in {"[UNK]": 500, "##s": 450, "dog": 300, "red": 250, "big": 200}.items():
        bias[VOCAB.index(tok)] = value
    params["mlm"]["output_bias"] = bias
    rng = np.random.default_rng(0)
    table = np.zeros((len(VOCAB), 16), np.float32)
    table[:, 2:] = 0.1 * rng.normal(size=(len(VOCAB), 14))  # orthogonal to dims 0-1 below
    for tok, vec in {
        "un": (1.0, 0.0),
        "##happy": (0.0, 1.2),
        "sad": (1.0, 1.2),
        "glum": (1.0, 0.5),
        "happy": (0.0, 1.0),
    }.items():
        table[VOCAB.index(tok)] = 0.0
        table[VOCAB.index(tok), :2] = vec
    params["encoder"]["embeddings"]["word_embeddings"]["embedding"] = table
    return cfg, model, params


@pytest.fixture(scope="module")
def parts():
    tok = WordPieceTokenizer(tuple(VOCAB), lowercase=True)
    cfg, model, params = teacher()
    return tok, cfg, model, params


def augmenter(parts, **kw):
    tok, _, model, params = parts
    kw.setdefault("k", 3)
    kw.setdefault("max_seq_length", 32)
    return augment.Augmenter(tok, model, params, **kw)


def test_words_single_and_multi_piece_candidates(parts):
    a = augmenter(parts)
    assert a.words(SENTENCE) == WORDS
    assert list(a.tok.tokens("unhappy")) == ["un", "##happy"]
    (cands,) = a.candidates([WORDS])
    for word, c in zip(WORDS, cands):
        if word == "unhappy":  # multi-piece: nearest tokens of the mean piece embedding
            assert c == TABLE_TOP
        elif word.isalpha():  # single-piece: the MLM's top-K, specials and ## pieces skipped
            assert c == MLM_TOP
        else:
            assert c == []  # punctuation and numbers are kept


def test_word_vector_file_serves_multi_piece_words(parts, tmp_path):
    glove = tmp_path / "glove.txt"
    glove.write_text("unhappy 1 0 0\nsad 0.9 0.1 0\nglum 0.5 0.5 0\njoyful -1 0 0\ncat 0 0 1\n")
    vectors = augment.WordVectors.load(glove)
    a = augmenter(parts, k=2, word_vectors=vectors)
    (cands,) = a.candidates([WORDS + ["unhappys"]])
    assert cands[WORDS.index("unhappy")] == ["sad", "glum"]
    assert cands[-1] == []  # multi-piece and not in the file: kept
    assert cands[1] == MLM_TOP[:2]  # single-piece words still use the MLM (K = 2)


def test_mlm_calls_are_batched_without_changing_results(parts):
    sentences = [WORDS, ["a", "big", "dog"], WORDS[:3]]
    one = augmenter(parts, batch_size=2).candidates(sentences)
    many = augmenter(parts, batch_size=64).candidates(sentences)
    assert one == many


def test_p_and_n_semantics(parts):
    a = augmenter(parts)
    original = " ".join(WORDS)
    (same,) = a.augment([SENTENCE], n=5, p=0.0, seed=0)
    assert same == [original] * 5
    (all_replaced,) = a.augment([SENTENCE], n=7, p=1.0, seed=0)
    assert len(all_replaced) == 7
    for variant in all_replaced:
        words = variant.split(" ")
        assert len(words) == len(WORDS)
        for w, new in zip(WORDS, words):
            expected = TABLE_TOP if w == "unhappy" else MLM_TOP if w.isalpha() else [w]
            assert new in expected
    (some,) = a.augment([SENTENCE], n=400, p=0.4, seed=1)
    replaceable = [i for i, w in enumerate(WORDS) if w.isalpha()]
    changed = [v.split(" ")[i] != WORDS[i] for v in some for i in replaceable]
    assert np.mean(changed) == pytest.approx(0.4, abs=0.03)
    drawn = {v.split(" ")[1] for v in some} - {"cat"}
    assert drawn == set(MLM_TOP)  # uniform over the K candidates: all of them appear


def test_deterministic_given_the_seed_and_independent_of_batching(parts):
    a = augmenter(parts)
    texts = [SENTENCE, "a big dog sat on the mat"]
    first = a.augment(texts, n=6, p=0.5, seed=3, keys=[(0,), (1,)])
    assert first == a.augment(texts, n=6, p=0.5, seed=3, keys=[(0,), (1,)])
    assert first != a.augment(texts, n=6, p=0.5, seed=4, keys=[(0,), (1,)])
    assert a.augment(texts[1:], n=6, p=0.5, seed=3, keys=[(1,)]) == first[1:]


def test_official_mode_skips_stop_words_and_drops_repeats(parts):
    a = augmenter(parts, official=True)
    (cands,) = a.candidates([WORDS])
    assert cands[0] == [] and cands[3] == []  # "the", "on": stop words
    assert cands[1] == MLM_TOP  # the masked sentence is followed by the original one
    (variants,) = a.augment([SENTENCE], n=5, p=0.0, seed=0)
    assert variants == []  # every variant repeats the original
    (variants,) = a.augment([SENTENCE], n=30, p=0.5, seed=0)
    assert len(variants) == len(set(variants)) <= 30


def write_glue(directory: Path, name: str, header: str, rows: list[str]):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("\n".join([header, *rows]) + "\n")


def test_task_files_keep_the_layout_and_pair_each_side_with_the_original(parts, tmp_path):
    a = augmenter(parts)
    sst = tmp_path / "sst"
    write_glue(sst, "train.tsv", "sentence\tlabel", ["the cat sat\t1", "a big dog\t0"])
    write_glue(sst, "dev.tsv", "sentence\tlabel", ["the mat\t1"])
    rows = augment.augment_task_files("sst2", sst, tmp_path / "sst_aug", a, n=3, p=1.0, seed=0)
    assert rows == 2 * (1 + 3)
    examples = glue.read_split(glue.get_task("sst2"), tmp_path / "sst_aug", "train", InputReport())
    assert [e.label for e in examples] == [1] * 4 + [0] * 4
    assert examples[0].text_a == "the cat sat" and examples[4].text_a == "a big dog"
    assert (tmp_path / "sst_aug/dev.tsv").read_text() == (sst / "dev.tsv").read_text()

    mrpc = tmp_path / "mrpc"
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    write_glue(mrpc, "train.tsv", header, ["1\t7\t8\tthe cat sat\tthe dog sat"])
    augment.augment_task_files("mrpc", mrpc, tmp_path / "mrpc_aug", a, n=2, p=1.0, seed=0)
    ex = glue.read_split(glue.get_task("mrpc"), tmp_path / "mrpc_aug", "train", InputReport())
    assert len(ex) == 1 + 2 + 2
    assert all(e.text_b == "the dog sat" for e in ex[1:3])  # side A varied, B original
    assert all(e.text_a == "the cat sat" for e in ex[3:5])  # side B varied, A original
    assert all(e.text_b != "the dog sat" for e in ex[3:5])


def test_command_line_writes_the_augmented_directory(parts, tmp_path):
    tok, cfg, _, params = parts
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    io.save_model(tmp_path / "bert", cfg, ("mlm",), params, vocab)
    src = tmp_path / "sst"
    write_glue(src, "train.tsv", "sentence\tlabel", ["the cat sat\t1"])
    argv = ["--task", "sst2", "--data-dir", str(src), "--mlm-teacher", str(tmp_path / "bert")]
    argv += ["--output-dir", str(tmp_path / "out"), "--n", "4", "--k", "2", "--p", "1.0"]
    assert augment.main(argv) == 0
    lines = (tmp_path / "out/train.tsv").read_text().splitlines()
    assert lines[0] == "sentence\tlabel" and len(lines) == 1 + 1 + 4
    assert all(line.endswith("\t1") for line in lines[1:])
    for line in lines[2:]:
        assert all(w in MLM_TOP[:2] for w in line.split("\t")[0].split(" "))


# ------------------------------------------------------------------ your own data
def custom_config(tmp_path, train, **fields):
    c = task_data_defaults("custom")
    c.train_file, c.eval_file = str(train), str(train)
    c.cache_dir = str(tmp_path / "cache")
    c.max_seq_length = 16
    c.global_batch_size = 2
    c.num_threads = 0
    for k, v in fields.items():
        c[k] = v
    return c


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_custom_pairs_vary_each_text_column_and_keep_the_labels(parts, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text('first,second,label\nthe cat sat,the mat,pos\n"a big, red dog",on a mat,neg\n')
    c = custom_config(tmp_path, train, text_column="first", text_pair_column="second")
    rows, fields = augment_custom.augment_custom_files(
        c, tmp_path / "out", augmenter(parts), n=2, p=1.0, seed=0
    )
    assert rows == 2 * (1 + 2 + 2) and fields["train_file"] == str(tmp_path / "out/train.jsonl")
    out = read_jsonl(tmp_path / "out/train.jsonl")
    originals = [
        {"first": "the cat sat", "second": "the mat", "label": "pos"},
        {"first": "a big, red dog", "second": "on a mat", "label": "neg"},
    ]
    for r, original in enumerate(originals):
        block = out[5 * r : 5 * r + 5]
        assert block[0] == original
        for row, varied in zip(block[1:], ["first", "first", "second", "second"]):
            assert row["label"] == original["label"]
            kept = "second" if varied == "first" else "first"
            assert row[kept] == original[kept]  # the other side is the original
            words = augmenter(parts).words(original[varied])
            for old, new in zip(words, row[varied].split(" "), strict=True):
                assert new in (MLM_TOP if old.isalpha() else [old])


def test_custom_tagging_replaces_only_words_tagged_o_and_keeps_every_tag(parts, tmp_path):
    train = tmp_path / "train.conll"
    words = ["the", "cat", "sat", "on", "the", "mat", ",", "unhappy", "."]
    tags = ["O", "B-ANI", "O", "O", "O", "B-OBJ", "O", "O", "O"]
    train.write_text("".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\n")
    c = custom_config(tmp_path, train, task_kind="tagging")
    rows, _ = augment_custom.augment_custom_files(
        c, tmp_path / "out", augmenter(parts), n=3, p=1.0, seed=0
    )
    out = read_jsonl(tmp_path / "out/train.jsonl")
    assert rows == len(out) == 4 and out[0] == {"tokens": words, "tags": tags}
    for row in out[1:]:
        assert row["tags"] == tags and len(row["tokens"]) == len(words)
        for old, tag, new in zip(words, tags, row["tokens"]):
            if tag != "O" or not old.isalpha():
                assert new == old  # entities and punctuation stay
            else:
                assert new in (TABLE_TOP if old == "unhappy" else MLM_TOP)
    no_o = tmp_path / "pos.conll"
    no_o.write_text("the DT\ncat NN\n\n")
    with pytest.raises(ValueError, match=r"have no 'O'; set --config.augment.enabled=False"):
        augment_custom.augment_custom_files(
            custom_config(tmp_path, no_o, task_kind="tagging"),
            tmp_path / "out2",
            augmenter(parts),
            n=1,
            p=1.0,
            seed=0,
        )


def test_class_label_ids_are_written_as_their_names():
    table = Table(
        "ds[validation]",
        ("text", "label"),
        [{"text": "the cat", "label": 1}, {"text": "a dog", "label": 0}],
        ["ds[validation] row 0", "ds[validation] row 1"],
        {"label": types.SimpleNamespace(names=["neg", "pos"])},
    )
    c = task_data_defaults("custom")
    rows, names = augment_custom._sequence_rows(
        table, c, None, split="dev", n=1, p=1.0, seed=0, max_examples=0, augment=False
    )
    assert names == ("neg", "pos") and [r["label"] for r in rows] == ["pos", "neg"]


def test_custom_augmented_config_is_cached_and_reads_as_the_original(parts, tmp_path, monkeypatch):
    tok, cfg, _, params = parts
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    io.save_model(tmp_path / "bert", cfg, ("mlm",), params, vocab)
    train = tmp_path / "train.csv"
    train.write_text("text,label\nthe cat sat,b\na big dog,a\nthe mat,c\n")
    c = custom_config(tmp_path, train)
    block = augment.augment_config(
        enabled=True, mlm_teacher=teacher_block(path=str(tmp_path / "bert")), n=2, k=3
    )
    block.max_seq_length = 32
    out = augment.augmented_data_config(c, block, tok)
    assert out.source == "files" and out.eval_file == str(train)
    data = build_task_data(out, process_index=0, process_count=1, tokenizer=tok, log=lambda s: 0)
    assert data.label_names == ("a", "b", "c")  # the original file's classes, in its order
    assert len(read_jsonl(Path(out.train_file))) == 3 * (1 + 2)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached augmentation was built again")

    monkeypatch.setattr(augment, "build_augmenter", no_rebuild)
    assert augment.augmented_data_config(c, block, tok).train_file == out.train_file
    with pytest.raises(ValueError, match="config.augment.enabled=True: .*squad_v1"):
        augment.augmented_data_config(task_data_defaults("squad_v1"), block, tok)


def test_command_line_augments_a_custom_file(parts, tmp_path):
    tok, cfg, _, params = parts
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    io.save_model(tmp_path / "bert", cfg, ("mlm",), params, vocab)
    train = tmp_path / "train.tsv"
    train.write_text("review\tstars\nthe cat sat\t4.5\n")
    argv = ["--task", "custom", "--train-file", str(train), "--text-column", "review"]
    argv += ["--label-column", "stars", "--task-kind", "regression", "--n", "3", "--k", "2"]
    argv += ["--mlm-teacher", str(tmp_path / "bert"), "--output-dir", str(tmp_path / "out")]
    assert augment.main(argv) == 0
    rows = read_jsonl(tmp_path / "out/train.jsonl")
    assert len(rows) == 4 and all(r["stars"] == "4.5" for r in rows)
