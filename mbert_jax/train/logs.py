"""What the user sees: a progress line, TensorBoard events and JSON lines.

Metrics travel as `LossSum(total, count)` pairs and are reduced on the host
only at logging time (`reduce`), so the train loop never waits for the device
between log steps.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mbert_jax.losses import LossSum


def reduce(window: list[dict[str, LossSum]]) -> dict[str, float]:
    """Sum the pairs of a window of steps and return the means."""
    if not window:
        return {}
    host = jax.device_get(window)
    totals: dict[str, list[float]] = {}
    for metrics in host:
        for name, pair in metrics.items():
            t = totals.setdefault(name, [0.0, 0.0])
            t[0] += float(np.sum(pair[0]))
            t[1] += float(np.sum(pair[1]))
    return {k: (t / c if c else float("nan")) for k, (t, c) in totals.items()}


class MetricWriter:
    """JSON lines (WORKDIR/metrics.jsonl) and TensorBoard events (WORKDIR/tensorboard/)."""

    def __init__(self, workdir: str | Path | None, enabled: bool = True):
        self.enabled = enabled and workdir is not None
        self.path = Path(workdir) / "metrics.jsonl" if workdir is not None else None
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=10)

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in values.items():
            if isinstance(v, int | float) and math.isfinite(v):
                self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def keep_until(self, step: int) -> None:
        """Drop the rows after `step` (a resumed run logs the steps after its checkpoint
        again) and any line cut short by a crash, so each step is in the file once."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and int(row.get("step", 0)) <= step:
                kept.append(line + "\n")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(self.path)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str | Path, split: str | None = None) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """One status line per log step: step, stage, loss terms, tokens/s, ETA."""

    def __init__(self, total_steps: int, enabled: bool = True, stream=None):
        self.total = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.last_time = self.start
        self.last_step = None

    def update(
        self, step: int, stage: str, values: dict[str, float], tokens: float, skipped: int = 0
    ) -> dict:
        """Print the line (with the count of skipped non-finite steps, if any); returns the
        rate figures (also logged)."""
        now = time.monotonic()
        rates = {}
        if self.last_step is not None and step > self.last_step:
            dt = now - self.last_time
            steps = step - self.last_step
            rates = {"steps_per_sec": steps / dt, "tokens_per_sec": steps * tokens / dt}
        self.last_time, self.last_step = now, step
        if self.enabled:
            eta = (self.total - step) / rates["steps_per_sec"] if rates else float("nan")
            shown = " ".join(
                f"{k}={v:.4g}" for k, v in values.items() if k not in ("nonfinite", "grad_norm")
            )
            pct = 100.0 * step / max(self.total, 1)
            rate = f"{rates['tokens_per_sec']:,.0f} tok/s" if rates else "- tok/s"
            if skipped:
                shown += f" | skipped {skipped} non-finite"
            print(
                f"[{pct:5.1f}%] step {step}/{self.total} | {stage} | {shown} | {rate} | "
                f"ETA {_fmt_time(eta)} | elapsed {_fmt_time(now - self.start)}",
                file=self.stream,
                flush=True,
            )
        return rates
