"""The embedded default corpus: the documentation of Python's standard library.

Every Python installation carries a few megabytes of human-written English
prose about itself, so this corpus works offline on a fresh machine right
after `pip install`: nothing is downloaded and nothing is shipped with the
package. It is built from three parts of the running interpreter's standard
library, in this order:

1. The docstrings of every pure-Python stdlib module, read with `ast` from
   the source files (nothing is imported, so no module's import side effects
   run). Files are walked in sorted path order; test suites, bundled wheels,
   `site-packages` and caches are skipped. A module gives one document (its
   docstring plus those of its top-level functions, in source order) and each
   top-level class another (the class docstring plus its methods').
2. `pydoc_data.topics`: the Language Reference sections that `help()` shows
   (one document per topic, sorted by topic name).
3. The classes and functions of the `builtins` module (one document each).

Docstrings are cleaned into prose: `inspect.cleandoc`, paragraphs split at
blank lines, doctest blocks and reStructuredText heading underlines removed,
paragraphs that do not look like English prose (code, tables, argument
signatures; see `text.is_prose`) dropped, the rest cut into sentences. Each
document is a tuple of sentences; documents without any prose are left out
(the count is in `build_stats()`). With CPython 3.11 the corpus holds about
2.0 MB of text (1.98 million characters) in 2,032 documents and 22,800
sentences, enough for a few minutes of CPU pretraining of the micro variants.

Determinism: the same interpreter (version and distribution) always gives the
same corpus, byte for byte; `fingerprint()` identifies it cheaply (paths and
sizes of the source files plus the interpreter version) for cache keys.
Different Python versions or distributions (some remove `tkinter` or
`idlelib`) give different corpora.

Licence: the text is that of the Python standard library and its
documentation, (c) Python Software Foundation, distributed under the PSF
License Agreement (https://docs.python.org/3/license.html). The corpus is
derived at run time from the user's own Python installation and is not
redistributed by this package.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import io
import os
import re
import sys
import sysconfig
import textwrap
import tokenize
from collections.abc import Iterator
from pathlib import Path

from mbert_jax.data import text

CORPUS_VERSION = 1  # bump when the extraction or cleaning rules change
SOURCE = "Python standard library docstrings and pydoc topics (PSF License Agreement)"

_SKIP_DIRS = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idle_test",
        "__pycache__",
        "_bundled",
        "lib-dynload",
        "__phello__",
    }
)
_UNDERLINE = re.compile(r"^\s*([=\-~*^+#\"'`])\1{2,}\s*$")
_DOCTEST = re.compile(r"^\s*(>>>|\.\.\.)(\s|$)")


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of the corpus.

    Attributes:
      name: where it comes from: a dotted module or class name
        (`email.message`, `email.message.Message`), `topics:<topic>` for a
        pydoc topic, `builtins.<name>` for a builtin.
      sentences: the document's sentences, in order.
    """

    name: str
    sentences: tuple[str, ...]

    @property
    def package(self) -> str:
        """The top-level package or module (`email` for `email.message.Message`)."""
        return self.name.split(":")[0].split(".")[0]


def stdlib_dir() -> Path:
    """The directory of the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files() -> list[Path]:
    """The stdlib `.py` files the corpus reads, in sorted (deterministic) order."""
    root = stdlib_dir()
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIP_DIRS and not d.startswith((".", "config-")) and d.isidentifier()
        )
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def module_name(path: Path) -> str:
    """`email/message.py` -> `email.message`; `email/__init__.py` -> `email`."""
    parts = list(path.relative_to(stdlib_dir()).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def fingerprint() -> str:
    """A short hash that changes whenever the corpus could change."""
    h = hashlib.sha256()
    h.update(f"v{CORPUS_VERSION} {sys.implementation.name} {sys.version}".encode())
    root = stdlib_dir()
    for p in source_files():
        h.update(f"{p.relative_to(root).as_posix()}:{p.stat().st_size}\n".encode())
    topics = _pydoc_topics()
    h.update(f"topics:{len(topics)}:{sum(len(v) for v in topics.values())}".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------- cleaning
def prose_sentences(docstring: str, *, dedent_paragraphs: bool = False) -> list[str]:
    """The prose sentences of one docstring (or help topic), in order.

    Args:
      docstring: raw text.
      dedent_paragraphs: dedent each paragraph on its own (help topics indent
        their bodies) instead of the whole text at once.
    """
    raw = textwrap.dedent(docstring) if dedent_paragraphs else inspect.cleandoc(docstring)
    sentences: list[str] = []
    in_doctest = False
    paragraph: list[str] = []

    def flush():
        if paragraph:
            body = text.normalize_whitespace(" ".join(paragraph))
            if text.is_prose(body):
                sentences.extend(
                    s for s in text.split_sentences(body) if text.is_prose(s, min_words=2)
                )
            paragraph.clear()

    for line in raw.splitlines():
        if not line.strip():
            flush()
            in_doctest = False
            continue
        if _DOCTEST.match(line):
            flush()
            in_doctest = True  # the prompt and its output, up to the next blank line
            continue
        if in_doctest:
            continue
        if _UNDERLINE.match(line):
            paragraph.clear()  # the heading above an underline is not a sentence
            continue
        paragraph.append(line.strip())
    flush()
    return sentences


# ------------------------------------------------------------------------ sources
def _read_source(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read()
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding)


def _defs(body: list[ast.stmt]) -> Iterator[ast.AST]:
    """Function and class definitions in `body`, recursively, in source order."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node
            yield from _defs(node.body)


def _docs_of(nodes) -> list[str]:
    sentences: list[str] = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            sentences.extend(prose_sentences(doc))
    return sentences


def _module_documents(path: Path, stats: dict) -> list[Document]:
    try:
        tree = ast.parse(_read_source(path), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        stats["unparsable_files"] += 1
        return []
    name = module_name(path)
    top_functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    docs = [Document(name, tuple(_docs_of([tree, *top_functions])))]
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            docs.append(Document(f"{name}.{node.name}", tuple(_docs_of([node, *_defs(node.body)]))))
    return docs


def _pydoc_topics() -> dict[str, str]:
    try:
        from pydoc_data import topics
    except ImportError:  # some distributions split pydoc_data out
        return {}
    return dict(topics.topics)


def _builtin_documents() -> list[Document]:
    import builtins

    docs = []
    for key in sorted(vars(builtins)):
        obj = vars(builtins)[key]
        if key.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        parts = [obj.__doc__] if isinstance(obj.__doc__, str) else []
        if inspect.isclass(obj):
            for member in sorted(vars(obj)):
                doc = getattr(vars(obj)[member], "__doc__", None)
                if not member.startswith("_") and isinstance(doc, str):
                    parts.append(doc)
        sentences = [s for p in parts for s in prose_sentences(p)]
        docs.append(Document(f"builtins.{key}", tuple(sentences)))
    return docs


def _build() -> tuple[tuple[Document, ...], dict]:
    stats = {"source_files": 0, "unparsable_files": 0, "documents_without_prose": 0}
    candidates: list[Document] = []
    for path in source_files():
        stats["source_files"] += 1
        candidates.extend(_module_documents(path, stats))
    for key, body in sorted(_pydoc_topics().items()):
        candidates.append(
            Document(f"topics:{key}", tuple(prose_sentences(body, dedent_paragraphs=True)))
        )
    candidates.extend(_builtin_documents())
    docs = tuple(d for d in candidates if d.sentences)
    stats["documents_without_prose"] = len(candidates) - len(docs)
    stats["documents"] = len(docs)
    stats["sentences"] = sum(len(d.sentences) for d in docs)
    stats["characters"] = sum(len(s) + 1 for d in docs for s in d.sentences)
    return docs, stats


@functools.lru_cache(maxsize=1)
def _cached() -> tuple[tuple[Document, ...], dict]:
    return _build()


def documents() -> tuple[Document, ...]:
    """The corpus: documents in deterministic order (built once per process)."""
    return _cached()[0]


def build_stats() -> dict:
    """Counts from building the corpus (files read, documents, sentences, characters)."""
    return dict(_cached()[1])


def write_text(path: str | os.PathLike) -> Path:
    """Write the corpus as a plain-text file: one sentence per line, blank line between documents.

    The result is a valid input for the `text` source.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for doc in documents():
            f.write("\n".join(doc.sentences))
            f.write("\n\n")
    return path
