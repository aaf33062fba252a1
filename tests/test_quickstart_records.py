"""A quickstart rerun never reuses a phase made with other settings or from other models
(mbert_jax/quickstart/records.py): it stops and says what changed, or with
`on_change=redo` keeps the old directory aside and runs the phase again, and
then the phases and exports made from it. Training is replaced by a fake that
writes a model directory (the real phases: tests/test_quickstart*.py)."""

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import ml_collections
import pytest

from mbert_jax.models import io
from mbert_jax.quickstart import exports, phases, real, records
from mbert_jax.quickstart.phases import load_config


def fake_model(directory: Path, payload: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / io.CONFIG_FILE).write_text("{}\n")
    (directory / io.PARAMS_FILE).write_text(payload)
    return directory


def config(steps=10, init_from=""):
    return ml_collections.ConfigDict(
        {"train": {"steps": steps, "log_every": 5}, "init_from": init_from, "lr": 1e-3}
    )


@pytest.fixture
def runs(monkeypatch):
    """Replace training: each run writes WORKDIR/model (its steps in the weights) and results."""
    calls = []

    def run_config(c, workdir):
        calls.append(Path(workdir).name)
        fake_model(Path(workdir) / "model", f"{c.train.steps} {c.init_from}")
        (Path(workdir) / "results.json").write_text("{}\n")
        return SimpleNamespace(preempted=False)

    monkeypatch.setattr("mbert_jax.train.cli.run_config", run_config)
    return calls


def test_a_record_names_settings_relative_to_the_workdir_and_digests_its_inputs(tmp_path):
    teacher = fake_model(tmp_path / "w" / "teacher" / "model", "weights")
    rec = records.record(config(init_from=str(teacher)), tmp_path / "w")
    assert rec["settings"]["init_from"] == "$WORKDIR/teacher/model"
    assert rec["settings"]["train.steps"] == 10 and "train.log_every" not in rec["settings"]
    want = hashlib.sha256()
    for name in sorted((io.CONFIG_FILE, io.PARAMS_FILE)):
        want.update(name.encode() + (teacher / name).read_bytes())
    assert rec["inputs"] == {"init_from": want.hexdigest()}
    # The same workdir moved elsewhere: the same record.
    shutil.copytree(tmp_path / "w", tmp_path / "moved")
    moved = tmp_path / "moved"
    assert records.record(config(init_from=str(moved / "teacher/model")), moved) == rec
    # Other weights under the same name: the input differs.
    (teacher / io.PARAMS_FILE).write_text("other weights")
    changed = records.record(config(init_from=str(teacher)), tmp_path / "w")
    assert records.differences(rec, changed) == [
        "init_from ($WORKDIR/teacher/model) is not the model it was made from"
    ]


def test_a_rerun_with_the_same_settings_skips_the_finished_phase(tmp_path, runs):
    phases.train("a", config(), tmp_path / "a")
    phases.train("a", config(), tmp_path / "a")
    assert runs == ["a"]
    # How often it logs changes no result.
    c = config()
    c.train.log_every = 1
    phases.train("a", c, tmp_path / "a")
    assert runs == ["a"]


def test_a_rerun_with_other_settings_stops_and_says_what_changed(tmp_path, runs):
    phases.train("a", config(steps=10), tmp_path / "a")
    before = (tmp_path / "a" / "model" / io.PARAMS_FILE).read_text()
    with pytest.raises(SystemExit) as e:
        phases.train("a", config(steps=20), tmp_path / "a")
    msg = str(e.value)
    assert f"phase {tmp_path / 'a'} was made with other settings or inputs" in msg
    assert "train.steps: 10 then, 20 now" in msg and "on_change=redo" in msg and "\n" not in msg
    assert runs == ["a"]
    assert (tmp_path / "a" / "model" / io.PARAMS_FILE).read_text() == before  # untouched


def test_redo_keeps_the_old_phase_and_redoes_what_was_made_from_it(tmp_path, runs):
    w = tmp_path
    phases.add_time(w, "a", 100.0)
    phases.train("a", config(steps=10), w / "a")
    phases.train("b", config(init_from=str(w / "a" / "model")), w / "b")
    phases.add_time(w, "b", 50.0)
    assert runs == ["a", "b"]
    # b is made from a's model: a's new weights make b stale too.
    with pytest.raises(SystemExit, match="made with other settings"):
        phases.train("a", config(steps=20), w / "a", "stop")
    phases.train("a", config(steps=20), w / "a", "redo")
    assert (w / "a.old-1" / "model" / io.PARAMS_FILE).read_text().startswith("10 ")
    assert (w / "a" / "model" / io.PARAMS_FILE).read_text().startswith("20 ")
    with pytest.raises(SystemExit, match=r"init_from \(\$WORKDIR/a/model\) is not the model"):
        phases.train("b", config(init_from=str(w / "a" / "model")), w / "b")
    phases.train("b", config(init_from=str(w / "a" / "model")), w / "b", "redo")
    assert runs == ["a", "b", "a", "b"]
    assert (w / "b.old-1").is_dir()
    # A redone phase's time starts again (the fake run's own few milliseconds).
    times = phases.timings(w)
    assert times["a"] < 1 and times["b"] < 1
    # Redone again: the next free name.
    phases.train("a", config(steps=30), w / "a", "redo")
    assert (w / "a.old-2").is_dir() and (w / "a.old-1").is_dir()


def test_a_phase_from_an_older_version_is_not_checked(tmp_path, runs, capsys):
    fake_model(tmp_path / "a" / "model", "old")
    (tmp_path / "a" / "results.json").write_text("{}\n")
    phases.train("a", config(steps=99), tmp_path / "a")
    assert runs == [] and not (tmp_path / "a" / records.RECORD).exists()
    assert "settings not recorded (an older mbert_jax), not checked" in capsys.readouterr().out


def test_on_change_takes_stop_or_redo(tmp_path, runs):
    with pytest.raises(SystemExit, match=r"on_change='again': use one of stop, redo"):
        phases.train("a", config(), tmp_path / "a", "again")


def test_the_real_presets_students_each_have_their_own_task_steps(tmp_path):
    """Changing the TinyBERT student's prediction steps changes its phase's settings, and
    only its: the MobileBERT student's phase is reused."""
    q = load_config("quickstart", "real")
    fake_model(tmp_path / "mobilebert_general" / "model", "pkt")
    before = records.record(real.task_distill_config(q, "mobilebert", "stdlib", tmp_path), tmp_path)
    q.prediction_steps.tinybert += 100
    after = records.record(real.task_distill_config(q, "mobilebert", "stdlib", tmp_path), tmp_path)
    assert before == after
    q.prediction_steps.mobilebert += 100
    after = records.record(real.task_distill_config(q, "mobilebert", "stdlib", tmp_path), tmp_path)
    assert records.differences(before, after) == [
        f"distill.prediction_steps: {q.prediction_steps.mobilebert - 100} then, "
        f"{q.prediction_steps.mobilebert} now"
    ]


def fake_export(calls):
    def export_tflite(model, task, path, options, calibration, verify_examples, verify_source):
        calls.append((model, options.quantize))
        Path(path).write_bytes(b"tflite of " + model.encode())
        return SimpleNamespace(
            size_bytes=10, max_abs_diff=0.0, agreement=1.0, metric_jax=0.5, metric_tflite=0.5,
            latency_ms={1: 1.0}, lines=lambda: [],
        )  # fmt: skip

    return export_tflite


def test_an_export_from_another_model_is_not_reused(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("mbert_jax.export.exporter.export_tflite", fake_export(calls))
    read = lambda d: (d / "w").read_text()
    monkeypatch.setattr("mbert_jax.export.exporter.load_for_export", read)
    monkeypatch.setattr(exports, "task_examples", lambda *a, **k: None)
    q = ml_collections.ConfigDict(
        {"export_quantize": ("none",), "num_calibration": 4, "export_dev_rows": 0,
         "on_change": "stop"}
    )  # fmt: skip
    model = tmp_path / "m" / "model"
    fake_model(model, "v1")
    (model / "w").write_text("v1")
    entries = [("m", model, "stdlib")]
    exports.export_all(tmp_path, q, entries, lambda task: 16)
    exports.export_all(tmp_path, q, entries, lambda task: 16)
    assert calls == [("v1", "none")]
    (model / "w").write_text("v2")  # the model directory changed
    with pytest.raises(SystemExit, match=r"m_none.tflite was made with other settings or inputs"):
        exports.export_all(tmp_path, q, entries, lambda task: 16)
    q.on_change = "redo"
    done = exports.export_all(tmp_path, q, entries, lambda task: 16)
    assert calls == [("v1", "none"), ("v2", "none")]
    assert (tmp_path / "export" / "m_none.tflite").read_bytes() == b"tflite of v2"
    stored = json.loads((tmp_path / "export" / "exports.json").read_text())
    assert stored["m/none"]["made_from"] == done["m/none"]["made_from"]
    # Other export settings: exported again too.
    q.num_calibration = 8
    exports.export_all(tmp_path, q, entries, lambda task: 16)
    assert len(calls) == 3
