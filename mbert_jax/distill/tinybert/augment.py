"""TinyBERT's task-data augmentation: word replacement by MLM and word-vector candidates.

For each sentence, split into words as BERT's basic tokenizer does (the
vocabulary's normalizer and pre-tokenizer), every replaceable word gets up
to K candidates:

- a single-piece word is replaced by [MASK] and the teacher's masked LM
  gives its top-K tokens at that position (one batched, jitted MLM call per
  `batch_size` masked copies, all sentences together; every call has the
  same shapes, so it compiles once);
- a multi-piece word gets its K nearest neighbours (cosine) in a word-vector
  file the user gives (GloVe text format: `word v1 v2 ...` per line), or,
  when none is given, among the whole-word tokens of the teacher's own
  word-embedding table, measured from the mean of the word's piece
  embeddings.

Then each of N augmented sentences replaces each candidate word with
probability p by a candidate drawn uniformly. Paper defaults p = 0.4,
N = 20, K = 15. Everything is deterministic given the seed: the draws of
sentence i come from a generator keyed by (seed, row, column), so they do
not depend on batching.

Choices and the official code (`data_augmentation.py`), paper default,
official behaviour with `official=True`:
- replaceable words are alphabetic (the official `_is_valid`); official mode
  also skips English stop words;
- the MLM input is `[CLS] masked sentence [SEP]`; official mode appends the
  original sentence as segment B (`[CLS] masked [SEP] sentence [SEP]`);
- candidates exclude special tokens and `##` continuation pieces *before*
  the top-K (the official code filters `##` pieces after it, leaving fewer
  than K), so a word has exactly K MLM candidates;
- exactly N augmented sentences per text; official mode drops duplicates
  (of each other and of the original), so it writes at most N;
- output rows: the original row, then for each text column (both sides of
  a pair task) its N variants with the other columns unchanged. Fixed
  official bug: the official writer mutates the row while augmenting the
  first column, so the second column's variants were paired with the last
  variant of the first instead of the original.

Command line (writes the augmented train.tsv and copies the other files):

    mbert-jax augment --task sst2 --data-dir glue/SST-2 \\
        --mlm-teacher runs/bert_base/model --output-dir glue/SST-2-aug \\
        [--word-vectors glove.6B.300d.txt] [--p 0.4 --n 20 --k 15 --seed 0]

`--mlm-teacher` (and `config.augment.mlm_teacher.path`) is a model
directory or a transformers directory with an MLM head (`models/resolve.py`).

Your own data (`task="custom"`, `augment_custom.py`: text columns
augmented, labels kept; tagging replaces only words tagged O, keeping every
tag) writes `train.jsonl`:

    mbert-jax augment --task custom --train-file data/train.csv \\
        --text-column review --label-column stars \\
        --mlm-teacher runs/bert_base/model --output-dir data/aug

SQuAD is refused: replaced words would move the answers' character spans.
The TinyBERT task recipe calls `augmented_data_config` (cached under the
data cache directory, keyed by every input and setting) when
`config.augment.enabled` is set.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import ml_collections

from mbert_jax.data.tokenizer import WordPieceTokenizer
from mbert_jax.distill import teacher as teacher_lib
from mbert_jax.distill.tinybert.augment_words import (  # noqa: F401  (re-exported)
    PAPER_K,
    PAPER_N,
    PAPER_P,
    STOP_WORDS,
    Augmenter,
    WordVectors,
    is_whole_word_token,
)
from mbert_jax.models import io, resolve
from mbert_jax.models.variants import block_overrides

log = logging.getLogger(__name__)

VERSION = 1


def augment_config(**overrides) -> ml_collections.ConfigDict:
    """The `config.augment` block of the TinyBERT task recipe."""
    c = ml_collections.ConfigDict(
        {
            "enabled": False,
            # A pretrained BERT model directory with an MLM head (empty: random, tests only);
            # its dtype ("bfloat16") holds and runs it in bf16.
            "mlm_teacher": teacher_lib.teacher_block("bert_base"),
            "word_vectors": "",  # GloVe text file; empty: the teacher's embedding table
            "word_vectors_limit": 100_000,  # read the first rows only (the official code: 100k)
            "p": PAPER_P,
            "n": PAPER_N,
            "k": PAPER_K,
            "seed": 0,
            "batch_size": 256,  # masked sentences per MLM call
            "max_seq_length": 128,
            "official": False,
            "max_examples": 0,  # augment only the first rows (0: all; smoke runs)
        }
    )
    for key, value in overrides.items():  # replace whole values (no recursive merge)
        c[key] = value
    return c


# ------------------------------------------------------------------ task files
def _task(name: str):
    from mbert_jax.data import tasks

    return tasks.glue_task(name)


def source_dir(data_config) -> Path:
    """The directory holding the task's TSV files."""
    from mbert_jax.data import tokenized
    from mbert_jax.data.tasks import corpus as corpus_task

    if data_config.source not in ("tsv", "corpus"):
        raise ValueError(
            f"augmentation reads GLUE TSV files: config.data.source={data_config.source!r} "
            "must be 'tsv' (or 'corpus' for the corpus tasks: stdlib, wordorder)"
        )
    if data_config.data_dir:
        return Path(data_config.data_dir).expanduser()
    if data_config.task in corpus_task.TASKS:
        cache_dir = tokenized.resolve_cache_dir(data_config.cache_dir)
        return corpus_task.task_dir(cache_dir, data_config.task)
    raise ValueError(f"config.data.data_dir: the directory of the {data_config.task} TSV files")


def augment_task_files(
    task_name: str,
    src: Path,
    dst: Path,
    augmenter: Augmenter,
    *,
    n: int,
    p: float,
    seed: int,
    max_examples: int = 0,
) -> int:
    """Write `dst/train.tsv` augmented (same layout as `src`'s) and copy the other files.

    Only the first `max_examples` rows get variants when it is positive (the
    other rows are copied as they are).

    Returns:
      The number of training rows written.
    """
    task = _task(task_name)
    layout = task.splits["train"]
    lines = (src / layout.file).read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    head, rows = (lines[:1], lines[1:]) if layout.header else ([], lines)
    columns = [c for c in (layout.text_a, layout.text_b) if c is not None]
    fields = [line.rstrip("\r").split("\t") for line in rows]
    chosen = fields[:max_examples] if max_examples > 0 else fields
    variants = {
        c: augmenter.augment(
            [f[c] for f in chosen], n=n, p=p, seed=seed, keys=[(r, c) for r in range(len(chosen))]
        )
        for c in columns
    }
    out = list(head)
    for r, f in enumerate(fields):
        out.append("\t".join(f))
        if r >= len(chosen):
            continue
        for c in columns:
            for v in variants[c][r]:
                out.append("\t".join(v if i == c else x for i, x in enumerate(f)))
    dst.mkdir(parents=True, exist_ok=True)
    for other in src.iterdir():
        if other.is_file() and other.name != layout.file and other.suffix == ".tsv":
            shutil.copyfile(other, dst / other.name)
    (dst / layout.file).write_text("\n".join(out) + "\n", encoding="utf-8")
    return len(out) - len(head)


def build_augmenter(augment_cfg, tokenizer: WordPieceTokenizer) -> Augmenter:
    """The `Augmenter` of a `config.augment` block (loads the MLM teacher and word vectors)."""
    spec = teacher_lib.load_teacher(
        augment_cfg.mlm_teacher,
        heads=("mlm",),
        what="augment.mlm_teacher",
        vocab_size=tokenizer.vocab_size,
        needed_by="the augmentation (its MLM proposes the replacement words)",
    )
    if spec.vocab_file is not None:
        from mbert_jax.data import check_same_vocab

        check_same_vocab(spec.vocab_file, tokenizer)
    vectors = None
    if augment_cfg.word_vectors:
        vectors = WordVectors.load(augment_cfg.word_vectors, augment_cfg.word_vectors_limit)
    return Augmenter(
        tokenizer,
        spec.model,
        spec.host_params(),
        k=augment_cfg.k,
        word_vectors=vectors,
        batch_size=augment_cfg.batch_size,
        max_seq_length=augment_cfg.max_seq_length,
        official=augment_cfg.official,
    )


def _file_key(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_parts(augment_cfg, tokenizer: WordPieceTokenizer) -> dict:
    """The part of an augmented set's cache key that the augmentation settings make."""
    teacher = augment_cfg.mlm_teacher
    if teacher.path:
        stored = resolve.model_dir(teacher.path, "config.augment.mlm_teacher.path")
        teacher_key = _file_key(stored / io.PARAMS_FILE)
    else:  # drawn by teacher.host_init
        teacher_key = [teacher.variant, block_overrides(teacher), teacher.seed, "host_init"]
    if teacher.dtype != "float32":  # float32 teacher directories keep their earlier keys
        teacher_key.append(teacher.dtype)
    return {
        "tokenizer": tokenizer.fingerprint,
        "teacher": teacher_key,
        "vectors": _file_key(Path(augment_cfg.word_vectors)) if augment_cfg.word_vectors else "",
        **{
            k: augment_cfg[k]
            for k in (
                "p",
                "n",
                "k",
                "seed",
                "max_seq_length",
                "official",
                "word_vectors_limit",
                "max_examples",
            )
        },
        "v": VERSION,
    }


def check_augmentable(data_config) -> None:
    """Raise a one-line ValueError for a task whose labels word replacement would break (SQuAD)."""
    if data_config.task.startswith("squad"):
        raise ValueError(
            f"config.augment.enabled=True: config.data.task={data_config.task} cannot be "
            "augmented (replacing words moves the answers' character spans); set "
            "--config.augment.enabled=False"
        )


def augmented_data_config(data_config, augment_cfg, tokenizer: WordPieceTokenizer):
    """`data_config` reading the augmented training set instead (built once, cached).

    GLUE and the corpus tasks: `data_dir` is the augmented task directory
    (`augmented_task_dir`). `task="custom"`: the training file is the
    augmented JSON lines file of `augment_custom.py`. SQuAD: a ValueError.
    """
    check_augmentable(data_config)
    if data_config.task == "custom":
        from mbert_jax.distill.tinybert import augment_custom

        return augment_custom.augmented_config(data_config, augment_cfg, tokenizer)
    c = ml_collections.ConfigDict(data_config.to_dict())
    c.data_dir = str(augmented_task_dir(data_config, augment_cfg, tokenizer))
    return c


def augmented_task_dir(data_config, augment_cfg, tokenizer: WordPieceTokenizer) -> Path:
    """A directory with the task's files and an augmented train.tsv (built once, cached)."""
    from mbert_jax.data import tokenized

    src = source_dir(data_config)
    train = src / _task(data_config.task).splits["train"].file
    if not train.is_file():
        raise ValueError(f"{train} does not exist: cannot augment the {data_config.task} task")
    parts = {
        "task": data_config.task,
        "train": _file_key(train),
        **cache_parts(augment_cfg, tokenizer),
    }
    cache = tokenized.resolve_cache_dir(data_config.cache_dir)
    directory = cache / f"augment-{data_config.task}-{tokenized.cache_key(parts)}"
    if (directory / "meta.json").is_file():
        return directory

    def build(tmp: Path):
        augmenter = build_augmenter(augment_cfg, tokenizer)
        rows = augment_task_files(
            data_config.task,
            src,
            tmp,
            augmenter,
            n=augment_cfg.n,
            p=augment_cfg.p,
            seed=augment_cfg.seed,
            max_examples=augment_cfg.max_examples,
        )
        (tmp / "meta.json").write_text(json.dumps({**parts, "rows": rows}, default=str) + "\n")
        log.info("augmented %s: %d training rows in %s", data_config.task, rows, directory)

    return tokenized.write_atomic_dir(directory, build)


def main(argv: list[str] | None = None) -> int:
    from mbert_jax.data import load_tokenizer, task_data_defaults
    from mbert_jax.models import io

    parser = argparse.ArgumentParser(prog="mbert-jax augment", description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, help="GLUE task name, 'stdlib', or 'custom'")
    parser.add_argument("--data-dir", default="", help="directory of the task's TSV files")
    parser.add_argument(
        "--mlm-teacher",
        required=True,
        help="pretrained BERT with an MLM head: a model or transformers directory",
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--word-vectors", default="", help="GloVe text file (optional)")
    parser.add_argument("--vocab-file", default="", help="default: the teacher's vocab.txt")
    parser.add_argument("--p", type=float, default=PAPER_P)
    parser.add_argument("--n", type=int, default=PAPER_N)
    parser.add_argument("--k", type=int, default=PAPER_K)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--official", action="store_true")
    custom = parser.add_argument_group(
        "--task custom", "your own training file, its columns as config.data names them"
    )
    custom.add_argument("--train-file", default="", help=".csv, .tsv, .jsonl, .json or CoNLL")
    custom.add_argument(
        "--task-kind", default="classification", help="classification, regression or tagging"
    )
    custom.add_argument("--text-column", default="text")
    custom.add_argument("--text-pair-column", default="")
    custom.add_argument("--label-column", default="label")
    custom.add_argument("--tokens-column", default="tokens", help="tagging, JSON lines")
    custom.add_argument("--tags-column", default="tags", help="tagging, JSON lines")
    custom.add_argument("--conll-tag-column", type=int, default=-1, help="tagging, CoNLL files")
    args = parser.parse_args(argv)
    if args.task != "custom" and not args.data_dir:
        parser.error(f"--data-dir: the directory of the {args.task} TSV files")
    if args.task == "custom" and not args.train_file:
        parser.error("--train-file: the custom task's training file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        teacher = resolve.model_dir(args.mlm_teacher, "--mlm-teacher")
    except ValueError as e:
        parser.error(str(e))
    vocab = args.vocab_file or io.vocab_path(teacher)
    if not vocab:
        parser.error(f"{args.mlm_teacher} has no vocab.txt: pass --vocab-file")
    cfg = augment_config(
        enabled=True,
        mlm_teacher=teacher_lib.teacher_block(path=args.mlm_teacher),
        word_vectors=args.word_vectors,
        p=args.p,
        n=args.n,
        k=args.k,
        seed=args.seed,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        official=args.official,
    )
    if args.task.startswith("squad"):
        parser.error(f"--task {args.task}: replacing words would move the answers' spans")
    data = task_data_defaults(args.task)
    augmenter = build_augmenter(cfg, load_tokenizer(vocab))
    out = Path(args.output_dir)
    settings = dict(n=args.n, p=args.p, seed=args.seed)
    if args.task == "custom":
        from mbert_jax.distill.tinybert import augment_custom

        for name in (
            "train_file",
            "task_kind",
            "text_column",
            "text_pair_column",
            "label_column",
            "tokens_column",
            "tags_column",
            "conll_tag_column",
        ):
            data[name] = getattr(args, name)
        rows, _ = augment_custom.augment_custom_files(data, out, augmenter, **settings)
        print(f"wrote {rows} training rows to {out / augment_custom.TRAIN_FILE}")
        return 0
    rows = augment_task_files(args.task, Path(args.data_dir), out, augmenter, **settings)
    print(f"wrote {rows} training rows to {out / 'train.tsv'}")
    return 0
