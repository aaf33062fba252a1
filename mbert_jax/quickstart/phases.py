"""What every quickstart preset does the same way: read the configs, run a phase once.

A phase is one training run in its own sub-directory of the workdir. It is
done when its directory holds a model directory and `results.json`; a done
phase is skipped, an interrupted one resumes from its checkpoint, so running
the same quickstart command again picks up where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import ml_collections

from mbert_jax.models import io
from mbert_jax.train.cli import load_config_module

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def configs_dir() -> Path:
    if not (CONFIGS / "quickstart.py").is_file():
        raise SystemExit(
            f"the experiment configs are not at {CONFIGS}; run the quickstart from a clone "
            "of the repository installed with `pip install -e .`"
        )
    return CONFIGS


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`configs/<name>.py:<arg>`, as an unlocked copy."""
    module, _ = load_config_module(str(configs_dir() / f"{name}.py"))
    return ml_collections.ConfigDict(module.get_config(arg).to_dict())


def finished(run_dir: Path) -> bool:
    return io.is_model_dir(run_dir / "model") and (run_dir / "results.json").is_file()


def train(name: str, config, run_dir: Path) -> None:
    """Run `config` in `run_dir` unless that phase is done."""
    from mbert_jax.train.cli import run_config

    if finished(run_dir):
        print(f"== {name}: done ({run_dir}), skipped", flush=True)
        return
    print(f"== {name}: training in {run_dir}", flush=True)
    start = time.monotonic()
    config.lock()
    result = run_config(config, str(run_dir))
    if result.preempted:
        raise SystemExit("preempted; run the same command again to resume")
    print(f"== {name}: finished in {time.monotonic() - start:.0f}s", flush=True)
