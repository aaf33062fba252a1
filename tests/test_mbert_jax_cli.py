"""The top-level `mbert-jax` command: its help, the sub-commands, one flag spelling."""

from __future__ import annotations

import pytest

from mbert_jax import cli


def test_help_lists_every_command_with_its_description(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("describe", "train", "sweep", "plan", "quickstart", "export", "data"):
        assert name in out
    for name in ("convert", "augment"):  # once `python -m` modules
        line = next(line for line in out.splitlines() if line.strip().startswith(name))
        assert len(line.split()) > 2, line  # a description follows the name


def test_no_command_prints_the_usage_and_fails(capsys):
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().err


def test_an_unknown_command_is_named(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["convert", "augment", "data", "export", "describe"])
def test_each_argparse_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    assert f"mbert-jax {command}" in capsys.readouterr().out


def test_underscores_in_flag_names_are_accepted():
    assert cli.dashed(["--data_dir", "x", "--seq_len=4", "pos_arg", "--", "--keep_me"]) == [
        "--data-dir",
        "x",
        "--seq-len=4",
        "pos_arg",
        "--",
        "--keep_me",
    ]
