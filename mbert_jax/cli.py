"""`mbert-jax`: the command-line entry point.

Each sub-command lives with the code it drives; this module only parses the
command name and hands the remaining arguments over.
"""

from __future__ import annotations

import argparse
import sys

from mbert_jax import host_memory
from mbert_jax.models import summary, variants


def describe_main(argv: list[str]) -> int:
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
    from mbert_jax.data.__main__ import main

    return main(argv)


COMMANDS = {
    "describe": describe_main,
    "train": train_main,
    "sweep": sweep_main,
    "plan": plan_main,
    "quickstart": quickstart_main,
    "export": export_main,
    "data": data_main,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: mbert-jax {" + ",".join(COMMANDS) + "} ...", file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    try:
        host_memory.keep_freed_memory()  # if MBERT_JAX_KEEP_HOST_MEMORY=1; before JAX starts
    except ValueError as e:
        print(f"mbert-jax: {e}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
