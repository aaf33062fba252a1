"""The tokenized corpus, cached on disk and memory-mapped.

Tokenizing a corpus is done once per (source content, tokenizer, settings):
the result lives in `CACHE_DIR/corpus-<key>/` where `<key>` hashes all of
them (`cache_key`), so a repeated run maps the arrays back in milliseconds
and a changed file, vocabulary or setting gets a new entry. Layout:

    tokens.bin        every token id, flat (uint16 when the vocabulary fits, else int32)
    line_offsets.npy  int64 [lines + 1]: line i is tokens[line_offsets[i]:line_offsets[i + 1]]
    doc_offsets.npy   int64 [docs + 1]: document d is lines doc_offsets[d]:doc_offsets[d + 1]
    meta.json         the key's inputs, dtype, counts and the `InputReport` of the build

Entries are written to a temporary directory and renamed into place, so
readers never see a partial entry and concurrent builders (several hosts on
a shared disk) are safe: the first rename wins, the others discard their copy.

Lines that tokenize to nothing (only control or whitespace characters) and
documents left without lines are skipped and counted in the report.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from mbert_jax import files
from mbert_jax.data.report import InputReport
from mbert_jax.data.tokenizer import WordPieceTokenizer

FORMAT_VERSION = 1
ENV_CACHE_DIR = "MBERT_JAX_CACHE"


def default_cache_dir() -> Path:
    """`$MBERT_JAX_CACHE/data`, else `~/.cache/mbert_jax/data`."""
    root = os.environ.get(ENV_CACHE_DIR) or os.path.join("~", ".cache", "mbert_jax")
    return Path(os.path.expanduser(root)) / "data"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    return Path(os.path.expanduser(cache_dir)) if cache_dir else default_cache_dir()


def cache_key(parts: dict) -> str:
    """A stable short hash of a JSON-serializable description."""
    blob = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def write_atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmpdir)` and rename the directory to `final` (first writer wins)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = files.temp_dir(final)
    try:
        build(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def cached_arrays(
    cache_dir: Path, prefix: str, parts: dict, build: Callable[[], tuple[dict, dict]]
) -> tuple[Path, dict[str, np.ndarray], dict]:
    """Arrays cached as memory-mapped `.npy` files in `CACHE_DIR/<prefix>-<key>/`.

    Args:
      cache_dir: the cache root.
      prefix: names the kind of entry.
      parts: what decides the content (hashed into the key).
      build: called on a miss; returns (name -> array, extra JSON-able meta).
        A name "a/b" is saved as a/b.npy (one subdirectory per split); if
        `build` raises, nothing is left in the cache.

    Returns:
      (entry directory, name -> read-only memory-mapped array, extra meta).
    """
    final = cache_dir / f"{prefix}-{cache_key(parts)}"

    def write(tmp: Path):
        arrays, extra = build()
        for name, a in arrays.items():  # "split/name": in a subdirectory (`load_arrays(dir/split)`)
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            np.save(tmp / f"{name}.npy", np.asarray(a))
        meta = {"key": parts, "extra": extra}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")

    if not (final / "meta.json").is_file():
        write_atomic_dir(final, write)
    return final, load_arrays(final), json.loads((final / "meta.json").read_text())["extra"]


def load_arrays(directory: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p, mmap_mode="r") for p in sorted(Path(directory).glob("*.npy"))}


class TokenizedCorpus:
    """Memory-mapped token ids with line and document boundaries.

    Pickles as its path (worker processes map the files again).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        self._open()

    def _open(self):
        self.tokens = np.memmap(self.path / "tokens.bin", dtype=self.meta["dtype"], mode="r")
        self.line_offsets = np.load(self.path / "line_offsets.npy", mmap_mode="r")
        self.doc_offsets = np.load(self.path / "doc_offsets.npy", mmap_mode="r")

    def __getstate__(self):
        return {"path": str(self.path)}

    def __setstate__(self, state):
        self.__init__(state["path"])

    @property
    def num_documents(self) -> int:
        return len(self.doc_offsets) - 1

    @property
    def num_lines(self) -> int:
        return len(self.line_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.line_offsets[-1])

    @property
    def content_hash(self) -> str:
        """Identifies the tokenized content (not where or when it was read)."""
        return self.meta.get("content", "")

    @property
    def report(self) -> InputReport:
        return InputReport.from_dict(self.meta["report"])

    def line_lengths(self) -> np.ndarray:
        return np.diff(np.asarray(self.line_offsets))

    def doc_lines(self, d: int) -> tuple[int, int]:
        return int(self.doc_offsets[d]), int(self.doc_offsets[d + 1])


def tokenize_documents(
    documents: Iterable[list[str]],
    tokenizer: WordPieceTokenizer,
    directory: Path,
    report: InputReport,
    *,
    batch_lines: int = 8192,
) -> str:
    """Tokenize `documents` into the files of a corpus entry in `directory`.

    Returns:
      (the dtype name of `tokens.bin`, a hash of the content: token ids,
      boundaries and vocabulary; it identifies the data wherever it lives).
    """
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    content = hashlib.sha256(tokenizer.fingerprint.encode())
    line_ends = array.array("q", [0])
    doc_ends = array.array("q", [0])
    pending: list[str] = []
    pending_docs: list[int] = []  # number of lines of each pending document

    with open(directory / "tokens.bin", "wb") as out:

        def flush():
            ids = tokenizer.encode(pending)
            k = 0
            for n in pending_docs:
                kept = 0
                for seq in ids[k : k + n]:
                    if len(seq) == 0:
                        report.note("lines without any token skipped")
                        continue
                    data = seq.astype(dtype).tobytes()
                    out.write(data)
                    content.update(data)
                    line_ends.append(line_ends[-1] + len(seq))
                    kept += 1
                k += n
                if kept:
                    doc_ends.append(doc_ends[-1] + kept)
                else:
                    report.note("documents without any token skipped")
            pending.clear()
            pending_docs.clear()

        for doc in documents:
            pending.extend(doc)
            pending_docs.append(len(doc))
            if len(pending) >= batch_lines:
                flush()
        flush()

    np.save(directory / "line_offsets.npy", np.frombuffer(line_ends, np.int64))
    np.save(directory / "doc_offsets.npy", np.frombuffer(doc_ends, np.int64))
    content.update(line_ends.tobytes())
    content.update(doc_ends.tobytes())
    report.count("documents kept", len(doc_ends) - 1)
    report.count("tokens", int(line_ends[-1]))
    return np.dtype(dtype).name, content.hexdigest()[:16]


def load_or_build(
    cache_dir: Path,
    key_parts: dict,
    documents: Callable[[InputReport], Iterable[list[str]]],
    tokenizer: WordPieceTokenizer,
    check: Callable[[InputReport], None] | None = None,
) -> TokenizedCorpus:
    """The cached corpus for `key_parts`, tokenizing `documents(report)` on a miss.

    Args:
      cache_dir: the cache root.
      key_parts: everything that decides the content (source fingerprint,
        settings); the tokenizer's fingerprint is added here.
      documents: called with the `InputReport` to fill; yields documents.
      tokenizer: the tokenizer.
      check: called with the filled report before the entry is written; it
        raises to refuse the corpus (nothing is cached then).
    """
    parts = {**key_parts, "tokenizer": tokenizer.fingerprint}
    final = cache_dir / f"corpus-{cache_key(parts)}"
    if (final / "meta.json").is_file():
        return TokenizedCorpus(final)

    def build(tmp: Path):
        report = InputReport()
        dtype, content = tokenize_documents(documents(report), tokenizer, tmp, report)
        if check is not None:
            check(report)
        meta = {"key": parts, "dtype": dtype, "content": content, "report": report.to_dict()}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")

    return TokenizedCorpus(write_atomic_dir(final, build))
