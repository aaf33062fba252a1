"""`mbert-jax train` and `mbert-jax sweep`.

    mbert-jax train --config configs/X.py[:args] --workdir DIR [--config.a.b=value ...]
    mbert-jax sweep --config configs/X.py[:args] --workdir DIR [--seeds N] [--dry-run]

Flag names take `-` or `_` (`--dry-run` is `--dry_run`); `--help` lists the
flags.

Config files follow big_vision: `get_config(arg)` returns a locked
`ConfigDict`; `sweep(add)` (optional) declares the ablation grid by calling
`add(**{"field.path": value, ...})` once per run (`sweep(add, arg)` also gets
the config's `:args` string, for values that depend on them; `mbert_jax/train/sweep.py`).
Every config error (unknown
field, wrong type, impossible combination) is reported before anything
compiles.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections import config_flags

from mbert_jax.train import sweep
from mbert_jax.train.config import load_config_module

log = logging.getLogger("mbert_jax")


def setup_logging() -> None:
    """INFO lines of mbert_jax on stderr (absl owns the root logger, so ours gets a handler)."""
    logger = logging.getLogger("mbert_jax")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for noisy in ("absl", "orbax", "jax", "tensorflow", "etils", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def setup_compilation_cache() -> None:
    """Persist compiled steps across processes, so a resumed or repeated run skips compiling.

    `MBERT_JAX_COMPILE_CACHE` names the directory (default
    ~/.cache/mbert_jax/xla); set it to an empty string to disable.
    """
    import jax

    path = os.environ.get("MBERT_JAX_COMPILE_CACHE", str(Path.home() / ".cache/mbert_jax/xla"))
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def define_config_flag(fv: flags.FlagValues, argv: list[str]) -> None:
    """`--config FILE[:args]` with `--config.field=value` overrides."""
    config_flags.DEFINE_config_file(
        "config",
        None,
        "experiment config file (configs/X.py[:args])",
        flag_values=fv,
        sys_argv=["mbert-jax"] + argv,
    )


def _define_common(fv: flags.FlagValues, argv: list[str]) -> None:
    define_config_flag(fv, argv)
    flags.DEFINE_string(
        "workdir", None, "directory for checkpoints, logs and the model", flag_values=fv
    )


def normalize_argv(argv: list[str]) -> list[str]:
    """`--dry-run` as `--dry_run`: absl names flags with underscores, users type either."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if arg.startswith("--") and not arg.startswith("--config"):
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


def dashed(help_line: str) -> str:
    """absl's `--dry_run` / `--[no]dry_run` in help text as the documented `--dry-run`."""
    return re.sub(
        r"^(\s*--(?:\[no\])?)([A-Za-z0-9_]+)",
        lambda m: m.group(1) + m.group(2).replace("_", "-"),
        help_line,
    )


def _parse(
    fv: flags.FlagValues,
    prog: str,
    argv: list[str],
    required=("config", "workdir"),
    doc: str | None = None,
) -> None:
    """Parse `argv` into `fv`; `--help` prints `doc` (this module's) and the flags, and exits."""
    if any(arg in ("-h", "--help", "--helpshort", "--helpfull") for arg in argv):
        # absl groups the flags under "module.name:" headings; one list reads better.
        flag_help = fv.get_help(include_special_flags=False).splitlines()
        flag_help = [dashed(line) for line in flag_help if line.startswith(" ")]
        usage = (doc if doc is not None else __doc__).strip()
        print(f"{prog}\n\n{usage}\n\nflags:\n" + "\n".join(flag_help))
        raise SystemExit(0)
    try:
        fv([prog] + argv)
    except flags.Error as e:
        # A failing get_config() arrives with its traceback: keep the error line.
        lines = [line for line in str(e).splitlines() if line.strip()]
        message = lines[0] if "Traceback" not in str(e) else f"{lines[0]} {lines[-1]}"
        raise SystemExit(f"{prog}: {message}") from None
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        # Unknown config fields surface here, as a KeyError text inside an AttributeError.
        message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        message = message.replace("\\'", "'").replace("\\n", " ").replace("'", "")
        raise SystemExit(f"{prog}: config error: unknown field {message}") from None
    for name in required:
        if fv[name].value is None:
            raise SystemExit(f"{prog}: --{name} is required")


def train_main(argv: list[str]) -> int:
    argv = normalize_argv(argv)
    fv = flags.FlagValues()
    _define_common(fv, argv)
    flags.DEFINE_string(
        "coordinator_address", None, "multi-host: host:port of process 0", flag_values=fv
    )
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index", flag_values=fv)
    _parse(fv, "mbert-jax train", argv)
    setup_logging()
    setup_compilation_cache()
    from mbert_jax.parallel.mesh import initialize_distributed

    initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    result = run_config(fv.config, fv.workdir)
    return 0 if result is not None else 1


def run_config(config: ml_collections.ConfigDict, workdir: str):
    """Build the recipe (checking the config), train (the trainer saves the resolved config).

    A config error and a run that stops (a non-finite loss, a checkpoint of
    another model or one that cannot be written) exit with one line,
    `config error: ...` or `error: ...`.
    """
    from mbert_jax import recipes
    from mbert_jax.train import loop

    workdir_path = Path(workdir)
    try:
        # The trainer checks what it needs (steps, batch and mesh, positions) here.
        trainer = loop.Trainer(config, recipes.build(config), workdir_path)
    except loop.TRAINING_ERRORS as e:  # e.g. a damaged teacher file
        raise SystemExit(f"error: {e}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"config error: {e}") from None
    workdir_path.mkdir(parents=True, exist_ok=True)
    # The trainer writes WORKDIR/config.json once the run is accepted.
    try:
        return loop.train(trainer)
    except loop.TRAINING_ERRORS as e:
        raise SystemExit(f"error: {e}") from None


# ---------------------------------------------------------------------------- sweep
SWEEP_USAGE = """\
    mbert-jax sweep --config configs/X.py[:args] --workdir DIR [--seeds N]
        [--metrics a,b] [--finetune configs/finetune.py[:args]] [--dry-run]

Runs every setting the config's `sweep(add)` declares, each `--seeds` times
(`train.seed` and `data.seed` raised by 0..N-1; the held-out split and its
masks stay fixed), in DIR/<setting> (DIR/<setting>/seed<k> with seeds > 1).
Options after the colon and `--config.*` overrides apply to every run.

Each run reports its final evaluation, over the whole held-out split. With
`--finetune CONFIG`, each run's model/ is then fine-tuned by CONFIG in
<run>/finetune (same seed) and its metrics join the row as finetune_eval_*.

After every run, from every finished run: DIR/results.md (the settings, the
varied fields and the headline metrics as mean +- standard error, best first;
settings within two standard errors of the best marked), results.png (the
headline metrics with error bars), results.csv (every run and metric) and
summary.csv (mean and standard error of every metric per setting). Headline
metrics: --metrics, else the config's `sweep_metrics` (and the fine-tuning
config's, prefixed finetune_), else eval_objective. Accuracy, F1, exact
match, precision, recall and correlations rank highest first, every other
metric (the losses) lowest first; `name:max` or `name:min` says which.

Resume: run the same command again. Finished runs (DIR/<run>/sweep.json)
are kept, an interrupted run resumes from its checkpoint, and the tables are
rewritten; a finished run made with other settings stops the sweep with one
line. `--dry-run` prints one `mbert-jax train` command per run instead.
"""


def sweep_main(argv: list[str]) -> int:
    argv = normalize_argv(argv)
    fv = flags.FlagValues()
    _define_common(fv, argv)
    flags.DEFINE_integer(
        "seeds", 1, "runs per setting, with train.seed and data.seed +0..N-1", flag_values=fv
    )
    flags.DEFINE_string(
        "metrics", "", "headline metrics, comma-separated (default: the config's)", flag_values=fv
    )
    flags.DEFINE_string(
        "finetune", "", "config file[:args] that fine-tunes each run's model", flag_values=fv
    )
    flags.DEFINE_bool("dry_run", False, "print one train command per run instead", flag_values=fv)
    _parse(fv, "mbert-jax sweep", argv, doc=SWEEP_USAGE)
    spec = config_flags.get_config_filename(fv["config"])
    module, arg = load_config_module(spec)
    runs = sweep.expand(sweep.sweep_runs(module, arg), fv.seeds)
    workdir = Path(fv.workdir)
    followup = None
    if fv.finetune:
        ft_module, ft_arg = load_config_module(fv.finetune)
        try:
            ft_config = ft_module.get_config(ft_arg)
        except (ValueError, KeyError, TypeError) as e:
            raise SystemExit(
                f"mbert-jax sweep: --finetune {fv.finetune}: config error: {e}"
            ) from None
        if "init_from" not in ft_config:
            raise SystemExit(
                f"mbert-jax sweep: --finetune {fv.finetune} has no init_from field to start "
                "from each run's model; give a fine-tuning config such as configs/finetune.py"
            )
        ft_metrics = tuple(f"finetune_{m}" for m in getattr(ft_module, "sweep_metrics", ()))
        followup = sweep.Followup(fv.finetune, ft_config, ft_metrics)
    if fv.dry_run:
        base_overrides = config_flags.get_override_values(fv["config"])
        for line in sweep.dry_run_commands(
            runs, fv.config, spec, workdir, base_overrides, followup
        ):
            print(line)
        return 0
    if fv.metrics:
        metrics = tuple(m.strip() for m in fv.metrics.split(",") if m.strip())
    else:
        metrics = (*(followup.metrics if followup else ()), *getattr(module, "sweep_metrics", ()))
    for m in metrics:
        sweep.Metric.parse(m)  # a bad direction fails before anything runs
    setup_logging()
    setup_compilation_cache()
    rows = sweep.run_sweep(runs, fv.config, workdir, run_config, metrics=metrics, followup=followup)
    missing = [m for m in metrics if sweep.Metric.parse(m).name not in sweep.reported(rows)]
    if missing:
        log.warning(
            "sweep: no run reports the metric(s) %s; reported: %s",
            ", ".join(missing),
            ", ".join(sweep.reported(rows)),
        )
    print((workdir / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
