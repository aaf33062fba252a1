"""The trainer as a user runs it: `mbert-jax train` in subprocesses.

Mesh invariance (1 vs 8 forced host devices, data / FSDP / tensor layouts),
exact resume after SIGKILL, mixed-precision matmuls against float32, SIGTERM
preemption, non-finite losses, a full disk (a small tmpfs, as root), a
checkpoint of another shape, and 2 local processes with CPU collectives.
The same faults in process, on a tiny recipe: `test_run_faults.py`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import run_processes
from xla_flags import FAST_COMPILE, with_devices

from mbert_jax.train.logs import read_metrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/pretrain_ibbert.py:runlocal,data=synthetic"
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("trainer")]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e["MBERT_JAX_COMPILE_CACHE"] = str(tmp_path_factory.mktemp("xla_cache"))
    e["PYTHONUNBUFFERED"] = "1"
    e["XLA_FLAGS"] = FAST_COMPILE
    return e


def train_cmd(workdir, *extra):
    return [
        sys.executable,
        "-m",
        "mbert_jax",
        "train",
        "--config",
        CONFIG,
        "--workdir",
        str(workdir),
        "--config.train.steps=8",
        "--config.train.log_every=1",
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=3",
        "--config.model.overrides.num_layers=2",  # what is tested does not need 4
        *extra,
    ]


def run(cmd, env, check=True):
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{p.stdout}\n{p.stderr[-4000:]}")
    return p


def losses(workdir) -> dict[int, float]:
    """Logged objective per step."""
    return {r["step"]: r["objective"] for r in read_metrics(workdir, "train")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    workdir = tmp_path_factory.mktemp("reference")
    run(train_cmd(workdir), env)
    return losses(workdir)


def wait_for_step(proc, workdir, step, checkpoint=None, timeout=600):
    """Wait until `step` is logged (and checkpoint `checkpoint` is committed)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
        done = losses(workdir)
        committed = checkpoint is None or (workdir / "checkpoints" / str(checkpoint)).is_dir()
        if done and max(done) >= step and committed:
            return max(done)
        time.sleep(0.02)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.parametrize(
    "layouts, matmul_dtype",
    [
        ("single,data,fsdp,tensor", None),
        # bf16 operands: FSDP gathers them, tensor parallelism sums float32 partials; one
        # data x FSDP x tensor mesh (2 x 2 x 2) does both (each layout alone: the run above).
        ("single,mixed", "bfloat16"),
    ],
)
def test_results_do_not_depend_on_the_mesh(env, layouts, matmul_dtype):
    e = dict(env, XLA_FLAGS=with_devices(8))
    p = run(
        [
            sys.executable,
            str(ROOT / "tests/train/mesh_runs.py"),
            "mobilebert_micro",
            layouts,
            "2",  # layers: each layer is sharded alike, 2 test the rules as well as 24
            *([matmul_dtype] if matmul_dtype else []),
        ],
        e,
    )
    line = next(x for x in p.stdout.splitlines() if x.startswith("LOSSES "))
    by_mesh = json.loads(line[len("LOSSES ") :])
    single = by_mesh.pop("single")
    assert len(single) == 3
    for name, values in by_mesh.items():
        assert values == pytest.approx(single, rel=1e-5, abs=1e-5), name


def test_resume_after_sigkill_continues_with_the_same_losses(tmp_path, env, reference):
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(workdir),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed_at = wait_for_step(proc, workdir, 5, checkpoint=3)
    proc.kill()
    proc.wait()
    assert killed_at < 8
    p = run(train_cmd(workdir), env)
    assert "resuming from" in p.stderr
    resumed = losses(workdir)
    assert [r["step"] for r in read_metrics(workdir, "train")] == list(range(1, 9))  # once each
    for step, value in reference.items():
        assert resumed[step] == pytest.approx(value, rel=1e-6), step


def test_mixed_precision_run_follows_the_float32_losses(tmp_path, env, reference):
    """bf16 matmul operands, float32 accumulation and everything else: the same run, rounded."""
    workdir = tmp_path / "mixed"
    run(train_cmd(workdir, "--config.model.overrides.matmul_dtype=bfloat16"), env)
    mixed = losses(workdir)
    assert sorted(mixed) == sorted(reference)
    assert mixed != reference  # the bf16 products ran
    for step, value in reference.items():
        assert mixed[step] == pytest.approx(value, rel=1e-3), step


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, env, reference):
    workdir = tmp_path / "preempted"
    proc = subprocess.Popen(
        train_cmd(workdir),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(proc, workdir, 4)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert "preempted: checkpoint saved at step" in out
    saved = int(out.split("checkpoint saved at step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(saved)).is_dir()
    assert 4 <= saved < 8
    run(train_cmd(workdir), env)
    resumed = losses(workdir)
    for step, value in reference.items():
        assert resumed[step] == pytest.approx(value, rel=1e-6), step


def test_nonfinite_loss_stops_with_the_step_and_term_or_is_skipped(tmp_path, env):
    workdir = tmp_path / "nan"
    # A checkpoint every 2 steps: the save of the last good step is in flight at the NaN.
    nan_cmd = train_cmd(
        workdir, "--config.optimizer.learning_rate=1e30", "--config.train.checkpoint_every=2"
    )
    p = run(nan_cmd, env, check=False)
    assert p.returncode == 1
    message = p.stderr.strip().splitlines()[-1]
    assert message.startswith("error: non-finite loss at step ")
    assert "Traceback" not in p.stderr and "asyncio" not in p.stderr
    bad_step = int(message.split("step ")[1].split()[0])
    assert "term(s): " in message
    kept = sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit())
    assert kept and kept[-1] == 2 * ((bad_step - 1) // 2)  # the one in flight was finished
    assert not list(workdir.rglob("*.orbax-checkpoint-tmp*"))

    skip = ["--config.optimizer.learning_rate=1e30", "--config.train.nan_policy=skip"]
    p = run(train_cmd(tmp_path / "limit", *skip, "--config.train.max_skipped_steps=3"), env, False)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("error: 3 non-finite steps in a row")

    skipped = tmp_path / "skip"
    run(train_cmd(skipped, *skip, "--config.train.max_skipped_steps=0"), env)  # no limit
    rows = read_metrics(skipped, "train")
    assert rows[-1]["step"] == 8
    total = sum(r.get("skipped_steps", 0) for r in rows)
    assert total >= 1
    assert json.loads((skipped / "results.json").read_text())["skipped_steps"] == total


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 7 MB tmpfs (one micro checkpoint is 4.9 MB), where this process may mount one."""
    path = tmp_path / "fs"
    path.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=7m", "tmpfs", str(path)], capture_output=True
        ).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root (test_run_faults.py simulates one)")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_stops_with_one_line_and_resumes(small_tmpfs, env, reference):
    workdir = small_tmpfs / "run"
    p = run(train_cmd(workdir), env, check=False)
    assert p.returncode == 1
    said = [line for line in p.stderr.splitlines() if not line.startswith("[")]
    assert len(said) == 3, p.stderr[-3000:]  # the mesh line, the stage line and the error
    assert " mesh data=1 fsdp=1 tensor=1 over 1 cpu devices" in said[0]
    assert said[-1].startswith(
        f"error: no space left on device for checkpoint {workdir}/checkpoints/6: it needs about "
        f"4.9 MB on the file system at {small_tmpfs} (tmpfs, "
    )
    assert f"the last complete checkpoint is {workdir}/checkpoints/3." in said[-1]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["3"]
    subprocess.run(["mount", "-o", "remount,size=40m", str(small_tmpfs)], check=True)
    p = run(train_cmd(workdir), env)
    assert f"resuming from {workdir}/checkpoints/3" in p.stderr
    resumed = losses(workdir)
    for step, value in reference.items():
        assert resumed[step] == pytest.approx(value, rel=1e-6), step


def test_checkpoint_of_another_shape_names_the_parameters(tmp_path, env):
    workdir = tmp_path / "mismatch"
    run(train_cmd(workdir, "--config.train.steps=3"), env)
    p = run(
        train_cmd(workdir, "--config.train.steps=6", "--config.data.vocab_size=1024"),
        env,
        check=False,
    )
    assert p.returncode != 0
    assert "does not match this config" in p.stderr and "Traceback" not in p.stderr
    # The refused config is not written over the one the message points to.
    assert json.loads((workdir / "config.json").read_text())["data"]["vocab_size"] == 2048
    assert "word_embeddings" in p.stderr and "(2048, 32)" in p.stderr and "(1024, 32)" in p.stderr


def test_two_processes_match_one(tmp_path, env, reference):
    workdir = tmp_path / "multihost"
    outs = run_processes(
        lambda port, i: train_cmd(
            workdir,
            f"--coordinator_address=localhost:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        ),
        2,
        dict(env, XLA_FLAGS=with_devices(2)),
        cwd=ROOT,
    )
    assert "process 0 of 2, 2 local / 4 global devices" in outs[0][1]
    got = losses(workdir)
    for step, value in reference.items():
        assert got[step] == pytest.approx(value, rel=1e-5, abs=1e-5), step
