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
    from mbert_jax.models import io, summary, variants

    parser = argparse.ArgumentParser(
        prog="mbert-jax describe",
        description="Parameters by component and FLOPs per token of model variants, or of "
        "the teacher and student of a distillation config (as the recipe resolves them, "
        "e.g. a student fitted to its teacher).",
    )
    parser.add_argument(
        "variants",
        nargs="*",
        help="model directories (e.g. a pruned model's) or variant names, one or more of: "
        f"{', '.join(variants.names())}",
    )
    parser.add_argument("--all", action="store_true", help="describe every full-size variant")
    parser.add_argument(
        "--config",
        help="a distillation config, configs/X.py[:options] (e.g. "
        "configs/mobilebert_pkt.py:student=fit,teacher=PATH); reads no parameters",
    )
    args = parser.parse_args(argv)
    names = list(variants.VARIANTS) if args.all else args.variants
    if not names and not args.config:
        parser.error("name at least one variant, pass --all, or --config")
    models = []
    for name in names:
        try:
            if io.is_model_dir(name):
                models.append((name, io.load_config(name)[0]))
                continue
            models.append((name, variants.get(name)))
        except ValueError as e:
            parser.error(str(e))
    if args.config:
        try:
            models += config_models(args.config)
        except ValueError as e:
            parser.error(str(e))
    for name, config in models:
        print(summary.describe(name, config))
        print()
    return 0


def config_models(spec: str):
    """`[(name, ModelConfig)]` of the teacher and student of a distillation config file.

    The teacher's config is read without its parameters; the student is
    resolved as the recipe resolves it (`mobilebert.fit.student_block`: a
    student fitted to its teacher takes the teacher's vocabulary).
    """
    from mbert_jax.distill import teacher as teacher_lib
    from mbert_jax.distill.mobilebert.fit import student_block
    from mbert_jax.models.variants import from_block
    from mbert_jax.train.config import load_config_module

    module, arg = load_config_module(spec)
    config = module.get_config(arg)
    if "student" not in config or "teacher" not in config:
        raise ValueError(f"--config {spec}: not a distillation config (no student and teacher)")
    teacher = teacher_lib.read_config(config.teacher)
    fitted = bool(config.student.get("fit", False))
    forced = {"vocab_size": teacher.vocab_size} if fitted else {}
    student = from_block(student_block(config, teacher), **forced)
    return [
        (f"teacher ({teacher_lib.describe(config.teacher)})", teacher),
        ("student" + (" (fitted to the teacher)" if fitted else ""), student),
    ]


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


def prune_vocab_main(argv: list[str]) -> int:
    from mbert_jax.prune.vocabulary import main

    return main(argv)


def baseline_main(argv: list[str]) -> int:
    from mbert_jax.baseline import main

    return main(argv)


# name: (function, one-line description, flags parsed by absl (which names them with `_`)).
COMMANDS = {
    "describe": (describe_main, "parameter counts and FLOPs of model variants", False),
    "train": (train_main, "run one experiment config (pretraining, distillation, ...)", True),
    "sweep": (sweep_main, "run a config's ablation grid over seeds; mean ± SE table", True),
    "plan": (plan_main, "per-device memory and FLOPs of a pod job, on simulated devices", True),
    "quickstart": (quickstart_main, "a compression recipe end to end, on this machine", False),
    "export": (export_main, "export a model to TFLite or transformers, verified", False),
    "data": (data_main, "prepare and inspect data (corpora, vocabularies, tasks)", False),
    "convert": (convert_main, "convert between a model directory and transformers", False),
    "augment": (augment_main, "TinyBERT augmentation of a task's training data", False),
    "baseline": (baseline_main, "a bag-of-words naive Bayes baseline on a task", False),
    "prune-vocab": (prune_vocab_main, "keep only the vocabulary a task's texts use", False),
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
