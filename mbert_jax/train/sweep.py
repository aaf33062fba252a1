"""Ablation sweeps: a config's settings, each run over seeds, and the table that answers them.

A config file declares its grid with `sweep(add)` (`sweep(add, arg)` also
gets the `:args` string): one `add(name=..., **{"field.path": value})` per
setting. It may also declare `sweep_metrics`, the headline metrics its table
leads with (for example `("eval_mlm_accuracy",)`).

- Seeds: `seeds` > 1 repeats every setting with `train.seed` and `data.seed`
  raised by 0, 1, ..., n-1 (initialization, dropout, data order, masking),
  in `WORKDIR/<setting>/seed<k>`; the held-out split and its masks stay the
  same for every run (they follow `data.split_seed`).
- Each run's reported figures come from its final evaluation, which reads the
  whole held-out split (`train.final_eval_steps`, 0 by default).
- `finetune`: a second config (such as `configs/finetune.py:runlocal`) run after
  each run from its `model/` directory, in `<run>/finetune`, with the same seed;
  its final metrics join the row as `finetune_eval_*`.
- Resume: a finished run leaves `<run>/sweep.json` (its settings and row) and
  is skipped when the sweep is started again with the same settings; an
  interrupted run resumes from its checkpoint, as single runs do. Finding a
  finished run made with other settings stops with one line.
- After every run the sweep rewrites, from every finished run,
  `results.csv` (one row per run, every metric), `summary.csv` (mean and
  standard error of every metric per setting), `results.md` (the settings,
  the varied fields and the headline metrics as mean ± standard error, best
  first, with the settings that are within two standard errors of the best
  marked) and `results.png` (each headline metric per setting, with error
  bars and the single runs).
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
import re
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from mbert_jax import files
from mbert_jax.train.config import apply_overrides

MARKER = "sweep.json"  # in a run directory: the run finished; its settings and row
# Metric names holding one of these rank highest first; every other metric (the
# losses: mlm, kl, fmt_layer_l, objective, ...) lowest first. `name:max` /
# `name:min` says it explicitly.
HIGHER_IS_BETTER = (
    "accuracy", "f1", "exact", "precision", "recall", "pearson", "spearman", "matthews",
    "agreement",
)  # fmt: skip


# --------------------------------------------------------------------------- runs
def sweep_runs(module, arg) -> list[dict[str, Any]]:
    """The settings `module.sweep` adds: one dict of overrides (and optional `name`) each."""
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


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: a setting and, when the sweep repeats it, a seed offset."""

    setting: str
    overrides: dict[str, Any]  # the declared overrides, without `name`
    seed: int | None = None  # None: the sweep runs each setting once

    @property
    def name(self) -> str:
        return self.setting if self.seed is None else f"{self.setting}/seed{self.seed}"


def expand(settings: Sequence[dict[str, Any]], seeds: int = 1) -> list[Run]:
    """Every setting once per seed (setting-major: all seeds of a setting in a row)."""
    if seeds < 1:
        raise SystemExit(f"--seeds={seeds}: give at least 1")
    names = [run_name(s) for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SystemExit(f"two sweep settings share the name(s) {twice}; give each a name=")
    return [
        Run(name, {k: v for k, v in s.items() if k != "name"}, None if seeds == 1 else k)
        for name, s in zip(names, settings)
        for k in range(seeds)
    ]


def seed_overrides(config: ml_collections.ConfigDict, seed: int | None) -> dict[str, Any]:
    """`train.seed` and `data.seed` raised by `seed` (nothing for a sweep of one seed)."""
    if not seed:
        return {}
    out = {"train.seed": config.train.seed + seed}
    if "data" in config and "seed" in config.data:
        out["data.seed"] = config.data.seed + seed
    return out


def run_config_of(base: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
    config = apply_overrides(base, run.overrides)
    return apply_overrides(config, seed_overrides(config, run.seed))


def finetune_overrides(
    config: ml_collections.ConfigDict, model_dir: Path, seed: int | None
) -> dict[str, Any]:
    """The follow-up fine-tuning of a run: from its model directory, with its seed."""
    out: dict[str, Any] = {"init_from": str(model_dir)}
    if "data" in config and "vocab_file" in config.data and not config.data.vocab_file:
        out["data.vocab_file"] = str(model_dir / "vocab.txt")
    return {**out, **seed_overrides(config, seed)}


# ------------------------------------------------------------------------ running
@dataclasses.dataclass
class Followup:
    """The config run after each run (`--finetune`), and the prefix of its metrics."""

    spec: str
    config: ml_collections.ConfigDict
    metrics: tuple[str, ...] = ()  # its module's `sweep_metrics`
    prefix: str = "finetune"


def _as_json(values: dict[str, Any]) -> dict[str, Any]:
    """`values` as JSON gives them back (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(values, default=str))


def settings_of(config: ml_collections.ConfigDict | dict | None) -> dict[str, Any]:
    """A config (or a nested dict) as `field.path: JSON value` pairs, for comparing the
    settings of two runs."""
    if config is None:
        return {}
    return _as_json(flatten(config.to_dict() if hasattr(config, "to_dict") else config))


def differences(old: dict, new: dict) -> list[str]:
    """Each field whose value differs, as 'field: old then, new now'. A field only one side
    has counts as unset there, so a field a newer version adds, left unset (None), changes
    nothing."""
    return [
        f"{key}: {old.get(key)!r} then, {new.get(key)!r} now"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def finished_row(run_dir: Path, settings: dict[str, Any], which: str) -> dict | None:
    """The row of a finished run in `run_dir`, or None; one line if it had other settings."""
    path = run_dir / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
        old, row = marker["settings"], marker["row"]
    except (ValueError, KeyError, TypeError):
        return None  # unreadable (e.g. written by hand): run it (it resumes or is kept)
    difference = next(iter(differences(old, settings)), "")
    if difference:
        raise SystemExit(
            f"{which}: {run_dir} holds a finished run with other settings "
            f"({difference}); use another --workdir, or delete "
            f"{run_dir} to run it again"
        )
    return row


def run_sweep(
    runs: Sequence[Run],
    base: ml_collections.ConfigDict,
    workdir: Path,
    train: Callable[[ml_collections.ConfigDict, str], Any],
    *,
    metrics: Sequence[str] = (),
    followup: Followup | None = None,
) -> list[dict[str, Any]]:
    """Run (or keep) every run in turn; rewrite the tables after each. Returns the rows.

    `train(config, workdir)` is `cli.run_config`: it returns a `RunResult`
    (`preempted` when SIGTERM stopped it after saving a checkpoint). A preempted
    run stops the sweep without a marker, so the next start resumes it.
    """
    rows: list[dict[str, Any]] = []
    varied = varied_fields(runs, base)
    started, ran = time.monotonic(), 0
    for i, run in enumerate(runs):
        run_dir = workdir / run.name
        which = f"sweep run {i + 1}/{len(runs)} ({run.name})"
        try:  # an override of a field the config lacks: one line naming the run
            config = run_config_of(base, run)
            ft_config = None
            if followup is not None:
                overrides = finetune_overrides(followup.config, run_dir / "model", run.seed)
                ft_config = apply_overrides(followup.config, overrides)
        except SystemExit as e:
            raise SystemExit(f"{which}: {e}") from None
        # What the run's figures depend on: its config and its fine-tuning's, field by field.
        settings = {
            **settings_of(config),
            **{f"finetune {k}": v for k, v in settings_of(ft_config).items()},
        }
        row = finished_row(run_dir, settings, which)
        if row is not None:
            print(f"=== {which}: finished before, kept", flush=True)
        else:
            eta = ""
            if ran:
                left = (
                    (time.monotonic() - started)
                    / ran
                    * sum(1 for r in runs[i:] if not (workdir / r.name / MARKER).is_file())
                )
                eta = f" (about {_duration(left)} left)"
            print(f"=== {which}{eta}", flush=True)
            row = _train_one(run, config, run_dir, which, train, ft_config, followup)
            files.write_bytes(
                run_dir / MARKER, (json.dumps({"settings": settings, "row": row}) + "\n").encode()
            )
            ran += 1
        rows.append(row)
        write_tables(workdir, rows, headline(rows, metrics), varied)
    return rows


def _train_one(run, config, run_dir, which, train, ft_config, followup) -> dict[str, Any]:
    def one(cfg, directory, what):
        try:  # a failure is one line naming the run; finished rows stay in the tables
            result = train(cfg, str(directory))
        except SystemExit as e:
            raise SystemExit(f"{what}: {e}") from None
        if result.preempted:  # SIGTERM: its checkpoint is saved
            raise SystemExit(
                f"{what}: stopped before the end (preempted; its checkpoint is saved); run the "
                "same sweep again to resume"
            )
        return result

    result = one(config, run_dir, which)
    row: dict[str, Any] = {"run": run.name, "setting": run.setting, "seed": run.seed or 0}
    row.update(_as_json(run.overrides))  # tuples as lists, as in a row read back from its marker
    row.update({f"eval_{k}": v for k, v in result.final_eval.items()})
    row.update({f"train_{k}": v for k, v in result.final_train.items()})
    if ft_config is not None:
        ft = one(ft_config, run_dir / followup.prefix, f"{which}, {followup.prefix}")
        row.update({f"{followup.prefix}_eval_{k}": v for k, v in ft.final_eval.items()})
    return row


def dry_run_commands(
    runs: Sequence[Run],
    base: ml_collections.ConfigDict,
    spec: str,
    workdir: Path,
    base_overrides: dict[str, Any],
    followup: Followup | None = None,
) -> list[str]:
    """One `mbert-jax train` command per run (and per follow-up), to launch elsewhere."""
    lines = []
    for run in runs:
        config = apply_overrides(base, run.overrides)
        sets = {**flatten(base_overrides), **run.overrides, **seed_overrides(config, run.seed)}
        lines.append(_train_command(spec, workdir / run.name, sets))
        if followup is not None:
            model_dir = workdir / run.name / "model"
            sets = finetune_overrides(followup.config, model_dir, run.seed)
            lines.append(_train_command(followup.spec, workdir / run.name / followup.prefix, sets))
    return lines


def _train_command(spec: str, workdir: Path, sets: dict[str, Any]) -> str:
    cmd = ["mbert-jax", "train", "--config", spec, "--workdir", str(workdir)]
    return shlex.join(cmd + [f"--config.{k}={v}" for k, v in sets.items()])


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return (
        f"{minutes // 60}h{minutes % 60:02d}m"
        if minutes >= 60
        else f"{minutes}m{int(seconds) % 60:02d}s"
    )


# ------------------------------------------------------------------------ results
def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def varied_fields(runs: Sequence[Run], base: ml_collections.ConfigDict) -> dict[str, Any]:
    """`field: base value` of every field some setting overrides, in declaration order."""
    flat = _as_json(flatten(base.to_dict()))
    fields: dict[str, Any] = {}
    for run in runs:
        for key in run.overrides:
            fields.setdefault(key, flat.get(key, ""))
    return fields


@dataclasses.dataclass(frozen=True)
class Metric:
    """A headline metric: a row column, and which way is better."""

    name: str
    higher: bool

    @classmethod
    def parse(cls, spec: str) -> Metric:
        """`eval_accuracy`, `eval_objective`, or with the direction `eval_x:max` / `eval_x:min`."""
        name, _, direction = spec.strip().partition(":")
        if direction not in ("", "max", "min"):
            raise SystemExit(f"metric {spec!r}: end it with :max or :min (or neither)")
        if not direction:
            return cls(name, any(word in name for word in HIGHER_IS_BETTER))
        return cls(name, direction == "max")


def reported(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The `*eval_*` metrics the runs report, in the order they appear."""
    return list(dict.fromkeys(k for row in rows for k, v in row.items() if "eval_" in k))


def headline(rows: Sequence[dict[str, Any]], declared: Sequence[str]) -> list[Metric]:
    """The declared metrics some run reports; without any: `eval_objective` (the trained
    objective), else the first `eval_*` metric."""
    found = [m for m in map(Metric.parse, declared) if m.name in reported(rows)]
    if found:
        return found
    evals = [k for k in reported(rows) if k.startswith("eval_")]
    return [
        Metric.parse(m) for m in (["eval_objective"] if "eval_objective" in evals else evals[:1])
    ]


@dataclasses.dataclass
class Summary:
    """Mean and standard error of each metric over the seeds of one setting."""

    setting: str
    fields: dict[str, Any]
    seeds: int
    mean: dict[str, float]
    se: dict[str, float]  # nan with one seed
    values: dict[str, list[float]]


def summarize(rows: Sequence[dict[str, Any]], varied: dict[str, Any]) -> list[Summary]:
    """One `Summary` per setting, in the order the settings first appear."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    out = []
    for setting, group in groups.items():
        metrics = [
            k
            for k in dict.fromkeys(k for row in group for k in row)
            if k not in ("run", "seed", "setting") and k not in varied
        ]
        values = {
            m: [float(r[m]) for r in group if _is_number(r.get(m))]
            for m in metrics
            if any(_is_number(r.get(m)) for r in group)
        }
        out.append(
            Summary(
                setting=setting,
                fields={k: group[0].get(k, base) for k, base in varied.items()},
                seeds=len(group),
                mean={m: sum(v) / len(v) for m, v in values.items()},
                se={m: _standard_error(v) for m, v in values.items()},
                values=values,
            )
        )
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _standard_error(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1) over sqrt(n); nan for fewer than two values."""
    n = len(values)
    if n < 2:
        return float("nan")
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def ranked(summaries: Sequence[Summary], metric: Metric) -> list[Summary]:
    """Best first on `metric` (settings without it last)."""
    sign, m = (-1.0 if metric.higher else 1.0), metric.name
    return sorted(summaries, key=lambda s: sign * s.mean[m] if m in s.mean else math.inf)


def within_two_se(a: Summary, b: Summary, metric: str) -> bool:
    """|mean difference| < 2 x its standard error, sqrt(se_a^2 + se_b^2)."""
    se = math.sqrt(a.se.get(metric, math.nan) ** 2 + b.se.get(metric, math.nan) ** 2)
    return math.isfinite(se) and abs(a.mean[metric] - b.mean[metric]) < 2 * se


def write_tables(
    workdir: Path, rows: Sequence[dict[str, Any]], metrics: Sequence[Metric], varied: dict[str, Any]
) -> None:
    """results.csv, summary.csv, results.md and results.png, each written atomically."""
    workdir.mkdir(parents=True, exist_ok=True)
    files.write_bytes(workdir / "results.csv", _csv(rows).encode())
    summaries = summarize(rows, varied)
    names = list(dict.fromkeys(m for s in summaries for m in s.mean))
    summary_rows = [
        {
            "setting": s.setting,
            **s.fields,
            "seeds": s.seeds,
            **{
                f"{m}_{stat}": getattr(s, stat).get(m, "") for m in names for stat in ("mean", "se")
            },
        }
        for s in summaries
    ]
    files.write_bytes(workdir / "summary.csv", _csv(summary_rows).encode())
    files.write_bytes(workdir / "results.md", markdown(summaries, metrics, varied).encode())
    if metrics:
        files.write_bytes(workdir / "results.png", plot(summaries, metrics))


def _csv(rows: Sequence[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(
    summaries: Sequence[Summary], metrics: Sequence[Metric], varied: dict[str, Any]
) -> str:
    """The headline table: setting, varied fields, seeds, each metric as mean ± SE."""
    order = ranked(summaries, metrics[0]) if metrics else list(summaries)
    best = {m.name: ranked(summaries, m)[0] for m in metrics}
    columns = ["setting", *varied, "seeds", *(m.name for m in metrics)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for s in order:
        cells = [s.setting, *(_fmt(v) for v in s.fields.values()), str(s.seeds)]
        for m in (m.name for m in metrics):
            if m not in s.mean:
                cells.append("")
                continue
            text = _fmt(s.mean[m])
            if math.isfinite(s.se[m]):
                text += f" ± {s.se[m]:.2g}"
            if best[m] is s:
                text = f"**{text}**"
            elif within_two_se(s, best[m], m):
                text += " ≈"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({s.seeds for s in summaries})
    notes = []
    if metrics:
        direction = "highest" if metrics[0].higher else "lowest"
        notes.append(f"Sorted by {metrics[0].name}, {direction} first.")
    if seeds == [1]:
        notes.append("One run per setting: no standard errors, so no difference is tested.")
    else:
        notes.append(
            "Mean ± standard error over the seeds of each setting (`seeds` runs, "
            "`train.seed` and `data.seed` varied). Bold: the best setting on that metric; "
            "≈: within two standard errors of the best (the standard error of the "
            "difference, sqrt(se1² + se2²)), so these runs do not tell the two apart."
        )
    notes.append(
        "Every run and metric: results.csv; mean and standard error of every metric: summary.csv."
    )
    return "\n".join(lines) + "\n\n" + " ".join(notes) + "\n"


def plot(summaries: Sequence[Summary], metrics: Sequence[Metric]) -> bytes:
    """PNG: per headline metric, each setting's mean with ±1 SE bars and its single runs."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    order = ranked(summaries, metrics[0])
    fig, axes = plt.subplots(
        len(metrics), 1, figsize=(max(4.0, 0.9 * len(order) + 2), 3.0 * len(metrics)), squeeze=False
    )
    for ax, metric in zip(axes[:, 0], (m.name for m in metrics)):
        shown = [s for s in order if metric in s.mean]
        x = list(range(len(shown)))
        means = [s.mean[metric] for s in shown]
        errors = [s.se[metric] if math.isfinite(s.se[metric]) else 0.0 for s in shown]
        ax.errorbar(x, means, yerr=errors, fmt="o", capsize=4, color="C0", label="mean ± SE")
        for xi, s in zip(x, shown):
            label = "single runs" if xi == 0 else None
            ax.plot([xi] * len(s.values[metric]), s.values[metric], ".", color="C1", label=label)
        ax.set_xticks(x, [s.setting for s in shown], rotation=30, ha="right")
        ax.set_ylabel(metric)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(loc="best", fontsize="small")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()
