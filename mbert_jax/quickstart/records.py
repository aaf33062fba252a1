"""What made each part of a quickstart workdir, so that a rerun never reuses one made otherwise.

A phase writes WORKDIR/<phase>/phase.json before it starts: its settings
(the config it runs, flattened, paths inside the workdir written relative to
it so that a moved workdir still matches) and a digest of every model
directory or file that the config names (the teacher, the previous phases'
models, a vocabulary). The export keeps the same record with each file in
export/exports.json. A rerun compares the records:

- the same settings (compared as the sweep compares its runs) and inputs:
  a finished phase is skipped, a started one resumes;
- others: with `on_change="stop"` (the default) the quickstart stops, naming
  what changed; with `on_change="redo"` the phase's directory is moved aside
  to `<phase>.old-N` (kept, not deleted) and the phase runs again. The phases
  that read its model then find a new digest and are redone in turn.

A phase directory without phase.json was made by an older mbert_jax; it is
not checked, and a line says so.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mbert_jax.models import io
from mbert_jax.train import sweep

RECORD = "phase.json"
ON_CHANGE = ("stop", "redo")
WORKDIR = "$WORKDIR"
# Settings that change no result: how often a run logs and checkpoints (resume is exact).
IGNORED = frozenset({"train.log_every", "train.checkpoint_every"})


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory's files (their names and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    for f in _files(path):
        h.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(f, "rb") as stream:
            while chunk := stream.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def _is_input(path: str) -> bool:
    return io.is_model_dir(path) or os.path.isfile(path)


def record(settings, workdir: Path) -> dict:
    """{"settings": flat settings, "inputs": {setting: digest}} of a ConfigDict or dict."""
    root = os.path.abspath(workdir) + os.sep
    flat, inputs = {}, {}
    for key, value in sorted(sweep.settings_of(settings).items()):
        if key in IGNORED:
            continue
        if isinstance(value, str) and value and os.sep in value:
            full = os.path.abspath(value)
            if _is_input(full):
                inputs[key] = digest(Path(full))
            if full.startswith(root):
                value = WORKDIR + os.sep + full[len(root) :]
        flat[key] = value
    return {"settings": flat, "inputs": inputs}


def differences(old: dict, new: dict) -> list[str]:
    """What changed between two records: each setting (as the sweep compares them,
    `train/sweep.py`), then each input model that is not the one it was."""
    out = sweep.differences(old.get("settings", {}), new.get("settings", {}))
    before, after = old.get("inputs", {}), new.get("inputs", {})
    for key in sorted(after):
        if before.get(key) != after[key]:
            shown = new.get("settings", {}).get(key, key)
            out.append(f"{key} ({shown}) is not the model it was made from")
    return out


def summary(changes: list[str], most: int = 3) -> str:
    more = len(changes) - most
    return "; ".join(changes[:most]) + (f"; and {more} more" if more > 0 else "")


def check_on_change(on_change: str) -> str:
    if on_change not in ON_CHANGE:
        raise SystemExit(f"on_change={on_change!r}: use one of {', '.join(ON_CHANGE)}")
    return on_change


def set_aside(path: Path) -> Path:
    """Rename `path` to the first free `<path>.old-N`; returns the new name."""
    n = 1
    while (aside := path.with_name(f"{path.name}.old-{n}")).exists():
        n += 1
    path.rename(aside)
    return aside


def stale_message(what: str, changes: list[str], aside_hint: str) -> str:
    return (
        f"{what} was made with other settings or inputs: {summary(changes)}. Rerun with the "
        "settings it was made with, use a fresh --workdir, or --set on_change=redo to redo it "
        f"and what uses it ({aside_hint})"
    )


def check_phase(run_dir: Path, new: dict, on_change: str) -> bool:
    """Compare `run_dir`'s record with `new` before the phase runs (module docstring); write
    `new` where there is none. True when the old directory was moved aside (redo)."""
    check_on_change(on_change)
    path = run_dir / RECORD
    redone = False
    if path.is_file():
        changes = differences(json.loads(path.read_text()), new)
        if not changes:
            return False
        if on_change == "stop":
            hint = f"the old directory is kept as {run_dir.name}.old-N"
            raise SystemExit(stale_message(f"phase {run_dir}", changes, hint))
        aside = set_aside(run_dir)
        print(f"== {run_dir.name}: made with {summary(changes)}; moved to {aside}, redoing it")
        redone = True
    elif run_dir.is_dir() and any(run_dir.iterdir()):
        print(f"== {run_dir.name}: settings not recorded (an older mbert_jax), not checked")
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(new, indent=2) + "\n")
    tmp.replace(path)
    return redone
