"""`mbert-jax train|sweep|plan`: `--help`, dashed flags, sweep dry runs, one tiny real sweep."""

import shlex

import pytest

from mbert_jax.train import cli, plan
from mbert_jax.train import config as config_lib


@pytest.fixture(autouse=True)
def process_setup_left_alone(monkeypatch):
    """`sweep_main` sets up the process (the mbert_jax logger stops propagating, a compile
    cache); in-process here, that would blind `caplog` in the tests that follow on this
    worker. The sweeps run without it."""
    monkeypatch.setattr(cli, "setup_logging", lambda: None)
    monkeypatch.setattr(cli, "setup_compilation_cache", lambda: None)


CONFIG = """
import ml_collections


def get_config(arg=None):
    return ml_collections.ConfigDict({"train": {"steps": 100 if arg == "runlocal" else 1000}})


def sweep(add, arg=None):
    add(name="short")
    add(**{"train.steps": 7 if arg == "runlocal" else 70})
"""


@pytest.mark.parametrize(
    "main, flags",
    [
        (cli.train_main, ["--config", "--workdir", "--num-processes"]),
        (cli.sweep_main, ["--config", "--workdir", "--[no]dry-run", "--seeds"]),
        (plan.plan_main, ["--config", "--devices"]),
    ],
)
@pytest.mark.parametrize("help_flag", ["--help", "-h"])
def test_help_prints_the_usage_and_flags(capsys, main, flags, help_flag):
    with pytest.raises(SystemExit) as exit_info:
        main([help_flag])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out.split("flags:")[0]  # the usage
    for flag in flags:
        assert flag in out.split("flags:")[1]


@pytest.mark.parametrize("dry_run", ["--dry-run", "--dry_run"])
def test_sweep_dry_run_prints_one_train_command_per_run(tmp_path, capsys, dry_run):
    config = tmp_path / "tiny.py"
    config.write_text(CONFIG)
    workdir = tmp_path / "sweep"
    argv = ["--config", f"{config}:runlocal", "--workdir", str(workdir), dry_run]
    assert cli.sweep_main(argv) == 0
    commands = [shlex.split(line) for line in capsys.readouterr().out.splitlines()]
    train = ["mbert-jax", "train", "--config", f"{config}:runlocal", "--workdir"]
    assert commands == [
        [*train, str(workdir / "short")],
        [*train, str(workdir / "steps=7"), "--config.train.steps=7"],
    ]
    assert not workdir.exists()


def test_dashed_flag_names_are_normalized():
    argv = ["--dry-run", "--num-processes=2", "--config.a_b=x-y", "--workdir", "a-b", "--", "--x-y"]
    assert cli.normalize_argv(argv) == [
        "--dry_run",
        "--num_processes=2",
        "--config.a_b=x-y",
        "--workdir",
        "a-b",
        "--",
        "--x-y",
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"train.steps": -1},
            "config.train.steps=-1: steps must be >= 0 (0: only evaluate the initial model)",
        ),
        (
            {"data.max_seq_length": 256},
            "config.data.max_seq_length=256 is longer than the model's 128 positions "
            "(encoder/embeddings/position_embeddings/embedding); lower it to at most 128, or "
            "use a model with more positions (max_position_embeddings)",
        ),
        ({"mesh.fsdp": 2}, "config.mesh"),
    ],
    ids=["negative_steps", "sequences_longer_than_the_positions", "mesh_of_other_devices"],
)
def test_run_config_errors_are_one_line_before_anything_is_written(tmp_path, overrides, message):
    module, arg = config_lib.load_config_module(
        "configs/pretrain_ibbert.py:runlocal,data=synthetic"
    )
    config = config_lib.apply_overrides(module.get_config(arg), overrides)
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.run_config(config, str(workdir))
    text = str(exit_info.value.code)
    assert text.startswith("config error: ") and "\n" not in text
    assert message in text
    assert not workdir.exists()


@pytest.mark.parametrize("learn_vocab", [False, True], ids=["vocab_file", "learned_vocab"])
@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no text to train on (text files "),
        (
            bytes(range(128, 256)) * 4 + b"\n" + (b"\xff\xfe\x00\x81\n" * 40) + b"ok line\n",
            "41 of 42 lines are not valid UTF-8 (first: ",
        ),
    ],
    ids=["empty_corpus", "binary_corpus"],
)
def test_a_corpus_without_text_is_one_line_and_leaves_no_cache(
    tmp_path, content, message, learn_vocab
):
    corpus_file = tmp_path / "corpus.txt"
    corpus_file.write_bytes(content)
    module, arg = config_lib.load_config_module("configs/pretrain_ibbert.py:runlocal")
    overrides = {
        "data.source": "text",
        "data.text_files": str(corpus_file),
        "data.cache_dir": str(tmp_path / "cache"),
    }
    if not learn_vocab:
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ok", "line"]))
        overrides["data.vocab_file"] = str(vocab)
    config = config_lib.apply_overrides(module.get_config(arg), overrides)
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.run_config(config, str(workdir))
    text = str(exit_info.value.code)
    assert text.startswith("config error: ") and "\n" not in text, text
    assert message in text
    assert "data.text_files" in text or "data.on_bad_utf8" in text
    assert not workdir.exists()
    assert not any((tmp_path / "cache").glob("corpus-*"))
    assert not any((tmp_path / "cache").glob("vocab-*"))


def test_sweep_run_with_a_bad_override_is_named_in_one_line(tmp_path):
    config = tmp_path / "bad.py"
    config.write_text(CONFIG.replace('add(name="short")', 'add(name="bad", **{"train.nope": 1})'))
    argv = ["--config", f"{config}:runlocal", "--workdir", str(tmp_path / "sweep")]
    with pytest.raises(SystemExit) as exit_info:
        cli.sweep_main(argv)
    message = str(exit_info.value.code)
    assert message.startswith("sweep run 1/2 (bad): ") and "'train.nope'" in message
    assert "\n" not in message


REAL_SWEEP = """
import importlib.util

_spec = importlib.util.spec_from_file_location("p", PATH)
_m = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_m)


def get_config(arg=None):
    c = _m.get_config("runlocal,data=synthetic")
    c.train.steps = 2
    c.train.log_every = 1
    c.train.eval_every = 0
    c.model.overrides.num_layers = 1
    return c


def sweep(add):
    add(**{"train.steps": 2})
    add(**{"train.steps": 3})
"""


@pytest.mark.slow
def test_a_real_sweep_writes_one_row_per_run_equal_to_its_results(tmp_path):
    import csv
    import json
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "real.py"
    config.write_text(REAL_SWEEP.replace("PATH", repr(str(root / "configs/pretrain_ibbert.py"))))
    workdir = tmp_path / "sweep"
    assert cli.sweep_main(["--config", str(config), "--workdir", str(workdir)]) == 0
    with (workdir / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["steps=2", "steps=3"]
    table = [line for line in (workdir / "results.md").read_text().splitlines() if "|" in line]
    assert len(table) == 2 + len(rows)
    for row in rows:
        results = json.loads((workdir / row["run"] / "results.json").read_text())
        assert int(row["train.steps"]) == results["step"]
        for split in ("train", "eval"):
            for k, v in results[split].items():
                assert float(row[f"{split}_{k}"]) == pytest.approx(v, rel=1e-12)
    # A rerun after the sweep was killed before its second run: the finished run is not
    # trained again (its files are untouched), the missing one is, and the table is whole.
    table = (workdir / "results.md").read_text()
    first = workdir / rows[0]["run"]

    def contents(d):  # bytes of every file; times of the checkpoint, model and results
        kept = ("checkpoints", "model", "results.json")
        return {
            p: (p.read_bytes(), p.stat().st_mtime_ns if p.relative_to(d).parts[0] in kept else 0)
            for p in d.rglob("*")
            if p.is_file() and "tensorboard" not in p.parts
        }

    files = contents(first)
    shutil.rmtree(workdir / rows[1]["run"])
    assert cli.sweep_main(["--config", str(config), "--workdir", str(workdir)]) == 0
    assert contents(first) == files
    assert (workdir / rows[1]["run"] / "results.json").is_file()
    assert (workdir / "results.md").read_text() == table


@pytest.mark.slow
def test_a_sweep_run_that_fails_after_a_finished_one_keeps_its_row(tmp_path):
    import csv
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    config = tmp_path / "fails.py"
    text = REAL_SWEEP.replace("PATH", repr(str(root / "configs/pretrain_ibbert.py")))
    config.write_text(text.replace('add(**{"train.steps": 3})', 'add(**{"train.steps": -1})'))
    workdir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_info:
        cli.sweep_main(["--config", str(config), "--workdir", str(workdir)])
    message = str(exit_info.value.code)
    assert message.startswith("sweep run 2/2 (steps=-1): config error: ") and "\n" not in message
    assert "config.train.steps=-1" in message
    with open(workdir / "results.csv") as f:
        (row,) = csv.DictReader(f)
    assert row["run"] == "steps=2" and (workdir / "steps=2" / "results.json").is_file()
    assert "steps=2" in (workdir / "results.md").read_text()
    assert not (workdir / "steps=-1").exists()


def test_help_spells_flags_with_dashes_as_the_docs_do(capsys):
    with pytest.raises(SystemExit):
        cli.train_main(["--help"])
    flag_help = capsys.readouterr().out.split("flags:")[1]
    for flag in ("--coordinator-address", "--num-processes", "--process-id"):
        assert flag in flag_help
    assert "_" not in "".join(line.split(":")[0] for line in flag_help.splitlines())
