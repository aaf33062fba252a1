"""The training loop: stages, sharded state, checkpoints, evaluation, logging.

Reads top to bottom:
1. set-up: mesh and rules, abstract parameters and their shardings, the
   teacher (sharded, no optimizer state), the newest checkpoint that
   restores; only then is the run accepted and WORKDIR/config.json written;
2. per stage: its label tree and optimizer, the jitted step (compiled once
   per stage), state from the checkpoint or carried over from the last stage;
3. the step loop: prefetch-by-async-dispatch, metrics reduced only at log
   time, evaluation, checkpoints, SIGTERM, non-finite losses;
4. the end: the final model directory (WORKDIR/model) and results.json.

Every exit (the end, SIGTERM, an error) finishes the checkpoint save in
flight first (`checkpoint.Checkpoints.close`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mbert_jax.models import io
from mbert_jax.parallel import mesh as mesh_lib
from mbert_jax.parallel import sharding as sharding_lib
from mbert_jax.train import checkpoint as ckpt
from mbert_jax.train import logs
from mbert_jax.train import teacher_store as store_lib
from mbert_jax.train.labels import make_labels, trained_fraction
from mbert_jax.train.optimizers import make_optimizer
from mbert_jax.train.recipe import Recipe, Stage
from mbert_jax.train.step import TrainState, make_eval_step, make_train_step
from mbert_jax.tree import flat

log = logging.getLogger(__name__)

NAN_POLICIES = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """A loss or gradient became NaN/Inf and `nan_policy` is "stop"."""


# The errors that stop a run with a message for the user (`mbert-jax train` prints one line).
TRAINING_ERRORS = (
    NonFiniteLossError,
    ckpt.CheckpointMismatchError,
    ckpt.CheckpointWriteError,
    ckpt.NoRestorableCheckpointError,
    io.UnreadableFileError,
    store_lib.TeacherStoreError,
)


@dataclasses.dataclass
class StageFunctions:
    """A stage's optimizer, shardings and jitted steps."""

    tx: Any
    schedule: Any
    opt_shardings: Any
    state_shardings: Any
    train_step: Any
    eval_step: Any
    predict_step: Any
    counts: tuple[int, int]  # (trained, total) parameters


@dataclasses.dataclass
class RunResult:
    step: int
    preempted: bool
    final_eval: dict[str, float]
    final_train: dict[str, float]
    skipped_steps: int = 0  # non-finite steps dropped under nan_policy="skip"


@dataclasses.dataclass
class SkipCounter:
    """Non-finite steps seen so far: in all, and in a row up to the last step counted."""

    total: int = 0
    in_a_row: int = 0
    counted_through: int = 0  # the last step counted
    first_in_a_row: int = 0  # the step that began the current run of skipped steps


def stage_boundaries(stages: list[Stage]) -> list[int]:
    """Global step at which each stage ends."""
    return list(np.cumsum([s.steps for s in stages]).astype(int))


def stage_at(step: int, stages: list[Stage]) -> int:
    """Index of the stage that global `step` belongs to (len(stages) when finished)."""
    for i, end in enumerate(stage_boundaries(stages)):
        if step < end:
            return i
    return len(stages)


class _Preemption:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _to_device(host_tree, shardings):
    """Host numpy tree -> global arrays in `shardings` (each process reads only its shards)."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
        host_tree,
        shardings,
    )


def _nonfinite_terms(metrics: dict) -> list[str]:
    host = jax.device_get(metrics)
    return [k for k, v in host.items() if k != "nonfinite" and not np.isfinite(float(v.total))]


def _first_nonfinite(window: list[tuple[int, dict]]) -> tuple[int, list[str]] | None:
    for step, m in window:
        if float(jax.device_get(m["nonfinite"].total)) > 0:
            return step, _nonfinite_terms(m)
    return None


class Trainer:
    """Runs a `Recipe` under a config's `train`, `optimizer`, `mesh` and `sharding_rules`."""

    def __init__(self, config, recipe: Recipe, workdir: str | Path, devices=None):
        self.config = config
        self.recipe = recipe
        self.workdir = None if workdir is None else Path(workdir)
        self.stages = recipe.stages()
        self.train_cfg = config.train
        if self.train_cfg.nan_policy not in NAN_POLICIES:
            raise ValueError(
                f"config.train.nan_policy={self.train_cfg.nan_policy!r}: one of {NAN_POLICIES}"
            )
        limit = self.train_cfg.get("max_skipped_steps", 0)
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(
                f"config.train.max_skipped_steps={limit!r}: a count >= 0 (0: no limit)"
            )
        self.skips = SkipCounter()
        self.is_lead = jax.process_index() == 0
        self.mesh = mesh_lib.make_mesh(config.mesh, devices)
        axes = " ".join(f"{k}={v}" for k, v in self.mesh.shape.items())
        log.info(
            "mesh %s over %d %s devices", axes, self.mesh.size, self.mesh.devices.flat[0].platform
        )
        self.rules = sharding_lib.rules_from_config(config.get("sharding_rules"))
        batch_axis = sharding_lib.batch_axis_size(self.mesh, self.rules)
        if config.data.global_batch_size % batch_axis:
            raise ValueError(
                f"config.data.global_batch_size={config.data.global_batch_size} is not "
                f"divisible by the {batch_axis} devices of the batch mesh axes; change the "
                "batch or config.mesh"
            )
        self._check_steps()
        self._check_store()
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            rng = jax.random.PRNGKey(self.train_cfg.seed)
            self._boxed = jax.eval_shape(self.recipe.init_params, rng)
            self._check_positions(self._boxed, self.recipe.teacher())

    # ------------------------------------------------------------- the checks
    # Everything a run needs of its config is checked here, before any file is
    # written: `mbert-jax train` reports these as `config error: ...`.
    def _check_steps(self) -> None:
        for stage in self.stages:
            if stage.steps < 0:
                where = (
                    f"config.train.steps={stage.steps}"
                    if len(self.stages) == 1
                    else f"stage {stage.name!r} has {stage.steps} steps"
                )
                raise ValueError(
                    f"{where}: steps must be >= 0 (0: only evaluate the initial model)"
                )

    def _check_store(self) -> None:
        """`config.distill.teacher_store` only with a recipe that declares its teacher outputs."""
        if not store_lib.store_dir(self.config):
            return
        store_lib.shard_rows_setting(self.config)
        try:
            self.recipe.teacher_settings()
        except NotImplementedError:
            raise ValueError(
                f"{store_lib.FIELD}: this recipe ({type(self.recipe).__name__}) cannot train "
                f"from stored teacher outputs (no Recipe.teacher_outputs); set "
                f"{store_lib.FIELD}='' (the live teacher)"
            ) from None

    def _check_positions(self, boxed, teacher) -> None:
        """`config.data.max_seq_length` within every model's position table."""
        length = self.config.data.get("max_seq_length") if "data" in self.config else None
        if not length:
            return
        for who, tree in (("the model", boxed), ("the teacher", teacher)):
            if tree is None:
                continue
            for name, leaf in flat(sharding_lib.unbox(tree)).items():
                if "position_embeddings" in name and length > leaf.shape[0]:
                    raise ValueError(
                        f"config.data.max_seq_length={length} is longer than {who}'s "
                        f"{leaf.shape[0]} positions ({name}); lower it to at most "
                        f"{leaf.shape[0]}, or use a model with more positions "
                        "(max_position_embeddings)"
                    )

    # ------------------------------------------------------------------ set-up
    def _abstract_params(self):
        return self._boxed, sharding_lib.tree_shardings(self._boxed, self.mesh, self.rules)

    def _init_params(self, param_shardings):
        rng = jax.random.PRNGKey(self.train_cfg.seed)
        init = jax.jit(
            lambda r: nn.meta.unbox(self.recipe.init_params(r)), out_shardings=param_shardings
        )
        params = init(rng)
        overridden = self.recipe.initial_overrides(params)
        if overridden is not params:
            params = jax.device_put(overridden, param_shardings)
        return params

    def _teacher(self):
        spec = self.recipe.teacher()
        if spec is None:
            return None, None
        boxed = spec
        shardings = sharding_lib.tree_shardings(boxed, self.mesh, self.rules)
        host = self.recipe.load_teacher_params()
        return _to_device(host, shardings), shardings

    def _stage_optimizer(self, stage: Stage, boxed_params):
        abstract = sharding_lib.unbox(boxed_params)
        labels = make_labels(abstract, stage.rules)
        tx, schedule = make_optimizer(
            self.config.optimizer,
            labels,
            stage.steps,
            schedule_override=stage.schedule,
            peak=stage.learning_rate,
        )
        opt_boxed = jax.eval_shape(tx.init, boxed_params)
        opt_shardings = sharding_lib.tree_shardings(opt_boxed, self.mesh, self.rules)
        trained, total = trained_fraction(abstract, labels)
        return tx, schedule, opt_shardings, (trained, total)

    def stage_functions(
        self, stage: Stage, boxed_params, param_shardings, teacher_shardings
    ) -> StageFunctions:
        """The stage's optimizer and its jitted steps (compiled on first call)."""
        tx, schedule, opt_shardings, counts = self._stage_optimizer(stage, boxed_params)
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        state_shardings = TrainState(
            step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated
        )
        train_step = jax.jit(
            make_train_step(self.recipe, stage, tx, self.train_cfg.accum_steps),
            in_shardings=(state_shardings, None, teacher_shardings),
            out_shardings=(state_shardings, replicated),
            donate_argnums=(0,),
        )
        eval_step, predict_step = self._eval_functions(stage, param_shardings, teacher_shardings)
        return StageFunctions(
            tx,
            schedule,
            opt_shardings,
            state_shardings,
            train_step,
            eval_step,
            predict_step,
            counts,
        )

    def _eval_functions(self, stage: Stage, param_shardings, teacher_shardings):
        """The jitted eval step and the evaluator's predict step (compiled on first call)."""
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        eval_step = jax.jit(
            make_eval_step(self.recipe, stage),
            in_shardings=(param_shardings, teacher_shardings, None),
            out_shardings=replicated,
        )
        predict_step = jax.jit(
            self.recipe.predict, in_shardings=(param_shardings, None), out_shardings=replicated
        )
        return eval_step, predict_step

    # -------------------------------------------------------------------- run
    def run(self) -> RunResult:
        if stage_boundaries(self.stages)[-1] == 0:
            return self._evaluate_initial()
        checkpoints = ckpt.Checkpoints(
            self.workdir / "checkpoints", self.train_cfg.keep_checkpoints
        )
        with ckpt.quiet_orbax():
            try:
                result = self._train(checkpoints)
            except BaseException as e:
                # Whatever stops the run (a non-finite loss, an exception in a
                # recipe, Ctrl-C, a full disk), the save in flight is finished first.
                failed_save = checkpoints.close(error=e)
                if ckpt.is_disk_full(e) and not isinstance(e, ckpt.CheckpointWriteError):
                    raise failed_save or checkpoints.no_space(e) from None
                if failed_save is not None:
                    log.error("error: %s", failed_save)
                raise
            checkpoints.close()
        if result.preempted and self.is_lead:
            print(
                f"preempted: checkpoint saved at step {result.step}; rerun the same command "
                "to resume"
            )
        return result

    def _train(self, checkpoints: ckpt.Checkpoints) -> RunResult:
        cfg = self.train_cfg
        stages = self.stages
        ends = stage_boundaries(stages)
        total_steps = ends[-1]
        data = self.recipe.train_data(jax.process_index(), jax.process_count())
        replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        final_eval: dict[str, float] = {}
        final_train: dict[str, float] = {}
        preempted = False

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules), _Preemption() as stop:
            boxed, param_shardings = self._abstract_params()
            teacher_params, teacher_shardings = self._teacher()

            restored = checkpoints.restore_latest(
                lambda s: self._restore(checkpoints, s, boxed, param_shardings, replicated)
            )
            step, state, restored_stage = 0, None, None
            if restored is not None:
                step, (state, meta, data_state) = restored
                restored_stage = int(meta["stage"])
                data.set_state(data_state)
                self.skips = SkipCounter(
                    total=int(meta.get("skipped_steps", 0)),
                    in_a_row=int(meta.get("skipped_in_a_row", 0)),
                    counted_through=step,
                    first_in_a_row=step - int(meta.get("skipped_in_a_row", 0)) + 1,
                )
                if self.is_lead:
                    log.info("resuming from %s/%d", checkpoints.directory, step)
            # The run is accepted (a checkpoint of another model was refused above).
            self._write_config()
            if store_lib.store_dir(self.config) and step < total_steps:
                data = store_lib.open_or_build(
                    self.config, self.recipe, stages, data, teacher_params, self.mesh, self.rules
                )
            writer = logs.MetricWriter(self.workdir, enabled=self.is_lead)
            writer.keep_until(step)
            progress = logs.Progress(total_steps, enabled=self.is_lead)
            ran = False
            try:
                for index in range(stage_at(step, stages), len(stages)):
                    stage = stages[index]
                    start = ends[index] - stage.steps
                    fns = self.stage_functions(stage, boxed, param_shardings, teacher_shardings)
                    if isinstance(data, store_lib.StoredTeacherData):
                        data.use_stage(stage)
                    if self.is_lead:
                        log.info(
                            "stage %d/%d %s: steps %d-%d, %s trained of %s parameters",
                            index + 1,
                            len(stages),
                            stage.name,
                            start,
                            ends[index],
                            f"{fns.counts[0]:,}",
                            f"{fns.counts[1]:,}",
                        )
                    if state is None:
                        state = self._init_state(
                            param_shardings, fns.tx, fns.opt_shardings, replicated
                        )
                    elif ran or restored_stage != index:
                        # A new stage, or a checkpoint saved at the end of an earlier one.
                        state = self._begin_stage(
                            index, stage, state, param_shardings, teacher_params
                        )
                        state = self._new_stage_state(state, fns.tx, fns.opt_shardings)
                    ran = True

                    window: list[tuple[int, dict]] = []
                    tokens = 0  # padded tokens of the window's batches (their lengths may vary)
                    while step < ends[index]:
                        batch = sharding_lib.global_batch(next(data), self.mesh, self.rules)
                        state, step_metrics = fns.train_step(state, batch, teacher_params)
                        step += 1
                        window.append((step, step_metrics))
                        tokens += int(np.prod(batch["input_ids"].shape))
                        last = step == ends[index]
                        if step % cfg.log_every == 0 or last:
                            final_train = self._log(
                                window,
                                step,
                                stage,
                                writer,
                                progress,
                                fns.schedule(step - start - 1),
                                tokens / len(window),
                            )
                            window, tokens = [], 0
                        if (cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps:
                            steps = fns.eval_step, fns.predict_step
                            final_eval = self._evaluate(
                                *steps,
                                state.params,
                                teacher_params,
                                step,
                                writer,
                                final=step == total_steps,
                            )
                        if stop.requested or last or step % cfg.checkpoint_every == 0:
                            self._check_finite(window)
                            meta = {
                                "stage": index,
                                "stage_name": stage.name,
                                "step": step,
                                "skipped_steps": self.skips.total,
                                "skipped_in_a_row": self.skips.in_a_row,
                            }
                            checkpoints.save(step, state, meta, data.get_state())
                        if stop.requested:
                            preempted = True
                            break
                    if preempted:
                        break

                checkpoints.wait()
                if not preempted:
                    if not ran:
                        # The run had already finished: keep its results, and write the
                        # model directory again only if the run died before writing it.
                        previous = self._previous_results()
                        final_train = previous.get("train", {})
                        final_eval = previous.get("eval", {})
                        if io.is_model_dir(self.workdir / "model") and previous:
                            state = None
                        if self.is_lead:
                            log.info("%s already finished at step %d", self.workdir, step)
                    if state is not None:
                        self._finish(state.params, final_train, final_eval, step)
            finally:
                writer.close()
        return RunResult(
            step=step,
            preempted=preempted,
            final_eval=final_eval,
            final_train=final_train,
            skipped_steps=self.skips.total,
        )

    # ------------------------------------------------------------- the pieces
    def _fresh_state(self, boxed, tx):
        params = sharding_lib.unbox(boxed)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            rng=jax.random.PRNGKey(0),
        )

    def _init_state(self, param_shardings, tx, opt_shardings, replicated) -> TrainState:
        params = self._init_params(param_shardings)
        return TrainState(
            step=jnp.asarray(0, jnp.int32),
            params=params,
            opt_state=jax.jit(tx.init, out_shardings=opt_shardings)(params),
            rng=jax.device_put(jax.random.PRNGKey(self.train_cfg.seed + 1), replicated),
        )

    def _restore(self, checkpoints, step, boxed, param_shardings, replicated):
        """(state, meta, data state) of checkpoint `step`, in its stage's layout."""
        stage_index = int(checkpoints.read_meta(step)["stage"])
        tx, _, opt_shardings, _ = self._stage_optimizer(self.stages[stage_index], boxed)
        shardings = TrainState(
            step=replicated, params=param_shardings, opt_state=opt_shardings, rng=replicated
        )
        abstract = ckpt.abstract_with_shardings(
            jax.eval_shape(lambda: self._fresh_state(boxed, tx)), shardings
        )
        return checkpoints.restore(step, abstract)

    def _begin_stage(self, index, stage, state: TrainState, param_shardings, teacher_params):
        """The state with the parameters `Recipe.begin_stage` starts stage `index` from."""
        params = self.recipe.begin_stage(index, stage, state.params, teacher_params)
        if params is state.params:
            return state
        return state.replace(params=jax.device_put(params, param_shardings))

    def _new_stage_state(self, state: TrainState, tx, opt_shardings) -> TrainState:
        opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(state.params)
        return state.replace(opt_state=opt_state)

    def _log(self, window, step, stage, writer, progress, lr, tokens) -> dict[str, float]:
        """`tokens`: padded tokens per step, averaged over the window."""
        self._check_finite(window)
        values = logs.reduce([m for _, m in window])
        skipped = values.pop("nonfinite", 0.0) * len(window)
        rates = progress.update(step, stage.name, values, tokens, skipped=self.skips.total)
        record = {"stage": stage.name, "learning_rate": float(lr), **values, **rates}
        if skipped:
            record["skipped_steps"] = skipped
        writer.write(step, "train", record)
        return values

    def _check_finite(self, window) -> None:
        """Stop on a non-finite step ("stop"), or count the skipped ones ("skip") and stop
        when `train.max_skipped_steps` come in a row."""
        if not window:
            return
        if self.train_cfg.nan_policy == "skip":
            self._count_skipped(window)
            return
        bad = _first_nonfinite(window)
        if bad is not None:
            step, terms = bad
            raise NonFiniteLossError(
                f"non-finite loss at step {step} (term(s): {', '.join(terms) or 'gradient'}); "
                "the update was not applied and no checkpoint after it was written. Lower the "
                "learning rate, check the data, or set config.train.nan_policy='skip'"
            )

    def _count_skipped(self, window) -> None:
        skips, limit = self.skips, self.train_cfg.get("max_skipped_steps", 0)
        new = [(s, m) for s, m in window if s > skips.counted_through]
        if not new:
            return
        flags = jax.device_get([m["nonfinite"].total for _, m in new])
        for (step, metrics), flag in zip(new, flags):
            skips.counted_through = step
            if float(flag) <= 0:
                skips.in_a_row = 0
                continue
            skips.total += 1
            skips.in_a_row += 1
            if skips.in_a_row == 1:
                skips.first_in_a_row = step
            if limit and skips.in_a_row >= limit:
                terms = ", ".join(_nonfinite_terms(metrics)) or "gradient"
                raise NonFiniteLossError(
                    f"{skips.in_a_row} non-finite steps in a row (steps "
                    f"{skips.first_in_a_row}-{step}, term(s): {terms}) reached "
                    f"config.train.max_skipped_steps={limit} under nan_policy='skip'; none of "
                    "their updates was applied. Lower the learning rate or check the data "
                    "(or raise the limit; 0: no limit)"
                )

    def _evaluate(
        self, eval_step, predict_step, params, teacher_params, step, writer, final=False
    ) -> dict:
        """Held-out metrics: `LossSum`s from the jitted step, plus the recipe's official
        host-side metrics over the whole split when it has an `evaluator`, then the
        values the recipe derives (`Recipe.summarize`).

        A periodic evaluation reads `train.eval_steps` batches; the `final` one
        (the run's reported figures) reads `train.final_eval_steps` (0: the whole
        held-out split, the same batches and masks for every run on that data).
        """
        batches = self.recipe.eval_data(jax.process_index(), jax.process_count())
        if batches is None:
            return {}
        evaluator = self.recipe.evaluator()
        limit = self.train_cfg.get("final_eval_steps", 0) if final else self.train_cfg.eval_steps
        results = []
        for i, host_batch in enumerate(batches):
            if evaluator is None and limit and i >= limit:
                break
            batch = sharding_lib.global_batch(host_batch, self.mesh, self.rules)
            results.append(eval_step(params, teacher_params, batch))
            if evaluator is not None:
                outputs = jax.device_get(predict_step(params, batch))
                rows = multihost_utils.process_allgather(host_batch, tiled=True)
                evaluator.add(jax.device_get(rows), **outputs)
        values = logs.reduce(results)
        if evaluator is not None:
            values.update({k: float(v) for k, v in evaluator.result().items()})
        values = self.recipe.summarize(values)
        writer.write(step, "eval", values)
        if self.is_lead and values:
            shown = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            print(f"  eval @ step {step}: {shown}", flush=True)
        return values

    def _write_config(self) -> None:
        """WORKDIR/config.json, once the run is accepted (never for a refused restart)."""
        if not self.is_lead or self.workdir is None:
            return
        path = self.workdir / "config.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.config.to_json_best_effort(indent=2) + "\n")
        tmp.replace(path)

    def _previous_results(self) -> dict:
        path = self.workdir / "results.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _evaluate_initial(self) -> RunResult:
        """A run without steps: evaluate the initial model (init + `initial_overrides`) once.

        Nothing is trained or checkpointed; `results.json` gets the values
        (when there is a workdir).
        """
        self._write_config()
        writer = logs.MetricWriter(self.workdir, enabled=self.is_lead)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            _, param_shardings = self._abstract_params()
            teacher_params, teacher_shardings = self._teacher()
            params = self._init_params(param_shardings)
            steps = self._eval_functions(self.stages[0], param_shardings, teacher_shardings)
            values = self._evaluate(*steps, params, teacher_params, 0, writer, final=True)
        writer.close()
        if self.is_lead and self.workdir is not None:
            self._write_results(0, {}, values)
        return RunResult(step=0, preempted=False, final_eval=values, final_train={})

    def _write_results(self, step, final_train, final_eval) -> None:
        results = {"step": step, "train": final_train, "eval": final_eval}
        if self.skips.total:
            results["skipped_steps"] = self.skips.total
        (self.workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    def _finish(self, params, final_train, final_eval, step) -> None:
        host = multihost_utils.process_allgather(params, tiled=True)
        model = self.recipe.final_model(host)
        if self.is_lead:
            if model is not None:
                config, heads, model_params = model
                vocab = self.recipe.vocab_file()
                io.save_model(self.workdir / "model", config, heads, model_params, vocab)
            self._write_results(step, final_train, final_eval)


def run(config, recipe: Recipe, workdir: str | Path, devices=None) -> RunResult:
    """Train `recipe` under `config` in `workdir` (resuming if it holds checkpoints).

    `devices` (default: all) lets tests compare meshes within one process.
    """
    return train(Trainer(config, recipe, workdir, devices))


def train(trainer: Trainer) -> RunResult:
    """`trainer.run()`, and the closing log line."""
    start = time.monotonic()
    result = trainer.run()
    what = "run preempted" if result.preempted else "run finished"
    skipped = f", {result.skipped_steps} non-finite step(s) skipped" if result.skipped_steps else ""
    log.info("%s in %.1fs at step %d%s", what, time.monotonic() - start, result.step, skipped)
    return result
