"""The word-replacement core of TinyBERT's augmentation (see `augment.py` for the method).

`Augmenter` finds each word's candidates (MLM top-K for single-piece words,
nearest word vectors for multi-piece words, all MLM queries in batched,
jitted calls of fixed shapes) and draws the augmented sentences;
`WordVectors` reads GloVe text files.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from mbert_jax.data.tokenizer import WordPieceTokenizer
from mbert_jax.models import Model

PAPER_P, PAPER_N, PAPER_K = 0.4, 20, 15

# NLTK's English stop words (the official code's StopWordsList).
_STOP_WORDS = """i me my myself we our ours ourselves you you're you've you'll you'd your
    yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until
    while of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why
    how all any both each few more most other some such no nor not only own same so than too
    very s t can will just don don't should should've now d ll m o re ve y ain aren aren't
    couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma
    mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren
    weren't won won't wouldn wouldn't"""
STOP_WORDS = frozenset(_STOP_WORDS.split())


class WordVectors:
    """Unit-normalized word vectors and their words, for cosine nearest neighbours."""

    def __init__(self, words: list[str], vectors: np.ndarray):
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}
        self.unit = vectors / np.where(norms > 0, norms, 1.0)

    @classmethod
    def load(cls, path: str | Path, limit: int = 0) -> WordVectors:
        """Read a GloVe text file (`word v1 ... vd` per line), the first `limit` rows if > 0."""
        words, rows = [], []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.rstrip("\n").split(" ")
                if len(parts) < 2:
                    continue
                try:
                    rows.append(np.asarray(parts[1:], np.float32))
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: not a word-vector line") from None
                if rows[-1].shape != rows[0].shape:
                    raise ValueError(
                        f"{path}:{lineno}: {rows[-1].size} values, expected {rows[0].size}"
                    )
                words.append(parts[0])
                if limit and len(words) >= limit:
                    break
        if not words:
            raise ValueError(f"{path} holds no word vectors")
        return cls(words, np.stack(rows))

    def neighbours(self, word: str, k: int) -> list[str]:
        """The k words of highest cosine similarity, the word itself excluded ([] if unknown)."""
        i = self.index.get(word, self.index.get(word.lower()))
        if i is None:
            return []
        sims = self.unit @ self.unit[i]
        sims[i] = -np.inf
        return [self.words[j] for j in np.argsort(-sims, kind="stable")[:k]]


def is_whole_word_token(token: str) -> bool:
    """Vocabulary tokens a word may be replaced by: no specials, brackets or `##` pieces."""
    return not (token.startswith("##") or (token.startswith("[") and token.endswith("]")))


class Augmenter:
    """Candidates and augmented sentences for one tokenizer and MLM teacher.

    Args:
      tokenizer: the task's WordPiece tokenizer (the teacher's vocabulary).
      model: a `Model` with the "mlm" head; params: its parameters.
      k: candidates per word.
      word_vectors: a `WordVectors` for multi-piece words; None: the teacher's
        word-embedding table.
      batch_size, max_seq_length: the fixed shape of every MLM call.
      official: official word filter (stop words) and MLM input (see the module docstring).
    """

    def __init__(
        self,
        tokenizer: WordPieceTokenizer,
        model: Model,
        params,
        *,
        k: int = PAPER_K,
        word_vectors: WordVectors | None = None,
        batch_size: int = 256,
        max_seq_length: int = 128,
        official: bool = False,
    ):
        if "mlm" not in model.heads:
            raise ValueError("augmentation needs a teacher with an MLM head (a pretrained BERT)")
        self.tok = tokenizer
        self.official = official
        self.batch_size, self.length = int(batch_size), int(max_seq_length)
        allowed = np.array([is_whole_word_token(t) for t in tokenizer.vocab])
        self.k = min(int(k), int(allowed.sum()))
        self.allowed_ids = np.flatnonzero(allowed)
        self.params = jax.device_put(params)
        self.word_vectors = word_vectors
        if word_vectors is None:
            table = np.asarray(params["encoder"]["embeddings"]["word_embeddings"]["embedding"])
            self.table = table.astype(np.float32)
            allowed_table = self.table[self.allowed_ids]
            norms = np.linalg.norm(allowed_table, axis=1, keepdims=True)
            self.allowed_unit = allowed_table / np.where(norms > 0, norms, 1.0)
        blocked = jnp.asarray(~allowed)
        k_top = self.k

        def top_k(params, ids, lengths, types, positions):
            mask = (jnp.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(jnp.int32)
            out = model.apply(
                {"params": params}, ids, mask, types, None, positions[:, None], run_heads=("mlm",)
            )
            logits = jnp.where(blocked, -jnp.inf, out.mlm_logits[:, 0].astype(jnp.float32))
            return jax.lax.top_k(logits, k_top)[1]

        self._top_k = jax.jit(top_k)

    # ----------------------------------------------------------------- words
    def words(self, text: str) -> list[str]:
        """BERT basic-tokenizer words of `text` (normalized as the vocabulary requires)."""
        backend = self.tok.backend
        normalized = backend.normalizer.normalize_str(text)
        return [w for w, _ in backend.pre_tokenizer.pre_tokenize_str(normalized)]

    def replaceable(self, word: str) -> bool:
        if not word.isalpha():
            return False
        return not (self.official and word.lower() in STOP_WORDS)

    # ------------------------------------------------------------ candidates
    def candidates(self, sentences: list[list[str]]) -> list[list[list[str]]]:
        """Per sentence (a list of words), per word: its candidates ([] when it is kept)."""
        out = [[[] for _ in words] for words in sentences]
        queries = []  # (sentence, word, ids, types, mask position)
        for s, words in enumerate(sentences):
            pieces = self.tok.encode(words) if words else []
            flat = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
            starts = np.cumsum([0] + [len(p) for p in pieces])
            for w, word in enumerate(words):
                if not self.replaceable(word):
                    continue
                if len(pieces[w]) == 1 and pieces[w][0] != self.tok.unk_id:
                    q = self._mlm_query(flat, int(starts[w]))
                    if q is not None:
                        queries.append((s, w, *q))
                elif len(pieces[w]) > 1:
                    out[s][w] = self._neighbours(word, pieces[w])
        # Length buckets (powers of two): few compiled shapes, little padding.
        buckets: dict[int, list] = {}
        for q in queries:
            buckets.setdefault(self._bucket(len(q[2])), []).append(q)
        for length, group in sorted(buckets.items()):
            for i in range(0, len(group), self.batch_size):
                chunk = group[i : i + self.batch_size]
                ids, lengths, types, pos = self._pad(chunk, length)
                top = np.asarray(self._top_k(self.params, ids, lengths, types, pos))
                for (s, w, *_), row in zip(chunk, top):
                    out[s][w] = [self.tok.vocab[j] for j in row]
        return out

    def _bucket(self, n: int) -> int:
        return min(self.length, max(16, 1 << (n - 1).bit_length()))

    def _mlm_query(self, flat: np.ndarray, at: int):
        masked = flat.copy()
        masked[at] = self.tok.mask_id
        ids = [self.tok.cls_id, *masked, self.tok.sep_id]
        types = [0] * len(ids)
        if self.official:
            ids += [*flat, self.tok.sep_id]
            types += [1] * (len(flat) + 1)
        ids, types = ids[: self.length], types[: self.length]
        position = at + 1
        return None if position >= len(ids) else (ids, types, position)

    def _pad(self, chunk, S: int):
        n = self.batch_size
        ids = np.zeros((n, S), np.int32)
        types = np.zeros((n, S), np.int32)
        lengths = np.ones(n, np.int32)
        pos = np.zeros(n, np.int32)
        for r, (_, _, q_ids, q_types, p) in enumerate(chunk):
            ids[r, : len(q_ids)] = q_ids
            types[r, : len(q_types)] = q_types
            lengths[r], pos[r] = len(q_ids), p
        return ids, lengths, types, pos

    def _neighbours(self, word: str, pieces: np.ndarray) -> list[str]:
        if self.word_vectors is not None:
            return self.word_vectors.neighbours(word, self.k)
        vec = self.table[pieces].mean(axis=0)
        sims = self.allowed_unit @ (vec / max(float(np.linalg.norm(vec)), 1e-12))
        return [
            self.tok.vocab[self.allowed_ids[j]] for j in np.argsort(-sims, kind="stable")[: self.k]
        ]

    # ------------------------------------------------------------ sentences
    def augment(
        self, texts: list[str], *, n: int, p: float, seed: int, keys: list[tuple] | None = None
    ) -> list[list[str]]:
        """N augmented versions of each text (words joined by spaces).

        Args:
          texts: the sentences.
          n: augmented sentences per text (official mode: at most n, no duplicates).
          p: probability of replacing each word that has candidates.
          seed: the base seed.
          keys: per text, the tuple that keys its generator with the seed
            (default: its index), so results do not depend on batching.
        """
        words = [self.words(t) for t in texts]
        out = self.augment_words(words, n=n, p=p, seed=seed, keys=keys)
        return [[" ".join(v) for v in variants] for variants in out]

    def augment_words(
        self,
        sentences: list[list[str]],
        *,
        n: int,
        p: float,
        seed: int,
        keys: list[tuple] | None = None,
        keep: list[list[bool]] | None = None,
    ) -> list[list[list[str]]]:
        """N augmented versions of each sentence given as words, each a list of as many words.

        Every word is replaced by one whole word (an MLM token or a word-vector
        neighbour), so word i of a variant stands where word i stood: per-word
        labels (tags) stay aligned.

        Args:
          sentences: the words of each sentence.
          n, p, seed, keys: as in `augment`.
          keep: per sentence, per word, True where the word must stay as it
            is (e.g. the words of a tagged entity); None keeps none.
        """
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augmentation p={p} must be in [0, 1]")
        cands = self.candidates(sentences)
        if keep is not None:
            cands = [
                [[] if k else c for c, k in zip(cs, ks, strict=True)]
                for cs, ks in zip(cands, keep, strict=True)
            ]
        keys = keys or [(i,) for i in range(len(sentences))]
        out = []
        for ws, cs, key in zip(sentences, cands, keys):
            rng = np.random.default_rng([seed, *key])
            original = list(ws)
            variants = []
            for _ in range(n):
                new = list(ws)
                for w, c in enumerate(cs):
                    if c:
                        choice = c[int(rng.integers(len(c)))]
                        if rng.random() < p:
                            new[w] = choice
                variants.append(new)
            if self.official:  # drop repeats of the original and of each other
                seen, kept = {tuple(original)}, []
                for v in variants:
                    if tuple(v) not in seen:
                        seen.add(tuple(v))
                        kept.append(v)
                variants = kept
            out.append(variants)
        return out
