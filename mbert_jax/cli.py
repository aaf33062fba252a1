"""`mbert-jax`: the command-line entry point.

Each sub-command lives with the code it drives; this module only parses the
command name and hands the remaining arguments over. Flags are spelled with
dashes (`--seq-len`, `--dry-run`); every command also accepts underscores.
"""

from __future__ import annotations

import argparse
import sys

from mbert_jax import host_memory


def describe_main(argv: list[str]) -> int:
    from mbert_jax.models import summary, variants

    parser = argparse.ArgumentParser(
        prog="mbert-jax describe",
        description="Parameters by component and FLOPs per token of model variants.",
    )
    parser.add_argument(
        "variants", nargs="*", help=f"one or more of: {', '.join(variants.names())}"
    )
    parser.add_argument("--all", action="store_true", help="describe every full-size variant")
    args = parser.parse_args(argv)
    names = list(variants.VARIANTS) if args.all else args.variants
    if not names:
        parser.error("name at least one variant, or pass --all")
    for name in names:
        try:
            config = variants.get(name)
        except ValueError as e:
            parser.error(str(e))
        print(summary.describe(name, config))
        print()
    return 0


def train_main(argv: list[str]) -> int:
    from mbert_jax.train.cli import train_main as main

    return main(argv)


def sweep_main(argv: list[str]) -> int:
    from mbert_jax.train.cli import sweep_main as main

    return main(argv)


def plan_main(argv: list[str]) -> int:
    from mbert_jax.train.plan import plan_main as main

    return main(argv)


def quickstart_main(argv: list[str]) -> int:
    from mbert_jax.quickstart import main

    return main(argv)


def export_main(argv: list[str]) -> int:
    from mbert_jax.export.cli import main

    return main(argv)


def data_main(argv: list[str]) -> int:
    from mbert_jax.data.cli import main

    return main(argv)


def convert_main(argv: list[str]) -> int:
    from mbert_jax.models.hf import main

    return main(argv)


def augment_main(argv: list[str]) -> int:
    from mbert_jax.distill.tinybert.augment import main

    return main(argv)


def baseline_main(argv: list[str]) -> int:
    from mbert_jax.baseline import main

    return main(argv)


# name: (function, one-line description, flags parsed by absl (which names them with `_`)).
COMMANDS = {
    "describe": (describe_main, "parameter counts and FLOPs of model variants", False),
    "train": (train_main, "run one experiment config (pretraining, distillation, ...)", True),
    "sweep": (sweep_main, "run the ablation grid a config declares", True),
    "plan": (plan_main, "per-device memory and FLOPs of a pod job, on simulated devices", True),
    "quickstart": (quickstart_main, "the MobileBERT recipe end to end, on this machine", False),
    "export": (export_main, "export a model to TFLite or transformers, verified", False),
    "data": (data_main, "prepare and inspect data (corpora, vocabularies, tasks)", False),
    "convert": (convert_main, "convert between a model directory and transformers", False),
    "augment": (augment_main, "TinyBERT augmentation of a task's training data", False),
    "baseline": (baseline_main, "a bag-of-words naive Bayes baseline on a task", False),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: mbert-jax COMMAND [--help] ...", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text, _) in COMMANDS.items()]
    lines += ["", "`mbert-jax COMMAND --help` lists a command's flags."]
    return "\n".join(lines)


def dashed(argv: list[str]) -> list[str]:
    """`--data_dir` as `--data-dir` (argparse commands spell flags with dashes)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--") and not arg.startswith("--config."):
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("_", "-") + eq + value
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        print(f"\nunknown command {argv[0]!r}", file=sys.stderr)
        return 2
    try:
        host_memory.keep_freed_memory()  # if MBERT_JAX_KEEP_HOST_MEMORY=1; before JAX starts
    except ValueError as e:
        print(f"mbert-jax: {e}", file=sys.stderr)
        return 2
    run, _, absl_flags = COMMANDS[argv[0]]
    rest = argv[1:] if absl_flags else dashed(argv[1:])  # absl commands normalize themselves
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
