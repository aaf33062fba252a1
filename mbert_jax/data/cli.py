"""`mbert-jax data`: prepare and inspect data without training.

    mbert-jax data prepare [--set source=text --set text_files='corpus/*.txt' ...]
        Read, tokenize and plan the corpus of a data config (filling the
        cache, so that every host of a later run finds it), print the input
        summary and the sizes.
    mbert-jax data show [--set ...] [--n 2]
        Print the first training examples as text.
    mbert-jax data write-corpus OUT.txt
        Write the embedded stdlib corpus as a plain-text corpus file.
    mbert-jax data write-stdlib-task DIR
    mbert-jax data write-wordorder-task DIR
        Write a corpus task's train.tsv / dev.tsv (see tasks/corpus.py).

`--set key=value` overrides a field of `config.pretraining_data_defaults()`; values are
parsed as the field's type (`--set nsp=false --set max_seq_length=64`).
"""

from __future__ import annotations

import argparse

from mbert_jax.data import config as config_lib
from mbert_jax.data import default_corpus, pipeline
from mbert_jax.data.tasks import corpus as corpus_task


def parse_overrides(pairs: list[str]):
    c = config_lib.pretraining_data_defaults()
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in c:
            raise SystemExit(f"--set {pair!r}: expected FIELD=VALUE with FIELD one of {sorted(c)}")
        old = c[key]
        if isinstance(old, bool) or old is None and value.lower() in ("true", "false"):
            c[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(old, int) and not isinstance(old, bool):
            c[key] = int(value)
        elif isinstance(old, float):
            c[key] = float(value)
        else:
            c[key] = value
    return c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mbert-jax data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("prepare", "show"):
        p = sub.add_parser(name)
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
        p.add_argument("--n", type=int, default=2, help="examples to show")
    sub.add_parser("write-corpus").add_argument("out")
    for name in corpus_task.TASKS:
        p = sub.add_parser(f"write-{name}-task")
        p.add_argument("out")
        p.set_defaults(corpus_task=name)
    args = parser.parse_args(argv)

    if args.command == "write-corpus":
        path = default_corpus.write_text(args.out)
        print(f"wrote {path}: {default_corpus.build_stats()}")
        return 0
    if getattr(args, "corpus_task", None):
        print(f"wrote {corpus_task.write_task(args.out, args.corpus_task)}")
        return 0
    c = parse_overrides(args.set)
    c.num_threads = 0
    data = pipeline.build_pretraining_data(c, process_index=0, process_count=1)
    if args.command == "prepare":
        print(
            f"vocabulary: {data.tokenizer.vocab_size} tokens ({data.tokenizer.source}); "
            f"{data.train_examples:,} training rows per epoch "
            f"({data.steps_per_epoch:,.1f} steps of {c.global_batch_size}), "
            f"{data.eval_examples:,} held-out rows"
        )
        return 0
    batch = next(data.train)
    tok = data.tokenizer
    for r in range(min(args.n, len(batch["valid"]))):
        real = batch["attention_mask"][r] > 0
        print(f"--- row {r}: {tok.decode(batch['input_ids'][r][real])}")
        k = int(batch["masked_lm_weights"][r].sum())
        targets = tok.decode(batch["masked_lm_ids"][r][:k]) if k else ""
        print(f"    predict at {batch['masked_lm_positions'][r][:k].tolist()}: {targets}")
        if "next_sentence_labels" in batch:
            print(f"    next_sentence_label {int(batch['next_sentence_labels'][r])}")
    return 0
