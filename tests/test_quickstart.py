"""`mbert-jax quickstart --config tiny` end to end, as a user runs it, then run again.

Checks every artifact of the report, that distillation does what it is for
(the distilled student beats the scratch student on held-out MLM accuracy
after the same number of student steps), and that a second run redoes
nothing: every phase is skipped and the report is written again, while a
run with another setting stops before it reuses a phase made otherwise.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbert_jax.models import io

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("teacher", "distilled", "scratch")
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.xdist_group("quickstart")]


def quickstart(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mbert_jax", "quickstart", "--workdir", str(workdir)]
    return subprocess.run(
        [*cmd, "--config", "tiny", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["MBERT_JAX_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("xla_cache"))
    env.pop("XLA_FLAGS", None)
    workdir = tmp_path_factory.mktemp("quickstart")
    first = quickstart(workdir, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return workdir, env, first


def test_every_artifact_exists(run):
    workdir, _, first = run
    for name in MODELS:
        assert io.is_model_dir(workdir / name / "model"), name
        assert io.is_model_dir(workdir / f"finetune_{name}" / "model"), name
        for quantize in ("none", "int8"):
            path = workdir / "export" / f"{name}_{quantize}.tflite"
            assert path.stat().st_size > 10_000, path
    for png in ("losses.png", "layer_losses.png"):
        assert (workdir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    report = (workdir / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(MODELS), report
    assert "nan" not in "\n".join(table), table
    # The table is printed at the end.
    assert table[1] in first.stdout


def test_exported_files_were_verified(run):
    workdir, _, _ = run
    exports = json.loads((workdir / "export" / "exports.json").read_text())
    assert set(exports) == {f"{m}/{q}" for m in MODELS for q in ("none", "int8")}
    for name in MODELS:
        assert exports[f"{name}/none"]["max_abs_diff"] <= 1e-4, exports[f"{name}/none"]
        assert exports[f"{name}/int8"]["latency_ms"] > 0


def test_distilled_student_beats_the_scratch_student(run):
    workdir, _, _ = run
    mlm = json.loads((workdir / "eval.json").read_text())
    assert mlm["distilled"]["mlm_accuracy"] > mlm["scratch"]["mlm_accuracy"], mlm
    assert mlm["distilled"]["perplexity"] < mlm["scratch"]["perplexity"], mlm
    # Both students took the same number of steps (4 layer stages + PD = scratch).
    steps = [
        json.loads((workdir / name / "results.json").read_text())["step"]
        for name in ("distilled", "scratch")
    ]
    assert steps[0] == steps[1], steps


def test_a_second_run_redoes_nothing(run):
    workdir, env, _ = run
    before = {p: p.stat().st_mtime_ns for p in workdir.glob("*/model/params.safetensors")}
    second = quickstart(workdir, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("skipped") == 2 * len(MODELS), second.stdout
    assert "== export" not in second.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert "| distilled student |" in second.stdout


def test_a_run_with_another_setting_stops_and_changes_nothing(run):
    workdir, env, _ = run
    before = {p: p.stat().st_mtime_ns for p in workdir.glob("*/model/params.safetensors")}
    changed = quickstart(workdir, env, "--set", "finetune_steps=7")
    assert changed.returncode != 0
    last = changed.stderr.strip().splitlines()[-1]
    assert f"phase {workdir / 'finetune_teacher'} was made with other settings" in last, last
    assert "train.steps: " in last and ", 7 now" in last and "on_change=redo" in last
    assert {p: p.stat().st_mtime_ns for p in before} == before
