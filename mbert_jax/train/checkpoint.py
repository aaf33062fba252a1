"""Training checkpoints: one orbax `CheckpointManager` per run, behind `Checkpoints`.

Each checkpoint (WORKDIR/checkpoints/<step>/) holds three items:
- `state`: the `TrainState` (params, optimizer state, step, RNG), sharded;
- `meta`: JSON with the stage index and name, the global step and the
  skipped-step counts (the resolved config is WORKDIR/config.json, beside
  the checkpoints, not in them);
- `data`: JSON with the data iterator's position.

Saves are asynchronous and atomic (orbax writes to a temporary directory and
renames it when complete), so a run killed at any moment restores from the
last complete checkpoint. `max_to_keep` keeps the last K.

`Checkpoints` owns the one save in flight:
- every exit of the trainer (the end, SIGTERM, a non-finite loss, an
  exception in a recipe) goes through `close`, which finishes the save in
  flight, so the last complete checkpoint is on disk before the error is
  reported;
- a save that fails (a full disk) is abandoned: its temporary directory is
  removed and `CheckpointWriteError` says in one line where and how much
  space it needed. Orbax's own error logs of it are muted (`quiet_orbax`):
  this module reports the failure once.
- `restore_latest` restores the newest step that restores; a damaged one (a
  truncated array file, a deleted `_METADATA`) is logged with the reason and
  moved to WORKDIR/damaged_checkpoints/, never deleted. A checkpoint of
  another model is not damage: `CheckpointMismatchError` refuses the run.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mbert_jax.tree import shape_mismatch

log = logging.getLogger(__name__)

TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameters do not match the model being restored."""


class CheckpointWriteError(RuntimeError):
    """A save that failed (no space left, no permission); its partial files are removed."""


class DiskFullError(CheckpointWriteError):
    """No space left for a write of the run (a checkpoint, the metrics)."""


class NoRestorableCheckpointError(RuntimeError):
    """Checkpoints exist, but none of them restores."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint whose files are missing or unreadable."""


def make_manager(directory: str | Path, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        create=True,
        enable_async_checkpointing=True,
        # Partial saves of a killed run are never complete: remove them on start.
        cleanup_tmp_directories=True,
    )
    # Handlers named up front, so that a fresh process can read a checkpoint's
    # metadata (shapes) before restoring it.
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(
        Path(directory).absolute(), options=options, item_handlers=handlers
    )


class _MuteOrbax(logging.Filter):
    def __init__(self, level: int):
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or "orbax" not in record.pathname:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            # Orbax logs some failures of a background save without raising them.
            _orbax_errors[:] = [record.exc_info[1]]
        return False


_orbax_errors: list[BaseException] = []  # the last error orbax logged (muted)


@contextlib.contextmanager
def quiet_orbax(level: int = logging.ERROR):
    """Mute orbax's logs from `level` up (the thread tracebacks of a failed save, the
    warnings of a damaged checkpoint) and the late callbacks of its closed event loops:
    `Checkpoints` reports the failure, in one line."""
    logger = logging.getLogger("absl")  # orbax logs through absl
    mute = _MuteOrbax(level)
    logger.addFilter(mute)
    restore_hooks = _install_loop_closed_hooks()
    try:
        yield
    finally:
        restore_hooks()
        logger.removeFilter(mute)


class _MuteLostCheckpointTasks(logging.Filter):
    """asyncio's 'Task exception was never retrieved' for the reads and writes of a failed
    restore or save, logged when the tasks are garbage-collected (any time later)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.exc_info[1] is None:
            return True
        text = str(record.exc_info[1])
        return not any(word in text for word in ("OCDBT", "tensorstore", "orbax"))


def _loop_closed(value) -> bool:
    return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"


def _install_loop_closed_hooks():
    """Drop 'Event loop is closed' from TensorStore callbacks that arrive after a failed
    restore or save closed orbax's event loop (printed once per array, through
    `sys.excepthook` or `sys.unraisablehook`); returns the function that restores the hooks."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind, value, traceback):
        if not _loop_closed(value):
            excepthook(kind, value, traceback)

    def on_unraisable(unraisable):
        if not _loop_closed(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable

    def restore():
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook

    return restore


_lost_tasks_muted = False


def _mute_lost_tasks() -> None:
    """After a failed restore or save: mute its lost tasks and late callbacks for good
    (they arrive when garbage-collected, any time later)."""
    global _lost_tasks_muted
    if _lost_tasks_muted:
        return
    logging.getLogger("asyncio").addFilter(_MuteLostCheckpointTasks())
    _install_loop_closed_hooks()
    _lost_tasks_muted = True


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of the innermost cause (TensorStore's `OUT_OF_RANGE: Error reading ...`
    sits under orbax's 'Encountered error while reading array index' and a dump)."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip().splitlines()
    line = text[0] if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    text = str(error)
    return "No space left on device" in text or "os_error_code='28'" in text


def _mount_point(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def _file_system(path: Path) -> str:
    """'the file system at /mnt (tmpfs, 3.1 MB free)' of `path`."""
    mount = _mount_point(path)
    kind = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[1] == str(mount):
                kind = f"{fields[0]}, "  # the last match is the one mounted on top
    free = shutil.disk_usage(mount).free
    return f"the file system at {mount} ({kind}{_size(free)} free)"


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    raise AssertionError


def tree_bytes(tree) -> int:
    return int(
        sum(np.prod(np.shape(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    )


class Checkpoints:
    """The run's checkpoint directory and the one save in flight."""

    def __init__(self, directory: str | Path, keep: int):
        self.directory = Path(directory).absolute()
        self.manager = make_manager(self.directory, keep)
        self.pending: int | None = None  # the step whose save is in flight
        self._pending_bytes = 0
        self._failed = False
        self._abandoned: int | None = None  # a failed step whose partial files may linger

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    # ------------------------------------------------------------------ save
    def save(self, step: int, state, meta: dict, data_state: dict) -> None:
        """Start saving `step` (after finishing the save in flight)."""
        self.wait()
        self.pending, self._pending_bytes = step, tree_bytes(state)
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    meta=ocp.args.JsonSave(meta),
                    data=ocp.args.JsonSave(data_state),
                ),
                force=True,
            )
        except Exception as e:
            self._abandon(e)

    def wait(self) -> None:
        """Finish the save in flight; `CheckpointWriteError` if it failed."""
        if self.pending is None:
            return
        _orbax_errors.clear()
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._abandon(e)
        if not self._committed(self.pending):
            # A background failure that orbax logged and swallowed ("Skipping
            # finalization"): the step is still a temporary directory.
            error = _orbax_errors[0] if _orbax_errors else None
            if error is None and shutil.disk_usage(self.directory).free < self._pending_bytes:
                error = OSError(errno.ENOSPC, "No space left on device")
            self._abandon(error or RuntimeError("the save did not complete"))
        self.pending = None

    def _committed(self, step: int) -> bool:
        if jax.process_count() > 1:
            return True  # the processes' views of the directory may differ for a moment
        return (self.directory / str(step)).is_dir() and not any(
            self.directory.glob(f"{step}{TMP_SUFFIX}*")
        )

    def committed_steps(self) -> list[int]:
        """The steps complete on disk (orbax's own list may still name a failed one)."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def _abandon(self, error: BaseException):
        step, self.pending, self._failed = self.pending, None, True
        self._abandoned = step
        _mute_lost_tasks()  # its other writes fail too, reported here once
        self._remove_partial(step)
        where = f"{self.directory}/{step}"
        if is_disk_full(error):
            raise DiskFullError(
                f"no space left on device for checkpoint {where}: it needs about "
                f"{_size(self._pending_bytes)} on {_file_system(self.directory)}; "
                f"{self._kept(step)}. Free space there, or set config.train.keep_checkpoints "
                "lower, then rerun the same command to resume"
            ) from None
        raise CheckpointWriteError(
            f"checkpoint {where} could not be written ({first_line(error)}); {self._kept(step)}"
        ) from None

    def _kept(self, failed: int | None = None) -> str:
        kept = [s for s in self.committed_steps() if s != failed]
        if not kept:
            return "no complete checkpoint was written"
        return f"the last complete checkpoint is {self.directory}/{kept[-1]}"

    def no_space(self, error: OSError) -> DiskFullError:
        """The one-line error of another write of the run (the metrics) that found a full disk."""
        path = Path(error.filename) if getattr(error, "filename", None) else self.directory
        return DiskFullError(
            f"no space left on device writing {path} on {_file_system(path)}; "
            f"{self._kept()}. Free space there, then rerun the same command to resume"
        )

    def _remove_partial(self, step: int | None) -> None:
        if step is None or jax.process_index() != 0:
            return
        for partial in self.directory.glob(f"{step}{TMP_SUFFIX}*"):
            shutil.rmtree(partial, ignore_errors=True)

    def close(self, error: BaseException | None = None) -> CheckpointWriteError | None:
        """Finish the save in flight and close the manager.

        `error`: the exception the run is leaving with. Then a failing save is
        abandoned and returned (the caller reports it beside its own error);
        without one it is raised.
        """
        failed = None
        try:
            self.wait()
        except CheckpointWriteError as e:
            if error is None:
                self._close_manager()
                raise
            failed = e
        self._close_manager()
        return failed

    def _close_manager(self) -> None:
        try:
            self.manager.close()
        except Exception:
            if not self._failed:  # after a failed save orbax raises its error again
                raise
        finally:
            # orbax's background threads may still have written into the failed
            # step's temporary directory after its error reached us; they are
            # joined now, so what they left goes.
            self._remove_partial(self._abandoned)

    # --------------------------------------------------------------- restore
    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def check_compatible(self, step: int, abstract_state) -> None:
        """Raise `CheckpointMismatchError` naming the parameters whose shapes differ."""
        stored = self.manager.item_metadata(step)["state"]
        if stored is None:
            raise DamagedCheckpointError("its state/_METADATA is missing or unreadable")
        tree = getattr(stored, "tree", stored)
        have = tree["params"] if isinstance(tree, dict) else tree.params
        problems = shape_mismatch(
            abstract_state.params, have, want_name="config", have_name="checkpoint"
        )
        if problems:
            lines = [f"checkpoint {self.directory}/{step} does not match this config:"]
            lines += [f"  {line}" for line in problems]
            lines.append(
                "use a fresh --workdir for a different model, or the config the checkpoint was "
                "written with (WORKDIR/config.json)"
            )
            raise CheckpointMismatchError("\n".join(lines))

    def restore(self, step: int, abstract_state) -> tuple[Any, dict, dict]:
        """Restore `(state, meta, data_state)` of `step` into the shardings of `abstract_state`.

        `abstract_state` is a tree of `jax.ShapeDtypeStruct` with `.sharding` set,
        so every array lands directly in its target sharding.
        """
        # Resume order: (1) the caller picked the step (`restore_latest`: the
        # newest one that restores); (2) the stage comes from `meta` and rebuilds
        # that stage's optimizer, which fixes the structure of the optimizer
        # state; (3) parameter shapes are checked against the config; (4) the
        # state is read into its shardings; (5) the data iterator is moved to the
        # saved position by the caller.
        self.check_compatible(step, abstract_state)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                meta=ocp.args.JsonRestore(),
                data=ocp.args.JsonRestore(),
            ),
        )
        return restored["state"], restored["meta"], restored["data"]

    def restore_latest(self, restore_step: Callable[[int], Any]) -> tuple[int, Any] | None:
        """`(step, restore_step(step))` of the newest checkpoint that restores; None if none exist.

        A step that fails to restore is logged with the reason and moved to
        WORKDIR/damaged_checkpoints/ (the run will write that step again);
        `CheckpointMismatchError` (another model) is raised at once.
        """
        damaged: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                with quiet_orbax(logging.WARNING):
                    result = restore_step(step)
            except CheckpointMismatchError:
                raise
            except Exception as e:
                _mute_lost_tasks()  # its other reads fail too, reported here once
                damaged.append((step, first_line(e)))
                continue
            self._set_aside(damaged, f"restoring {self.directory}/{step} instead")
            return step, result
        if damaged:
            reasons = "; ".join(f"step {s}: {why}" for s, why in damaged)
            raise NoRestorableCheckpointError(
                f"no checkpoint in {self.directory} restores ({reasons}); move the directory "
                "away to start afresh"
            )
        return None

    def _set_aside(self, damaged: list[tuple[int, str]], then: str) -> None:
        if not damaged:
            return
        aside = self.directory.parent / "damaged_checkpoints"
        for step, why in damaged:
            if jax.process_index() == 0:
                aside.mkdir(exist_ok=True)
                target = aside / str(step)
                n = 1
                while target.exists():
                    n += 1
                    target = aside / f"{step}-{n}"
                (self.directory / str(step)).rename(target)
                log.warning(
                    "checkpoint %s/%d does not restore (%s): moved to %s; %s",
                    self.directory,
                    step,
                    why,
                    target,
                    then,
                )
        multihost_utils.sync_global_devices("mbert_jax:damaged_checkpoints_moved")
        self.manager.reload()


def abstract_with_shardings(tree, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s), tree, shardings
    )
