"""Faults met during a run, in process, on a tiny recipe (each run takes about a second).

A least-squares fit of four weights stands in for a model, so that the
trainer's own paths are what is tested: a non-finite loss, SIGTERM, an
exception in a recipe and a full disk while a checkpoint save is in flight;
damaged checkpoints on resume; a refused restart. Each test asserts the
message and that the last complete checkpoint restores (the resumed run
gives the losses of an uninterrupted one), with nothing half-written left.
The same faults through `mbert-jax train` are in `test_trainer.py` (slow).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mbert_jax.losses import LossSum
from mbert_jax.train import checkpoint as ckpt
from mbert_jax.train import loop
from mbert_jax.train.config import base_config
from mbert_jax.train.logs import read_metrics
from mbert_jax.train.recipe import Recipe, Stage

TRUE_W = np.array([1.0, -2.0, 3.0, 0.5], np.float32)


class Batches:
    """Seeded batches by position; `faults` maps a position to an action run before it."""

    def __init__(self, faults):
        self.position = 0
        self.faults = faults

    def __next__(self):
        self.position += 1
        fault = self.faults.get(self.position)
        rng = np.random.default_rng(self.position)
        x = rng.normal(size=(8, 4)).astype(np.float32)
        if fault == "nan":
            x[0, 0] = np.nan  # a corrupt example: the loss becomes NaN
        elif fault is not None:
            fault()
        y = x @ TRUE_W + 0.5
        return {"input_ids": np.zeros((8, 1), np.int32), "x": x, "y": y}

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


class Line(Recipe):
    """y = x . w + b by least squares."""

    def __init__(self, steps=8, faults=None):
        self.steps = steps
        self.faults = faults or {}

    def stages(self):
        return [Stage("fit", self.steps, {"mse": 1.0})]

    def init_params(self, rng):
        return {"w": jnp.zeros((4,)), "b": jnp.zeros(())}

    def loss(self, stage, params, teacher_params, batch, rng):
        mse = jnp.mean(jnp.square(batch["x"] @ params["w"] + params["b"] - batch["y"]))
        return mse, {"mse": LossSum(mse, jnp.ones(()))}

    def train_data(self, process_index, process_count):
        return Batches(self.faults)

    def final_model(self, params):
        return None


class TwoStages(Line):
    """Stage 1 fits only the weights, stage 2 everything, at a lower rate."""

    def stages(self):
        half = self.steps // 2
        return [
            Stage("weights", half, {"mse": 1.0}, rules=(("b", None), (".*", 1.0))),
            Stage("all", self.steps - half, {"mse": 1.0}, learning_rate=0.03),
        ]


def config(**train) -> ml_collections.ConfigDict:
    c = base_config("line")
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule.kind = "constant"
    c.data = ml_collections.ConfigDict({"global_batch_size": 8})
    c.train.update({"log_every": 1, "eval_every": 0, "checkpoint_every": 2, **train})
    return c


def train(workdir, steps=8, faults=None, **train_cfg):
    return loop.run(config(steps=steps, **train_cfg), Line(steps, faults), workdir)


def losses(workdir) -> dict[int, float]:
    return {r["step"]: r["objective"] for r in read_metrics(workdir, "train")}


def committed(workdir) -> list[int]:
    return sorted(
        int(p.name) for p in (Path(workdir) / "checkpoints").iterdir() if p.name.isdigit()
    )


def leftovers(workdir) -> list[str]:
    return [p.name for p in Path(workdir).rglob(f"*{ckpt.TMP_SUFFIX}*")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    train(workdir)
    return losses(workdir)


def assert_resumes_from(workdir, step, reference, caplog):
    """The same command again restores `step` and logs the uninterrupted run's losses."""
    with caplog.at_level(logging.INFO, logger="mbert_jax"):
        result = train(workdir)
    assert f"resuming from {Path(workdir).absolute()}/checkpoints/{step}" in caplog.text
    assert result.step == 8
    # Each step once in the metrics: the rows after the checkpoint were dropped, then redone.
    assert [r["step"] for r in read_metrics(workdir, "train")] == list(range(1, 9))
    resumed = losses(workdir)
    for s, value in reference.items():
        assert resumed[s] == pytest.approx(value, rel=1e-6), s


# ------------------------------------------------------ a save in flight at exit
def test_a_nonfinite_loss_keeps_the_checkpoint_in_flight(tmp_path, reference, caplog):
    # checkpoint_every=2: the save of step 2 is still running when step 3 is NaN.
    with pytest.raises(loop.NonFiniteLossError, match="non-finite loss at step 3"):
        train(tmp_path, faults={3: "nan"})
    assert committed(tmp_path) == [2]
    assert leftovers(tmp_path) == []
    assert_resumes_from(tmp_path, 2, reference, caplog)


def test_an_exception_in_a_recipe_keeps_the_checkpoint_in_flight(tmp_path, reference, caplog):
    def corrupt_shard():
        raise OSError("corrupt shard")

    with pytest.raises(OSError, match="corrupt shard"):
        train(tmp_path, faults={5: corrupt_shard})
    assert committed(tmp_path) == [2, 4]
    assert leftovers(tmp_path) == []
    assert_resumes_from(tmp_path, 4, reference, caplog)


def test_sigterm_saves_and_the_run_says_preempted(tmp_path, reference, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="mbert_jax"):
        result = train(tmp_path, faults={4: lambda: os.kill(os.getpid(), signal.SIGTERM)})
    assert result.preempted and result.step == 4  # the step under way when the signal came
    assert "preempted: checkpoint saved at step 4" in capsys.readouterr().out
    assert "run preempted" in caplog.text and "run finished" not in caplog.text
    assert committed(tmp_path) == [2, 4]
    assert leftovers(tmp_path) == []
    assert_resumes_from(tmp_path, 4, reference, caplog)


@pytest.mark.parametrize(
    "checkpoint_every, resumed_from",
    # 4: the end of stage 1 (its optimizer state is not stage 2's); 5: inside stage 2.
    [(4, 4), (5, 5)],
    ids=["from_the_end_of_stage_1", "from_inside_stage_2"],
)
def test_a_staged_run_resumes_with_the_same_losses(
    tmp_path, caplog, checkpoint_every, resumed_from
):
    def ctrl_c():
        raise KeyboardInterrupt

    reference = tmp_path / "reference"
    loop.run(config(), TwoStages(8), reference)
    workdir = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        loop.run(config(checkpoint_every=checkpoint_every), TwoStages(8, {7: ctrl_c}), workdir)
    assert committed(workdir)[-1] == resumed_from
    with caplog.at_level(logging.INFO, logger="mbert_jax"):
        loop.run(config(), TwoStages(8), workdir)
    assert f"resuming from {workdir.absolute()}/checkpoints/{resumed_from}" in caplog.text
    got, want = losses(workdir), losses(reference)
    assert sorted(got) == list(range(1, 9))
    for step, value in want.items():
        assert got[step] == pytest.approx(value, rel=1e-6), step


# ------------------------------------------------------------------ a full disk
@contextlib.contextmanager
def small_filesystem(path: Path, size: str, mount: bool = True):
    """A tmpfs of `size` at `path` when this process may mount one (root), else None."""
    path.mkdir()
    if not mount or os.geteuid() != 0 or shutil.which("mount") is None:
        yield None
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: Path) -> None:
    """Another writer fills the file system."""
    with (path / "filler").open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)


class _SimulatedFullDisk:
    """Without a small file system: saves after `fill` fail as a full disk does in orbax
    (a partial temporary directory, then TensorStore's RESOURCE_EXHAUSTED error)."""

    def __init__(self, monkeypatch):
        self.full = False
        real_save = ocp.CheckpointManager.save
        simulated = self

        def save(manager, step, *args, **kwargs):
            if not simulated.full:
                return real_save(manager, step, *args, **kwargs)
            partial = Path(manager.directory) / f"{step}{ckpt.TMP_SUFFIX}" / "state"
            partial.mkdir(parents=True)
            (partial / "d").write_bytes(b"\0" * 100)
            raise ValueError(
                f'RESOURCE_EXHAUSTED: Error writing "params.w" in OCDBT database at local file '
                f'"{partial}": Failed to write 927798 bytes to file 17: No space left on device '
                "[os_error_code='28']"
            )

        monkeypatch.setattr(ocp.CheckpointManager, "save", save)

    def fill(self, path):
        self.full = True


@pytest.mark.parametrize("disk", ["tmpfs", "simulated"])
def test_a_full_disk_stops_with_one_line_and_keeps_the_last_checkpoint(
    tmp_path, reference, caplog, monkeypatch, disk
):
    with small_filesystem(tmp_path / "fs", "2m", mount=disk == "tmpfs") as fs:
        if disk == "tmpfs" and fs is None:
            pytest.skip("mounting a small tmpfs needs root")
        workdir = (tmp_path / "fs" / "run").absolute()
        filler = fill if fs is not None else _SimulatedFullDisk(monkeypatch).fill
        # The disk fills before step 5, while the save of step 4 may still be writing: the
        # save, or (under load) another write of the run (metrics, logs), meets it first.
        with pytest.raises(ckpt.CheckpointWriteError) as error:
            train(workdir, faults={5: lambda: filler(tmp_path / "fs")})
        message = str(error.value)
        kept = committed(workdir)
        assert kept in ([2], [2, 4])
        failed = 4 if kept == [2] else 6
        assert "\n" not in message
        assert message.startswith(
            f"no space left on device for checkpoint {workdir}/checkpoints/{failed}: it needs "
            "about "
        ) or message.startswith(f"no space left on device writing {workdir}/")
        assert f"the last complete checkpoint is {workdir}/checkpoints/{kept[-1]}. " in message
        if fs is not None:
            assert f"on the file system at {fs.absolute()} (tmpfs, " in message
        assert leftovers(workdir) == []
        (tmp_path / "fs" / "filler").unlink(missing_ok=True)
        monkeypatch.undo()
        assert_resumes_from(workdir, kept[-1], reference, caplog)


def test_a_full_disk_met_by_another_write_is_one_line_too(tmp_path):
    metrics = tmp_path / "metrics.jsonl"

    def metrics_write_fails():
        raise OSError(errno.ENOSPC, "No space left on device", str(metrics))

    with pytest.raises(ckpt.DiskFullError) as error:
        train(tmp_path, faults={5: metrics_write_fails})
    checkpoints = tmp_path.absolute() / "checkpoints"
    assert str(error.value).startswith(f"no space left on device writing {metrics} on the file ")
    assert str(error.value).endswith(
        f"; the last complete checkpoint is {checkpoints}/4. Free space there, then rerun the "
        "same command to resume"
    )
    assert committed(tmp_path) == [2, 4]


def test_a_failed_write_is_reported_with_its_cause(tmp_path, monkeypatch):
    def refuse(manager, step, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(manager.directory))

    train(tmp_path, steps=2)
    monkeypatch.setattr(ocp.CheckpointManager, "save", refuse)
    with pytest.raises(ckpt.CheckpointWriteError) as error:
        train(tmp_path, steps=4)
    assert str(error.value) == (
        f"checkpoint {tmp_path}/checkpoints/4 could not be written ([Errno 13] Permission "
        f"denied: '{tmp_path}/checkpoints'); the last complete checkpoint is "
        f"{tmp_path}/checkpoints/2"
    )


# ------------------------------------------------------------ damaged checkpoints
def truncate_array_files(step_dir: Path) -> None:
    """Cut the array data files short, as an interrupted copy does."""
    for path in (step_dir / "state").rglob("d/*"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, reason",
    [
        (truncate_array_files, "OUT_OF_RANGE: Error "),
        (lambda d: (d / "state" / "_METADATA").unlink(), "state/_METADATA is missing"),
    ],
    ids=["truncated_array_file", "deleted_metadata"],
)
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_that_restores(
    tmp_path, reference, caplog, damage, reason
):
    train(tmp_path, steps=6)
    assert committed(tmp_path) == [2, 4, 6]
    damage(tmp_path / "checkpoints" / "6")
    damage(tmp_path / "checkpoints" / "4")
    with caplog.at_level(logging.WARNING, logger="mbert_jax"):
        assert_resumes_from(tmp_path, 2, reference, caplog)
    checkpoints = tmp_path.absolute() / "checkpoints"
    for step in (6, 4):
        line = next(x for x in caplog.text.splitlines() if f"checkpoint {checkpoints}/{step} " in x)
        assert "does not restore (" in line and reason in line
        assert f"moved to {tmp_path.absolute()}/damaged_checkpoints/{step}; " in line
        assert line.endswith(f"restoring {checkpoints}/2 instead")
    assert "Traceback" not in caplog.text and "TensorStore({" not in caplog.text
    # Never deleted: set aside whole, for the user to inspect.
    assert sorted(p.name for p in (tmp_path / "damaged_checkpoints").iterdir()) == ["4", "6"]
    assert (tmp_path / "damaged_checkpoints/6/state").is_dir()


def test_no_checkpoint_that_restores_is_an_error_that_moves_nothing(tmp_path):
    train(tmp_path, steps=2)
    (tmp_path / "checkpoints/2/state/_METADATA").unlink()
    with pytest.raises(ckpt.NoRestorableCheckpointError) as error:
        train(tmp_path)
    assert str(error.value) == (
        f"no checkpoint in {tmp_path.absolute()}/checkpoints restores (step 2: its "
        "state/_METADATA is missing or unreadable); move the directory away to start afresh"
    )
    assert committed(tmp_path) == [2]
    assert not (tmp_path / "damaged_checkpoints").exists()


# ------------------------------------------------------------- a refused restart
def test_a_refused_restart_leaves_the_workdir_as_it_was(tmp_path):
    train(tmp_path, steps=2)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 2

    class Wider(Line):
        def init_params(self, rng):
            return {"w": jnp.zeros((5,)), "b": jnp.zeros(())}

    with pytest.raises(ckpt.CheckpointMismatchError, match=r"w: checkpoint \(4,\) vs config"):
        loop.run(config(steps=4), Wider(4), tmp_path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before  # config.json, metrics and events untouched, nothing added


def test_the_config_is_written_once_the_run_is_accepted(tmp_path):
    train(tmp_path, steps=2)
    train(tmp_path, steps=4)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 4
    assert not list(tmp_path.glob("*.tmp"))
    assert jax.tree.leaves(json.loads((tmp_path / "results.json").read_text()))


# ---------------------------------------------------------- nan_policy="skip"
def test_skipped_steps_in_a_row_stop_the_run_at_the_limit(tmp_path):
    bad = {s: "nan" for s in range(3, 9)}  # every batch from step 3 on is corrupt
    with pytest.raises(loop.NonFiniteLossError) as error:
        train(tmp_path, faults=bad, nan_policy="skip", max_skipped_steps=3)
    assert str(error.value) == (
        "3 non-finite steps in a row (steps 3-5, term(s): grad_norm, mse, objective) reached "
        "config.train.max_skipped_steps=3 under nan_policy='skip'; none of their updates was "
        "applied. Lower the learning rate or check the data (or raise the limit; 0: no limit)"
    )
    assert committed(tmp_path) == [2, 4]  # 4 holds step 2's parameters (3 and 4 were dropped)
    assert not (tmp_path / "results.json").exists()


def test_isolated_skipped_steps_are_counted_in_the_progress_line_and_results(
    tmp_path, caplog, capsys
):
    bad = {3: "nan", 6: "nan"}
    with caplog.at_level(logging.INFO, logger="mbert_jax"):
        result = train(tmp_path, faults=bad, nan_policy="skip", max_skipped_steps=1 + 1)
    assert result.skipped_steps == 2
    progress = [line for line in capsys.readouterr().err.splitlines() if "] step " in line]
    assert "skipped" not in progress[1]  # step 2
    assert "| skipped 1 non-finite |" in progress[2] and "| skipped 2 non-finite |" in progress[7]
    assert "at step 8, 2 non-finite step(s) skipped" in caplog.text
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["skipped_steps"] == 2 and np.isfinite(results["train"]["objective"])
    rows = read_metrics(tmp_path, "train")
    assert [r["step"] for r in rows if r.get("skipped_steps")] == [3, 6]


def test_the_skipped_count_and_the_run_in_a_row_survive_a_resume(tmp_path):
    def ctrl_c():
        raise KeyboardInterrupt

    # Step 4 is skipped and saved in checkpoint 4, the run stops and resumes there:
    # 5 and 6 make three in a row with 4, which is the limit.
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, faults={4: "nan", 5: ctrl_c}, nan_policy="skip", max_skipped_steps=3)
    assert committed(tmp_path) == [2, 4]
    with pytest.raises(loop.NonFiniteLossError, match=r"in a row \(steps 4-6,"):
        train(tmp_path, faults={5: "nan", 6: "nan"}, nan_policy="skip", max_skipped_steps=3)


def test_max_skipped_steps_must_be_a_count(tmp_path):
    with pytest.raises(ValueError, match=r"config.train.max_skipped_steps=-1: a count >= 0"):
        train(tmp_path, max_skipped_steps=-1)
