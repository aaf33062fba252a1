"""`mbert-jax train` and `mbert-jax sweep`.

    mbert-jax train --config configs/X.py[:args] --workdir DIR [--config.a.b=value ...]
    mbert-jax sweep --config configs/X.py[:args] --workdir DIR [--dry-run]

Flag names take `-` or `_` (`--dry-run` is `--dry_run`); `--help` lists the
flags.

Config files follow big_vision: `get_config(arg)` returns a locked
`ConfigDict`; `sweep(add)` (optional) declares the ablation grid by calling
`add(**{"field.path": value, ...})` once per run (`sweep(add, arg)` also gets
the config's `:args` string, for values that depend on them). Every config error (unknown
field, wrong type, impossible combination) is reported before anything
compiles.
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import logging
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

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
        flag_help = [line for line in flag_help if line.startswith(" ")]
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
def load_config_module(spec: str):
    """(module, arg) of `path/to/config.py[:arg]`."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise SystemExit(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module, (arg or None)


def sweep_runs(module, arg) -> list[dict[str, Any]]:
    if not hasattr(module, "sweep"):
        raise SystemExit(f"{module.__file__} declares no sweep(add) function")
    runs: list[dict[str, Any]] = []

    def add(**overrides):
        runs.append(overrides)

    if len(inspect.signature(module.sweep).parameters) > 1:
        module.sweep(add, arg)
    else:
        module.sweep(add)
    if not runs:
        raise SystemExit(f"the sweep of {module.__file__} adds no runs")
    return runs


def run_name(overrides: dict[str, Any]) -> str:
    if "name" in overrides:
        return str(overrides["name"])
    parts = [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9=._,-]+", "_", ",".join(parts)) or "default"


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]):
    config = ml_collections.ConfigDict(config.to_dict())  # unlocked copy
    for key, value in overrides.items():
        if key == "name":
            continue
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node:
                raise SystemExit(f"sweep override {key!r}: config has no field {p!r}")
            node = node[p]
        if leaf not in node:
            raise SystemExit(f"sweep override {key!r}: config has no field {leaf!r}")
        node[leaf] = value
    config.lock()
    return config


def write_results(workdir: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with (workdir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    (workdir / "results.md").write_text("\n".join(lines) + "\n")


def sweep_main(argv: list[str]) -> int:
    argv = normalize_argv(argv)
    fv = flags.FlagValues()
    _define_common(fv, argv)
    flags.DEFINE_bool("dry_run", False, "print one train command per run instead", flag_values=fv)
    _parse(fv, "mbert-jax sweep", argv)
    spec = config_flags.get_config_filename(fv["config"])
    module, arg = load_config_module(spec)
    runs = sweep_runs(module, arg)
    workdir = Path(fv.workdir)
    base_overrides = config_flags.get_override_values(fv["config"])
    if fv.dry_run:
        for overrides in runs:
            sets = {
                **_flatten(base_overrides),
                **{k: v for k, v in overrides.items() if k != "name"},
            }
            cmd = [
                "mbert-jax",
                "train",
                "--config",
                spec,
                "--workdir",
                str(workdir / run_name(overrides)),
            ]
            cmd += [f"--config.{k}={v}" for k, v in sets.items()]
            print(shlex.join(cmd))
        return 0
    setup_logging()
    setup_compilation_cache()
    rows = []
    for i, overrides in enumerate(runs):
        name = run_name(overrides)
        which = f"sweep run {i + 1}/{len(runs)} ({name})"
        print(f"=== {which}", flush=True)
        try:  # a failure is one line naming the run; finished rows stay in results.md
            result = run_config(apply_overrides(fv.config, overrides), str(workdir / name))
        except SystemExit as e:
            raise SystemExit(f"{which}: {e}") from None
        if result is None:  # preempted: its checkpoint is saved
            raise SystemExit(f"{which}: stopped before the end; run the same sweep again to resume")
        row: dict[str, Any] = {"run": name, **{k: v for k, v in overrides.items() if k != "name"}}
        row.update({f"eval_{k}": v for k, v in result.final_eval.items()})
        row.update({f"train_{k}": v for k, v in result.final_train.items()})
        rows.append(row)
        write_results(workdir, rows)
    print((workdir / "results.md").read_text())
    return 0


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
