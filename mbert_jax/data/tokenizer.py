"""WordPiece tokenization: load a BERT vocabulary or learn one from a corpus.

Tokenization runs in the `tokenizers` library (Rust; BERT's normalizer and
pre-tokenizer, greedy longest-match-first WordPiece), wrapped in
`WordPieceTokenizer`, which also knows the special-token ids and a
fingerprint of the vocabulary for cache keys.

Lower-casing follows the vocabulary: an explicit `lowercase` argument wins,
then `do_lower_case` from a transformers `tokenizer_config.json`, then the
vocabulary itself (an uncased vocabulary has virtually no upper-case tokens).
As in BERT, accents are stripped exactly when lower-casing.

Learning a vocabulary (`train_wordpiece`) does not use the `tokenizers`
trainer: its merges break ties between equally frequent pairs in hash-map
order, so two runs on the same text can give different vocabularies. The
learner here is the same algorithm (byte-pair merges with the `##`
continuation prefix, over BERT-normalized words) with ties broken by the
pair's text, so the vocabulary is a pure function of the corpus and the
settings. Every character of the alphabet gets both a word-initial and a
`##` form, so any word spelled in the alphabet tokenizes without [UNK].
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers

from mbert_jax.data.report import read_utf8

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
VOCAB_FILE = "vocab.txt"
CONFIG_FILE = "tokenizer_config.json"
CONTINUATION = "##"


class VocabError(ValueError):
    """A vocabulary that cannot be used; the message names the file and the fix."""


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Read a BERT `vocab.txt` (one token per line, the line number is the id).

    Raises:
      VocabError: for a missing or non-UTF-8 file, an empty or duplicated
        token (naming the lines), or missing special tokens.
    """
    path = Path(path)
    if not path.is_file():
        raise VocabError(f"vocabulary file {path} does not exist")
    lines = read_utf8(path, VocabError).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    tokens = [t.rstrip("\r") for t in lines]
    first_line: dict[str, int] = {}
    for i, tok in enumerate(tokens, 1):
        if not tok.strip():
            raise VocabError(f"{path}:{i}: empty token; a vocab.txt has one token per line")
        if tok in first_line:
            raise VocabError(
                f"{path}:{i}: token {tok!r} repeats line {first_line[tok]}; each token must "
                "appear once (its line number is its id)"
            )
        first_line[tok] = i
    check_special_tokens(tokens, source=str(path))
    return tokens


def check_special_tokens(tokens: Sequence[str], source: str = "vocabulary") -> None:
    missing = [t for t in SPECIAL_TOKENS if t not in set(tokens)]
    if missing:
        raise VocabError(
            f"{source} lacks the special token(s) {', '.join(missing)}; BERT inputs need "
            f"{', '.join(SPECIAL_TOKENS)}. Use a BERT WordPiece vocab.txt, or leave "
            "data.vocab_file empty to learn a vocabulary from the corpus"
        )


def infer_lowercase(tokens: Sequence[str]) -> bool:
    """True for an uncased vocabulary (under 1% of its regular tokens have capitals)."""
    regular = [t for t in tokens if not (t.startswith("[") and t.endswith("]"))]
    upper = sum(any(c.isupper() for c in t) for t in regular)
    return upper < 0.01 * max(len(regular), 1)


@dataclasses.dataclass(frozen=True, eq=False)
class WordPieceTokenizer:
    """A BERT WordPiece tokenizer with its vocabulary.

    Attributes:
      vocab: the tokens; a token's index is its id.
      lowercase: whether text is lower-cased (and accents stripped) first.
      source: where the vocabulary came from (a path or "learned").
    """

    vocab: tuple[str, ...]
    lowercase: bool
    source: str = ""

    def __post_init__(self):
        check_special_tokens(self.vocab, self.source or "vocabulary")
        tok = tokenizers.Tokenizer(
            models.WordPiece(
                {t: i for i, t in enumerate(self.vocab)},
                unk_token=UNK,
                max_input_chars_per_word=100,
            )
        )
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=self.lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix=CONTINUATION)
        object.__setattr__(self, "_tok", tok)
        object.__setattr__(self, "_ids", {t: i for i, t in enumerate(self.vocab)})

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer` (adds no special tokens itself)."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, token: str) -> int:
        return self._ids[token]

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    @property
    def cls_id(self) -> int:
        return self._ids[CLS]

    @property
    def sep_id(self) -> int:
        return self._ids[SEP]

    @property
    def mask_id(self) -> int:
        return self._ids[MASK]

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(self._ids[t] for t in SPECIAL_TOKENS)

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides the token ids of a text."""
        h = hashlib.sha256(f"wordpiece lower={self.lowercase}\n".encode())
        h.update("\n".join(self.vocab).encode())
        return h.hexdigest()[:16]

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids (int32, no special tokens) of each text."""
        if not texts:
            return []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, np.int32) for e in encs]

    def encode_with_offsets(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Token ids and [n, 2] character offsets (start, end) into each original text."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [
            (np.asarray(e.ids, np.int32), np.asarray(e.offsets, np.int64).reshape(-1, 2))
            for e in encs
        ]

    def tokens(self, text: str) -> list[str]:
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `vocab.txt` and a transformers-compatible `tokenizer_config.json`.

        Returns:
          The path of the written `vocab.txt`.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / VOCAB_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(t + "\n" for t in self.vocab), encoding="utf-8")
        os.replace(tmp, path)
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.lowercase,
            "strip_accents": None,
            "tokenize_chinese_chars": True,
            **{
                f"{n}_token": t
                for n, t in zip(("pad", "unk", "cls", "sep", "mask"), SPECIAL_TOKENS)
            },
        }
        (d / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return path


def load_tokenizer(path: str | os.PathLike, lowercase: bool | None = None) -> WordPieceTokenizer:
    """Load a BERT `vocab.txt`, or a transformers tokenizer directory.

    Args:
      path: a `vocab.txt` file; or a directory holding `vocab.txt` (and
        optionally `tokenizer_config.json`), or a WordPiece `tokenizer.json`.
      lowercase: force lower-casing on or off; None decides from
        `tokenizer_config.json`, else from the vocabulary.

    Raises:
      VocabError: the path holds no usable WordPiece vocabulary.
    """
    path = Path(path).expanduser()
    config: dict = {}
    if path.is_dir():
        if (path / CONFIG_FILE).is_file():
            config = json.loads((path / CONFIG_FILE).read_text())
        if (path / VOCAB_FILE).is_file():
            vocab = read_vocab(path / VOCAB_FILE)
        elif (path / "tokenizer.json").is_file():
            vocab = _vocab_from_tokenizer_json(path / "tokenizer.json")
            normalizer = json.loads((path / "tokenizer.json").read_text()).get("normalizer") or {}
            config.setdefault("do_lower_case", normalizer.get("lowercase"))
        else:
            raise VocabError(
                f"{path} holds neither {VOCAB_FILE} nor tokenizer.json; pass a BERT vocab.txt "
                "or a transformers tokenizer directory"
            )
    elif path.is_file():
        vocab = read_vocab(path)
    else:
        raise VocabError(f"vocabulary {path} does not exist")
    if lowercase is None:
        lowercase = config.get("do_lower_case")
    if lowercase is None:
        lowercase = infer_lowercase(vocab)
    return WordPieceTokenizer(tuple(vocab), bool(lowercase), str(path))


def _vocab_from_tokenizer_json(path: Path) -> list[str]:
    model = json.loads(path.read_text()).get("model", {})
    if model.get("type") != "WordPiece":
        raise VocabError(
            f"{path}: the tokenizer model is {model.get('type')!r}, not WordPiece; this "
            "project needs a BERT WordPiece vocabulary"
        )
    items = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    if [i for _, i in items] != list(range(len(items))):
        raise VocabError(f"{path}: WordPiece ids are not 0..{len(items) - 1} without gaps")
    tokens = [t for t, _ in items]
    check_special_tokens(tokens, str(path))
    return tokens


# ----------------------------------------------------------------- vocab learning
def count_words(texts: Iterable[str], lowercase: bool = True) -> Counter:
    """Frequencies of BERT-normalized, pre-tokenized words."""
    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for t in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(t)))
    return counts


def train_wordpiece(
    texts: Iterable[str],
    vocab_size: int,
    *,
    lowercase: bool = True,
    min_frequency: int = 2,
    max_alphabet: int = 1000,
) -> WordPieceTokenizer:
    """Learn a WordPiece vocabulary of `vocab_size` tokens, deterministically.

    Args:
      texts: the training text (any granularity: sentences, lines, documents).
      vocab_size: the number of tokens, special tokens included.
      lowercase: lower-case (and strip accents) before learning.
      min_frequency: a pair seen fewer times is never merged.
      max_alphabet: keep only the most frequent characters (as BERT's
        vocabulary does); words with other characters become [UNK].

    Returns:
      The tokenizer. The vocabulary is the special tokens, then the alphabet
      (both forms of each character, sorted), then the merges in order.

    Raises:
      VocabError: `vocab_size` cannot even hold the special tokens and the
        alphabet, or the text is empty.
    """
    words = count_words(texts, lowercase)
    chars: Counter = Counter()
    for w, f in words.items():
        for c in w:
            chars[c] += f
    if not chars:
        raise VocabError("cannot learn a vocabulary from empty text")
    alphabet = sorted(
        c for c, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))[:max_alphabet]
    )
    allowed = set(alphabet)
    base = list(SPECIAL_TOKENS) + alphabet + [CONTINUATION + c for c in alphabet]
    if vocab_size < len(base):
        raise VocabError(
            f"train_vocab_size={vocab_size} is too small: the special tokens and the "
            f"{len(alphabet)}-character alphabet already need {len(base)} tokens"
        )
    vocab = list(base)
    known = set(vocab)
    # Unique words, in sorted order, as symbol lists.
    items = sorted((w, f) for w, f in words.items() if set(w) <= allowed)
    syms = [[w[0]] + [CONTINUATION + c for c in w[1:]] for w, _ in items]
    freqs = [f for _, f in items]
    counts: dict[tuple[str, str], int] = {}
    where: dict[tuple[str, str], set[int]] = {}
    for i, s in enumerate(syms):
        for p in zip(s, s[1:]):
            counts[p] = counts.get(p, 0) + freqs[i]
            where.setdefault(p, set()).add(i)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    while len(vocab) < vocab_size and heap:
        neg, pair = heapq.heappop(heap)
        if counts.get(pair, 0) != -neg:
            continue  # stale entry; the current count was pushed separately
        if -neg < min_frequency:
            break
        a, b = pair
        merged = a + b[len(CONTINUATION) :]
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        touched = set()
        for i in sorted(where.pop(pair, ())):
            s, f = syms[i], freqs[i]
            for p in zip(s, s[1:]):
                counts[p] -= f
                touched.add(p)
                where.get(p, set()).discard(i)
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            syms[i] = out
            for p in zip(out, out[1:]):
                counts[p] = counts.get(p, 0) + f
                touched.add(p)
                where.setdefault(p, set()).add(i)
        counts.pop(pair, None)
        for p in touched:
            c = counts.get(p, 0)
            if c > 0 and p != pair:
                heapq.heappush(heap, (-c, p))
            elif c <= 0:
                counts.pop(p, None)
                where.pop(p, None)
    return WordPieceTokenizer(tuple(vocab), lowercase, "learned")


# ------------------------------------------------------------------------ checks
def as_tokenizer(t: WordPieceTokenizer | str | os.PathLike) -> WordPieceTokenizer:
    return t if isinstance(t, WordPieceTokenizer) else load_tokenizer(t)


def check_same_vocab(
    teacher: WordPieceTokenizer | str | os.PathLike,
    student: WordPieceTokenizer | str | os.PathLike,
) -> None:
    """Check that teacher and student can read the same distillation batch.

    A distillation batch feeds one `input_ids` array to both models, so their
    vocabularies and lower-casing must match exactly.

    Raises:
      VocabError: naming the first difference.
    """
    t, s = as_tokenizer(teacher), as_tokenizer(student)
    fix = (
        "; a distillation batch gives both models the same input_ids, so train the student "
        "with the teacher's vocabulary (set data.vocab_file to the teacher's vocab.txt)"
    )
    if t.vocab != s.vocab:
        if len(t.vocab) != len(s.vocab):
            detail = f"sizes differ: teacher {len(t.vocab)}, student {len(s.vocab)} tokens"
        else:
            i = next(i for i, (x, y) in enumerate(zip(t.vocab, s.vocab)) if x != y)
            detail = f"id {i} is {t.vocab[i]!r} for the teacher but {s.vocab[i]!r} for the student"
        raise VocabError(
            f"teacher vocabulary ({t.source}) and student vocabulary ({s.source}) differ: "
            f"{detail}{fix}"
        )
    if t.lowercase != s.lowercase:
        raise VocabError(
            f"teacher lower-cases text ({t.lowercase}) but student does not ({s.lowercase}){fix}"
        )


def check_model_vocab(tokenizer: WordPieceTokenizer, model_vocab_size: int) -> None:
    """Raise if the tokenizer emits ids the model's embedding table cannot hold."""
    if tokenizer.vocab_size > model_vocab_size:
        raise VocabError(
            f"the vocabulary ({tokenizer.source}) has {tokenizer.vocab_size} tokens but the "
            f"model's vocab_size is {model_vocab_size}; raise the model's vocab_size or use a "
            f"smaller vocabulary (data.train_vocab_size <= {model_vocab_size})"
        )
