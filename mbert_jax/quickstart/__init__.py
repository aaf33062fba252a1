"""`mbert-jax quickstart`: a whole compression recipe end to end, offline, on this CPU.

Two presets, each a sequence of resumable phases in sub-directories of the
workdir, run with the same configs a user would run by hand:

    micro.py    (default) the MobileBERT recipe at micro size: a micro IB-BERT
                teacher pretrained here, progressive transfer + PD, a scratch
                student, fine-tuning on `stdlib`, TFLite export, report.md
                (micro_report.py)
    real.py     (`--config real`) a real pretrained BERT (all-MiniLM-L6-v2 from
                the PyPI package, or `--set teacher=DIR`) fine-tuned on two tasks
                and compressed into two students, against scratch students and
                a naive Bayes baseline; TFLite export; report.md (real_report.py)

The settings are `configs/quickstart.py`; `--set FIELD=VALUE` changes one.
`phases.py` holds what the presets share; `records.py` what made each phase,
so that a rerun with other settings never reuses one (it stops, or with
`--set on_change=redo` redoes the phase and what was made from it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mbert_jax.quickstart.phases import load_config


def _set(q, item: str) -> None:
    """`FIELD=VALUE`, or `FIELD.KEY=VALUE` for a per-task or per-student setting."""
    key, _, value = item.partition("=")
    parent, _, leaf = key.rpartition(".")
    node = q
    for part in parent.split(".") if parent else ():
        if part not in node or not hasattr(node[part], "keys"):
            raise SystemExit(f"unknown quickstart setting {key!r}; settings: {sorted(q)}")
        node = node[part]
    if leaf not in node:
        raise SystemExit(f"unknown quickstart setting {key!r}; settings: {sorted(node)}")
    old = node[leaf]
    if hasattr(old, "keys"):
        raise SystemExit(
            f"quickstart setting {key!r} holds one value per key {sorted(old)}: set {key}.KEY=VALUE"
        )
    if isinstance(old, tuple):  # "a,b,c"; "" for an empty tuple; items keep their type
        kind = type(old[0]) if old else str
        node[leaf] = tuple(kind(v) for v in value.split(",") if v.strip())
    elif isinstance(old, bool):
        node[leaf] = value.lower() in ("1", "true", "yes")
    else:
        node[leaf] = type(old)(value)


def main(argv: list[str]) -> int:
    from mbert_jax.train.cli import setup_compilation_cache, setup_logging

    p = argparse.ArgumentParser(prog="mbert-jax quickstart", description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="where every phase writes (resumable)")
    p.add_argument(
        "--config",
        default="",
        help="options of configs/quickstart.py: 'real' (a real teacher), 'tiny' (a few steps)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a quickstart setting, e.g. --set teacher_steps=600",
    )
    args = p.parse_args(argv)
    setup_logging()
    setup_compilation_cache()
    q = load_config("quickstart", args.config or None)
    for item in args.set:
        _set(q, item)
    if q.preset == "real":
        from mbert_jax.quickstart import real

        real.run(Path(args.workdir), q)
    else:
        from mbert_jax.quickstart import micro

        micro.run(Path(args.workdir), q)
    return 0
