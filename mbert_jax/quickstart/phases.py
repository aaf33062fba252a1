"""What every quickstart preset does the same way: read the configs, run a phase once.

A phase is one training run in its own sub-directory of the workdir. It is
done when its directory holds a model directory and `results.json`; a done
phase is skipped, an interrupted one resumes from its checkpoint, so running
the same quickstart command again picks up where it stopped.

A phase also records what made it (records.py): a rerun with other
settings or other input models stops, or with `on_change="redo"` redoes it,
instead of reusing it.

Each phase's wall time is added to WORKDIR/timings.json (seconds per phase,
summed over the invocations that ran it, so a resumed phase counts every
part; a redone phase starts again from zero), for the reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections

from mbert_jax.models import io
from mbert_jax.quickstart import records
from mbert_jax.train.config import load_config_module

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


def add_time(workdir: Path, phase: str, seconds: float) -> None:
    """Add `seconds` to `phase` in WORKDIR/timings.json (written whole, then renamed)."""
    path = workdir / "timings.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[phase] = round(times.get(phase, 0.0) + seconds, 1)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(times, indent=2) + "\n")
    tmp.replace(path)


def reset_time(workdir: Path, phase: str) -> None:
    """Forget `phase`'s time in WORKDIR/timings.json (it is being redone)."""
    path = workdir / "timings.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    if times.pop(phase, None) is not None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(times, indent=2) + "\n")
        tmp.replace(path)


def check_phase(run_dir: Path, settings, on_change: str) -> None:
    """`records.check_phase` of `settings` (a config or dict) for the phase in `run_dir`."""
    if records.check_phase(run_dir, records.record(settings, run_dir.parent), on_change):
        reset_time(run_dir.parent, run_dir.name)


def timings(workdir: Path) -> dict[str, float]:
    path = workdir / "timings.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def train(name: str, config, run_dir: Path, on_change: str = "stop") -> None:
    """Run `config` in `run_dir` unless that phase is done (with the same settings)."""
    from mbert_jax.train.cli import run_config

    check_phase(run_dir, config, on_change)
    if finished(run_dir):
        print(f"== {name}: done ({run_dir}), skipped", flush=True)
        return
    print(f"== {name}: training in {run_dir}", flush=True)
    start = time.monotonic()
    config.lock()
    try:
        result = run_config(config, str(run_dir))
    finally:
        add_time(run_dir.parent, run_dir.name, time.monotonic() - start)
    if result.preempted:
        raise SystemExit("preempted; run the same command again to resume")
    print(f"== {name}: finished in {time.monotonic() - start:.0f}s", flush=True)
