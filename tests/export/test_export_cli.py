"""`mbert-jax export` through `mbert_jax.export.cli.main`: the report, and bad input.

Every bad input must give a clear error and leave nothing at --out (nor a
temporary file beside it).
"""

from __future__ import annotations

import numpy as np
import pytest
from export_helpers import SEQ_LEN, make_model_dir

from mbert_jax.export import cli, tflite
from mbert_jax.export.exporter import TFLiteOptions, export_tflite, load_for_export
from mbert_jax.export.tflite import ExportError


def export(*args):
    return cli.main([*map(str, args), "--seq-len", str(SEQ_LEN), "--latency-runs", "0"])


@pytest.fixture(scope="module")
def pretraining_dir(tmp_path_factory):
    """A model directory with only the pretraining heads (no classifier, no qa)."""
    root = tmp_path_factory.mktemp("pretrain")
    directory, _, _ = make_model_dir(root, "mobilebert_tiny_micro", heads=("mlm", "nsp"))
    return directory


def assert_nothing_written(out):
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_int8_export_from_text_calibration_prints_the_report(
    model_dirs, sentences, tmp_path, capsys
):
    directory = model_dirs["mobilebert_micro"][0]
    out = tmp_path / "out" / "cls_int8.tflite"
    code = cli.main(
        [
            "--checkpoint", str(directory), "--task", "classification", "--quantize", "int8",
            "--seq-len", str(SEQ_LEN), "--calibration-data", str(sentences),
            "--num-calibration", "40", "--out", str(out), "--threads", "1,4", "--latency-runs", "3",
        ]
    )  # fmt: skip
    text = capsys.readouterr().out
    assert code == 0, text
    assert out.is_file()
    assert f"size={out.stat().st_size / 1e6:.2f} MB" in text
    assert "verified on 20 held-out examples (calibration file, past the examples" in text
    assert "argmax agreement = " in text
    assert "batch 1, 1 thread(s)" in text and "batch 1, 4 thread(s)" in text


def test_workdir_reads_workdir_model(model_dirs, tmp_path, capsys):
    workdir = model_dirs["tinybert4_micro"][0].parent  # .../tinybert4_micro/model
    out = tmp_path / "emb.tflite"
    assert export("--workdir", workdir, "--task", "embedding", "--out", out) == 0
    assert "max |tflite - jax|" in capsys.readouterr().out and out.is_file()


def test_missing_head_is_an_error_without_the_flag(pretraining_dir, tmp_path, capsys):
    out = tmp_path / "o" / "qa.tflite"
    out.parent.mkdir()
    assert export("--checkpoint", pretraining_dir, "--task", "qa", "--out", out) == 1
    err = capsys.readouterr().err
    assert "needs a trained 'qa' head" in err and "--init-missing-head" in err
    assert_nothing_written(out)


@pytest.mark.slow
def test_missing_head_is_initialized_with_the_flag(pretraining_dir, tmp_path, capsys):
    out = tmp_path / "qa.tflite"
    code = export(
        "--checkpoint", pretraining_dir, "--task", "qa", "--out", out, "--init-missing-head"
    )
    assert code == 0 and out.is_file()
    assert "start+end argmax agreement = 1.0000" in capsys.readouterr().out


def test_unknown_quantization_is_rejected(model_dirs, tmp_path, capsys):
    out = tmp_path / "o" / "x.tflite"
    out.parent.mkdir()
    directory = model_dirs["mobilebert_micro"][0]
    with pytest.raises(SystemExit) as e:
        export(
            "--checkpoint",
            directory,
            "--task",
            "classification",
            "--quantize",
            "int4",
            "--out",
            out,
        )
    assert e.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(ExportError, match="unknown quantization 'int4'; valid modes: none, fp16"):
        export_tflite(
            load_for_export(directory), "classification", out, TFLiteOptions(quantize="int4")
        )
    assert_nothing_written(out)


def test_int8_without_calibration_data_is_an_error(model_dirs, tmp_path, capsys):
    out = tmp_path / "o" / "x.tflite"
    out.parent.mkdir()
    directory = model_dirs["mobilebert_micro"][0]
    code = export(
        "--checkpoint", directory, "--task", "classification", "--quantize", "int8", "--out", out
    )
    assert code == 1
    assert "needs --calibration-data" in capsys.readouterr().err
    assert_nothing_written(out)


def test_integer_only_flags_on_a_layernorm_model_or_float_export_are_errors(
    model_dirs, tmp_path, capsys
):
    out = tmp_path / "o" / "x.tflite"
    out.parent.mkdir()
    directory = model_dirs["tinybert4_micro"][0]
    code = export("--checkpoint", directory, "--task", "classification", "--quantize", "int8",
                  "--int8-elementwise", "--out", out)  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "--int8-elementwise needs a NoNorm/ReLU model" in err and "layer_norm" in err
    code = export("--checkpoint", model_dirs["mobilebert_micro"][0], "--task", "classification",
                  "--int8-attention", "--out", out)  # fmt: skip
    assert code == 1
    assert "apply to --quantize int8 only" in capsys.readouterr().err
    assert_nothing_written(out)


def test_empty_calibration_set_is_an_error(model_dirs, tmp_path, capsys):
    out = tmp_path / "o" / "x.tflite"
    out.parent.mkdir()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    directory = model_dirs["mobilebert_micro"][0]
    code = export(
        "--checkpoint", directory, "--task", "classification", "--quantize", "int8",
        "--calibration-data", empty, "--out", out,
    )  # fmt: skip
    assert code == 1
    assert "the calibration set is empty" in capsys.readouterr().err
    assert_nothing_written(out)


def test_calibration_with_the_wrong_sequence_length_is_an_error(model_dirs, tmp_path, capsys):
    out = tmp_path / "o" / "x.tflite"
    out.parent.mkdir()
    data = tmp_path / "cal.npz"
    ids = np.full((8, SEQ_LEN + 8), 7, np.int32)
    np.savez(data, input_ids=ids, attention_mask=np.ones_like(ids))
    directory = model_dirs["mobilebert_micro"][0]
    code = export(
        "--checkpoint", directory, "--task", "classification", "--quantize", "int8",
        "--calibration-data", data, "--out", out,
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert f"sequence length {SEQ_LEN + 8} but the export uses --seq-len {SEQ_LEN}" in err
    assert_nothing_written(out)


def test_bad_sequence_length_and_missing_model_dir(model_dirs, tmp_path, capsys):
    out = tmp_path / "o" / "x.tflite"
    out.parent.mkdir()
    directory = model_dirs["mobilebert_micro"][0]
    assert cli.main(["--checkpoint", str(directory), "--task", "mlm", "--seq-len", "4096",
                     "--out", str(out)]) == 1  # fmt: skip
    assert "--seq-len 4096 must be in [1, 128]" in capsys.readouterr().err
    assert export("--checkpoint", tmp_path / "nope", "--task", "mlm", "--out", out) == 1
    assert "is not a model directory" in capsys.readouterr().err
    assert_nothing_written(out)


def test_a_failing_conversion_leaves_no_partial_file_and_keeps_an_old_one(
    model_dirs, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "o" / "x.tflite"
    out.parent.mkdir()
    out.write_bytes(b"previous export")

    def fail(*args, **kwargs):
        raise ExportError("conversion failed half way")

    monkeypatch.setattr(tflite, "convert", fail)
    directory = model_dirs["mobilebert_micro"][0]
    assert export("--checkpoint", directory, "--task", "classification", "--out", out) == 1
    assert "conversion failed half way" in capsys.readouterr().err
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in out.parent.iterdir()] == ["x.tflite"]


def test_write_atomic_removes_its_temporary_file_when_the_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "x.bin"

    def replace_fails(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(tflite.os, "replace", replace_fails)
    with pytest.raises(OSError, match="disk full"):
        tflite.write_atomic(out, lambda: b"abc")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    tflite.write_atomic(out, lambda: b"abc")
    assert out.read_bytes() == b"abc" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def read_only_dir(path, monkeypatch):
    """A directory this process cannot write in: mode 0555, or (root writes anyway) a
    simulated refusal of the same kind."""
    path.mkdir()
    path.chmod(0o555)
    probe = path / "probe"
    try:
        probe.write_bytes(b"")
    except PermissionError:
        return path
    probe.unlink()

    def refuse(final):
        raise PermissionError(13, "Permission denied", str(final))

    monkeypatch.setattr(tflite.files, "temp_file", refuse)
    return path


@pytest.mark.parametrize(
    "where, message",
    [
        ("under_a_file", "cannot write here ({parent} is not a directory); choose another --out"),
        ("a_directory", "{out} is a directory; give --out a file name"),
        ("read_only", "cannot write here ({parent} Permission denied); choose another --out"),
    ],
)
def test_an_out_that_cannot_be_written_is_one_line_before_converting(
    model_dirs, tmp_path, monkeypatch, capsys, where, message
):
    def never(*args, **kwargs):
        raise AssertionError("converted although --out cannot be written")

    monkeypatch.setattr(tflite, "convert", never)
    if where == "under_a_file":
        parent = tmp_path / "file"
        parent.write_text("x")
        out = parent / "x.tflite"
    elif where == "a_directory":
        out = parent = tmp_path / "dir"
        out.mkdir()
    else:
        parent = read_only_dir(tmp_path / "ro", monkeypatch)
        out = parent / "x.tflite"
    before = sorted(tmp_path.rglob("*"))
    directory = model_dirs["mobilebert_micro"][0]
    assert export("--checkpoint", directory, "--task", "classification", "--out", out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert message.format(parent=parent, out=out) in err
    assert sorted(tmp_path.rglob("*")) == before
    parent.chmod(0o755)


@pytest.mark.parametrize("keep", [0.5, 0.001], ids=["cut_in_the_data", "cut_in_the_header"])
def test_a_truncated_params_file_is_one_line(model_dirs, tmp_path, capsys, keep):
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(model_dirs["mobilebert_micro"][0], directory)
    params = directory / "params.safetensors"
    params.write_bytes(params.read_bytes()[: max(int(params.stat().st_size * keep), 4)])
    out = tmp_path / "o" / "x.tflite"
    assert export("--checkpoint", directory, "--task", "classification", "--out", out) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"error: {params}: cannot be read (" in err
    assert "the file is damaged or incomplete" in err and "save the model again" in err
    assert not out.exists()
