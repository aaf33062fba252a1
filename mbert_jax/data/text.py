"""Plain-text helpers: sentence splitting and a prose filter.

BERT's next-sentence task needs documents cut into sentences: a document of
one long paragraph line would make every pair a random one (BERT draws a
random B whenever a chunk has a single segment). `split_sentences` is a small
rule-based splitter (terminal punctuation, then whitespace, then a capital,
digit or opening quote; common abbreviations and initials do not end a
sentence). It is deterministic and dependency-free; it is not a linguistic
tool, and corpora that are already one sentence per line pass through
unchanged.
"""

from __future__ import annotations

import re

# Abbreviations after which a period does not end a sentence (lower-cased,
# without the final period).
_ABBREVIATIONS = (
    "e.g i.e etc vs cf al mr mrs ms dr st jr sr prof no nos fig figs eq eqs ch sec vol "
    "approx resp incl esp ca op ed eds"
)
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split())

# A candidate boundary: terminal punctuation, optional closing quotes or
# brackets, whitespace, then something that can start a sentence.
_BOUNDARY = re.compile(r"[.!?][\"')\]]*(\s+)(?=[\"'(\[]?[A-Z0-9])")
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)$")
_SPACES = re.compile(r"\s+")

# Frequent English function words: a paragraph without any is a heading, an
# argument list or code rather than prose.
_FUNCTION_WORDS = (
    "the a an is are was were be been to of and or in on for with as by this that it "
    "if not from at which when can will may should must its their there these those "
    "than then also but all any each"
)
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS.split())


def normalize_whitespace(text: str) -> str:
    """Collapse runs of whitespace (newlines included) to single spaces and strip."""
    return _SPACES.sub(" ", text).strip()


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences.

    Args:
      paragraph: text; inner whitespace (including newlines) is normalized.

    Returns:
      The non-empty sentences, in order; their concatenation with single
      spaces is the normalized paragraph.
    """
    text = normalize_whitespace(paragraph)
    if not text:
        return []
    sentences = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        end = m.start(1)  # the boundary whitespace starts here
        head = text[start : m.start() + 1]
        if text[m.start()] == ".":
            w = _WORD_BEFORE.search(head[:-1])
            word = w.group(1).lower() if w else ""
            # "J. Smith", "e.g. Foo", "Fig. 3": not sentence ends.
            if len(word) == 1 or word in ABBREVIATIONS or word.rstrip(".") in ABBREVIATIONS:
                continue
        sentence = text[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = m.end(1)
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def is_prose(text: str, *, min_words: int = 3, min_letter_fraction: float = 0.6) -> bool:
    """Whether `text` looks like English prose (not code, a table or a heading).

    Args:
      text: one paragraph or sentence.
      min_words: fewer alphabetic words than this is not prose.
      min_letter_fraction: letters and spaces must make up at least this share
        of the characters (code is rich in punctuation and digits).
    """
    words = re.findall(r"[A-Za-z]+", text)
    if len(words) < min_words:
        return False
    letters = sum(c.isalpha() or c == " " for c in text)
    if letters < min_letter_fraction * len(text):
        return False
    return any(w.lower() in FUNCTION_WORDS for w in words)
