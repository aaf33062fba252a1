"""`mbert-jax sweep`: seeds, means and standard errors, the headline table, resume.

The expected means and standard errors are computed here with `statistics`
from the values each run reported (not by the sweep's own code).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import ml_collections
import pytest

from mbert_jax.train import cli, sweep

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def process_setup_left_alone(monkeypatch):
    """As in test_cli.py: in-process, `sweep_main`'s logging set-up would blind `caplog`."""
    monkeypatch.setattr(cli, "setup_logging", lambda: None)
    monkeypatch.setattr(cli, "setup_compilation_cache", lambda: None)


def base_config():
    return ml_collections.ConfigDict(
        {"train": {"seed": 0}, "data": {"seed": 5}, "optimizer": {"learning_rate": 1e-3}}
    )


SETTINGS = [
    {"name": "low", "optimizer.learning_rate": 1e-3},
    {"name": "mid", "optimizer.learning_rate": 3e-3},
    {"name": "high", "optimizer.learning_rate": 1e-2},
]
# accuracy of (setting, seed): "mid" is best, "low" within 2 SE of it, "high" far below
ACCURACY = {
    1e-3: (0.70, 0.74, 0.72),
    3e-3: (0.73, 0.75, 0.74),
    1e-2: (0.40, 0.42, 0.41),
}


class FakeTrainer:
    """`cli.run_config` stand-in: records each run, returns figures set by its config."""

    def __init__(self):
        self.calls = []

    def __call__(self, config, workdir):
        self.calls.append((workdir, config.train.seed, config.data.seed))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if config.optimizer.learning_rate < 0:
            raise SystemExit("config error: learning_rate must be positive")
        accuracy = ACCURACY[config.optimizer.learning_rate][config.train.seed]
        return SimpleNamespace(
            final_eval={"accuracy": accuracy, "objective": 1.0 - accuracy},
            final_train={"objective": 2.0 - accuracy},
            preempted=False,
        )


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_seeds_repeat_each_setting_and_the_tables_give_mean_and_standard_error(tmp_path):
    runs = sweep.expand(SETTINGS, seeds=3)
    train = FakeTrainer()
    sweep.run_sweep(runs, base_config(), tmp_path, train, metrics=["eval_accuracy"])
    # Each setting three times, train.seed and data.seed raised together.
    assert train.calls == [
        (str(tmp_path / name / f"seed{k}"), k, 5 + k)
        for name in ("low", "mid", "high")
        for k in range(3)
    ]
    rows = read_csv(tmp_path / "results.csv")
    assert [r["run"] for r in rows] == [
        f"{n}/seed{k}" for n in ("low", "mid", "high") for k in range(3)
    ]
    summary = {r["setting"]: r for r in read_csv(tmp_path / "summary.csv")}
    for setting in SETTINGS:
        values = ACCURACY[setting["optimizer.learning_rate"]]
        got = summary[setting["name"]]
        assert got["seeds"] == "3"
        assert float(got["eval_accuracy_mean"]) == pytest.approx(statistics.mean(values))
        se = statistics.stdev(values) / math.sqrt(3)
        assert float(got["eval_accuracy_se"]) == pytest.approx(se)
    # The table leads with the setting, the varied field, the seeds and the headline
    # metric, best first; "low" is within two SE of "mid", "high" is not.
    table = (tmp_path / "results.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0] == "| setting | optimizer.learning_rate | seeds | eval_accuracy |"
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[0] for c in cells] == ["mid", "low", "high"]
    se_mid = statistics.stdev(ACCURACY[3e-3]) / math.sqrt(3)
    assert cells[0][3] == f"**{statistics.mean(ACCURACY[3e-3]):.4g} ± {se_mid:.2g}**"
    assert cells[1][3].endswith(" ≈") and not cells[2][3].endswith("≈")
    diff = statistics.mean(ACCURACY[3e-3]) - statistics.mean(ACCURACY[1e-3])
    se_low = statistics.stdev(ACCURACY[1e-3]) / math.sqrt(3)
    assert diff < 2 * math.hypot(se_mid, se_low)  # the data really is within 2 SE
    assert "within two standard errors" in table
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_loss_ranks_lowest_first_and_a_direction_can_be_given():
    assert not sweep.Metric.parse("eval_objective").higher
    assert sweep.Metric.parse("finetune_eval_accuracy").higher
    assert sweep.Metric.parse("eval_fmt_layer_1").higher is False
    assert sweep.Metric.parse("eval_score:max").higher
    with pytest.raises(SystemExit, match="end it with :max or :min"):
        sweep.Metric.parse("eval_x:up")
    rows = [
        {"run": "a", "setting": "a", "seed": 0, "eval_objective": 0.3},
        {"run": "b", "setting": "b", "seed": 0, "eval_objective": 0.1},
    ]
    (metric,) = sweep.headline(rows, ())  # no declared metric: the objective
    assert metric.name == "eval_objective"
    order = sweep.ranked(sweep.summarize(rows, {}), metric)
    assert [s.setting for s in order] == ["b", "a"]


def test_a_rerun_keeps_finished_runs_and_refuses_other_settings(tmp_path):
    runs = sweep.expand(SETTINGS[:2], seeds=2)
    sweep.run_sweep(runs, base_config(), tmp_path, FakeTrainer(), metrics=["eval_accuracy"])
    tables = {n: (tmp_path / n).read_bytes() for n in ("results.md", "results.csv", "summary.csv")}
    again = FakeTrainer()
    sweep.run_sweep(runs, base_config(), tmp_path, again, metrics=["eval_accuracy"])
    assert again.calls == []
    assert {n: (tmp_path / n).read_bytes() for n in tables} == tables
    # A run killed before it finished has no marker: only it runs again.
    (tmp_path / "mid" / "seed1" / sweep.MARKER).unlink()
    sweep.run_sweep(runs, base_config(), tmp_path, again, metrics=["eval_accuracy"])
    assert [c[0] for c in again.calls] == [str(tmp_path / "mid" / "seed1")]
    assert {n: (tmp_path / n).read_bytes() for n in tables} == tables
    # The same workdir with other settings: one line, naming the field and the way out.
    other = base_config()
    other.data.seed = 6
    with pytest.raises(SystemExit) as exit_info:
        sweep.run_sweep(runs, other, tmp_path, FakeTrainer(), metrics=["eval_accuracy"])
    message = str(exit_info.value.code)
    assert message.startswith("sweep run 1/4 (low/seed0): ") and "\n" not in message
    assert "data.seed: 5 then, 6 now" in message and "use another --workdir" in message


def test_a_failing_run_is_one_line_and_the_finished_rows_stay(tmp_path):
    settings = [SETTINGS[0], {"name": "broken", "optimizer.learning_rate": -1.0}]
    with pytest.raises(SystemExit) as exit_info:
        sweep.run_sweep(sweep.expand(settings, 2), base_config(), tmp_path, FakeTrainer())
    message = str(exit_info.value.code)
    assert message == "sweep run 3/4 (broken/seed0): config error: learning_rate must be positive"
    assert [r["run"] for r in read_csv(tmp_path / "results.csv")] == ["low/seed0", "low/seed1"]
    assert not (tmp_path / "broken" / "seed0" / sweep.MARKER).exists()


def test_a_preempted_run_stops_the_sweep_and_is_resumed_next_time(tmp_path):
    runs = sweep.expand(SETTINGS[:2])
    train = FakeTrainer()

    def preempted_second(config, workdir):
        result = train(config, workdir)
        result.preempted = len(train.calls) == 2  # SIGTERM: checkpoint saved, not finished
        return result

    with pytest.raises(SystemExit) as exit_info:
        sweep.run_sweep(runs, base_config(), tmp_path, preempted_second)
    assert str(exit_info.value.code) == (
        "sweep run 2/2 (mid): stopped before the end (preempted; its checkpoint is saved); "
        "run the same sweep again to resume"
    )
    assert (tmp_path / "low" / sweep.MARKER).is_file()
    assert not (tmp_path / "mid" / sweep.MARKER).exists()
    again = FakeTrainer()
    sweep.run_sweep(runs, base_config(), tmp_path, again)
    assert [c[0] for c in again.calls] == [str(tmp_path / "mid")]
    assert [r["run"] for r in read_csv(tmp_path / "results.csv")] == ["low", "mid"]


def test_two_settings_of_one_name_are_refused():
    with pytest.raises(SystemExit, match=r"share the name\(s\) \['x'\]; give each a name="):
        sweep.expand([{"name": "x"}, {"name": "x", "a": 1}])


CONFIG = """
import ml_collections


def get_config(arg=None):
    return ml_collections.ConfigDict(
        {"init_from": "", "train": {"steps": 10, "seed": 0}, "data": {"seed": 0, "vocab_file": ""}}
    )


def sweep(add):
    add(name="short", **{"train.steps": 5})
    add(name="long")
"""


def test_dry_run_with_seeds_and_fine_tuning_prints_every_command(tmp_path, capsys):
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    workdir = tmp_path / "sweep"
    argv = ["--config", str(config), "--workdir", str(workdir), "--seeds", "2", "--dry-run"]
    assert cli.sweep_main([*argv, "--finetune", f"{config}:x"]) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    run = workdir / "short" / "seed1"
    assert commands[2] == [
        "mbert-jax", "train", "--config", str(config), "--workdir", str(run),
        "--config.train.steps=5", "--config.train.seed=1", "--config.data.seed=1",
    ]  # fmt: skip
    assert commands[3] == [
        "mbert-jax", "train", "--config", f"{config}:x", "--workdir", str(run / "finetune"),
        f"--config.init_from={run / 'model'}",
        f"--config.data.vocab_file={run / 'model' / 'vocab.txt'}",
        "--config.train.seed=1", "--config.data.seed=1",
    ]  # fmt: skip
    assert len(commands) == 8 and not workdir.exists()


def test_sweep_help_documents_seeds_metrics_fine_tuning_and_resume(capsys):
    with pytest.raises(SystemExit):
        cli.sweep_main(["--help"])
    out = capsys.readouterr().out
    usage, flag_help = out.split("flags:")
    for word in ("--seeds", "--metrics", "--finetune", "standard error", "Resume", "sweep.json"):
        assert word in usage, word
    for flag in ("--seeds", "--metrics", "--finetune", "--[no]dry-run"):
        assert flag in flag_help


# ----------------------------------------------------------------- real runs
REAL_SWEEP = """
import importlib.util

_spec = importlib.util.spec_from_file_location("p", PATH)
_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m)

sweep_metrics = ("eval_mlm_accuracy", "eval_mlm")


def get_config(arg=None):
    c = _m.get_config("runlocal,data=synthetic")
    c.train.steps = 2
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.checkpoint_every = 10
    c.model.overrides.num_layers = 1
    return c


def sweep(add):
    add(name="two", **{"train.steps": 2})
    add(name="many", **{"train.steps": STEPS})
"""


def real_sweep(tmp_path, steps=3):
    config = tmp_path / "real.py"
    text = REAL_SWEEP.replace("PATH", repr(str(ROOT / "configs/pretrain_ibbert.py")))
    config.write_text(text.replace("STEPS", str(steps)))
    return config


@pytest.mark.slow
def test_a_real_sweep_over_two_seeds_reports_what_its_runs_measured(tmp_path):
    config = real_sweep(tmp_path)
    workdir = tmp_path / "sweep"
    argv = ["--config", str(config), "--workdir", str(workdir), "--seeds", "2"]
    assert cli.sweep_main(argv) == 0
    summary = {r["setting"]: r for r in read_csv(workdir / "summary.csv")}
    for setting in ("two", "many"):
        results = [
            json.loads((workdir / setting / f"seed{k}" / "results.json").read_text())
            for k in range(2)
        ]
        configs = [
            json.loads((workdir / setting / f"seed{k}" / "config.json").read_text())
            for k in range(2)
        ]
        assert [c["train"]["seed"] for c in configs] == [0, 1]
        assert [c["data"]["seed"] for c in configs] == [0, 1]
        for metric in ("mlm_accuracy", "mlm"):
            values = [r["eval"][metric] for r in results]
            got = summary[setting]
            assert float(got[f"eval_{metric}_mean"]) == pytest.approx(statistics.mean(values))
            se = statistics.stdev(values) / math.sqrt(2)
            assert float(got[f"eval_{metric}_se"]) == pytest.approx(se, abs=1e-12)
    # Two seeds of one setting differ (other initialization and data).
    two = [json.loads((workdir / "two" / f"seed{k}" / "results.json").read_text()) for k in (0, 1)]
    assert two[0]["eval"]["mlm"] != two[1]["eval"]["mlm"]
    table = (workdir / "results.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("|"))
    assert header == "| setting | train.steps | seeds | eval_mlm_accuracy | eval_mlm |"
    # Started again: every run is finished, none is touched, the tables are the same.
    runs = [p for p in workdir.rglob("*") if p.is_file() and p.parent != workdir]
    before = {p: p.stat().st_mtime_ns for p in runs}
    assert cli.sweep_main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in runs} == before
    assert (workdir / "results.md").read_text() == table


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig",
    # SIGTERM out of CI for time (the trainer's SIGTERM exit: test_trainer.py, in CI).
    [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.heavy)],
    ids=["sigkill", "sigterm"],
)
def test_a_killed_sweep_resumes_and_keeps_its_finished_runs(tmp_path, sig):
    config = real_sweep(tmp_path, steps=400)
    workdir = tmp_path / "sweep"
    argv = ["sweep", "--config", str(config), "--workdir", str(workdir)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "mbert_jax", *argv], env=env, cwd=ROOT)
    checkpoint = workdir / "many" / "checkpoints" / "10"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep ended before it could be killed"
    assert checkpoint.exists(), "the second run wrote no checkpoint in time"
    proc.send_signal(sig)
    assert proc.wait() != 0  # SIGTERM: the run saves a checkpoint, and the sweep stops
    first = workdir / "two"
    kept = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
    assert (first / sweep.MARKER).is_file() and not (workdir / "many" / sweep.MARKER).exists()
    assert cli.sweep_main(argv[1:]) == 0
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == kept
    assert json.loads((workdir / "many" / "results.json").read_text())["step"] == 400
    assert [r["run"] for r in read_csv(workdir / "results.csv")] == ["two", "many"]


FINETUNE = """
import importlib.util

_spec = importlib.util.spec_from_file_location("f", PATH)
_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m)

sweep_metrics = ("eval_accuracy",)


def get_config(arg=None):
    c = _m.get_config("runlocal,task=custom")
    c.init_from = INIT
    c.data.update(OVERRIDES)
    c.train.update(steps=6, log_every=3, eval_every=0, checkpoint_every=6)
    return c


def sweep(add):
    add(name="slow", **{"optimizer.learning_rate": 1e-4})
    add(name="fast", **{"optimizer.learning_rate": 1e-3})
"""


@pytest.mark.slow
def test_each_run_is_fine_tuned_from_its_model_and_reports_the_task_metric(tmp_path):
    import numpy as np
    import task_files

    bert = task_files.make_bert(tmp_path / "bert")
    rng = np.random.default_rng(0)
    data = {
        "train_file": str(task_files.write_csv(
            tmp_path / "train.csv", "text,topic", task_files.topic_rows(rng, 64)
        )),
        "eval_file": str(task_files.write_csv(
            tmp_path / "dev.csv", "text,topic", task_files.topic_rows(rng, 24)
        )),
        "label_column": "topic",
        "max_seq_length": task_files.SEQ,
        "cache_dir": str(tmp_path / "cache"),
    }  # fmt: skip
    config = tmp_path / "ft.py"
    text = FINETUNE.replace("PATH", repr(str(ROOT / "configs/finetune.py")))
    config.write_text(text.replace("INIT", repr(str(bert))).replace("OVERRIDES", repr(data)))
    workdir = tmp_path / "sweep"
    argv = ["--config", str(config), "--workdir", str(workdir), "--finetune", str(config)]
    assert cli.sweep_main(argv) == 0
    rows = {r["run"]: r for r in read_csv(workdir / "results.csv")}
    for name in ("slow", "fast"):
        run = workdir / name
        used = json.loads((run / "finetune" / "config.json").read_text())
        assert used["init_from"] == str(run / "model")  # the run's model, not the base's
        results = json.loads((run / "finetune" / "results.json").read_text())
        got = float(rows[name]["finetune_eval_accuracy"])
        assert got == pytest.approx(results["eval"]["accuracy"], rel=1e-12)
    header = next(line for line in (workdir / "results.md").read_text().splitlines() if "|" in line)
    assert header == (
        "| setting | optimizer.learning_rate | seeds | finetune_eval_accuracy | eval_accuracy |"
    )


def test_a_field_added_unset_since_a_run_finished_keeps_the_run(tmp_path):
    runs = sweep.expand(SETTINGS[:1])
    sweep.run_sweep(runs, base_config(), tmp_path, FakeTrainer())
    newer = ml_collections.ConfigDict(base_config().to_dict())
    newer.train.new_option = None  # a later version's field, left at its default
    again = FakeTrainer()
    sweep.run_sweep(runs, newer, tmp_path, again)
    assert again.calls == []
    newer.train.new_option = 3  # set: the finished run was made without it
    with pytest.raises(SystemExit, match=r"train.new_option: None then, 3 now"):
        sweep.run_sweep(runs, newer, tmp_path, FakeTrainer())


def test_a_tuple_override_reads_the_same_in_a_fresh_and_a_kept_row(tmp_path):
    base = base_config()
    base.model = {"layers": (0, 1, 2)}
    settings = [{"name": "low", "optimizer.learning_rate": 1e-3, "model.layers": ()}]
    settings.append({"name": "mid", "optimizer.learning_rate": 3e-3})
    sweep.run_sweep(sweep.expand(settings), base, tmp_path, FakeTrainer())
    table = (tmp_path / "results.md").read_text()
    assert "| low | 0.001 | [] | 1 |" in table and "| mid | 0.003 | [0, 1, 2] | 1 |" in table
    sweep.run_sweep(sweep.expand(settings), base, tmp_path, FakeTrainer())  # both kept
    assert (tmp_path / "results.md").read_text() == table
